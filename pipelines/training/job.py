"""`affectflow train`: video-level emotion models from a run's frame table and a labelled manifest.

    affectflow train --output RUN_DIR --manifest labels.csv --model all --features appearance \\
        --task multiclass --folds 5 --dest models/run1

For every feature set and task: the labelled videos' sequences are read once from the run's
Parquet into a store on local disk (never decoding video), folds are assigned by subject
(StratifiedGroupKFold), and every method is evaluated on the same folds: the sequence models
asked for, the mean/SD logistic-regression baseline, and the run's Top-1 and threshold labels
where the emotion model's labels can name the task's classes. Then each sequence model is
trained once more on all the task's videos and saved with its card.

DEST receives, all at once (written under ``DEST.partial-<id>`` and renamed at the end, so a
failed run leaves nothing half-written): one folder per trained model
(``<model>.<features>.<task>/``: model.keras, model_card.json), ``cv.json``, the out-of-fold
predictions ``oof_predictions.parquet`` and ``report.html``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import UsageError
from core.settings import TrainConfig
from models.sequence_data import PAPER_KINDS
from models.video_classifier import CARD_FILE, ModelCard
from pipelines.folds import LEAVE_ONE_SUBJECT_OUT, make_folds
from pipelines.labels import read_labelled_manifest
from pipelines.output.layout import dataset, has_table
from pipelines.output.manifest import manifest_feature_groups, package_versions
from pipelines.output.state import latest_manifest
from pipelines.training.crossval import (RUN_METHODS, Evaluation, cross_validate_baseline, cross_validate_sequence,
                                         run_label_evaluation, video_statistics)
from pipelines.training.data import LabelledRun, Task, build_store, make_task, manifest_sha256, match_run
from pipelines.training.report import render_report
from schemas.columns import PARTITION_COLUMN
from schemas.features import feature_set_columns
from transforms.sequences import column_sizes

FILES = {"cv": "cv.json", "oof": "oof_predictions.parquet", "report": "report.html"}


@dataclass(frozen=True)
class TrainRequest:
    """What `affectflow train` was asked to do."""
    output: str
    manifest: str
    dest: str
    models: tuple[str, ...] = PAPER_KINDS
    feature_sets: tuple[str, ...] = ("appearance",)
    tasks: tuple[str, ...] = ("multiclass",)
    folds: int | str = 5                        # or "loso": one fold per subject
    label_map: dict = field(default_factory=dict)
    binary_map: dict = field(default_factory=dict)
    allow_no_subjects: bool = False
    overwrite: bool = False

    @staticmethod
    def expand(values: Sequence[str], choices: Sequence[str], what: str, all_means: Sequence[str]) -> tuple[str, ...]:
        """Comma-separated choices (``all`` = ``all_means``) -> a tuple in ``choices`` order; UsageError otherwise."""
        wanted = [v.strip() for value in values for v in value.split(",") if v.strip()]
        if "all" in wanted:
            wanted = list(all_means)
        unknown = [v for v in wanted if v not in choices]
        if unknown or not wanted:
            raise UsageError(f"{what} must be one or more of {', '.join(choices)} or all, got {unknown or values}")
        return tuple(c for c in choices if c in wanted)


def check_request(request: TrainRequest) -> None:
    """UsageError, before any work, for a request that cannot be carried out as asked."""
    if not has_table(request.output, "frames") or latest_manifest(request.output) is None:
        raise UsageError(f"{request.output} has no frames/ table and run_manifest.json: give the output folder of "
                         "an affectflow run")
    if "://" in request.dest:
        raise UsageError(f"--dest {request.dest}: models are written to a local folder (copy it to object storage "
                         "afterwards; predict reads model folders from any filesystem)")
    dest = Path(request.dest)
    if dest.exists() and any(dest.iterdir()) and not (request.overwrite and (dest / FILES["cv"]).is_file()):
        raise UsageError(f"--dest {dest} is not empty" + (" and was not written by affectflow train" if
                                                          request.overwrite else "; add --overwrite to replace the "
                                                          "models a previous train wrote there"))
    if request.folds != LEAVE_ONE_SUBJECT_OUT and (not isinstance(request.folds, int) or request.folds < 2):
        raise UsageError(f"--folds must be at least 2 or loso, got {request.folds}")
    groups = manifest_feature_groups(latest_manifest(request.output))
    for feature_set in request.feature_sets:
        try:
            feature_set_columns(feature_set, groups)
        except ValueError as exc:
            raise UsageError(f"{request.output}: {exc}") from None


def labelled_run(request: TrainRequest, say: Callable[[str], None]) -> LabelledRun:
    """The manifest's labelled videos in the run; UsageError when none is, or subjects are missing."""
    labelled = read_labelled_manifest(request.manifest, request.label_map, request.output)
    run = match_run(request.output, labelled)
    for reason, ids in run.left_out.items():
        say(f"  left out, {reason}: {len(ids)} labelled video(s), e.g. {', '.join(ids[:5])}")
    if not len(run.video_ids):
        raise UsageError(f"none of the {len(labelled.video_ids)} labelled videos of {request.manifest} is an extracted "
                         f"video of {request.output}: check the manifest's video_id / path column")
    if run.subjects is None and not request.allow_no_subjects:
        raise UsageError(f"{request.manifest} has no subject_id column: without it videos of one person can land in "
                         "both a training and a test fold and the scores are optimistic. Add subject_id, or pass "
                         "--allow-no-subjects to treat every video as its own subject")
    if run.subjects is not None and any(s is None for s in run.subjects):
        missing = [v for v, s in zip(run.video_ids, run.subjects) if s is None]
        raise UsageError(f"{len(missing)} labelled videos have no subject_id (e.g. {missing[:5]}); give every video "
                         "its subject")
    return run


