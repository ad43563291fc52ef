"""`affectflow train --target semantic`: models that map frame sequences into the semantic emotion space.

    affectflow train --target semantic --output RUN_DIR --manifest annotations.csv --dest MODEL_DIR \\
        [--model all|semantic-bilstm,semantic-transformer,semantic-dense] [--features appearance] \\
        [--vocabulary words.yaml] [--folds 5]

The annotations (free text, any of the encoder's languages, per video or per time window) are
embedded with the registry's sentence encoder; each item's frames (the window of its video) are
read from the run's Parquet into the on-disk store; every model and the mean-annotation baseline
are evaluated on the same subject-grouped folds (pipelines.training.semantic defines the
metrics); then each model is trained on all items and saved with its card. Outputs as the
classification target's: one folder per model, cv.json, oof_predictions.parquet, report.html.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import yaml

from core.errors import UsageError
from core.settings import TrainConfig
from models.emotion_words import default_words
from models.sentence_encoder import SentenceEncoder, Vocabulary
from models.video_classifier import CARD_FILE, ModelCard
from pipelines.folds import inner_validation, make_folds
from pipelines.output.layout import dataset
from pipelines.output.manifest import manifest_feature_groups, package_versions
from pipelines.output.state import latest_manifest
from pipelines.training.data import manifest_sha256
from pipelines.training.job import TrainRequest, check_request, publish, staged_dest
from pipelines.training.semantic import (TOP_K, Annotations, SemanticEvaluation, cross_validate_semantic,
                                         mean_annotation_baseline, read_annotations, semantic_scores)
from pipelines.training.store import SequenceStore
from schemas.columns import PARTITION_COLUMN
from schemas.features import feature_set_columns
from schemas.predictions import SEMANTIC_TASK
from transforms.sequences import column_sizes, read_video_sequence


def vocabulary_words(path: Optional[str]) -> list[str]:
    """The words of ``--vocabulary`` (a YAML list, or language -> list), else the built-in English and
    German lists (models.emotion_words). UsageError for a file of another shape."""
    if path is None:
        return default_words()
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--vocabulary {path}: {exc}") from None
    lists = loaded.values() if isinstance(loaded, dict) else [loaded]
    if not all(isinstance(l, list) and all(isinstance(w, str) for w in l) for l in lists):
        raise UsageError(f"--vocabulary {path} must be a YAML list of words, or a mapping language -> list")
    words = list(dict.fromkeys(w.strip() for l in lists for w in l if w.strip()))
    if len(words) < 2:
        raise UsageError(f"--vocabulary {path} has fewer than two words")
    return words


def annotated_run(request: TrainRequest, say) -> Annotations:
    """The manifest's annotations of extracted videos of the run (the others are reported and left out)."""
    annotations = read_annotations(request.manifest, request.output)
    rows = dataset(request.output, "videos").to_table(columns=[PARTITION_COLUMN, "status"]).to_pydict()
    status = dict(zip(rows[PARTITION_COLUMN], rows["status"]))
    keep = np.asarray([status.get(v) in ("ok", "no_face") for v in annotations.video_ids], bool)
    missing = sorted({v for v in annotations.video_ids if v not in status})
    if missing:
        say(f"  left out, not in the run: {len(missing)} annotated video(s), e.g. {', '.join(missing[:5])}")
    if not keep.any():
        raise UsageError(f"none of the {len(annotations.video_ids)} annotations of {request.manifest} is of an "
                         f"extracted video of {request.output}")
    annotations = annotations.keep(keep)
    if annotations.subjects is None and not request.allow_no_subjects:
        raise UsageError(f"{request.manifest} has no subject_id column: add it, or pass --allow-no-subjects")
    if annotations.subjects is not None and any(s is None for s in annotations.subjects):
        raise UsageError("some annotated videos have no subject_id; give every video its subject")
    return annotations


def item_sequences(output: str, annotations: Annotations, columns: Sequence[str], sizes: Sequence[int]):
    """Each annotation's frames (its window of its video), reading each video once in a row of its items."""
    current, sequence = None, None
    for video_id, start, end in zip(annotations.video_ids, annotations.starts, annotations.ends):
        if video_id != current:
            current, sequence = video_id, read_video_sequence(output, video_id, columns, sizes)
        yield sequence.window(start, end)


