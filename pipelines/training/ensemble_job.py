"""`affectflow train --model landmark_ensemble`: per-frame learners on the face mesh, a meta model, video labels.

    affectflow train --model landmark_ensemble --output RUN_DIR --manifest labels.csv --dest MODEL_DIR \\
        [--task multiclass|binary|all] [--folds 5|loso]

Needs a run with ``features.landmarks`` (the mesh); blendshapes (bs_*) and geo_* are added to
each frame's vector when the run has them. Each labelled video's frames inherit its label. On
subject-grouped folds: the ensemble (models.landmark_ensemble) is fitted on up to
``train.frames_per_video`` evenly spaced frames of each training video, balanced by class; every
valid frame of the test videos is predicted, smoothed over adjacent frames and averaged into the
video's label. Per-frame and per-video metrics for the ensemble and for each base learner alone.
Then the ensemble is fitted on all videos and saved (MODEL_DIR/landmark_ensemble.mesh.<task>/).
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

from core.errors import UsageError
from core.settings import TrainConfig
from models.landmark_ensemble import (BASE_LEARNERS, EnsembleCard, LandmarkEnsemble, evenly_spaced, frame_vectors,
                                      names_of, video_probabilities)
from pipelines.output.manifest import manifest_feature_groups, package_versions
from pipelines.training.crossval import Evaluation
from pipelines.training.data import LabelledRun, Task, manifest_sha256
from pipelines.training.job import TrainRequest, prepare, publish, report_header, staged_dest, task_folds
from pipelines.training.report import render_report
from schemas.columns import PARTITION_COLUMN
from schemas.features import BLENDSHAPE_NAMES, GEOMETRY_MEASURES, blendshape_column
from transforms.sequences import column_sizes, read_video_sequence

ENSEMBLE = "landmark_ensemble"
MESH_COLUMN = "landmarks_norm"
FEATURE_SET = "mesh"


@dataclass(frozen=True)
class FrameSource:
    """Which frame-table columns make a frame's vector, and how to read them."""
    columns: tuple[str, ...]                 # the mesh column first, then bs_* and geo_*
    sizes: tuple[int, ...]

    @property
    def mesh_width(self) -> int:
        return self.sizes[0]

    def frames(self, output: str, video_id: str) -> "VideoFrames":
        """The video's valid frames in time order (see VideoFrames)."""
        sequence = read_video_sequence(output, video_id, self.columns, self.sizes)
        rows = sequence.valid
        values = sequence.features[rows]
        return VideoFrames(frame_vectors(values[:, :self.mesh_width], values[:, self.mesh_width:]),
                           sequence.frame_indices[rows], sequence.timestamps[rows], len(sequence.valid))

    def vectors(self, output: str, video_id: str) -> np.ndarray:
        """float32[frames, d]: the vectors of the video's valid frames in time order."""
        return self.frames(output, video_id).vectors


@dataclass(frozen=True)
class VideoFrames:
    """A video's valid frames as the ensemble reads them."""
    vectors: np.ndarray                      # float32[n, d]
    frame_indices: np.ndarray                # int64[n]
    timestamps: np.ndarray                   # float64[n]
    frames_total: int                        # primary-face frame rows, with or without a face


