"""`affectflow space fit` / `space project`: a landmark ensemble's emotion space, and runs projected into it.

    affectflow space fit --model ENSEMBLE_DIR --output RUN_DIR --manifest labels.csv --dest SPACE_DIR
    affectflow space project --space SPACE_DIR --output RUN_DIR

fit: the labelled videos' frames (evenly spaced, at most ``space.max_frames`` in all, then
balanced by class) go through the ensemble (models.landmark_ensemble); their learned features
(base learners' probabilities and the meta model's hidden layer) are laid out by supervised UMAP
and clustered by HDBSCAN (models.emotion_space). SPACE_DIR is self-contained and versioned: the
space (space.joblib), a copy of the ensemble it reads (ensemble/), space_card.json (settings,
SHA-256 of every file, frames per class, each cluster's frames per label) and space.html (the
fitted frames coloured by label).

project: every valid frame of every video of a run goes through the same ensemble into the
space: a row per frame (coordinates, cluster, membership strength, the ensemble's label) and a
row per video (its frames' mean point, most frequent cluster, and its label from the frames
smoothed over time as in training) under ``predictions/model=<space>/``, written through the
output's staging and journalled commit under its lock, then checked by the predictions suite.
A video keeps its rows while the space and its frame rows are unchanged (``force`` projects it
again); a video whose extraction failed, or whose frames cannot be read, gets a ``failed`` row.
The run's picture: ``reports/space/<space>.html``, the space with the projected videos on it.
Projection runs in this process (tree ensembles and UMAP's transform, no decoding).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from core.elements import DeadLetter
from core.errors import UsageError
from core.settings import SpaceConfig, ValidationConfig
from models.emotion_space import SPACE_CARD, EmotionSpace, SpaceCard, cluster_composition
from models.landmark_ensemble import (ENSEMBLE_CARD, EnsembleCard, LandmarkEnsemble, balance_classes, evenly_spaced,
                                      video_probabilities)
from pipelines.html_report import STYLE, escape, new_figure, png, table
from pipelines.output.commit import commit_staging, recover_commits
from pipelines.output.layout import STAGING, dataset, has_table
from pipelines.output.lock import OutputLock
from pipelines.output.manifest import new_run_id, package_versions
from pipelines.output.state import latest_manifest, output_manifest
from pipelines.predict import PREDICT_MANIFEST, VideoSource, kept_predictions, predictions_table, video_sources
from pipelines.training.data import make_task, manifest_sha256
from pipelines.training.ensemble_job import FrameSource, VideoFrames
from pipelines.training.job import TrainRequest, labelled_run, replace_folder, staged_dest, subject_groups
from schemas.columns import PARTITION_COLUMN
from schemas.predictions import MODEL_PARTITION, SPACE_AXES, SPACE_TASK, space_prediction_file_schema
from transforms.classify import write_prediction_rows
from transforms.parquet import json_metadata
from transforms.sequences import column_sizes

ENSEMBLE_DIR = "ensemble"
SPACE_REPORT = "space.html"
REPORT_DIR = "reports/space"
SHOWN_POINTS = 5000                 # fitted frames drawn in a picture at most (a seeded sample)


@dataclass(frozen=True)
class SpaceRequest:
    """What `affectflow space fit` was asked to do."""
    ensemble: str                   # an ensemble folder, or a train DEST holding one
    output: str
    manifest: str
    dest: str
    label_map: dict = field(default_factory=dict)
    allow_no_subjects: bool = False
    overwrite: bool = False


def ensemble_folder(path: str) -> Path:
    """The ensemble folder ``path`` names: itself, or its one subfolder holding an ensemble card."""
    folder = Path(path)
    if (folder / ENSEMBLE_CARD).is_file():
        return folder
    found = sorted(p.parent for p in folder.glob(f"*/{ENSEMBLE_CARD}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"{path} holds no {ENSEMBLE_CARD}: give a folder written by affectflow train --model "
                         "landmark_ensemble")
    raise UsageError(f"{path} holds {len(found)} ensembles ({', '.join(p.name for p in found)}); give one of them")


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and any(dest.iterdir()) and not (overwrite and (dest / SPACE_CARD).is_file()):
        raise UsageError(f"--dest {dest} is not empty" + ("; add --overwrite to replace the space a previous "
                                                          "space fit wrote there" if not overwrite else
                                                          " and holds no space"))


def frame_source_of(card: EnsembleCard, output: str, video_ids) -> FrameSource:
    """How the ensemble's frame vectors are read from ``output``; UsageError when the run lacks its columns."""
    try:
        return FrameSource(card.columns, tuple(column_sizes(output, list(video_ids), card.columns)))
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{output} does not have the frame columns the ensemble {card.name} reads "
                         f"({list(card.columns)}): {exc}") from None


