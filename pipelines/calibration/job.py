"""Calibrating on labelled count rows: both label settings, cross-validation, the fitted threshold;
and the whole `affectflow calibrate` run from a run's frame Parquet."""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from core.errors import UsageError
from core.settings import AggregateConfig
from models.aggregation import AggregationSettings
from pipelines.calibration.constants import DEFAULT_FOLDS, DEFAULT_THRESHOLDS, SETTINGS
from pipelines.calibration.counts import count_frame_labels
from pipelines.calibration.thresholds import parse_thresholds
from pipelines.calibration.labels import counts_for
from pipelines.labels import read_labelled_manifest
from pipelines.calibration.report import fragment_text, render_html
from pipelines.calibration.sweep import SettingResult, evaluate_setting
from pipelines.calibration.counts import frame_labels
from pipelines.metrics import encode
from pipelines.output.layout import has_table
from schemas.columns import FALLBACKS, PARTITION_COLUMN

REPORT_FILES = {"html": "report.html", "json": "calibration.json", "fragment": "threshold.yaml",
                "predictions": "predictions.parquet"}
CAVEAT = ("The paper's figure (for each threshold the mean accuracy over the {folds} test folds, then the best "
          "threshold) chooses the threshold after seeing the test folds, so it is optimistic. The cross-validated "
          "figure chooses the threshold and fallback on the training folds only and scores them on the held-out "
          "fold; it estimates what the fitted threshold will do on new videos.")


def setting_truth(setting: str, true_labels: np.ndarray,
                  settings: AggregationSettings) -> tuple[np.ndarray, Optional[str]]:
    """(int64[n] codes of the true labels in the setting's vocabulary, -1 = left out; reason to skip or None).

    specific: labels must be model labels. broad: a model label is mapped through broad_map,
    a broad label is kept as it is. A manifest whose labels are all broad labels (and not all
    model labels) is a broad-label manifest: the specific setting is skipped.
    """
    given = np.asarray([l is not None for l in true_labels], bool)
    specific = encode(true_labels, settings.labels)
    broad_own = encode(true_labels, settings.broad_labels)
    if setting == "specific":
        if given.any() and (broad_own[given] >= 0).all() and (specific[given] < 0).any():
            return np.full(len(specific), -1), ("the manifest's labels are broad labels: there is nothing to "
                                                "score per specific label")
        if not (specific >= 0).any():
            return specific, f"no manifest label is one of the model's labels {list(settings.labels)}"
        return specific, None
    to_broad = np.asarray([settings.broad_labels.index(settings.broad_map[l]) for l in settings.labels], np.int64)
    codes = np.where(specific >= 0, to_broad[np.maximum(specific, 0)], broad_own)
    if not (codes >= 0).any():
        return codes, f"no manifest label is a model label or a broad label {list(settings.broad_labels)}"
    return codes, None


@dataclass(frozen=True)
class Calibration:
    """Everything `affectflow calibrate` writes: ``report`` (JSON-ready) and per-video predictions."""
    report: dict
    predictions: pa.Table


def _left_out(labels: np.ndarray, codes: np.ndarray) -> dict[str, int]:
    values, n = np.unique(np.asarray([str(l) for l in labels[codes < 0]], dtype=object), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, n)}