def subject_groups(run: LabelledRun) -> np.ndarray:
    """object[n]: the subject of each video, or the video itself without subject ids."""
    return np.asarray(run.subjects if run.subjects is not None else run.video_ids, dtype=object)


@dataclass
class FeatureSetData:
    """One feature set's sequences of the labelled videos, and who has enough valid frames."""
    name: str
    columns: tuple[str, ...]
    sizes: tuple[int, ...]
    store: object                    # SequenceStore
    usable: np.ndarray               # bool[n]: at least train.min_face_frames valid frames


class Prepared(NamedTuple):
    """A checked request's labelled videos, their subjects, its tasks and the run's manifest."""
    run: LabelledRun
    groups: np.ndarray
    tasks: list[Task]
    manifest: dict


def prepare(request: TrainRequest, say: Callable[[str], None]) -> Prepared:
    """What every training command starts from; UsageError (before any work) when it cannot be had."""
    check_request(request)
    run = labelled_run(request, say)
    return Prepared(run, subject_groups(run), [make_task(name, run.labels, request.binary_map)
                                               for name in request.tasks], latest_manifest(request.output))


def train(request: TrainRequest, settings: TrainConfig, command: Optional[list[str]] = None,
          say: Callable[[str], None] = print) -> dict:
    """Carry out ``request`` (see the module docstring); return cv.json's content."""
    started = time.time()
    run, groups, tasks, manifest = prepare(request, say)
    with staged_dest(Path(request.dest)) as partial:
        evaluations, cards = [], []
        for feature_set in request.feature_sets:
            data = _feature_set_data(request, manifest, feature_set, run, settings, partial / "_sequences", say)
            for task in tasks:
                evals, task_cards = _evaluate(request, settings, run, groups, task, data, partial, say)
                evaluations += evals
                cards += task_cards
            shutil.rmtree(data.store.folder, ignore_errors=True)
        evaluations += _run_label_rows(request, run, groups, tasks, settings, manifest, say)
        report = _cv_report(request, settings, run, tasks, evaluations, cards, started, command)
        return publish(partial, Path(request.dest), report, _oof_table(evaluations, run), render_report(report))


@contextlib.contextmanager
def staged_dest(dest: Path) -> Iterator[Path]:
    """A fresh ``DEST.partial-<id>`` folder to write into; removed when the work fails."""
    partial = dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex[:6]}")
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def publish(partial: Path, dest: Path, report: dict, oof: pa.Table, html: str) -> dict:
    """Write cv.json, the out-of-fold table and the report into ``partial``, then move it to ``dest``;
    return the report with the files' paths."""
    (partial / FILES["cv"]).write_text(json.dumps(report, indent=1, allow_nan=False))
    pq.write_table(oof, partial / FILES["oof"], compression="zstd")
    (partial / FILES["report"]).write_text(html)
    shutil.rmtree(partial / "_sequences", ignore_errors=True)
    replace_folder(partial, dest)
    return {**report, "files": {k: str(dest / v) for k, v in FILES.items()}}


