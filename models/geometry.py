"""Geometric, FACS-named measures computed from the 468 face-mesh landmarks.

These are NOT a trained action-unit detector's output: each is a distance or ratio on the
mesh whose change follows the named action unit's visible movement (Ekman & Friesen's
descriptions). Hence the ``geo_`` prefix. All are scale-free: computed on
`models.landmarks.normalise_landmarks` points (centred, eye line level, 1.0 = the distance
between the outer eye corners, y growing downwards), so they compare across face sizes and
camera distances; absolute levels still differ between people, which is what the per-video
neutral baseline (subtracting a video's own neutral level) is for. Higher = more of the
movement, except where a sign is stated.

Mesh indices (MediaPipe canonical face mesh): outer eye corners 33 / 263, inner 133 / 362,
upper lids 159 / 386, lower lids 145 / 374; brows 70 63 105 66 107 / 300 293 334 296 336
(107 / 336 inner ends, 70 / 300 outer); nose root 168, tip 1, alae 98 / 327; mouth corners
61 / 291; lips: outer top 0, inner top 13, inner bottom 14, outer bottom 17; chin 152.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from schemas.features import GEOMETRY_MEASURES

R_BROW, L_BROW = [70, 63, 105, 66, 107], [300, 293, 334, 296, 336]


def _y(p, i):
    return p[..., i, 1]


def _x(p, i):
    return p[..., i, 0]


def _mean_y(p, idx):
    return p[..., idx, 1].mean(axis=-1)


def _corner_line(p, outer, inner):
    """Height of the line through an eye's two corners."""
    return (_y(p, outer) + _y(p, inner)) / 2


def _eye_openness(p):
    right = (_y(p, 145) - _y(p, 159)) / np.abs(_x(p, 133) - _x(p, 33))
    left = (_y(p, 374) - _y(p, 386)) / np.abs(_x(p, 263) - _x(p, 362))
    return (right + left) / 2


# name -> formula on normalised points [..., 468, 3] -> [...]; the names and their documentation
# are schemas.features.GEOMETRY_MEASURES (the columns), one formula per name.
FORMULAS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "geo_au01_inner_brow_raise": lambda p: ((_y(p, 133) - _y(p, 107)) + (_y(p, 362) - _y(p, 336))) / 2,
    "geo_au02_outer_brow_raise": lambda p: ((_y(p, 33) - _y(p, 70)) + (_y(p, 263) - _y(p, 300))) / 2,
    "geo_au01_02_brow_raise": lambda p: ((_y(p, 159) - _mean_y(p, R_BROW)) + (_y(p, 386) - _mean_y(p, L_BROW))) / 2,
    "geo_au04_brow_lower": lambda p: -np.abs(_x(p, 336) - _x(p, 107)),
    "geo_au05_upper_lid_raise": lambda p: ((_corner_line(p, 33, 133) - _y(p, 159))
                                           + (_corner_line(p, 263, 362) - _y(p, 386))) / 2,
    "geo_au06_07_lower_lid_raise": lambda p: -((_y(p, 145) - _corner_line(p, 33, 133))
                                               + (_y(p, 374) - _corner_line(p, 263, 362))) / 2,
    "geo_au09_nose_wrinkle": lambda p: -((_y(p, 98) + _y(p, 327)) / 2 - _y(p, 168)),
    "geo_au12_lip_corner_pull": lambda p: (_y(p, 13) + _y(p, 14)) / 2 - (_y(p, 61) + _y(p, 291)) / 2,
    "geo_au15_lip_corner_depress": lambda p: (_y(p, 61) + _y(p, 291)) / 2 - (_y(p, 13) + _y(p, 14)) / 2,
    "geo_au20_lip_stretch": lambda p: np.abs(_x(p, 291) - _x(p, 61)),
    "geo_au23_24_lip_press": lambda p: -((_y(p, 13) - _y(p, 0)) + (_y(p, 17) - _y(p, 14))),
    "geo_au25_lips_part": lambda p: _y(p, 14) - _y(p, 13),
    "geo_au26_jaw_drop": lambda p: _y(p, 152) - _y(p, 1),
    "geo_au43_45_eye_closure": lambda p: -_eye_openness(p),
    "geo_head_yaw": lambda p: p[..., 263, 2] - p[..., 33, 2],
}

FEATURE_NAMES = tuple(GEOMETRY_MEASURES)


def geometric_features(normalised: np.ndarray) -> dict[str, np.ndarray]:
    """name -> float32[n] for normalised landmarks float32[n, 468, 3], in the schema's column order."""
    p = np.asarray(normalised, np.float64)
    return {name: FORMULAS[name](p).astype(np.float32) for name in FEATURE_NAMES}