def calibrate_counts(video_ids: np.ndarray, counts: np.ndarray, true_labels: np.ndarray,
                     subjects: Optional[np.ndarray], settings: AggregationSettings, thresholds: np.ndarray,
                     n_folds: int = DEFAULT_FOLDS, seed: int = 0, select_by: str = "accuracy",
                     fit_on: Optional[str] = None, name: str = "data set") -> Calibration:
    """Calibrate on labelled count rows: both settings, CV, the fitted threshold.

    video_ids: object[n]; counts: int64[n, labels] in ``settings.labels`` order (rows of 0 =
    no classified frame: left out); true_labels: object[n] (already label-mapped); subjects:
    object[n] or None. fit_on: the setting whose fitted threshold goes into the fragment
    (default: specific when it can be scored, else broad).
    """
    counts = np.asarray(counts, np.int64)
    true_labels = np.asarray(true_labels, dtype=object)
    with_frames = counts.sum(axis=1) > 0
    report = {"dataset": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "folds": n_folds, "seed": seed, "select_by": select_by,
              "thresholds": [float(t) for t in thresholds], "fallbacks": list(FALLBACKS),
              "model_labels": list(settings.labels), "neutral_label": settings.neutral_label,
              "broad_map": dict(settings.broad_map), "caveat": CAVEAT.format(folds=n_folds), "settings": {}}
    columns = {PARTITION_COLUMN: pa.array(list(video_ids), pa.string()),
               "subject_id": pa.array([None] * len(video_ids) if subjects is None else list(subjects), pa.string()),
               "true_label": pa.array(list(true_labels), pa.string()),
               "frames_with_face": pa.array(counts.sum(axis=1))}
    for setting in SETTINGS:
        codes, reason = setting_truth(setting, true_labels, settings)
        labels = settings.labels if setting == "specific" else settings.broad_labels
        neutral = settings.neutral_label if setting == "specific" else settings.broad_neutral
        setting_counts = counts if setting == "specific" else counts @ settings.broad_matrix()
        scored = (codes >= 0) & with_frames
        left_out = _left_out(true_labels, codes) if reason is None else {}
        if reason is None and not scored.any():
            reason = "no labelled video of this setting has a frame with a face"
        if reason is not None:
            report["settings"][setting] = {"evaluated": False, "reason": reason, "labels": list(labels)}
            continue
        result = evaluate_setting(setting_counts[scored], codes[scored], labels, neutral,
                                  None if subjects is None else np.asarray(subjects, dtype=object)[scored],
                                  thresholds, n_folds, seed, select_by, name)
        report["settings"][setting] = {**result.report, "left_out_labels": left_out}
        columns.update(_prediction_columns(setting, np.asarray(labels, dtype=object), codes, scored, result))
    evaluated = [s for s in SETTINGS if report["settings"][s]["evaluated"]]
    if not evaluated:
        reasons = "; ".join(f"{s}: {report['settings'][s]['reason']}" for s in SETTINGS)
        raise ValueError(f"nothing to calibrate: {reasons}")
    fit_on = fit_on or evaluated[0]
    if fit_on not in evaluated:
        raise ValueError(f"cannot fit on the {fit_on} setting: {report['settings'][fit_on]['reason']}")
    fitted = report["settings"][fit_on]["fitted"]
    report["fitted"] = {"setting": fit_on, "threshold": fitted["threshold"], "fallback": fitted["fallback"]}
    report["warnings"] = fit_warnings(report["settings"][fit_on])
    return Calibration(report, pa.table(columns))


MIN_VIDEOS_PER_CLASS = 5        # below this a fitted threshold says more about the sample than about the data


def fit_warnings(setting: dict) -> list[str]:
    """Why a fitted threshold should not be trusted: one true class, or too few videos of a class."""
    counts = setting["class_counts"]
    warnings = []
    if len(counts) < 2:
        warnings.append(f"the labelled videos have only one true class ({', '.join(counts)}): the threshold is fitted "
                        "to reproduce that class, not to tell classes apart")
    small = {c: n for c, n in counts.items() if n < MIN_VIDEOS_PER_CLASS}
    if small:
        warnings.append(f"{setting['n_videos']} labelled videos, and classes with fewer than {MIN_VIDEOS_PER_CLASS}: "
                        + ", ".join(f"{c} {n}" for c, n in small.items())
                        + "; the fitted threshold and the cross-validated figures are unreliable")
    return warnings


