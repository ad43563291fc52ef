"""The three output tables, declared once.

Every consumer derives from these functions: the Parquet writers, the column
reference in the README (`python -m schemas.docs`), the validation suite and the
tests. Columns that depend on the emotion model's label set (one probability or
count column per class) are generated from the label list, so a 16-class model
gets 16 columns without a second schema source.

Layout on disk (Hive style): ``<table>/video_id=<id>/part-*.parquet``. The
partition column ``video_id`` is part of the logical schema below but is not
stored inside the files (readers rebuild it from the path; DuckDB and pyarrow do
this by default), because storing it twice makes pyarrow refuse the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa

PARTITION_COLUMN = "video_id"
VIDEO_STATUSES = ("ok", "no_face", "failed")
FALLBACKS = ("neutral", "top1")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    description: str

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable,
                        metadata={"description": self.description})


def prob_column(label: str) -> str:
    return f"prob_{label}"


def count_column(label: str) -> str:
    return f"count_{label}"


def frac_column(label: str) -> str:
    return f"frac_{label}"


def broad_count_column(label: str) -> str:
    return f"count_broad_{label}"


def _schema(columns: Iterable[Column], table: str) -> pa.Schema:
    return pa.schema([c.field() for c in columns], metadata={"affectflow.table": table})


# --- frame table ---------------------------------------------------------------------------

def frame_columns(labels: Sequence[str]) -> list[Column]:
    """One row per sampled frame (and per face when every face is kept)."""
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
    cols += [Column(prob_column(l), pa.float32(), True, f"Probability of '{l}' from the emotion model; the row's probabilities sum to 1.")
             for l in labels]
    cols += [
        Column("emotion_label", pa.string(), True, "Argmax of the probabilities (the frame's label)."),
        Column("emotion_confidence", pa.float32(), True, "Probability of emotion_label."),
    ]
    return cols


N_LANDMARK_VALUES = 468 * 3
FEATURE_GROUPS = ("landmarks", "geometry")


def feature_columns(groups: Sequence[str]) -> list[Column]:
    """Optional frame-table columns, one block per feature group switched on (see FEATURE_GROUPS)."""
    from transforms.geometry import describe          # formulas live with the code that computes them
    unknown = set(groups) - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {FEATURE_GROUPS}")
    cols = []
    if "landmarks" in groups:
        # A variable-size list (always 1404 values or null): pyarrow 25 cannot read back a Parquet
        # fixed_size_list column that holds nulls ("Expected all lists to be of size=...").
        points = pa.list_(pa.float32())
        cols += [
            Column("landmarks", points, True, "468 face-mesh points x0, y0, z0, x1, ... in frame pixels (z: depth on the same scale, smaller = nearer)."),
            Column("landmarks_norm", points, True, "The same points centred, eye line level, scaled so the outer eye corners are 1.0 apart."),
            Column("mesh_presence", pa.float32(), True, "Face-mesh network's probability that the crop holds a face."),
        ]
    if "geometry" in groups:
        cols += [Column(name, pa.float32(), True, f"Geometric measure, not a trained AU detector: {doc}.")
                 for name, doc in describe().items()]
    return cols


def frame_schema(labels: Sequence[str], feature_groups: Sequence[str] = ()) -> pa.Schema:
    return _schema(frame_columns(labels) + feature_columns(feature_groups), "frames")


# --- video table ---------------------------------------------------------------------------

def video_columns(labels: Sequence[str], broad_labels: Sequence[str]) -> list[Column]:
    """One row per matched input video, whatever its status."""
    cols = [
        Column(PARTITION_COLUMN, pa.string(), False, "Stable video id (partition key)."),
        Column("source_path", pa.string(), False, "Path or URI the video was read from."),
        Column("content_sha256", pa.string(), True, "SHA-256 of the file's bytes (null when it could not be read)."),
        Column("size_bytes", pa.int64(), True, "File size in bytes."),
        Column("codec", pa.string(), True, "FourCC of the video stream as the decoder reports it."),
        Column("width", pa.int32(), True, "Frame width, pixels."),
        Column("height", pa.int32(), True, "Frame height, pixels."),
        Column("fps", pa.float64(), True, "Nominal frame rate from the container."),
        Column("duration_s", pa.float64(), True, "Timestamp of the last decoded frame plus one frame interval, seconds."),
        Column("frame_count_header", pa.int64(), True, "Frame count the container header claims (may differ from decoded)."),
        Column("segments", pa.int32(), True, "Number of work units the video was split into."),
        Column("frames_decoded", pa.int64(), False, "Frames decoded from the container."),
        Column("frames_sampled", pa.int64(), False, "Frames kept by the sampling rule (one frame row each for the primary face)."),
        Column("frames_with_face", pa.int64(), False, "Sampled frames with a face: the denominator of every fraction and of the threshold rule."),
        Column("face_coverage", pa.float64(), True, "frames_with_face / frames_sampled."),
    ]
    cols += [Column(count_column(l), pa.int64(), False, f"Frames whose primary face was labelled '{l}'.") for l in labels]
    cols += [Column(frac_column(l), pa.float64(), True, f"{count_column(l)} / frames_with_face (null without faces).") for l in labels]
    cols += [Column(broad_count_column(b), pa.int64(), False, f"Frames whose label maps to broad '{b}'.") for b in broad_labels]
    cols += [
        Column("top1_label", pa.string(), True, "Top-1 method: most frequent frame label (ties: earlier label in the model's label order)."),
        Column("threshold", pa.float64(), False, "Threshold used by the threshold method."),
        Column("fallback", pa.string(), False, "Fallback of the threshold method: 'neutral' or 'top1'."),
        Column("threshold_denominator", pa.int64(), False, "n_total of the threshold rule: frames with a classified face."),
        Column("threshold_candidate", pa.string(), True, "Most frequent non-neutral label (m)."),
        Column("threshold_candidate_count", pa.int64(), True, "Frames labelled m (n_m)."),
        Column("threshold_label", pa.string(), True, "Threshold method: m if n_m >= threshold * n_total, else the fallback."),
        Column("broad_top1_label", pa.string(), True, "Top-1 method on the broad (3-label) counts."),
        Column("broad_threshold_label", pa.string(), True, "Threshold method on the broad counts."),
        Column("true_label", pa.string(), True, "Label given by the manifest, if any."),
        Column("subject_id", pa.string(), True, "Subject given by the manifest, if any."),
        Column("status", pa.string(), False, "ok | no_face (decoded, no face in any sampled frame) | failed (see error)."),
        Column("error", pa.string(), True, "Why the video failed (stage: type: message)."),
        Column("run_id", pa.string(), False, "Run that produced this row: its manifest is runs/<run_id>/run_manifest.json."),
        Column("settings_fingerprint", pa.string(), False, "SHA-256 of the models' checksums and every setting that shapes the rows; a rerun skips the video when this and content_sha256 are unchanged."),
        Column("models", pa.string(), False, "JSON list of the models that produced the row: name, source package==version, file checksums."),
        Column("processed_at", pa.timestamp("us", tz="UTC"), False, "When the row was written."),
    ]
    return cols


def video_schema(labels: Sequence[str], broad_labels: Sequence[str],
                 extra_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """Video table schema; ``extra_fields`` are manifest columns carried through."""
    cols = video_columns(labels, broad_labels)
    clash = {f.name for f in extra_fields} & {c.name for c in cols}
    if clash:
        raise ValueError(f"manifest columns {sorted(clash)} clash with video table columns; rename them")
    schema = _schema(cols, "videos")
    for f in extra_fields:
        schema = schema.append(f.with_metadata({"description": "Carried through from the input manifest."}))
    return schema


# --- dead letters --------------------------------------------------------------------------

def dead_letter_columns() -> list[Column]:
    """One row per failure: a failed probe, a failed segment, a failed write."""
    return [
        Column(PARTITION_COLUMN, pa.string(), False, "Video the failure belongs to (partition key)."),
        Column("source_path", pa.string(), False, "Path or URI of the input."),
        Column("stage", pa.string(), False, "Pipeline stage that failed: probe | decode | detect | emotion | write."),
        Column("segment_index", pa.int32(), True, "Segment that failed, when the failure is segment-level."),
        Column("error_type", pa.string(), False, "Exception class name."),
        Column("error_message", pa.string(), False, "Exception message."),
        Column("run_id", pa.string(), False, "Run that recorded the failure."),
    ]


def dead_letter_schema() -> pa.Schema:
    return _schema(dead_letter_columns(), "dead_letters")


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema stored inside each Parquet file: the logical schema minus the partition column."""
    return schema.remove(schema.get_field_index(PARTITION_COLUMN))
