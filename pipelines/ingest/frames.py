"""Tool rows -> one video's frame table, in the layout `affectflow run` writes."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from pipelines.ingest.openface import openface_rows
from pipelines.ingest.pyfeat import pyfeat_rows
from pipelines.ingest.tool_csv import IngestError, ToolRows, read_tool_csv
from schemas.columns import PARTITION_COLUMN, prob_column
from schemas.external import OPENFACE
from schemas.frames import frame_schema


def label_index(probs: np.ndarray, labels: Sequence[str], neutral: str = "neutral") -> np.ndarray:
    """int[n]: each row's most probable label, ``neutral`` winning a tie (a tool's score that only
    equals neutral's is no evidence of an expression); other ties go to the earlier label."""
    if neutral not in labels or not len(probs):
        return probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    first = list(labels).index(neutral)
    order = np.array([first] + [j for j in range(len(labels)) if j != first])
    return order[probs[:, order].argmax(axis=1)]


def frame_rows(rows: ToolRows, video_id: str, width: int, height: int, labels: Sequence[str],
               groups: Sequence[str]) -> pa.Table:
    """The frame table of one video (schemas.frames.frame_schema(labels, groups)), ordered by
    frame_index then face_index: every tracked face a row, ranked by ``rank_key`` within its
    frame (ties by box x, then y); one faceless row (the frame's first attempt) for a frame
    without a tracked face. A ``face_id`` repeated within a frame raises IngestError."""
    import pandas as pd
    order = pd.DataFrame({"frame": rows.frame_index, "tracked": rows.tracked, "key": rows.rank_key,
                          "x": rows.boxes[:, 0], "y": rows.boxes[:, 1], "row": np.arange(len(rows.tracked))})
    if rows.face_id is not None:
        ids = pd.DataFrame({"frame": rows.frame_index, "face_id": rows.face_id})[rows.tracked]
        if ids.duplicated().any():
            raise IngestError("a face appears twice in one frame (repeated frame and face_id)")
    order = order.sort_values(["frame", "tracked", "key", "x", "y"], ascending=[True, False, True, True, True],
                              kind="stable")
    order["faces"] = order.groupby("frame")["tracked"].transform("sum")
    order["rank"] = order.groupby("frame").cumcount()
    kept = order[order.tracked | ((order.faces == 0) & (order["rank"] == 0))]
    pick = kept.row.to_numpy()
    has_face = kept.tracked.to_numpy()
    frame_index = rows.frame_index[pick]
    timestamps = rows.timestamp_s[pick]
    first = np.r_[True, frame_index[1:] != frame_index[:-1]]
    per_frame_ts = timestamps[first]
    if np.isnan(per_frame_ts).any() or (np.diff(per_frame_ts) <= 0).any():
        raise IngestError("timestamps must be present and increase with the frame number")
    n = len(pick)

    def face_col(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        v = np.asarray(values, np.float64)[pick]
        return pa.array(np.nan_to_num(v).astype(typ.to_pandas_dtype()), type=typ, mask=~has_face | np.isnan(v))

    probs = rows.probs[pick]
    label_names = np.asarray(labels, dtype=object)
    columns = {
        PARTITION_COLUMN: pa.array([video_id] * n, pa.string()),
        "segment_index": pa.array(np.zeros(n, np.int32)),
        "frame_index": pa.array(frame_index, pa.int64()),
        "timestamp_s": pa.array(timestamps, pa.float64()),
        "frame_width": pa.array(np.full(n, width, np.int32)),
        "frame_height": pa.array(np.full(n, height, np.int32)),
        "faces_in_frame": pa.array(kept.faces.to_numpy().astype(np.int16)),
        "face_found": pa.array(has_face),
        "face_index": pa.array(kept["rank"].to_numpy().astype(np.int16), mask=~has_face),
        "box_x": face_col(rows.boxes[:, 0], pa.float32()), "box_y": face_col(rows.boxes[:, 1], pa.float32()),
        "box_w": face_col(rows.boxes[:, 2], pa.float32()), "box_h": face_col(rows.boxes[:, 3], pa.float32()),
        "detector_score": face_col(rows.scores, pa.float32()),
    }
    for j, label in enumerate(labels):
        columns[prob_column(label)] = pa.array(probs[:, j], pa.float32(), mask=~has_face)
    columns["emotion_label"] = pa.array(np.where(has_face, label_names[label_index(probs, labels)], None), pa.string())
    columns["emotion_confidence"] = pa.array(probs.max(axis=1), pa.float32(), mask=~has_face)
    schema = frame_schema(labels, groups)
    for name, values in rows.face_values.items():
        columns[name] = face_col(values, schema.field(name).type)
    for name, values in rows.frame_values.items():
        v = np.asarray(values, np.float64)[pick]
        typ = schema.field(name).type
        columns[name] = pa.array(v.astype(typ.to_pandas_dtype()), type=typ, mask=np.isnan(v))
    return pa.table([columns[f.name] for f in schema], schema=schema)


def estimate_fps(frame_index: np.ndarray, timestamp_s: np.ndarray) -> Optional[float]:
    """Frames per second from (frame, timestamp) pairs: the median over consecutive distinct frames."""
    frames, first = np.unique(frame_index, return_index=True)
    ts = timestamp_s[first]
    if len(frames) < 2:
        return None
    rates = np.diff(frames) / np.diff(ts)
    rates = rates[np.isfinite(rates) & (rates > 0)]
    return float(np.median(rates)) if len(rates) else None


def map_csv(data: bytes, source: str, video_id: str, width: int, height: int, fps: Optional[float],
            labels: Sequence[str]) -> tuple[pa.Table, Optional[float]]:
    """One tool CSV's bytes -> (its frame table, the video's fps); raises IngestError."""
    df = read_tool_csv(data)
    if source == OPENFACE:
        rows = openface_rows(df, width, height, labels)
        fps = fps or estimate_fps(rows.frame_index, rows.timestamp_s)
    else:
        if not fps:
            raise IngestError("py-feat CSVs need the video's fps (--fps or a manifest fps column)")
        rows = pyfeat_rows(df, width, height, fps, labels)
    return frame_rows(rows, video_id, width, height, labels, (source,)), fps
