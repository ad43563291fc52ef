"""The predictions table: a trained video classifier's verdict on each video of an output.

Layout: ``predictions/model=<model name>/video_id=<id>/part-00000.parquet``, one row per video
and model; both partition values live in the folder names (Hive style), so DuckDB and pyarrow
give them back as columns. One probability column per class of the model, generated from its
label order; a label with characters SQL would need quotes for is written with ``_`` instead
(the model card lists label and column side by side).
"""
from __future__ import annotations

import re
from typing import Sequence

import pyarrow as pa

from schemas.columns import PARTITION_COLUMN, Column, schema_of

MODEL_PARTITION = "model"
PREDICTION_STATUSES = ("ok", "no_face", "failed")
TASKS = ("multiclass", "binary")
SEMANTIC_TASK = "semantic"              # a model that maps videos into the semantic emotion space


def probability_column(label: str) -> str:
    """``prob_<label>``, each run of characters other than letters, digits and ``_`` replaced by
    one ``_`` ("mixed feelings" -> ``prob_mixed_feelings``)."""
    return "prob_" + (re.sub(r"[^0-9A-Za-z_]+", "_", label).strip("_") or "label")


def prediction_columns(labels: Sequence[str]) -> list[Column]:
    """The predictions table's columns for a model with classes ``labels`` (partition columns first)."""
    cols = [
        Column(PARTITION_COLUMN, pa.string(), False, "Stable video id (partition key)."),
        Column(MODEL_PARTITION, pa.string(), False, "The model's name (partition key): its folder name in "
                                                    "affectflow train's output, e.g. rnn-attention.appearance.multiclass."),
        Column("model_sha256", pa.string(), False, "SHA-256 of the model's model.keras."),
        Column("model_kind", pa.string(), False, "rnn-attention | rnn-conv | rnn-average | frame-average."),
        Column("task", pa.string(), False, "multiclass | binary."),
        Column("feature_set", pa.string(), False, "appearance | deep | both: the frame columns the model reads."),
        Column("status", pa.string(), False, "ok: predicted; no_face: no frame with a face and every feature "
                                             "(nothing to predict from); failed: the frames could not be read "
                                             "(error says why)."),
        Column("predicted_label", pa.string(), True, "The most probable class; null unless status is ok."),
        Column("confidence", pa.float32(), True, "Probability of predicted_label."),
    ]
    cols += [Column(probability_column(l), pa.float32(), True,
                    f"Probability of '{l}'; the row's probabilities sum to 1 (null unless status is ok).")
             for l in labels]
    cols += [
        Column("frames_total", pa.int32(), False, "Primary-face frame rows of the video (with or without a face)."),
        Column("frames_valid", pa.int32(), False, "Of these, frames with a face and every feature: what the model "
                                                  "saw (resampled to the model's sequence length when longer)."),
        Column("error", pa.string(), True, "Why status is failed: the error's type and message."),
        Column("source", pa.string(), False, "The frame rows the prediction was made from (content SHA-256 and "
                                             "settings fingerprint of the video's row): a rerun predicts again "
                                             "only when they or the model changed."),
        Column("run_id", pa.string(), False, "Id of the run or predict job that wrote the row."),
        Column("predicted_at", pa.timestamp("us", tz="UTC"), False, "When the row was written."),
    ]
    return cols


