"""`affectflow predict`: apply a trained video classifier to every video of an output -> predictions/.

    affectflow predict --output RUN_DIR --model MODEL_DIR

A Beam pipeline over the output's videos (ReadVideoSequences -> ClassifyVideos ->
WritePredictions) writes one row per video into the output's staging folder; the rows are
committed under ``predictions/model=<name>/`` through the same journal as a run's, then the
predictions suite validates them. Nothing is decoded: the sequences come from the frame table.

Before any work the model card is checked against the run: the run's feature groups must give
the card's columns in the card's order (a model trained on other features is a UsageError).
A video keeps its prediction when the model and the video's frame rows are unchanged since it
was written (``force`` predicts everything again). A video whose extraction failed gets a
``failed`` row. A run with ``classifier.model`` set calls `predict_output` after its commit,
under its own lock.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from core.elements import DeadLetter
from core.errors import UsageError
from models.video_classifier import CARD_FILE, ModelCard
from pipelines.beam_runtime import runner_environment, short_state_sampling
from pipelines.config import RunConfig
from pipelines.output.commit import commit_staging, recover_commits
from pipelines.output.layout import STAGING, dataset, has_table, list_files
from pipelines.output.lock import OutputLock
from pipelines.output.manifest import manifest_feature_groups, new_run_id, package_versions
from pipelines.output.state import output_manifest
from schemas.columns import PARTITION_COLUMN
from schemas.features import feature_set_columns
from schemas.predictions import MODEL_PARTITION
from transforms.classify import (ClassifyVideos, WritePredictions, failed_row, file_schema_of, split_into_windows,
                                 write_prediction_rows)
from transforms.parquet import json_metadata
from transforms.sequences import ReadVideoSequences, column_sizes

PREDICT_MANIFEST = "_predict_manifest.json"
_LOG = logging.getLogger(__name__)


def model_folder(path: str) -> str:
    """The model folder ``path`` names: itself when it holds a model card, else its one subfolder
    that does (a train DEST with one model). UsageError when there is none or more than one."""
    path = path.rstrip("/")
    if FileSystems.exists(FileSystems.join(path, CARD_FILE)):
        return path
    cards = sorted(m.path for m in FileSystems.match([FileSystems.join(path, "*", CARD_FILE)])[0].metadata_list)
    if len(cards) == 1:
        return cards[0].rsplit("/", 1)[0]
    if not cards:
        raise UsageError(f"{path} holds no model_card.json: give a model folder written by affectflow train")
    names = [c.rsplit("/", 2)[1] for c in cards]
    raise UsageError(f"{path} holds {len(cards)} models ({', '.join(names)}); give one of their folders")


def check_model_settings(card: ModelCard, feature_groups: Sequence[str]) -> None:
    """UsageError unless a run with ``feature_groups`` writes the card's columns (checked before a run)."""
    try:
        card.check_columns(feature_set_columns(card.feature_set, feature_groups),
                           f"a run with the feature groups {list(feature_groups)}")
    except ValueError as exc:
        raise UsageError(f"classifier.model: {exc}") from None


def predictions_table(model_name: str) -> str:
    """The table path of one model's predictions inside an output: ``predictions/model=<name>``."""
    return f"predictions/{MODEL_PARTITION}={model_name}"


@dataclass(frozen=True)
class VideoSource:
    """A video of the output: its id, extraction status and what identifies its frame rows."""
    video_id: str
    status: str
    source: str


def video_sources(output: str) -> list[VideoSource]:
    """Every video row of the output, with ``source`` = content SHA-256 and settings fingerprint."""
    rows = dataset(output, "videos").to_table(columns=[PARTITION_COLUMN, "status", "content_sha256",
                                                        "settings_fingerprint"])
    return [VideoSource(v, s, f"{c or '-'}:{f or '-'}") for v, s, c, f in
            zip(*(rows.column(n).to_pylist() for n in (PARTITION_COLUMN, "status", "content_sha256",
                                                       "settings_fingerprint")))]


