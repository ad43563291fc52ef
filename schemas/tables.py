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
# Where a failure can happen (dead_letters.stage).
DEAD_LETTER_STAGES = ("probe", "decode", "detect", "landmarks", "emotion", "features", "write", "aggregate", "ingest")
# Stages whose failures come from the input's bytes: the same bytes fail the same way, so a rerun
# skips such a video when its content and settings are unchanged. A failure in any other stage,
# or one of TRANSIENT_ERRORS in any stage (out of memory, a read or copy that failed), is retried
# by the next run (pipelines.outputs.previous_fingerprints).
INPUT_STAGES = ("probe", "decode", "ingest")
TRANSIENT_ERRORS = ("MemoryError", "OSError", "IOError", "BeamIOError", "TimeoutError", "ConnectionError")


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


def smooth_column(label: str) -> str:
    return f"smooth_{label}"


def baseline_column(measure: str) -> str:
    return f"{measure}_rel"


N_LANDMARK_VALUES = 468 * 3
RESNET50_VALUES = 2048            # ResNet50's globally pooled features
EMBEDDING_COLUMN = "emb_mini_xception"
RESNET50_COLUMN = "resnet50"
# Frame-table column groups beyond the core columns, in the order their columns follow them.
# landmarks..resnet50 come from a video run (features.* in the config); openface and pyfeat
# from `affectflow ingest`; baseline and smoothing (computed per video, transforms/series.py) from
# features.geometry_baseline and features.smoothing.
FEATURE_GROUPS = ("landmarks", "geometry", "embedding", "resnet50", "openface", "pyfeat", "baseline", "smoothing")


def feature_columns(groups: Sequence[str], labels: Sequence[str] = ()) -> list[Column]:
    """Optional frame-table columns, one block per feature group switched on (see FEATURE_GROUPS).

    ``labels`` (the emotion model's) name the smoothing group's columns.
    """
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
    if "embedding" in groups:
        cols.append(Column(EMBEDDING_COLUMN, pa.list_(pa.float32()), True,
                           "Emotion network's embedding, from the same forward pass as the probabilities: global average "
                           "of the feature map that feeds its classifier conv (fer_mini_xception: 128 signed values, "
                           "the 4x4x128 map before Conv2D(7, 3x3) -> average pool -> softmax)."))
    if "resnet50" in groups:
        cols.append(Column(RESNET50_COLUMN, pa.list_(pa.float32()), True,
                           "ResNet50 (Keras architecture, your weights) 2048 globally average-pooled features (after ReLU, "
                           ">= 0) of the 224x224 RGB face crop (same square box as the emotion crop)."))
    if "openface" in groups or "pyfeat" in groups:
        from schemas.external import external_columns    # the tools' own column layouts
        cols += external_columns(groups)
    if "baseline" in groups:
        cols += [Column(baseline_column(name), pa.float32(), True,
                        f"{name} minus its median over the video's neutral-labelled primary-face frames "
                        "(null: another face, or too few neutral frames for a baseline).")
                 for name in describe()]
    if "smoothing" in groups:
        cols += [Column(smooth_column(l), pa.float32(), True,
                        f"{prob_column(l)} smoothed over adjacent frames of the video (features.smoothing; null without a face).")
                 for l in labels]
    return cols


def frame_schema(labels: Sequence[str], feature_groups: Sequence[str] = ()) -> pa.Schema:
    return _schema(frame_columns(labels) + feature_columns(feature_groups, labels), "frames")


def feature_set_columns(feature_set: str, groups: Sequence[str]) -> list[str]:
    """The frame-table columns of a training feature set, in the documented concatenation order.

    appearance: the geo_* measures (schema order), or a tool's AU intensities when the table
    was ingested from OpenFace / py-feat; deep: the embedding, then ResNet50 (each a list
    column, expanded in place); both: appearance, then deep. Raises ValueError when the
    groups the set needs were not written.
    """
    appearance: list[str] = []
    if "geometry" in groups:
        appearance = [c.name for c in feature_columns(["geometry"])]
    elif "openface" in groups or "pyfeat" in groups:
        from schemas.external import appearance_columns
        appearance = appearance_columns(groups)
    deep = [name for group, name in (("embedding", EMBEDDING_COLUMN), ("resnet50", RESNET50_COLUMN)) if group in groups]
    wanted = {"appearance": (appearance,), "deep": (deep,), "both": (appearance, deep)}.get(feature_set)
    if wanted is None:
        raise ValueError(f"feature set must be appearance, deep or both, got {feature_set!r}")
    if not all(wanted):
        raise ValueError(f"feature set {feature_set!r} needs "
                         + {"appearance": "the geometry group (or an OpenFace / py-feat ingest)",
                            "deep": "the embedding or resnet50 group",
                            "both": "appearance and deep groups"}[feature_set] + f"; the table has {list(groups)}")
    return [name for part in wanted for name in part]


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
        Column("stage", pa.string(), False, "Pipeline stage that failed: " + " | ".join(DEAD_LETTER_STAGES) + "."),
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
