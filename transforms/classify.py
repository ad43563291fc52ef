"""ClassifyVideos and WritePredictions: a trained video model over each video's sequence, one file per video.

    videos | ReadVideoSequences [-> split_into_windows] -> ClassifyVideos (RunInference) -> WritePredictions

Every video given gets its prediction rows: a classifier's one row, ``ok`` with its
probabilities; a semantic model's row per window (or one for the whole video) with its point of
the space and the nearest vocabulary words. ``no_face`` when no frame has a face and every
feature, ``failed`` (with the error) when its frames could not be read or the model failed on
it. One sequence per inference call: a sequence is already up to the model's length in frames,
and RunInference's batching is left off for the DaskRunner's sake (transforms.dead_letters).
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

import apache_beam as beam
import pyarrow as pa

from core.elements import DeadLetter, VideoPrediction, VideoSequence
from models.video_classifier import ModelCard, VideoClassifierHandler
from schemas.columns import PARTITION_COLUMN
from schemas.predictions import (MODEL_PARTITION, prediction_file_schema, probability_column,
                                 semantic_prediction_file_schema)
from transforms.dead_letters import Outputs, RunInferenceWithDeadLetters
from transforms.parquet import VIDEO_ROW_FILE, records_table, write_parquet

STAGE = "classify"


class ClassifyVideos(beam.PTransform):
    """PCollection[VideoSequence] -> Outputs(VideoPrediction, DeadLetter) with the classifier folder
    ``model_dir`` (resolved through the model registry; its card is checked before the run).

    Example::

        predictions = sequences | ClassifyVideos("models/run1/rnn-attention.appearance.multiclass")
    """

    def __init__(self, model_dir: str, top_words: int = 5):
        super().__init__()
        self.handler = VideoClassifierHandler(model_dir, top_words)

    @property
    def card(self) -> ModelCard:
        return self.handler.card

    def expand(self, sequences) -> Outputs:
        return sequences | "RunClassifier" >> RunInferenceWithDeadLetters(self.handler, VideoPrediction, STAGE)


def prediction_row(prediction: VideoPrediction, card: ModelCard, model_sha256: str, run_id: str) -> dict:
    """The table row of one prediction (schemas.predictions)."""
    row = _common(card, model_sha256, run_id, prediction.video_id, prediction.source)
    row.update(status=prediction.status, frames_total=prediction.frames_total, frames_valid=prediction.frames_valid)
    if card.semantic:
        index, start, end = prediction.span
        row.update(window_index=index, start_s=start, end_s=end)
        if prediction.probabilities is not None:
            words = prediction.words or ()
            row.update(embedding=list(prediction.probabilities), top_words=[w for w, _ in words],
                       top_cosines=[c for _, c in words], nearest_word=words[0][0], nearest_cosine=words[0][1])
        return row
    if prediction.probabilities is not None:
        probs = prediction.probabilities
        best = max(range(len(probs)), key=probs.__getitem__)
        row.update(predicted_label=card.labels[best], confidence=probs[best])
        row.update({probability_column(l): p for l, p in zip(card.labels, probs)})
    return row


def failed_row(failure: DeadLetter, card: ModelCard, model_sha256: str, run_id: str) -> dict:
    """The row of a video the classifier could not score."""
    row = _common(card, model_sha256, run_id, failure.video_id, "")
    row.update(status="failed", frames_total=0, frames_valid=0,
               error=f"{failure.stage}: {failure.error_type}: {failure.error_message}"[:2000])
    if card.semantic:
        row.update(window_index=0)
    return row


def file_schema_of(card: ModelCard) -> pa.Schema:
    """What each prediction file of the card's model stores."""
    return semantic_prediction_file_schema() if card.semantic else prediction_file_schema(card.labels)


def _common(card: ModelCard, model_sha256: str, run_id: str, video_id: str, source: str) -> dict:
    return {PARTITION_COLUMN: video_id, MODEL_PARTITION: card.name, "model_sha256": model_sha256,
            "model_kind": card.kind, "task": card.task, "feature_set": card.feature_set, "source": source,
            "run_id": run_id, "predicted_at": dt.datetime.now(dt.timezone.utc)}


def prediction_file(root: str, model_name: str, video_id: str) -> str:
    """``<root>/predictions/model=<name>/video_id=<id>/part-00000.parquet``."""
    return (f"{root.rstrip('/')}/predictions/{MODEL_PARTITION}={model_name}/{PARTITION_COLUMN}={video_id}/"
            f"{VIDEO_ROW_FILE}")


def write_prediction_rows(root: str, rows: Sequence[dict], schema: pa.Schema, metadata: Mapping[str, str]) -> None:
    """One video's rows (one, or one per window in window order) as its prediction file."""
    rows = sorted(rows, key=lambda r: r.get("window_index") or 0)
    write_parquet(records_table(rows, schema), prediction_file(root, rows[0][MODEL_PARTITION], rows[0][PARTITION_COLUMN]),
                  metadata)


class WritePredictionRowFn(beam.DoFn):
    """(video_id, its rows) -> the video's prediction file under ``root``; yields each row's status."""

    def __init__(self, root: str, card: ModelCard, metadata: Mapping[str, str]):
        self._root, self._card, self._metadata = root, card, dict(metadata)
        self._schema = None

    def setup(self):
        self._schema = file_schema_of(self._card)

    def process(self, video: tuple[str, Sequence[dict]]):
        _, rows = video
        rows = list(rows)
        write_prediction_rows(self._root, rows, self._schema, self._metadata)
        for row in rows:
            yield row["status"]


def _by_video(row: dict) -> tuple[str, dict]:
    return row[PARTITION_COLUMN], row


class WritePredictions(beam.PTransform):
    """Outputs(VideoPrediction, DeadLetter) -> PCollection[str status], after writing one prediction
    file per video under ``root`` (its rows: one, or one per window; a failure's row carries its error).

    Example::

        statuses = predictions | WritePredictions(staging, card, sha, run_id, metadata)
    """

    def __init__(self, root: str, card: ModelCard, model_sha256: str, run_id: str, metadata: Mapping[str, str]):
        super().__init__()
        self._card, self._sha, self._run_id = card, model_sha256, run_id
        self._fn = WritePredictionRowFn(root, card, metadata)

    def expand(self, results: Outputs):
        scored = results.values | "PredictionRows" >> beam.Map(prediction_row, self._card, self._sha, self._run_id)
        failed = results.dead_letters | "FailedRows" >> beam.Map(failed_row, self._card, self._sha, self._run_id)
        return ((scored, failed) | "AllRows" >> beam.Flatten() | "KeyByVideo" >> beam.Map(_by_video)
                | "GroupByVideo" >> beam.GroupByKey() | "WriteFiles" >> beam.ParDo(self._fn))


def split_into_windows(sequence: VideoSequence, seconds: float) -> list[VideoSequence]:
    """A video's sequence as consecutive windows of ``seconds`` (a semantic model predicts each)."""
    return sequence.windows(seconds)