def build_item_store(folder: Path, output: str, annotations: Annotations, columns: Sequence[str],
                     sizes: Sequence[int], max_frames: int) -> SequenceStore:
    """The items' sequences in a store, as long as the longest item (at most ``max_frames``)."""
    longest = max((len(s.valid) for s in item_sequences(output, annotations, (), ())), default=2)
    return SequenceStore.write(folder, item_sequences(output, annotations, columns, sizes), len(annotations.texts),
                               max(2, min(max_frames, longest)), int(sum(sizes)))


def train_semantic(request: TrainRequest, settings: TrainConfig, words: Sequence[str],
                   command: Optional[list[str]] = None, say: Callable[[str], None] = print) -> dict:
    """Carry out a semantic ``request`` (see the module docstring); return cv.json's content."""
    check_request(request)
    started = time.time()
    annotations = annotated_run(request, say)
    groups = np.asarray(annotations.subjects if annotations.subjects is not None else annotations.video_ids, object)
    encoder = SentenceEncoder()
    targets = encoder.encode(list(annotations.texts))
    texts = sorted(set(annotations.texts))
    distinct = encoder.encode(texts)
    vocabulary = Vocabulary.embed(words, encoder)
    reference = vocabulary.back_translate(targets, 1)[0][:, 0]
    manifest = latest_manifest(request.output)
    with staged_dest(Path(request.dest)) as partial:
        results, cards, oof = [], [], []
        for feature_set in request.feature_sets:
            columns = tuple(feature_set_columns(feature_set, manifest_feature_groups(manifest)))
            try:
                sizes = column_sizes(request.output, sorted(set(annotations.video_ids)), columns)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            say(f"reading {len(targets)} annotated items' {feature_set} sequences ({sum(sizes)} values per frame)")
            store = build_item_store(partial / "_sequences" / feature_set, request.output, annotations, columns,
                                     sizes, settings.max_frames)
            usable = store.valid_frames >= settings.min_face_frames
            positions = np.flatnonzero(usable)
            if len(set(groups[usable])) < 2:
                raise UsageError(f"{feature_set}: the usable items come from fewer than two subjects")
            try:
                folds = make_folds(reference[usable], groups[usable], request.folds, settings.seed)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            evaluations = [mean_annotation_baseline(targets[usable], folds, feature_set)]
            for kind in request.models:
                evaluations.append(cross_validate_semantic(kind, store, positions, targets[usable], groups[usable],
                                                           folds, feature_set, settings, say))
                cards.append(_final_model(kind, feature_set, columns, sizes, store, positions, targets[usable],
                                          groups[usable], settings, request, annotations, vocabulary, encoder,
                                          evaluations[-1].metrics(targets[usable], distinct, vocabulary), partial))
            for evaluation in evaluations:
                metrics = evaluation.metrics(targets[usable], distinct, vocabulary)
                results.append({"name": evaluation.name, "method": evaluation.method, "feature_set": feature_set,
                                "task": SEMANTIC_TASK, "items": int(usable.sum()), "histories": evaluation.histories,
                                "seconds": round(evaluation.seconds, 2), **metrics})
                say(f"  {evaluation.name}: " + ", ".join(f"{k} {_shown(metrics['mean'][k])}"
                                                          for k in ("cosine", "z", "top1", "top3")))
                oof.append(_oof_rows(evaluation, annotations, usable, targets, distinct, vocabulary))
            shutil.rmtree(store.folder, ignore_errors=True)
        report = _report(request, settings, annotations, vocabulary, results, cards, started, command, texts)
        from pipelines.training.report import render_semantic_report
        return publish(partial, Path(request.dest), report, pa.concat_tables(oof), render_semantic_report(report))


