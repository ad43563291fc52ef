"""The video table (one row per matched input, whatever happened to it) and the dead letters
(one row per failure), declared once.

Columns that depend on the label set (one count column per class and per broad label) are
generated from the label lists.
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from schemas.columns import (DEAD_LETTER_STAGES, PARTITION_COLUMN, Column, broad_count_column, count_column,
                             frac_column, schema_of)


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
    schema = schema_of(cols, "videos")
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
        Column("retryable", pa.bool_(), False, "The failure may pass on its own (out of memory, a disk or network "
                                               "error, a timeout): the next run processes the video again. Otherwise "
                                               "it is not retried while the file's bytes and the settings stay the "
                                               "same."),
        Column("run_id", pa.string(), False, "Run that recorded the failure."),
    ]


def dead_letter_schema() -> pa.Schema:
    return schema_of(dead_letter_columns(), "dead_letters")