def fit_space(request: SpaceRequest, settings: SpaceConfig, command: Optional[list[str]] = None,
              say: Callable[[str], None] = print) -> SpaceCard:
    """Carry out ``request`` (see the module docstring); return the saved space's card."""
    started = time.time()
    dest = Path(request.dest)
    _check_dest(dest, request.overwrite)
    folder = ensemble_folder(request.ensemble)
    ensemble, ecard = LandmarkEnsemble.load(folder)
    if latest_manifest(request.output) is None or not has_table(request.output, "frames"):
        raise UsageError(f"{request.output} has no frames/ table and run_manifest.json: give the output folder of an "
                         "affectflow run")
    run = labelled_run(TrainRequest(request.output, request.manifest, request.dest, label_map=request.label_map,
                                    allow_no_subjects=request.allow_no_subjects), say)
    task = make_task(ecard.task, run.labels, ecard.training.get("binary_map") or None)
    if tuple(task.classes) != tuple(ecard.labels):
        raise UsageError(f"the manifest's labels give the classes {list(task.classes)}; the ensemble {ecard.name} "
                         f"predicts {list(ecard.labels)}: fit the space on videos labelled like its training videos")
    positions = np.flatnonzero(task.used)
    source = frame_source_of(ecard, request.output, run.video_ids[positions])
    per_video = max(1, settings.max_frames // max(1, len(positions)))
    learned, codes, videos = [], [], []
    for p in positions:
        vectors = source.vectors(request.output, run.video_ids[p])
        vectors = vectors[evenly_spaced(len(vectors), per_video)]
        if len(vectors):
            learned.append(ensemble.predict(vectors)[1])
            codes.append(np.full(len(vectors), task.codes[p]))
            videos.append(np.full(len(vectors), run.video_ids[p], dtype=object))
    if not learned:
        raise UsageError("none of the labelled videos has a frame with a face and every feature")
    learned, codes, videos = np.vstack(learned), np.concatenate(codes), np.concatenate(videos)
    keep = balance_classes(codes, settings.seed)
    learned, codes, videos = learned[keep], codes[keep], videos[keep]
    if len(set(codes)) < 2 or len(codes) <= settings.min_cluster_size:
        raise UsageError(f"{len(codes)} balanced frames of {len(set(codes))} class(es): a space needs frames of at "
                         f"least two classes and more than space.min_cluster_size ({settings.min_cluster_size})")
    say(f"fitting a {settings.dimensions}-D space on {len(codes)} frames of {len(set(videos))} videos "
        f"({len(codes) // len(set(codes))} per class)")
    space = EmotionSpace.fit(learned, codes, settings)
    composition = cluster_composition(space.clusters, codes, ecard.labels)
    say(f"  {sum(1 for c in composition if c != '-1')} clusters; "
        f"{int((space.clusters == -1).sum())} frames in none")
    card = SpaceCard(
        name=dest.name, dimensions=settings.dimensions, labels=tuple(ecard.labels),
        settings=settings.model_dump(mode="json"),
        ensemble={"name": ecard.name, "copied_from": str(folder.resolve()), "files_sha256": ecard.files_sha256,
                  "smoothing": ecard.smoothing},
        training={"output": request.output, "manifest": request.manifest,
                  "manifest_sha256": manifest_sha256(request.manifest), "run_ids": list(run.run_ids),
                  "videos": len(set(videos)), "subjects": len(set(subject_groups(run)[positions])),
                  "frames": int(len(codes)),
                  "frames_per_class": {l: int((codes == i).sum()) for i, l in enumerate(ecard.labels)},
                  "command": command, "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "seconds": round(time.time() - started, 2)},
        clusters=composition, versions=package_versions())
    with staged_dest(dest) as partial:          # removed if writing fails; an older space stays until the end
        shutil.copytree(folder, partial / ENSEMBLE_DIR)
        card = space.save(partial, card)
        (partial / SPACE_REPORT).write_text(space_page(space, codes, card))
    replace_folder(partial, dest)
    return card


def load_space(path: str) -> tuple[EmotionSpace, SpaceCard, LandmarkEnsemble, EnsembleCard]:
    """A saved space and its ensemble, every file checked against its card; UsageError when it is none."""
    folder = Path(path)
    if not (folder / SPACE_CARD).is_file():
        raise UsageError(f"{path} holds no {SPACE_CARD}: give a folder written by affectflow space fit")
    try:
        space, card = EmotionSpace.load(folder)
        ensemble, ecard = LandmarkEnsemble.load(folder / ENSEMBLE_DIR)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return space, card, ensemble, ecard


@dataclass(frozen=True)
class Projector:
    """A loaded space and its ensemble: one video's frames -> its prediction rows."""
    space: EmotionSpace
    card: SpaceCard
    ensemble: LandmarkEnsemble
    ensemble_card: EnsembleCard
    space_sha256: str

    def rows(self, video: VideoSource, frames: VideoFrames, run_id: str) -> list[dict]:
        """The video's row, then a row per valid frame (see schemas.predictions.space_prediction_columns)."""
        common = self._common(video, run_id, frames.frames_total, len(frames.vectors))
        if not len(frames.vectors):
            return [{**common, "level": "video", "status": "no_face"}]
        probs, learned = self.ensemble.predict(frames.vectors)
        coords, clusters, strength = self.space.project(learned)
        labels = self.card.labels
        video_label = labels[int(video_probabilities(probs, self.ensemble_card.smoothing).argmax())]
        video = {**common, "level": "video", "status": "ok", **self._axes(coords.mean(axis=0)),
                 "cluster": Counter(clusters.tolist()).most_common(1)[0][0],
                 "cluster_strength": float(strength.mean()), "predicted_label": video_label}
        frame_rows = [{**common, "level": "frame", "status": "ok", "frame_index": int(i), "timestamp_s": float(t),
                       **self._axes(c), "cluster": int(k), "cluster_strength": float(s),
                       "predicted_label": labels[int(p.argmax())]}
                      for i, t, c, k, s, p in zip(frames.frame_indices, frames.timestamps, coords, clusters,
                                                  strength, probs)]
        return [video, *frame_rows]

    def failed_row(self, video: VideoSource, run_id: str, error: str) -> dict:
        return {**self._common(video, run_id, 0, 0), "level": "video", "status": "failed", "error": error[:2000]}

    def _common(self, video: VideoSource, run_id: str, total: int, valid: int) -> dict:
        return {PARTITION_COLUMN: video.video_id, MODEL_PARTITION: self.card.name, "model_sha256": self.space_sha256,
                "frames_total": total, "frames_valid": valid, "source": video.source, "run_id": run_id,
                "predicted_at": dt.datetime.now(dt.timezone.utc)}

    def _axes(self, point: np.ndarray) -> dict:
        return {axis: float(point[i]) for i, axis in enumerate(SPACE_AXES[:len(point)])}


def project_output(output: str, space_dir: str, validation: ValidationConfig, *, force: bool = False,
                   command: Optional[list[str]] = None, say: Callable[[str], None] = print) -> dict:
    """Project every video of ``output`` (the caller holds its lock); return the predict manifest entry."""
    started = time.time()
    output = output.rstrip("/")
    output_manifest(output)
    space, card, ensemble, ecard = load_space(space_dir)
    projector = Projector(space, card, ensemble, ecard, card.space_sha256)
    videos = video_sources(output)
    extracted = [v for v in videos if v.status != "failed"]
    source = frame_source_of(ecard, output, [v.video_id for v in extracted][:20]) if extracted else None
    kept = {} if force else kept_predictions(output, card.name, card.space_sha256)
    todo = [v for v in videos if v.status == "failed" or kept.get(v.video_id) != v.source]
    run_id = new_run_id()
    staging = os.path.join(output, STAGING, run_id)
    metadata = {"affectflow.run_id": run_id,
                "affectflow.model": json_metadata({"name": card.name, "sha256": card.space_sha256})}
    schema = space_prediction_file_schema()
    for number, video in enumerate(todo, 1):
        write_prediction_rows(staging, _video_rows(projector, source, output, video, run_id), schema, metadata)
        if number % 100 == 0:
            say(f"  projected {number}/{len(todo)} videos")
    table = predictions_table(card.name)
    present = {v.video_id for v in videos}
    stale = [v for v in _stored_ids(output, table) if v not in present]
    commit_staging(staging, output, {v: (table,) for v in [*(t.video_id for t in todo), *stale]})
    counts = _video_counts(output, table)
    entry = {"run_id": run_id, "kind": "space", "command": command, "model": card.name,
             "model_dir": str(Path(space_dir).resolve()), "model_sha256": card.space_sha256, "task": SPACE_TASK,
             "dimensions": card.dimensions, "labels": list(card.labels), "ensemble": ecard.name,
             "videos": len(videos), "projected": len(todo), "kept": len(videos) - len(todo), "removed": len(stale),
             "counts": counts, "packages": package_versions(), "seconds": round(time.time() - started, 3)}
    if "://" not in output:
        entry["report"] = str(write_projection_report(output, table, space, card))
    _write_json(os.path.join(output, table, PREDICT_MANIFEST), entry)
    if validation.enabled:
        from pipelines.validation.predictions import PredictedModel, validate_predictions
        report = validate_predictions(output, PredictedModel.from_manifest(entry), validation)
        entry["validation"] = {**report.manifest_entry(), "summary": report.summary()}
        _write_json(os.path.join(output, table, PREDICT_MANIFEST), entry)
    return entry


def project(output: str, space_dir: str, validation: ValidationConfig, *, force: bool = False, wait_s: float = 0.0,
            command: Optional[list[str]] = None, say: Callable[[str], None] = print) -> dict:
    """`affectflow space project`: `project_output` under the output's lock (crashed commits finished first)."""
    output = output.rstrip("/")
    if "://" in output:
        raise UsageError(f"{output}: space project writes to a local output folder")
    with OutputLock(output, new_run_id(), " ".join(command or []), wait_s):
        recover_commits(output)
        return project_output(output, space_dir, validation, force=force, command=command, say=say)


def _video_rows(projector: Projector, source: Optional[FrameSource], output: str, video: VideoSource,
                run_id: str) -> list[dict]:
    """The video's rows; a failed row (with the reason) when its extraction failed or its frames cannot be read."""
    if video.status == "failed" or source is None:
        failure = DeadLetter(video.video_id, "", "extract", "ExtractionFailed",
                             "the video's extraction failed: see its dead_letters rows")
        return [projector.failed_row(video, run_id, f"{failure.stage}: {failure.error_type}: {failure.error_message}")]
    try:
        return projector.rows(video, source.frames(output, video.video_id), run_id)
    except Exception as exc:        # one unreadable video must not stop the others: it gets a failed row
        return [projector.failed_row(video, run_id, f"project: {type(exc).__name__}: {exc}")]


def _stored_ids(output: str, table: str) -> list[str]:
    root = Path(output) / table
    return sorted(p.name.split("=", 1)[1] for p in root.glob(f"{PARTITION_COLUMN}=*")) if root.is_dir() else []


def _video_counts(output: str, table: str) -> dict[str, int]:
    import pyarrow.compute as pc
    rows = dataset(output, table).to_table(columns=["status"], filter=pc.field("level") == "video")
    counts = {"ok": 0, "no_face": 0, "failed": 0}
    for status in rows.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return counts


def _write_json(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))


# --- pictures ---------------------------------------------------------------------------------------------------

def _scatter(space: EmotionSpace, codes: Optional[np.ndarray], labels, projected: Optional[list] = None) -> str:
    """Base64 PNG: the fitted frames (x, y) coloured by label (grey without labels), and projected videos' points."""
    embedding = space.embedding
    shown = np.random.default_rng(0).permutation(len(embedding))[:SHOWN_POINTS]
    fig = new_figure(6.5, 5.5)
    ax = fig.subplots()
    if codes is None:
        ax.scatter(embedding[shown, 0], embedding[shown, 1], s=4, c="#bbbbbb", label="fitted frames")
    else:
        from matplotlib import colormaps
        cmap = colormaps["tab10"]
        for i, label in enumerate(labels):
            rows = shown[codes[shown] == i]
            ax.scatter(embedding[rows, 0], embedding[rows, 1], s=4, color=cmap(i % 10), label=label, alpha=0.6)
    for video_id, x, y in projected or []:
        ax.scatter([x], [y], marker="x", s=40, c="black")
        ax.annotate(video_id, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=7, markerscale=3, loc="best")
    return png(fig)


def _clusters_table(card: SpaceCard) -> str:
    rows = [[cluster if cluster != "-1" else "none (-1)", sum(counts.values()),
             ", ".join(f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))]
            for cluster, counts in sorted(card.clusters.items(), key=lambda kv: int(kv[0]))]
    return table(["cluster", "frames", "frames per label"], rows)


