"""The frame table: one row per sampled frame (and per face when every face is kept).

Columns that depend on the emotion model's label set (one probability column per class) are
generated from the label list, so a 16-class model gets 16 columns without a second schema
source. The face columns are the nullable core columns: null exactly when ``face_found`` is
false (validation derives that rule from here).
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from schemas.columns import PARTITION_COLUMN, Column, prob_column, schema_of
from schemas.features import feature_columns


def frame_columns(labels: Sequence[str]) -> list[Column]:
    """The core columns every frame table has, whatever its feature groups."""
    cols = [
        Column(PARTITION_COLUMN, pa.string(), False, "Stable video id (partition key)."),
        Column("segment_index", pa.int32(), False, "Work unit (time segment) the frame was decoded in."),
        Column("frame_index", pa.int64(), False, "0-based index of the frame in the container's decode order."),
        Column("timestamp_s", pa.float64(), False, "Presentation time of the frame from the container, seconds."),
        Column("frame_width", pa.int32(), False, "Decoded frame width, pixels."),
        Column("frame_height", pa.int32(), False, "Decoded frame height, pixels."),
        Column("faces_in_frame", pa.int16(), False, "Faces the detector found in this frame above its score threshold."),
        Column("face_found", pa.bool_(), False, "False: no face in this frame; every face column is then null."),
        Column("face_index", pa.int16(), True, "0 = primary face (largest box); 1.. further faces when keep_all_faces is on."),
        Column("box_x", pa.float32(), True, "Face box left edge, pixels in the decoded frame."),
        Column("box_y", pa.float32(), True, "Face box top edge, pixels."),
        Column("box_w", pa.float32(), True, "Face box width, pixels."),
        Column("box_h", pa.float32(), True, "Face box height, pixels."),
        Column("detector_score", pa.float32(), True, "Face detector confidence in [0, 1]."),
    ]
    cols += [Column(prob_column(l), pa.float32(), True,
                    f"Probability of '{l}' from the emotion model; the row's probabilities sum to 1.") for l in labels]
    cols += [
        Column("emotion_label", pa.string(), True, "Argmax of the probabilities (the frame's label)."),
        Column("emotion_confidence", pa.float32(), True, "Probability of emotion_label."),
    ]
    return cols


def frame_schema(labels: Sequence[str], feature_groups: Sequence[str] = ()) -> pa.Schema:
    """The frame table's logical schema (partition column included) for a label set and feature groups."""
    return schema_of(frame_columns(labels) + feature_columns(feature_groups, labels), "frames")
