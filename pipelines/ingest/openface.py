"""OpenFace 2.0 FeatureExtraction / FaceLandmarkVidMulti CSVs -> tool rows (emotions from the EMFACS rule)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from models.emfacs import emfacs_probabilities
from pipelines.ingest.tool_csv import IngestError, ToolRows, clip_boxes, numeric, require
from schemas.external import OPENFACE_INTENSITY_AUS, OPENFACE_PRESENCE_AUS

if TYPE_CHECKING:
    import pandas as pd


def openface_rows(df: pd.DataFrame, width: int, height: int, labels: Sequence[str]) -> ToolRows:
    """Map an OpenFace 2.0 CSV (see the module docstring); raises IngestError."""
    intensity = [f"AU{au}_r" for au in OPENFACE_INTENSITY_AUS]
    require(df, ["frame", "timestamp", "confidence", "success", *intensity], "OpenFace 2.0")
    n = len(df)
    frame = numeric(df, "frame")
    if np.isnan(frame).any() or (frame < 1).any() or (frame != np.round(frame)).any():
        raise IngestError("OpenFace 'frame' must be whole numbers from 1")
    success = numeric(df, "success")
    if not np.isin(success, (0, 1)).all():
        raise IngestError("OpenFace 'success' must be 0 or 1")
    tracked = success == 1
    face_id = numeric(df, "face_id") if "face_id" in df.columns else np.zeros(n)
    aus = np.stack([numeric(df, c) for c in intensity], axis=1)
    if np.isnan(aus[tracked]).any():
        raise IngestError("AU intensities (AUxx_r) are empty on a frame where tracking succeeded")
    landmarks = [f"{a}_{i}" for a in "xy" for i in range(68)]
    if all(c in df.columns for c in landmarks):
        xs = np.stack([numeric(df, f"x_{i}") for i in range(68)], axis=1)
        ys = np.stack([numeric(df, f"y_{i}") for i in range(68)], axis=1)
        with np.errstate(all="ignore"):
            boxes = clip_boxes(np.nanmin(xs, 1), np.nanmin(ys, 1), np.nanmax(xs, 1), np.nanmax(ys, 1), width, height)
    else:
        boxes = np.full((n, 4), np.nan)
    face_values = {"of_face_id": face_id}
    face_values.update({f"au{au}_r": aus[:, i] for i, au in enumerate(OPENFACE_INTENSITY_AUS)})
    for au in OPENFACE_PRESENCE_AUS:
        name = f"AU{au}_c"
        values = numeric(df, name) if name in df.columns else np.full(n, np.nan)
        if not np.isin(values[~np.isnan(values)], (0, 1)).all():
            raise IngestError(f"OpenFace '{name}' must be 0 or 1")
        face_values[f"au{au}_c"] = values
    optional = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz",
                *[f"gaze_{e}_{a}" for e in "01" for a in "xyz"], "gaze_angle_x", "gaze_angle_y"]
    face_values.update({c.lower(): (numeric(df, c) if c in df.columns else np.full(n, np.nan)) for c in optional})
    return ToolRows(frame_index=frame.astype(np.int64) - 1, timestamp_s=numeric(df, "timestamp"), tracked=tracked,
                    rank_key=face_id, face_id=face_id, boxes=boxes, scores=np.clip(numeric(df, "confidence"), 0.0, 1.0),
                    probs=emfacs_probabilities(np.nan_to_num(aus), labels), face_values=face_values,
                    frame_values={"of_confidence": numeric(df, "confidence"), "of_success": tracked.astype(np.float64)})
