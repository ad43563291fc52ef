"""Per-frame feature vectors from the 3-D face mesh: distances and angles of a documented landmark subset.

Distances between 3-D points and angles between 3-D vectors do not change when the head turns,
tilts or rolls, and dividing every distance by the outer-eye-corner distance makes them
independent of the face's size: the vector describes the face's shape, not its pose or place
in the frame (a head turned far enough to hide part of the face still changes the mesh the
network estimates). Works on the frame-pixel ``landmarks`` or ``landmarks_norm`` alike.

Features, in this order (``feature_names``):

* ``dist_<a>_<b>``: the 3-D distance of every pair of the LANDMARK_SUBSET points, over the
  outer-eye-corner distance;
* ``angle_<name>``: each ANGLES angle, in radians, at its middle point.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

# MediaPipe face-mesh indices (468-point canonical mesh; the 478-point mesh adds the irises after them).
LANDMARK_SUBSET: dict[str, int] = {
    "brow_outer_r": 70, "brow_mid_r": 105, "brow_inner_r": 107, "brow_inner_l": 336, "brow_mid_l": 334,
    "brow_outer_l": 300, "eye_outer_r": 33, "eye_inner_r": 133, "lid_upper_r": 159, "lid_lower_r": 145,
    "eye_inner_l": 362, "eye_outer_l": 263, "lid_upper_l": 386, "lid_lower_l": 374, "nose_root": 168,
    "nose_tip": 1, "ala_r": 98, "ala_l": 327, "mouth_corner_r": 61, "mouth_corner_l": 291, "lip_upper": 0,
    "lip_upper_inner": 13, "lip_lower_inner": 14, "lip_lower": 17, "chin": 152, "cheek_r": 234, "cheek_l": 454,
}
# name -> (a, vertex, b): the angle at ``vertex`` between the rays to ``a`` and ``b``.
ANGLES: dict[str, tuple[str, str, str]] = {
    "mouth_corner_r": ("lip_upper", "mouth_corner_r", "lip_lower"),
    "mouth_corner_l": ("lip_upper", "mouth_corner_l", "lip_lower"),
    "lips_opening": ("mouth_corner_r", "lip_upper_inner", "mouth_corner_l"),
    "brow_arch_r": ("brow_outer_r", "brow_mid_r", "brow_inner_r"),
    "brow_arch_l": ("brow_outer_l", "brow_mid_l", "brow_inner_l"),
    "eye_opening_r": ("lid_upper_r", "eye_outer_r", "lid_lower_r"),
    "eye_opening_l": ("lid_upper_l", "eye_outer_l", "lid_lower_l"),
    "nose_flare": ("ala_r", "nose_tip", "ala_l"),
    "jaw": ("cheek_r", "chin", "cheek_l"),
    "brows_to_nose": ("brow_inner_r", "nose_root", "brow_inner_l"),
}
_NAMES = list(LANDMARK_SUBSET)
_INDEX = np.asarray([LANDMARK_SUBSET[n] for n in _NAMES])
_PAIRS = list(combinations(range(len(_NAMES)), 2))
_PAIR_A = np.asarray([a for a, _ in _PAIRS])
_PAIR_B = np.asarray([b for _, b in _PAIRS])
_SCALE = (_NAMES.index("eye_outer_r"), _NAMES.index("eye_outer_l"))
_TRIPLES = np.asarray([[_NAMES.index(n) for n in triple] for triple in ANGLES.values()])


def feature_names() -> list[str]:
    """The names of the values `mesh_features` returns, in order."""
    return ([f"dist_{_NAMES[a]}_{_NAMES[b]}" for a, b in _PAIRS] + [f"angle_{name}" for name in ANGLES])


def mesh_features(points: np.ndarray) -> np.ndarray:
    """float[..., 468 or 478, 3] mesh points -> float32[..., features] (see the module docstring); NaN
    where a mesh is missing (NaN points) or degenerate (coincident eye corners)."""
    points = np.asarray(points, np.float64)
    subset = points[..., _INDEX, :]
    scale = np.linalg.norm(subset[..., _SCALE[0], :] - subset[..., _SCALE[1], :], axis=-1)
    scale = np.where(scale > 1e-9, scale, np.nan)
    distances = np.linalg.norm(subset[..., _PAIR_A, :] - subset[..., _PAIR_B, :], axis=-1) / scale[..., None]
    ray_a = subset[..., _TRIPLES[:, 0], :] - subset[..., _TRIPLES[:, 1], :]
    ray_b = subset[..., _TRIPLES[:, 2], :] - subset[..., _TRIPLES[:, 1], :]
    cosine = (ray_a * ray_b).sum(axis=-1) / np.maximum(np.linalg.norm(ray_a, axis=-1) * np.linalg.norm(ray_b, axis=-1),
                                                       1e-12)
    angles = np.arccos(np.clip(cosine, -1.0, 1.0))
    return np.concatenate([distances, angles], axis=-1).astype(np.float32)


def flat_mesh(values: np.ndarray) -> np.ndarray:
    """float[n, 1404 or 1434] (a frame table's landmark list column) -> float[n, 468 or 478, 3]."""
    values = np.asarray(values)
    return values.reshape(len(values), -1, 3)