def semantic_prediction_columns() -> list[Column]:
    """The predictions table of a semantic model: a row per video, or per window of it."""
    common = {c.name: c for c in prediction_columns(())}
    cols = [common[n] for n in (PARTITION_COLUMN, MODEL_PARTITION, "model_sha256", "model_kind", "task",
                                "feature_set")]
    cols += [
        Column("window_index", pa.int32(), False, "0.. the window of the video (classifier.window_seconds); 0 for "
                                                  "the whole video."),
        Column("start_s", pa.float64(), True, "Window start, seconds (null: the whole video)."),
        Column("end_s", pa.float64(), True, "Window end, seconds, exclusive (null: the whole video)."),
        common["status"],
        Column("nearest_word", pa.string(), True, "The vocabulary word nearest to the predicted point (null unless "
                                                  "status is ok)."),
        Column("nearest_cosine", pa.float32(), True, "Its cosine to the predicted point, in [-1, 1]."),
        Column("top_words", pa.list_(pa.string()), True, "The classifier.top_words vocabulary words nearest to the "
                                                        "predicted point, nearest first."),
        Column("top_cosines", pa.list_(pa.float32()), True, "Their cosines, in the same order."),
        Column("embedding", pa.list_(pa.float32()), True, "The predicted point: a unit vector of the sentence "
                                                         "encoder's space (512 values)."),
    ]
    cols += [common[n] for n in ("frames_total", "frames_valid", "error", "source", "run_id", "predicted_at")]
    return cols


def semantic_prediction_schema() -> pa.Schema:
    return schema_of(semantic_prediction_columns(), "predictions")


def semantic_prediction_file_schema() -> pa.Schema:
    return pa.schema([f for f in semantic_prediction_schema() if f.name not in (PARTITION_COLUMN, MODEL_PARTITION)],
                     metadata={"affectflow.table": "predictions"})


SPACE_TASK = "space"                    # a projection into a landmark ensemble's UMAP space
SPACE_LEVELS = ("video", "frame")
SPACE_AXES = ("x", "y", "z")


def space_prediction_columns() -> list[Column]:
    """The predictions table of an emotion space (`affectflow space project`): per video, a row for the
    video and a row per valid frame (a face and every feature)."""
    common = {c.name: c for c in prediction_columns(())}
    cols = [common[PARTITION_COLUMN],
            Column(MODEL_PARTITION, pa.string(), False, "The space's name (partition key): its folder name."),
            Column("model_sha256", pa.string(), False, "SHA-256 of the saved space (space.joblib)."),
            Column("level", pa.string(), False, "video: the video's row (its frames' mean point, most frequent "
                                                "cluster, label); frame: one frame's row."),
            Column("frame_index", pa.int64(), True, "The frame (level frame); null for the video's row."),
            Column("timestamp_s", pa.float64(), True, "The frame's time, seconds (level frame)."),
            common["status"]]
    cols += [Column(axis, pa.float32(), True, f"Coordinate {axis} in the space (z: 3-D spaces only; null unless "
                                              "status is ok).") for axis in SPACE_AXES]
    cols += [Column("cluster", pa.int32(), True, "HDBSCAN cluster of the point (-1: none); for a video, its frames' "
                                                 "most frequent cluster."),
             Column("cluster_strength", pa.float32(), True, "Membership strength in [0, 1] (a video: its frames' "
                                                            "mean)."),
             Column("predicted_label", pa.string(), True, "The ensemble's label: the frame's most probable class, or "
                                                         "the video's from its frames smoothed over time."),
             Column("frames_total", pa.int32(), False, "Primary-face frame rows of the video (on every row of it)."),
             Column("frames_valid", pa.int32(), False, "Of these, frames with a face and every feature: the video's "
                                                       "frame rows."),
             common["error"], common["source"], common["run_id"], common["predicted_at"]]
    return cols


def space_prediction_schema() -> pa.Schema:
    return schema_of(space_prediction_columns(), "predictions")


def space_prediction_file_schema() -> pa.Schema:
    return pa.schema([f for f in space_prediction_schema() if f.name not in (PARTITION_COLUMN, MODEL_PARTITION)],
                     metadata={"affectflow.table": "predictions"})


def prediction_schema(labels: Sequence[str]) -> pa.Schema:
    """The predictions table's logical schema (both partition columns included)."""
    return schema_of(prediction_columns(labels), "predictions")


def prediction_file_schema(labels: Sequence[str]) -> pa.Schema:
    """What each prediction file stores: the schema without its two partition columns."""
    return pa.schema([f for f in prediction_schema(labels) if f.name not in (PARTITION_COLUMN, MODEL_PARTITION)],
                     metadata={"affectflow.table": "predictions"})
