"""EMFACS-7 emotion scores from OpenFace AU intensities: a rule (Friesen & Ekman 1983), not a trained model.

Registry name ``emfacs_rules``; `affectflow ingest openface` uses it, since OpenFace writes
action units but no emotion.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from models.registry import FER2013_LABELS
from schemas.external import OPENFACE_INTENSITY_AUS

# EMFACS-7 prototypes (Friesen & Ekman 1983), restricted to the AUs OpenFace 2.0 estimates an
# intensity for (disgust's AU16 is not one of them).
EMFACS_PROTOTYPES: Mapping[str, tuple[str, ...]] = {
    "angry": ("04", "05", "07", "23"),
    "disgust": ("09", "15"),
    "fear": ("01", "02", "04", "05", "07", "20", "26"),
    "happy": ("06", "12"),
    "sad": ("01", "04", "15"),
    "surprise": ("01", "02", "05", "26"),
}
# The AU a prototype cannot do without: AU15 (lip-corner depressor) alone is not disgust, nor is
# AU6 (cheek raiser, also a squint) alone happiness. The score is capped at this AU's intensity.
EMFACS_REQUIRED: Mapping[str, str] = {"disgust": "09", "happy": "12"}
EMFACS_NEUTRAL_GAIN = 2.0       # neutral = max(0, 1 - gain * strongest prototype score)
AU_INTENSITY_MAX = 5.0


def emfacs_probabilities(intensities: np.ndarray, labels: Sequence[str] = FER2013_LABELS) -> np.ndarray:
    """Rule-based (not learned) emotion scores from OpenFace AU intensities; float32[n, labels].

    ``intensities``: float[n, 17], OpenFace's AU01_r..AU45_r (schemas.external.OPENFACE_INTENSITY_AUS
    order), 0-5; values are clipped to [0, 5]. Per emotion: the mean intensity of its EMFACS
    prototype AUs divided by 5, in [0, 1], capped by its required AU's intensity / 5 where it
    has one (EMFACS_REQUIRED: disgust needs AU9, happiness AU12). neutral = max(0, 1 - 2 x the
    strongest emotion score), so an expression beats neutral once its score passes 1/3 (a
    prototype mean intensity above 5/3, between FACS "trace" and "slight"); at exactly 1/3 the
    two tie and the frame's label is neutral (`frame_rows`). With no AU active neutral is 1.
    The row is then divided by its sum (always > 0), so it sums to 1. ``labels`` must be the six
    prototype emotions plus neutral.
    """
    if set(labels) != set(EMFACS_PROTOTYPES) | {"neutral"}:
        raise ValueError(f"the EMFACS rule scores {sorted(EMFACS_PROTOTYPES) + ['neutral']}, not {list(labels)}")
    x = np.clip(np.asarray(intensities, np.float64), 0.0, AU_INTENSITY_MAX).reshape(-1, len(OPENFACE_INTENSITY_AUS))
    position = {au: i for i, au in enumerate(OPENFACE_INTENSITY_AUS)}
    scores = {e: x[:, [position[au] for au in aus]].mean(axis=1) / AU_INTENSITY_MAX
              for e, aus in EMFACS_PROTOTYPES.items()}
    for e, au in EMFACS_REQUIRED.items():
        scores[e] = np.minimum(scores[e], x[:, position[au]] / AU_INTENSITY_MAX)
    strongest = np.max(np.stack(list(scores.values()), axis=1), axis=1)
    scores["neutral"] = np.maximum(0.0, 1.0 - EMFACS_NEUTRAL_GAIN * strongest)
    raw = np.stack([scores[l] for l in labels], axis=1)
    return (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