def kept_predictions(output: str, model_name: str, model_sha256: str) -> dict[str, str]:
    """video_id -> source of the model's stored ok / no_face rows made by these same weights."""
    table = predictions_table(model_name)
    if not has_table(output, table) or not list_files(FileSystems.join(output, table)):
        return {}
    rows = dataset(output, table).to_table(columns=[PARTITION_COLUMN, "model_sha256", "status", "source"])
    keep = pc.and_(pc.equal(rows.column("model_sha256"), model_sha256),
                   pc.is_in(rows.column("status"), pa.array(["ok", "no_face"])))
    rows = rows.filter(keep)
    return dict(zip(rows.column(PARTITION_COLUMN).to_pylist(), rows.column("source").to_pylist()))


def check_model_fits_run(card: ModelCard, output: str, manifest: dict, video_ids: Sequence[str]) -> None:
    """UsageError unless the run's frame table gives the card's columns, in order and width."""
    groups = manifest_feature_groups(manifest)
    try:
        columns = feature_set_columns(card.feature_set, groups)
        card.check_columns(columns, f"the run {output} (feature groups {list(groups)})")
        sizes = column_sizes(output, video_ids, card.columns) if video_ids else card.column_sizes
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if tuple(sizes) != card.column_sizes:
        raise UsageError(f"model {card.name} expects {dict(zip(card.columns, card.column_sizes))} values per "
                         f"column; the run {output} has {dict(zip(card.columns, sizes))}")


def _run_beam(config: RunConfig, output: str, staging: str, model_dir: str, card: ModelCard, sha: str, run_id: str,
              todo: Sequence[VideoSource], metadata: dict) -> None:
    with short_state_sampling(), runner_environment(config) as beam_args:
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        videos = p | "Videos" >> beam.Create([(v.video_id, v.source) for v in todo])
        sequences = videos | "ReadVideoSequences" >> ReadVideoSequences(output, card.columns, card.column_sizes)
        values = sequences.values
        window = config.job.classifier.window_seconds
        if card.semantic and window:
            values = values | "SplitIntoWindows" >> beam.FlatMap(split_into_windows, window)
        classified = values | "ClassifyVideos" >> ClassifyVideos(model_dir, config.job.classifier.top_words)
        failures = (sequences.dead_letters, classified.dead_letters) | "AllFailures" >> beam.Flatten()
        _ = (classified._replace(dead_letters=failures)
             | "WritePredictions" >> WritePredictions(staging, card, sha, run_id, metadata))
        result = p.run()
        result.wait_until_finish()
        if hasattr(result, "client"):
            result.client.close()