def _prediction_columns(setting: str, labels: np.ndarray, codes: np.ndarray, scored: np.ndarray,
                        result: SettingResult) -> dict[str, pa.Array]:
    """Per-video columns of one setting over all manifest rows (null where not scored)."""
    def spread(values):
        full = np.full(len(codes), None, dtype=object)
        full[scored] = values
        return full.tolist()
    true = np.where(codes >= 0, labels[np.maximum(codes, 0)], None)
    return {f"{setting}_true": pa.array(true.tolist(), pa.string()),
            f"{setting}_fold": pa.array(spread(result.folds), pa.int64()),
            f"{setting}_top1": pa.array(spread(result.top1), pa.string()),
            f"{setting}_threshold_cv": pa.array(spread(result.threshold_cv), pa.string()),
            f"{setting}_threshold_fitted": pa.array(spread(result.threshold_fitted), pa.string())}


# --- outputs ------------------------------------------------------------------------------


def _write_bytes(path: str, data: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    try:
        FileSystems.mkdirs(parent)
    except IOError:
        if not FileSystems.exists(parent):
            raise
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)


def write_calibration(calibration: Calibration, report_dir: str) -> dict[str, str]:
    """Write report.html, calibration.json, threshold.yaml and predictions.parquet; return their paths."""
    paths = {k: FileSystems.join(report_dir, v) for k, v in REPORT_FILES.items()}
    report = {**calibration.report, "files": paths}
    _write_bytes(paths["fragment"], fragment_text(report).encode())
    _write_bytes(paths["json"], json.dumps(report, indent=1, allow_nan=False).encode())
    buffer = io.BytesIO()
    pq.write_table(calibration.predictions, buffer, compression="zstd")
    _write_bytes(paths["predictions"], buffer.getvalue())
    _write_bytes(paths["html"], render_html(report).encode())
    return paths


def aggregation_settings_for(output: str, aggregate: AggregateConfig, model_labels: tuple[str, ...]) -> AggregationSettings:
    """The aggregate.* settings over the labels of the run's frame table (its prob_* columns): the
    configured model's, or another model's that wrote the run (the config's neutral label and
    broad_map must then cover them)."""
    labels = frame_labels(output)
    return AggregationSettings.from_config(aggregate, labels if labels else model_labels)


def calibrate_output(output: str, manifest: str, settings: AggregationSettings, *, report_dir: Optional[str] = None,
                     folds: int = DEFAULT_FOLDS, thresholds: str = DEFAULT_THRESHOLDS, seed: int = 0,
                     label_map: Optional[dict] = None, select_by: str = "accuracy", fit_on: Optional[str] = None,
                     name: Optional[str] = None, engine: str = "auto") -> tuple[Calibration, dict[str, str]]:
    """`affectflow calibrate`: count the run's frame labels, calibrate on the manifest's labelled
    videos, write report.html, calibration.json, threshold.yaml and predictions.parquet into
    ``report_dir`` (default ``<output>/calibration``); return the calibration and the paths."""
    output = output.rstrip("/")
    if not has_table(output, "frames"):
        raise UsageError(f"{output} has no frames/ table: give the output folder of an affectflow run")
    sweep_thresholds = parse_thresholds(thresholds)
    videos = read_labelled_manifest(manifest, label_map or {}, output)
    table = count_frame_labels(output, settings.labels, engine)
    counts, present = counts_for(videos, table)
    name = name or os.path.splitext(os.path.basename(manifest.rstrip("/")))[0]
    subjects = videos.subjects if any(s is not None for s in videos.subjects) else None
    calibration = calibrate_counts(videos.video_ids, counts, videos.labels, subjects, settings, sweep_thresholds,
                                   folds, seed, select_by, fit_on, name)
    with_frames = counts.sum(axis=1) > 0
    calibration.report.update({
        "output": output, "manifest": manifest, "label_map": label_map or {},
        "videos": {"manifest_rows": videos.rows, "unlabelled": videos.unlabelled, "labelled": len(videos.video_ids),
                   "run_videos_with_frames": len(table.video_ids),
                   "not_in_run": int((~present).sum()), "not_in_run_ids": videos.video_ids[~present][:50].tolist(),
                   "without_face_frames": int((present & ~with_frames).sum()),
                   "without_face_frames_ids": videos.video_ids[present & ~with_frames][:50].tolist()}})
    paths = write_calibration(calibration, report_dir or FileSystems.join(output, "calibration"))
    return calibration, paths