def _shown(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _final_model(kind: str, feature_set: str, columns, sizes, store: SequenceStore, positions: np.ndarray,
                 targets: np.ndarray, groups: np.ndarray, settings: TrainConfig, request: TrainRequest,
                 annotations: Annotations, vocabulary: Vocabulary, encoder: SentenceEncoder, metrics: dict,
                 partial: Path) -> ModelCard:
    from models.semantic import build_semantic_model
    from models.sequence import fit_model
    from models.video_classifier import save_classifier
    held = inner_validation(np.zeros(len(positions), np.int64), groups, settings.validation_share, settings.seed)
    fit = fit_model(build_semantic_model(kind, store.width, store.length, settings), store.read, positions[~held],
                    targets[~held], positions[held], targets[held], settings, settings.seed)
    name = f"{kind}.{feature_set}.{SEMANTIC_TASK}"
    card = ModelCard(
        name=name, kind=kind, task=SEMANTIC_TASK, feature_set=feature_set, columns=columns, column_sizes=tuple(sizes),
        labels=vocabulary.words, sequence_length=store.length, scaler=fit.scaler.to_dict(),
        training={"manifest": request.manifest, "manifest_sha256": manifest_sha256(request.manifest),
                  "output": request.output, "items": int(len(positions)), "subjects": len(set(groups)),
                  "final_fit": {"items": int((~held).sum()), "early_stopping_items": int(held.sum()),
                                "best_epoch": fit.best_epoch, "history": fit.history},
                  "settings": settings.model_dump(mode="json"),
                  "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        metrics={"cross_validated": {"mean": metrics["mean"], "sd": metrics["sd"], "folds": len(metrics["folds"]["cosine"])}},
        versions=package_versions(),
        target={"encoder": encoder.resolved.spec.name, "encoder_sha256": dict(encoder.resolved.sha256),
                "dimensions": int(targets.shape[1]), "vocabulary_sha256": vocabulary.digest()})
    return save_classifier(partial / name, card, fit.model)


def _oof_rows(evaluation: SemanticEvaluation, annotations: Annotations, usable: np.ndarray, targets: np.ndarray,
              distinct: np.ndarray, vocabulary: Vocabulary) -> pa.Table:
    scores = semantic_scores(evaluation.predicted, targets[usable], distinct, vocabulary)
    nearest, cosines = vocabulary.back_translate(evaluation.predicted, max(TOP_K))
    reference = vocabulary.back_translate(targets[usable], 1)[0][:, 0]
    idx = np.flatnonzero(usable)
    return pa.table({
        PARTITION_COLUMN: pa.array([str(annotations.video_ids[i]) for i in idx], pa.string()),
        "start_s": pa.array([annotations.starts[i] for i in idx], pa.float64()),
        "end_s": pa.array([annotations.ends[i] for i in idx], pa.float64()),
        "annotation": pa.array([str(annotations.texts[i]) for i in idx], pa.string()),
        "method": pa.array([evaluation.method] * len(idx), pa.string()),
        "feature_set": pa.array([evaluation.feature_set] * len(idx), pa.string()),
        "fold": pa.array(evaluation.folds.astype(np.int32)),
        "cosine": pa.array(scores["cosine"].astype(np.float32)),
        "z": pa.array(np.where(np.isnan(scores["z"]), None, scores["z"]).tolist(), pa.float32()),
        "reference_word": pa.array([vocabulary.words[r] for r in reference], pa.string()),
        "top_words": pa.array([[vocabulary.words[j] for j in row] for row in nearest], pa.list_(pa.string())),
        "top_cosines": pa.array([[float(c) for c in row] for row in cosines], pa.list_(pa.float32())),
    })


def _report(request: TrainRequest, settings: TrainConfig, annotations: Annotations, vocabulary: Vocabulary,
            results: list[dict], cards: list[ModelCard], started: float, command, texts: list[str]) -> dict:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "target": SEMANTIC_TASK,
        "command": command, "output": request.output, "manifest": request.manifest,
        "manifest_sha256": manifest_sha256(request.manifest), "folds": request.folds,
        "grouped_by": "subject_id" if annotations.subjects is not None else "video (--allow-no-subjects)",
        "settings": settings.model_dump(mode="json"),
        "items": {"manifest_rows": annotations.rows, "annotated": len(annotations.texts),
                  "distinct_annotations": len(texts), "videos": len(set(annotations.video_ids))},
        "vocabulary": list(vocabulary.words), "top_k": list(TOP_K),
        "metric_definitions": {
            "cosine": "cosine of the predicted point and the item's annotation embedding",
            "z": "(cosine to the own annotation - mean cosine to every distinct annotation) / their population SD",
            "topk": "the vocabulary word nearest to the annotation is among the k words nearest to the prediction"},
        "results": results,
        "models": [{"name": c.name, "folder": c.name, "card": f"{c.name}/{CARD_FILE}", "model_sha256": c.model_sha256}
                   for c in cards],
        "packages": package_versions(), "seconds": round(time.time() - started, 2)}