def predict_output(output: str, model_dir: str, config: RunConfig, *, force: bool = False,
                   command: Optional[list[str]] = None) -> dict:
    """Predict every video of ``output`` (the caller holds its lock); return the predict manifest.

    Raises UsageError for an output without videos or frames, or a model that does not fit it.
    """
    started = time.time()
    output = output.rstrip("/")
    manifest = output_manifest(output)
    model_dir = model_folder(model_dir)
    classify = ClassifyVideos(model_dir)        # resolves the folder and reads its card now
    card, sha = classify.card, classify.handler.resolved.sha256["model"]
    videos = video_sources(output)
    extracted = [v for v in videos if v.status != "failed"]
    check_model_fits_run(card, output, manifest, [v.video_id for v in extracted][:20])
    kept = {} if force or _windows_changed(output, card, config) else kept_predictions(output, card.name, sha)
    todo = [v for v in extracted if kept.get(v.video_id) != v.source]
    failed = [v for v in videos if v.status == "failed"]
    run_id = new_run_id()
    staging = FileSystems.join(output, STAGING, run_id)
    metadata = {"affectflow.run_id": run_id, "affectflow.model": json_metadata({"name": card.name, "sha256": sha})}
    if todo:
        _run_beam(config, output, staging, model_dir, card, sha, run_id, todo, metadata)
    schema = file_schema_of(card)
    for video in failed:
        failure = DeadLetter(video.video_id, "", "extract", "ExtractionFailed",
                             "the video's extraction failed: see its dead_letters rows")
        write_prediction_rows(staging, [failed_row(failure, card, sha, run_id)], schema, metadata)
    table = predictions_table(card.name)
    present = {v.video_id for v in videos}
    stale = [v for v in _predicted_ids(output, table) if v not in present]     # videos pruned from the output
    commit_staging(staging, output, {v: (table,) for v in [*(t.video_id for t in todo),
                                                            *(f.video_id for f in failed), *stale]})
    counts = _status_counts(output, table)
    entry = {"run_id": run_id, "kind": "predict", "command": command, "model": card.name, "model_dir": model_dir,
             "model_sha256": sha, "model_kind": card.kind, "task": card.task, "feature_set": card.feature_set,
             "window_seconds": config.job.classifier.window_seconds if card.semantic else None,
             "labels": list(card.labels), "videos": len(videos), "predicted": len(todo), "failed_extraction":
             len(failed), "kept": len(extracted) - len(todo), "removed": len(stale), "counts": counts,
             "packages": package_versions(), "seconds": round(time.time() - started, 3)}
    if card.semantic and "://" not in output:
        from models.video_classifier import semantic_vocabulary
        from pipelines.semantic_report import write_similarity_report
        entry["similarity_report"] = str(write_similarity_report(output, table, card.name, semantic_vocabulary(card)))
    _write_json(FileSystems.join(output, table, PREDICT_MANIFEST), entry)
    if config.job.validation.enabled:
        entry["validation"] = validate_predictions_after(output, card, sha, config)
        _write_json(FileSystems.join(output, table, PREDICT_MANIFEST), entry)
    return entry


def predict(output: str, model_dir: str, config: RunConfig, *, force: bool = False, wait_s: float = 0.0,
            command: Optional[list[str]] = None) -> dict:
    """`affectflow predict`: `predict_output` under the output's lock (crashed commits finished first)."""
    output = output.rstrip("/")
    run_id = new_run_id()
    with OutputLock(output, run_id, " ".join(command or []), wait_s):
        recover_commits(output)
        return predict_output(output, model_dir, config, force=force, command=command)


def _windows_changed(output: str, card: ModelCard, config: RunConfig) -> bool:
    """Whether a semantic model's stored rows were cut into other windows than this predict's."""
    path = FileSystems.join(output, predictions_table(card.name), PREDICT_MANIFEST)
    if not card.semantic or not FileSystems.exists(path):
        return False
    with FileSystems.open(path) as fh:
        before = json.loads(fh.read())
    return before.get("window_seconds") != config.job.classifier.window_seconds


def _predicted_ids(output: str, table: str) -> list[str]:
    root = FileSystems.join(output, table)
    if not FileSystems.exists(root):
        return []
    return sorted({p.rsplit(f"{PARTITION_COLUMN}=", 1)[1].split("/", 1)[0] for p in list_files(root)
                   if f"{PARTITION_COLUMN}=" in p})


def _status_counts(output: str, table: str) -> dict[str, int]:
    rows = dataset(output, table).to_table(columns=["status"])
    counts = {"ok": 0, "no_face": 0, "failed": 0}
    for status in rows.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return counts


def _write_json(path: str, data: dict) -> None:
    with FileSystems.create(path) as fh:
        fh.write(json.dumps(data, indent=2, default=str).encode())


def validate_predictions_after(output: str, card: ModelCard, model_sha256: str, config: RunConfig) -> dict:
    """Validate the model's predictions (pipelines.validation.predictions); a local output only."""
    if "://" in output and not output.startswith("file://"):
        return {"valid": None, "skipped": f"{output} is not a local folder"}
    from pipelines.validation.predictions import PredictedModel, validate_predictions
    report = validate_predictions(output.removeprefix("file://"), PredictedModel.of(card, model_sha256),
                                  config.job.validation)
    return {**report.manifest_entry(), "summary": report.summary()}