def _page(title: str, intro: str, body: str) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>{intro}</p>{body}</body></html>")


def space_page(space: EmotionSpace, codes: np.ndarray, card: SpaceCard) -> str:
    """space.html: the fitted frames coloured by label, and each cluster's composition."""
    return _page(card.name, f"{card.training.get('frames')} class-balanced frames of {card.training.get('videos')} "
                 f"videos through the ensemble {escape(card.ensemble.get('name'))}, laid out by supervised UMAP "
                 f"({card.dimensions}-D; x and y shown) and clustered by HDBSCAN.",
                 f"<img alt='the space' src='data:image/png;base64,{_scatter(space, codes, card.labels)}'>"
                 + _clusters_table(card))


def write_projection_report(output: str, table_path: str, space: EmotionSpace, card: SpaceCard,
                            limit: int = 200) -> Path:
    """``<output>/reports/space/<space>.html``: the space with the run's videos (the first ``limit`` by id)."""
    import pyarrow.compute as pc
    rows = dataset(output, table_path).to_table(
        columns=[PARTITION_COLUMN, "x", "y", "cluster", "predicted_label", "frames_valid"],
        filter=(pc.field("level") == "video") & (pc.field("status") == "ok")).sort_by(PARTITION_COLUMN)
    data = rows.slice(0, limit).to_pylist()
    picture = _scatter(space, None, card.labels, [(r[PARTITION_COLUMN], r["x"], r["y"]) for r in data])
    listing = table(["video", "label", "cluster", "frames", "x", "y"],
                    [[r[PARTITION_COLUMN], r["predicted_label"], r["cluster"], r["frames_valid"], f"{r['x']:.2f}",
                      f"{r['y']:.2f}"] for r in data])
    path = Path(output) / REPORT_DIR / f"{card.name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(f"{card.name}: projected videos", f"{rows.num_rows} videos of this output projected into "
                          f"the space (the first {limit} shown, a cross at each video's mean point); grey: the "
                          "frames the space was fitted on.",
                          f"<img alt='projected videos' src='data:image/png;base64,{picture}'>" + listing
                          + "<h2>Clusters of the space</h2>" + _clusters_table(card)))
    return path