def frame_source(output: str, groups: tuple[str, ...], video_ids) -> FrameSource:
    """The mesh and, when present, the blendshapes and geometric measures; UsageError without a mesh."""
    if "landmarks" not in groups:
        raise UsageError(f"{ENSEMBLE} reads the face mesh: run the extraction with features.landmarks=true (the run "
                         f"has {list(groups)})")
    extra = ([blendshape_column(n) for n in BLENDSHAPE_NAMES] if "blendshapes" in groups else [])
    extra += list(GEOMETRY_MEASURES) if "geometry" in groups else []
    columns = (MESH_COLUMN, *extra)
    try:
        return FrameSource(columns, tuple(column_sizes(output, list(video_ids), columns)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def train_ensemble(request: TrainRequest, settings: TrainConfig, command: Optional[list[str]] = None,
                   say: Callable[[str], None] = print) -> dict:
    """Carry out a landmark-ensemble ``request`` (see the module docstring); return cv.json's content."""
    started = time.time()
    run, groups, tasks, manifest = prepare(request, say)
    source = frame_source(request.output, manifest_feature_groups(manifest), run.video_ids)
    say(f"reading up to {settings.frames_per_video} frames of each of {len(run.video_ids)} videos "
        f"({len(names_of(source.columns, MESH_COLUMN))} values per frame)")
    sampled = [_sampled(source, request.output, v, settings.frames_per_video) for v in run.video_ids]
    smoothing = {"method": settings.frame_smoothing, "window": settings.smoothing_window,
                 "alpha": settings.smoothing_alpha}
    with staged_dest(Path(request.dest)) as partial:
        results, cards, oof = [], [], []
        for task in tasks:
            keep = task.used & np.asarray([len(s) >= settings.min_face_frames for s in sampled])
            if len(set(task.codes[keep])) < 2:
                raise UsageError(f"{task.name}: the videos with frames have fewer than two classes")
            folds = task_folds(task, keep, groups, request, settings.seed)
            evaluations = _cross_validate(request, settings, run, task, keep, folds, groups, sampled, source,
                                          smoothing, say)
            for evaluation in evaluations:
                metrics = evaluation.metrics()
                results.append({"name": evaluation.name, "method": evaluation.method,
                                "feature_set": evaluation.feature_set, "task": task.name,
                                "videos": int(keep.sum()), "items": len(evaluation.true), "seconds":
                                round(evaluation.seconds, 2), "note": evaluation.note, "histories": [], **metrics})
                say(f"  {evaluation.name}: UAR {metrics['mean']['uar']:.3f}, accuracy {metrics['mean']['accuracy']:.3f}")
            cards.append(_final(request, settings, run, task, keep, groups, sampled, source, smoothing,
                                evaluations, partial))
            oof.append(_oof(evaluations, task))
        report = {
            **report_header(request, settings, run, tasks, command), "model": ENSEMBLE,
            "frame_features": {"columns": list(source.columns), "values": len(names_of(source.columns, MESH_COLUMN))},
            "results": results,
            "models": [{"name": c.name, "folder": c.name, "card": f"{c.name}/ensemble_card.json",
                        "model_sha256": c.files_sha256.get("meta.keras", "")} for c in cards],
            "packages": package_versions(), "seconds": round(time.time() - started, 2)}
        return publish(partial, Path(request.dest), report, pa.concat_tables(oof), render_report(report))


def _sampled(source: FrameSource, output: str, video_id: str, at_most: int) -> np.ndarray:
    vectors = source.vectors(output, video_id)
    return vectors[evenly_spaced(len(vectors), at_most)]


def _training_frames(sampled, positions: np.ndarray, codes: np.ndarray, groups: np.ndarray):
    """(frames, their video's code, their video's subject) of the videos at ``positions``."""
    frames = np.vstack([sampled[p] for p in positions])
    counts = [len(sampled[p]) for p in positions]
    return frames, np.repeat(codes, counts), np.repeat(groups, counts)


def _cross_validate(request: TrainRequest, settings: TrainConfig, run: LabelledRun, task: Task, keep: np.ndarray,
                    folds: np.ndarray, groups: np.ndarray, sampled, source: FrameSource, smoothing: dict,
                    say) -> list[Evaluation]:
    """Per-frame and per-video out-of-fold predictions of the ensemble and of each base learner."""
    started = time.time()
    positions, codes, k = np.flatnonzero(keep), task.codes[keep], len(task.classes)
    methods = (ENSEMBLE, *BASE_LEARNERS)
    video_probs = {m: np.zeros((len(positions), k), np.float32) for m in methods}
    frame_rows: dict[str, list] = {m: [] for m in methods}
    frame_truth, frame_folds, frame_videos = [], [], []
    for fold in np.unique(folds):
        test = folds == fold
        frames, frame_codes, frame_groups = _training_frames(sampled, positions[~test], codes[~test],
                                                             groups[keep][~test])
        ensemble = LandmarkEnsemble.fit(frames, frame_codes, frame_groups, k, settings, settings.seed + int(fold))
        for row in np.flatnonzero(test):
            vectors = source.vectors(request.output, run.video_ids[positions[row]])
            if not len(vectors):
                continue
            probs, _ = ensemble.predict(vectors)
            base = ensemble.base_probabilities(vectors)
            per_method = {ENSEMBLE: probs, **{m: base[:, i * k:(i + 1) * k] for i, m in enumerate(BASE_LEARNERS)}}
            for method, p in per_method.items():
                video_probs[method][row] = video_probabilities(p, smoothing)
                frame_rows[method].append(p.argmax(axis=1))
            frame_truth.append(np.full(len(vectors), codes[row]))
            frame_folds.append(np.full(len(vectors), fold))
            frame_videos.append(np.full(len(vectors), run.video_ids[positions[row]], dtype=object))
        say(f"  {ENSEMBLE} {task.name}: fold {int(fold) + 1}/{len(np.unique(folds))} fitted on {len(frames)} frames")
    ids = run.video_ids[positions]
    seconds = time.time() - started
    truth, fold_of = np.concatenate(frame_truth), np.concatenate(frame_folds)
    evaluations = []
    for method in methods:
        note = "" if method == ENSEMBLE else "a base learner of the ensemble, alone"
        evaluations.append(Evaluation(method, f"{FEATURE_SET}-videos", task.name, task.classes, ids, codes, folds,
                                      video_probs[method].argmax(axis=1), video_probs[method], seconds=seconds,
                                      note=note + ("; " if note else "") + "per video: smoothed frames averaged"))
        evaluations.append(Evaluation(method, f"{FEATURE_SET}-frames", task.name, task.classes,
                                      np.concatenate(frame_videos), truth, fold_of,
                                      np.concatenate(frame_rows[method]), seconds=seconds,
                                      note=note + ("; " if note else "") + "per frame"))
    return evaluations


def _final(request: TrainRequest, settings: TrainConfig, run: LabelledRun, task: Task, keep: np.ndarray,
           groups: np.ndarray, sampled, source: FrameSource, smoothing: dict, evaluations, partial: Path) -> EnsembleCard:
    positions = np.flatnonzero(keep)
    frames, frame_codes, frame_groups = _training_frames(sampled, positions, task.codes[keep], groups[keep])
    ensemble = LandmarkEnsemble.fit(frames, frame_codes, frame_groups, len(task.classes), settings, settings.seed)
    metrics = {e.feature_set: e.metrics()["mean"] for e in evaluations if e.method == ENSEMBLE}
    name = f"{ENSEMBLE}.{FEATURE_SET}.{task.name}"
    card = EnsembleCard(
        name=name, columns=source.columns, feature_names=tuple(names_of(source.columns, MESH_COLUMN)),
        labels=task.classes, task=task.name, smoothing=smoothing,
        training={"manifest": request.manifest, "manifest_sha256": manifest_sha256(request.manifest),
                  "output": request.output, "run_ids": list(run.run_ids), "videos": int(keep.sum()),
                  "frames": int(len(frames)), "subjects": len(set(groups[keep])), "class_counts": task.class_counts(),
                  "binary_map": dict(task.mapping), "settings": settings.model_dump(mode="json"),
                  "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        metrics={"cross_validated": metrics}, versions=package_versions())
    return ensemble.save(partial / name, card)


def _oof(evaluations, task: Task) -> pa.Table:
    """The per-video out-of-fold rows (frames are too many to list)."""
    rows = []
    for e in evaluations:
        if not e.feature_set.endswith("videos"):
            continue
        for i, video_id in enumerate(e.video_ids):
            rows.append({PARTITION_COLUMN: str(video_id), "method": e.method, "task": task.name, "fold": int(e.folds[i]),
                         "true_label": task.classes[int(e.true[i])], "predicted_label": task.classes[int(e.predicted[i])],
                         "probabilities": [float(p) for p in e.probabilities[i]]})
    schema = pa.schema([(PARTITION_COLUMN, pa.string()), ("method", pa.string()), ("task", pa.string()),
                        ("fold", pa.int32()), ("true_label", pa.string()), ("predicted_label", pa.string()),
                        ("probabilities", pa.list_(pa.float32()))])
    return pa.Table.from_pylist(rows, schema=schema)
