"""py-feat Fex CSVs (``Detector.detect_video(...).to_csv``) -> tool rows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from pipelines.ingest.tool_csv import IngestError, ToolRows, clip_boxes, numeric, require
from schemas.external import PYFEAT_AUS, PYFEAT_EMOTIONS, PYFEAT_POSE, pyfeat_column

if TYPE_CHECKING:
    import pandas as pd

PYFEAT_TO_FER = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                 "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
PYFEAT_FACE_COLUMNS = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore")


def pyfeat_rows(df: pd.DataFrame, width: int, height: int, fps: float, labels: Sequence[str]) -> ToolRows:
    """Map a py-feat Fex CSV (see the module docstring); raises IngestError."""
    require(df, ["frame", *PYFEAT_FACE_COLUMNS, *PYFEAT_EMOTIONS], "py-feat")
    n = len(df)
    frame = numeric(df, "frame")
    if np.isnan(frame).any() or (frame < 0).any() or (frame != np.round(frame)).any():
        raise IngestError("py-feat 'frame' must be whole numbers from 0")
    x, y, w, h, score = (numeric(df, c) for c in PYFEAT_FACE_COLUMNS)
    tracked = ~np.isnan(np.stack([x, y, w, h, score], axis=1)).any(axis=1)
    emotions = np.stack([numeric(df, e) for e in PYFEAT_EMOTIONS], axis=1)
    sums = emotions.sum(axis=1)
    bad = tracked & ~(sums > 0)             # NaN or all zero
    if bad.any():
        raise IngestError(f"emotion scores are missing or all zero on {int(bad.sum())} face row(s)")
    fer = [PYFEAT_TO_FER[e] for e in PYFEAT_EMOTIONS]
    probs = np.zeros((n, len(labels)), np.float32)
    with np.errstate(all="ignore"):
        normalised = emotions / sums[:, None]
    for j, label in enumerate(labels):
        probs[:, j] = np.nan_to_num(normalised[:, fer.index(label)])
    face_values = {pyfeat_column(f"AU{au}"): (numeric(df, f"AU{au}") if f"AU{au}" in df.columns else np.full(n, np.nan))
                   for au in PYFEAT_AUS}
    face_values.update({pyfeat_column(e): emotions[:, i] for i, e in enumerate(PYFEAT_EMOTIONS)})
    face_values.update({pyfeat_column(p): (numeric(df, p) if p in df.columns else np.full(n, np.nan))
                        for p in PYFEAT_POSE})
    return ToolRows(frame_index=frame.astype(np.int64), timestamp_s=frame / fps, tracked=tracked,
                    rank_key=-(w * h), boxes=clip_boxes(x, y, x + w, y + h, width, height),
                    scores=np.clip(score, 0.0, 1.0), probs=probs, face_values=face_values, frame_values={})