def _feature_set_data(request: TrainRequest, manifest: dict, feature_set: str, run: LabelledRun,
                      settings: TrainConfig, folder: Path, say) -> FeatureSetData:
    columns = tuple(feature_set_columns(feature_set, manifest_feature_groups(manifest)))
    ids = list(run.video_ids)
    try:
        sizes = column_sizes(request.output, ids, columns)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    say(f"reading {len(ids)} videos' {feature_set} sequences ({sum(sizes)} values per frame)")
    store = build_store(folder / feature_set, request.output, ids, columns, sizes, settings.max_frames)
    usable = store.valid_frames >= settings.min_face_frames
    if (~usable).any():
        say(f"  left out of {feature_set}: {int((~usable).sum())} video(s) with fewer than "
            f"{settings.min_face_frames} frame(s) with a face and every feature, e.g. "
            f"{', '.join(np.asarray(ids)[~usable][:5])}")
    return FeatureSetData(feature_set, columns, tuple(sizes), store, usable)


def task_folds(task: Task, keep: np.ndarray, groups: np.ndarray, request: TrainRequest, seed: int) -> np.ndarray:
    try:
        return make_folds(task.codes[keep], groups[keep], request.folds, seed)
    except ValueError as exc:
        raise UsageError(f"{task.name}: {exc}") from None


def _evaluate(request: TrainRequest, settings: TrainConfig, run: LabelledRun, groups: np.ndarray, task: Task,
              data: FeatureSetData, partial: Path, say) -> tuple[list[Evaluation], list[ModelCard]]:
    """Every model and the baseline on one feature set and task; then the final models."""
    from models.sequence import fit_sequence_model
    from models.video_classifier import save_classifier
    from pipelines.folds import inner_validation
    keep = task.used & data.usable
    if len(set(task.codes[keep])) < 2:
        raise UsageError(f"{task.name} on {data.name}: the usable videos have fewer than two classes")
    positions, codes, ids = np.flatnonzero(keep), task.codes[keep], run.video_ids[keep]
    folds = task_folds(task, keep, groups, request, settings.seed)
    say(f"{task.name} on {data.name}: {len(codes)} videos, {len(set(groups[keep]))} subjects, classes "
        + ", ".join(f"{c} {n}" for c, n in zip(task.classes, np.bincount(codes, minlength=len(task.classes)))))
    evaluations = [cross_validate_baseline(video_statistics(data.store, positions), task, codes, folds, ids,
                                           data.name, settings.seed)]
    cards = []
    for kind in request.models:
        evaluation = cross_validate_sequence(kind, data.store, positions, task, codes, groups[keep], folds, ids,
                                             data.name, settings, say)
        evaluations.append(evaluation)
        held = inner_validation(codes, groups[keep], settings.validation_share, settings.seed)
        final = fit_sequence_model(kind, data.store.read, positions[~held], codes[~held], positions[held], codes[held],
                                   len(task.classes), data.store.width, data.store.length, settings, settings.seed)
        card = ModelCard(name=evaluation.name, kind=kind, task=task.name, feature_set=data.name,
                         columns=data.columns, column_sizes=data.sizes, labels=task.classes,
                         sequence_length=data.store.length, scaler=final.scaler.to_dict(),
                         training=_training_entry(request, settings, run, task, keep, final, held),
                         metrics=_brief_metrics(evaluation.metrics()), versions=package_versions())
        cards.append(save_classifier(partial / evaluation.name, card, final.model))
        say(f"  {evaluation.name}: UAR {evaluation.metrics()['mean']['uar']:.3f} over {request.folds} folds; "
            f"final model {final.best_epoch} epoch(s)")
    return evaluations, cards


def _training_entry(request: TrainRequest, settings: TrainConfig, run: LabelledRun, task: Task, keep: np.ndarray,
                    final, held: np.ndarray) -> dict:
    return {"manifest": request.manifest, "manifest_sha256": manifest_sha256(request.manifest),
            "label_map": request.label_map, "binary_map": dict(task.mapping), "output": request.output,
            "run_ids": list(run.run_ids), "videos": int(keep.sum()),
            "subjects": len(set(subject_groups(run)[keep])), "class_counts": task.class_counts(),
            "final_fit": {"videos": int((~held).sum()), "early_stopping_videos": int(held.sum()),
                          "best_epoch": final.best_epoch, "history": final.history},
            "settings": settings.model_dump(mode="json"),
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _brief_metrics(metrics: dict) -> dict:
    return {"cross_validated": {"mean": metrics["mean"], "sd": metrics["sd"], "folds": len(metrics["folds"]),
                                "per_class_recall": metrics["pooled"]["per_class_recall"]}}


def _run_label_rows(request: TrainRequest, run: LabelledRun, groups: np.ndarray, tasks: Sequence[Task],
                    settings: TrainConfig, manifest: dict, say) -> list[Evaluation]:
    """Top-1 and threshold rows on each task's folds (all videos with a label in the task)."""
    videos = dataset(request.output, "videos").to_table(
        columns=[PARTITION_COLUMN, *(f"{m}_label" for m in RUN_METHODS)]).to_pydict()
    index = {v: i for i, v in enumerate(videos[PARTITION_COLUMN])}
    rows = []
    for task in tasks:
        keep = task.used
        folds = task_folds(task, keep, groups, request, settings.seed)
        for method in RUN_METHODS:
            labels = [videos[f"{method}_label"][index[v]] for v in run.video_ids[keep]]
            evaluation = run_label_evaluation(method, labels, manifest["labels"], task, task.codes[keep], folds,
                                              run.video_ids[keep])
            if evaluation is None:
                say(f"  {method} on {task.name}: the emotion model's labels {manifest['labels']} cannot name the "
                    f"classes {list(task.classes)}; not compared")
                continue
            rows.append(evaluation)
    return rows


def report_header(request: TrainRequest, settings: TrainConfig, run: LabelledRun, tasks: Sequence[Task],
                  command: Optional[list[str]]) -> dict:
    """cv.json's opening keys, the same for every training command: what was asked, on which data."""
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "output": request.output, "manifest": request.manifest,
        "manifest_sha256": manifest_sha256(request.manifest), "run_ids": list(run.run_ids), "folds": request.folds,
        "grouped_by": "subject_id" if run.subjects is not None else "video (no subject_id: --allow-no-subjects)",
        "settings": settings.model_dump(mode="json"), "label_map": request.label_map,
        "tasks": {t.name: {"classes": list(t.classes), "class_counts": t.class_counts(),
                           "binary_map": dict(t.mapping)} for t in tasks},
        "videos": {"manifest_rows": run.manifest_rows, "matched": len(run.video_ids),
                   "left_out": {k: {"count": len(v), "examples": v[:20]} for k, v in run.left_out.items()}}}


def _cv_report(request: TrainRequest, settings: TrainConfig, run: LabelledRun, tasks: Sequence[Task],
               evaluations: Sequence[Evaluation], cards: Sequence[ModelCard], started: float,
               command: Optional[list[str]]) -> dict:
    return {
        **report_header(request, settings, run, tasks, command),
        "results": [{"name": e.name, "method": e.method, "feature_set": e.feature_set, "task": e.task,
                     "videos": len(e.true), "seconds": round(e.seconds, 2), "note": e.note,
                     "histories": e.histories, **e.metrics()} for e in evaluations],
        "models": [{"name": c.name, "folder": c.name, "card": f"{c.name}/{CARD_FILE}", "model_sha256": c.model_sha256}
                   for c in cards],
        "packages": package_versions(),
        "seconds": round(time.time() - started, 2),
    }


def _oof_table(evaluations: Sequence[Evaluation], run: LabelledRun) -> pa.Table:
    """One row per (method, video): fold, true and predicted class, probabilities as a list."""
    subject = dict(zip(run.video_ids, subject_groups(run))) if run.subjects is not None else {}
    rows = []
    for e in evaluations:
        names = list(e.classes) + ["(other)"]
        for i, video_id in enumerate(e.video_ids):
            rows.append({PARTITION_COLUMN: str(video_id), "subject_id": subject.get(video_id), "method": e.method,
                         "feature_set": e.feature_set, "task": e.task, "fold": int(e.folds[i]),
                         "true_label": names[int(e.true[i])], "predicted_label": names[int(e.predicted[i])],
                         "probabilities": None if e.probabilities is None else [float(p) for p in e.probabilities[i]],
                         "classes": list(e.classes)})
    schema = pa.schema([(PARTITION_COLUMN, pa.string()), ("subject_id", pa.string()), ("method", pa.string()),
                        ("feature_set", pa.string()), ("task", pa.string()), ("fold", pa.int32()),
                        ("true_label", pa.string()), ("predicted_label", pa.string()),
                        ("probabilities", pa.list_(pa.float32())), ("classes", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)


def replace_folder(partial: Path, dest: Path) -> None:
    """Move the finished folder into place (an old one, kept until then, is removed after)."""
    old = None
    if dest.exists():
        old = dest.with_name(f"{dest.name}.old-{uuid.uuid4().hex[:6]}")
        os.replace(dest, old)
    os.replace(partial, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

