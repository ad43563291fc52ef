"""`affectflow calibrate`: fit the threshold method's threshold and fallback on labelled videos.

    affectflow calibrate --output RUN_DIR --manifest labels.csv [--folds 5] [--thresholds 0.05:1.0:0.05]

Inputs: a run's frame Parquet (no video is decoded) and a manifest (CSV or Parquet) with
``label``, ``video_id`` or ``path``, and optionally ``subject_id``. Steps:

1. Count table: frames per (video, label) of the primary face, grouped by DuckDB (or a
   batched pyarrow scan for non-local paths), so frame rows never sit in memory; the long
   result is pivoted to ``int64[videos, labels]``.
2. Per label setting -- *specific* (the model's labels) and *broad* (through ``broad_map``)
   -- the manifest's labels are mapped onto the setting's vocabulary; videos whose label is
   not in it, and videos without a face frame, are left out and reported.
3. Folds: grouped by subject when the manifest has subject ids (no person in a training
   and a test fold), stratified by label otherwise.
4. Sweep: ``apply_methods`` over the whole count matrix for every (fallback, threshold);
   each gives one confusion matrix per fold, so every metric of every cell is a reduction
   of an ``int64[fallbacks, thresholds, folds, K, K]`` array.
5. Cross-validation: for each fold, the (fallback, threshold) with the best training-fold
   score is scored on the held-out fold. The paper's figure -- for each threshold, the mean
   over the test folds, then the best threshold -- is reported beside it: it picks the
   threshold after seeing the test folds, so it is optimistic.
6. The threshold and fallback fitted on all labelled videos are written as a config
   fragment (``threshold.yaml``) that ``affectflow run`` and ``affectflow aggregate`` take
   with ``--config``; the report (HTML with embedded figures), JSON with every number and
   the per-video predictions go beside it.

Ties in the selection go to the first candidate in (fallback, threshold) order: the
``neutral`` fallback before ``top1``, then the smallest threshold.
"""
from __future__ import annotations

import argparse
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from pipelines.metrics import METRICS, confusion_matrices, encode, scores, summary
from schemas.tables import FALLBACKS, PARTITION_COLUMN, prob_column
from transforms.aggregate import AggregationSettings, apply_methods

DEFAULT_THRESHOLDS = "0.05:1.0:0.05"
DEFAULT_FOLDS = 5
SETTINGS = ("specific", "broad")
ENGINES = ("auto", "duckdb", "pyarrow")
MANIFEST_STRING_COLUMNS = ("video_id", "path", "label", "subject_id")
REPORT_FILES = {"html": "report.html", "json": "calibration.json", "fragment": "threshold.yaml",
                "predictions": "predictions.parquet"}
CAVEAT = ("The paper's figure (for each threshold the mean accuracy over the {folds} test folds, then the best "
          "threshold) chooses the threshold after seeing the test folds, so it is optimistic. The cross-validated "
          "figure chooses the threshold and fallback on the training folds only and scores them on the held-out "
          "fold; it estimates what the fitted threshold will do on new videos.")
_TIE = 1e-12
# Beam (FileSystems, pipelines.outputs) is imported inside the functions that read or write:
# the CLI imports this module to build its parser, and every affectflow command would
# otherwise pay Beam's import time.


# --- count table --------------------------------------------------------------------------

@dataclass(frozen=True)
class CountTable:
    """Per-video frame-label counts of a run's primary faces."""
    video_ids: np.ndarray        # object[videos], sorted
    counts: np.ndarray           # int64[videos, labels]: frames whose primary face has each label
    faceless_frames: np.ndarray  # int64[videos]: frames without a face
    labels: tuple[str, ...]


def frame_labels(output: str) -> tuple[str, ...]:
    """The model labels of a run, in the model's order, from the frame table's ``prob_*`` columns."""
    from pipelines.outputs import dataset
    prefix = prob_column("")
    return tuple(n[len(prefix):] for n in dataset(output, "frames").schema.names if n.startswith(prefix))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _long_counts_duckdb(output: str) -> pa.Table:
    """[video_id, emotion_label, frames] grouped by DuckDB; emotion_label null = frames without a face."""
    import duckdb
    root = output[len("file://"):] if output.startswith("file://") else output
    pattern = os.path.join(root, "frames", "**", "*.parquet").replace("'", "''")
    sql = (f"select {PARTITION_COLUMN}, emotion_label, count(*) as frames "
           f"from read_parquet('{pattern}', hive_partitioning = true, union_by_name = true, "
           f"hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}) "
           f"where face_index = 0 or face_index is null group by all")
    with duckdb.connect() as con:
        return con.sql(sql).to_arrow_table()


def _long_counts_pyarrow(output: str, batch_rows: int = 1 << 20) -> pa.Table:
    """As _long_counts_duckdb, from a batched pyarrow scan (any Beam filesystem path)."""
    from pipelines.outputs import dataset
    scanner = dataset(output, "frames").scanner(
        columns=[PARTITION_COLUMN, "emotion_label"], batch_size=batch_rows,
        filter=(pc.field("face_index") == 0) | pc.field("face_index").is_null())
    keys = [PARTITION_COLUMN, "emotion_label"]
    partials = [pa.Table.from_batches([b]).group_by(keys).aggregate([([], "count_all")])
                for b in scanner.to_batches() if b.num_rows]
    if not partials:
        return pa.table({PARTITION_COLUMN: pa.array([], pa.string()), "emotion_label": pa.array([], pa.string()),
                         "frames": pa.array([], pa.int64())})
    merged = pa.concat_tables(partials).group_by(keys).aggregate([("count_all", "sum")])
    return merged.select([*keys, "count_all_sum"]).rename_columns([*keys, "frames"])


def pivot_counts(long: pa.Table, labels: Sequence[str]) -> CountTable:
    """Long [video_id, emotion_label, frames] rows (one per pair) -> CountTable over ``labels``."""
    video_ids = np.unique(np.asarray(long.column(PARTITION_COLUMN).to_pylist(), dtype=object)) \
        if long.num_rows else np.zeros(0, object)
    row = encode(long.column(PARTITION_COLUMN), list(video_ids))
    label = long.column("emotion_label")
    col = encode(label, labels)
    unknown = (col < 0) & np.asarray(label.is_valid().to_numpy(zero_copy_only=False), bool)
    if unknown.any():
        bad = sorted({str(x) for x in np.asarray(label.to_pylist(), dtype=object)[unknown]})
        raise ValueError(f"frame labels {bad} are not in the label set {list(labels)}: calibrate with the config "
                         f"of the model that produced the run")
    frames = np.asarray(long.column("frames").to_numpy(zero_copy_only=False), np.int64)
    counts = np.zeros((len(video_ids), len(labels)), np.int64)
    faceless = np.zeros(len(video_ids), np.int64)
    has_label = col >= 0
    np.add.at(counts, (row[has_label], col[has_label]), frames[has_label])
    np.add.at(faceless, row[~has_label], frames[~has_label])
    return CountTable(video_ids, counts, faceless, tuple(labels))


def count_frame_labels(output: str, labels: Sequence[str], engine: str = "auto") -> CountTable:
    """Per-video counts of the primary face's frame label in ``output``/frames.

    engine: ``duckdb`` (local paths), ``pyarrow`` (a batched scan, any Beam filesystem), or
    ``auto`` (DuckDB for local paths, else pyarrow). Memory is bounded by the grouped result
    (videos x labels), never by the frame rows.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    use_duckdb = engine == "duckdb" or (engine == "auto" and _is_local(output))
    long = _long_counts_duckdb(output) if use_duckdb else _long_counts_pyarrow(output)
    return pivot_counts(long, labels)


# --- manifest -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelledVideos:
    """A manifest's labelled videos (rows without a label are counted, not kept)."""
    video_ids: np.ndarray   # object[n]
    labels: np.ndarray      # object[n], after the label map
    subjects: np.ndarray    # object[n], None where not given
    rows: int               # manifest rows, labelled or not
    unlabelled: int         # rows without a label


def parse_label_map(items: Sequence[str]) -> dict[str, str]:
    """``--label-map`` values -> {manifest label: model label}.

    Each item is a YAML file holding a mapping (``happiness: happy``) or comma-separated
    ``key=value`` pairs (``happiness=happy,sadness=sad``); later items win.
    """
    mapping: dict[str, str] = {}
    for item in items or []:
        if os.path.isfile(item) or item.lower().endswith((".yaml", ".yml")):
            loaded = yaml.safe_load(Path(item).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"label map {item} must be a YAML mapping, got {type(loaded).__name__}")
            mapping.update({str(k).strip(): str(v).strip() for k, v in loaded.items()})
            continue
        for pair in filter(None, (p.strip() for p in item.split(","))):
            if "=" not in pair:
                raise ValueError(f"--label-map takes a YAML file or key=value pairs, got {pair!r}")
            key, value = pair.split("=", 1)
            mapping[key.strip()] = value.strip()
    return mapping


def _read_manifest_table(path: str) -> pa.Table:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as fh:
        data = fh.read()
    if path.lower().endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return table.cast(pa.schema([pa.field(f.name, pa.string()) if f.name in MANIFEST_STRING_COLUMNS else f
                                     for f in table.schema]))
    # Ids and labels stay strings even when they look like numbers; an empty cell is null.
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in MANIFEST_STRING_COLUMNS},
                                   strings_can_be_null=True, null_values=[""])
    return pacsv.read_csv(io.BytesIO(data), convert_options=convert)


def _ids_from_paths(paths: list[Optional[str]], manifest: str, output: Optional[str]) -> list[Optional[str]]:
    """Video ids for manifest paths: the run's own (its videos table's source_path), else the id
    ``affectflow run`` gives a manifest row without a video_id."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.outputs import dataset
    from transforms.discover import make_video_id
    base = manifest.rsplit("/", 1)[0] + "/" if "/" in manifest else ""
    def resolve(p: str) -> str:
        return p if "://" in p or os.path.isabs(p) else os.path.normpath(os.path.join(base or ".", p))
    resolved = [None if p is None else resolve(p) for p in paths]
    known: dict[str, str] = {}
    if output is not None and FileSystems.exists(FileSystems.join(output, "videos")):
        videos = dataset(output, "videos").to_table(columns=[PARTITION_COLUMN, "source_path"])
        known = dict(zip(videos.column("source_path").to_pylist(), videos.column(PARTITION_COLUMN).to_pylist()))
    return [None if p is None else known.get(p) or make_video_id(p, base) for p in resolved]


def read_labelled_manifest(path: str, label_map: Optional[dict] = None, output: Optional[str] = None) -> LabelledVideos:
    """The labelled videos of a manifest (CSV or Parquet).

    Columns: ``label`` (required), ``video_id`` or ``path`` (one is required; a row's
    video_id wins, a path is resolved as ``affectflow run`` resolves it and looked up in
    ``output``'s video table), ``subject_id`` (optional). Labels are stripped and mapped
    through ``label_map``. Raises ValueError on a missing column or a duplicate video id.
    """
    table = _read_manifest_table(path)
    names = table.column_names
    if "label" not in names or not ({"video_id", "path"} & set(names)):
        raise ValueError(f"manifest {path} needs a label column and a video_id or path column (columns: {names})")
    n = table.num_rows
    ids = table.column("video_id").to_pylist() if "video_id" in names else [None] * n
    if "path" in names and any(i is None for i in ids):
        from_paths = _ids_from_paths(table.column("path").to_pylist(), path, output)
        ids = [i if i is not None else p for i, p in zip(ids, from_paths)]
    raw = table.column("label").to_pylist()
    subjects = table.column("subject_id").to_pylist() if "subject_id" in names else [None] * n
    label_map = label_map or {}
    keep = [i for i in range(n) if raw[i] is not None and str(raw[i]).strip()]
    missing_ids = [i for i in keep if ids[i] is None]
    if missing_ids:
        raise ValueError(f"manifest {path}: row(s) {[i + 1 for i in missing_ids[:10]]} have neither video_id nor path")
    labels = [label_map.get(str(raw[i]).strip(), str(raw[i]).strip()) for i in keep]
    kept_ids = [str(ids[i]) for i in keep]
    if len(set(kept_ids)) != len(kept_ids):
        dupes = sorted({v for v in kept_ids if kept_ids.count(v) > 1})[:10]
        raise ValueError(f"manifest {path}: duplicate video ids {dupes}")
    return LabelledVideos(video_ids=np.asarray(kept_ids, dtype=object), labels=np.asarray(labels, dtype=object),
                          subjects=np.asarray([None if subjects[i] is None else str(subjects[i]) for i in keep],
                                              dtype=object),
                          rows=n, unlabelled=n - len(keep))


def counts_for(videos: LabelledVideos, table: CountTable) -> tuple[np.ndarray, np.ndarray]:
    """(int64[n, labels] counts of the manifest's videos, bool[n] present in the run's frames)."""
    index = encode(list(videos.video_ids), list(table.video_ids))
    present = index >= 0
    counts = np.zeros((len(index), len(table.labels)), np.int64)
    counts[present] = table.counts[index[present]]
    return counts, present


# --- thresholds and folds -----------------------------------------------------------------

def parse_thresholds(text: str) -> np.ndarray:
    """``start:stop:step`` (inclusive of stop) or ``t1,t2,...`` -> sorted float[thresholds] in (0, 1].

    Values are rounded to 10 decimals so 3 * 0.05 is written as 0.15.
    """
    text = text.strip()
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"--thresholds takes start:stop:step with step > 0 and stop >= start, got {text!r}")
        start, stop, step = parts
        values = start + step * np.arange(int(np.floor((stop - start) / step + 1e-9)) + 1)
    else:
        values = np.asarray([float(p) for p in text.split(",") if p.strip()])
    values = np.unique(np.round(values, 10))
    if not len(values) or values.min() <= 0 or values.max() > 1:
        raise ValueError(f"thresholds must be in (0, 1], got {text!r}")
    return values


def _stratified_folds(strata: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Deal the videos of each stratum, shuffled, round-robin over the folds (sizes differ by <= 1)."""
    order = rng.permutation(len(strata))
    order = order[np.argsort(strata[order], kind="stable")]
    folds = np.empty(len(strata), np.int64)
    folds[order] = (np.arange(len(strata)) + rng.integers(k)) % k
    return folds


def _grouped_folds(strata: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Whole groups to folds, greedily balancing each class's share and the fold sizes.

    Groups go largest first (random order among equals) to the fold that keeps the spread
    of class shares and sizes over the folds smallest; an empty fold is filled first.
    """
    uniq, group = np.unique(groups.astype(str), return_inverse=True)
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} subjects cannot fill {k} folds without splitting a subject; lower --folds")
    n_classes = int(strata.max()) + 1
    per_group = np.zeros((len(uniq), n_classes), np.float64)
    np.add.at(per_group, (group, strata), 1)
    class_totals = np.maximum(per_group.sum(axis=0), 1)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-per_group[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((k, n_classes))
    assignment = np.empty(len(uniq), np.int64)
    eye = np.eye(k)[:, :, None]
    for g in order:
        candidates = fold_counts[None] + eye * per_group[g]              # [candidate, fold, class]
        cost = (candidates / class_totals).std(axis=1).sum(axis=1) + (candidates.sum(axis=2) / len(strata)).std(axis=1)
        sizes = fold_counts.sum(axis=1)
        allowed = sizes == 0 if (sizes == 0).any() else np.ones(k, bool)
        cost = np.where(allowed, cost, np.inf)
        best = np.flatnonzero(cost <= cost.min() + _TIE)
        f = best[np.argmin(sizes[best])]
        assignment[g] = f
        fold_counts[f] += per_group[g]
    return assignment[group]


def assign_folds(strata: np.ndarray, groups: Optional[np.ndarray], k: int, seed: int = 0) -> np.ndarray:
    """int64[n] fold in [0, k) of each video.

    strata: int[n] class codes. groups: object[n] subject ids (None = a group of its own) or
    None for plain stratified folds. With groups, no group is in two folds.
    """
    strata = np.asarray(strata, np.int64)
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    if len(strata) < k:
        raise ValueError(f"{len(strata)} scored videos cannot fill {k} folds; lower --folds")
    rng = np.random.default_rng(seed)
    if groups is None:
        return _stratified_folds(strata, k, rng)
    groups = np.asarray([f"video:{i}" if g is None else f"subject:{g}" for i, g in enumerate(groups)], dtype=object)
    return _grouped_folds(strata, groups, k, rng)


# --- sweep and selection ------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """Predictions and confusion matrices of every (fallback, threshold) and of Top-1."""
    threshold_pred: np.ndarray   # int16[fallbacks, thresholds, videos]: codes into the setting's labels
    threshold_cm: np.ndarray     # int64[fallbacks, thresholds, folds, K, K]
    top1_pred: np.ndarray        # int16[videos]
    top1_cm: np.ndarray          # int64[folds, K, K]


def sweep_thresholds(counts: np.ndarray, labels: Sequence[str], neutral: str, true: np.ndarray, folds: np.ndarray,
                     n_folds: int, thresholds: np.ndarray, fallbacks: Sequence[str] = FALLBACKS) -> Sweep:
    """Run both methods over the whole count matrix int64[videos, K] for every (fallback, threshold).

    Every video must have at least one classified frame and a true code in [0, K).
    """
    k_classes = len(labels)
    pred = np.empty((len(fallbacks), len(thresholds), len(true)), np.int16)
    cm = np.empty((len(fallbacks), len(thresholds), n_folds, k_classes, k_classes), np.int64)
    result = None
    for i, fallback in enumerate(fallbacks):
        for j, threshold in enumerate(thresholds):
            result = apply_methods(counts, labels, neutral, float(threshold), fallback)
            pred[i, j] = encode(result.threshold, labels)
            cm[i, j] = confusion_matrices(true, pred[i, j], k_classes, folds, n_folds)
    top1 = encode(result.top1, labels).astype(np.int16)
    return Sweep(pred, cm, top1, confusion_matrices(true, top1, k_classes, folds, n_folds))


def first_best(score: np.ndarray) -> tuple[int, int]:
    """(fallback, threshold) index of the best score[fallbacks, thresholds]; ties: first in that order."""
    flat = score.reshape(-1)
    return divmod(int(np.flatnonzero(flat >= flat.max() - _TIE)[0]), score.shape[1])


def _fold_mean_sd(per_fold: dict[str, np.ndarray]) -> tuple[dict, dict]:
    return ({m: per_fold[m].mean(axis=-1) for m in METRICS}, {m: per_fold[m].std(axis=-1) for m in METRICS})


def _floats(values: dict) -> dict:
    return {m: np.round(np.asarray(v, np.float64), 6).tolist() for m, v in values.items()}


@dataclass(frozen=True)
class SettingResult:
    """One label setting's numbers (``report``, JSON-ready) and per-video outcomes."""
    report: dict
    folds: np.ndarray            # int64[videos] (scored videos only)
    top1: np.ndarray             # object[videos]
    threshold_cv: np.ndarray     # object[videos]: out-of-fold prediction
    threshold_fitted: np.ndarray  # object[videos]: prediction at the threshold fitted on all videos


@dataclass(frozen=True)
class CrossValidation:
    """Per fold, the (fallback, threshold) chosen on the other folds, and its held-out result."""
    fallback: np.ndarray         # int[folds]: index into FALLBACKS
    threshold: np.ndarray        # int[folds]: index into the thresholds
    train_score: np.ndarray      # float[folds]: the selection metric on the training folds
    test_cm: np.ndarray          # int64[folds, K, K]: held-out confusion matrices


def cross_validate(sw: Sweep, select_by: str) -> CrossValidation:
    """Choose, for each fold, the best (fallback, threshold) by ``select_by`` on the training folds
    (all folds' confusion matrices minus the held-out one) and take its held-out confusion matrix."""
    n_folds = sw.threshold_cm.shape[2]
    total = sw.threshold_cm.sum(axis=2, keepdims=True)                       # [F, T, 1, K, K]
    train_score = scores(total - sw.threshold_cm)[select_by]                 # [F, T, folds]
    chosen = np.array([first_best(train_score[:, :, f]) for f in range(n_folds)]).reshape(n_folds, 2)
    fb, t, folds = chosen[:, 0], chosen[:, 1], np.arange(n_folds)
    return CrossValidation(fb, t, train_score[fb, t, folds], sw.threshold_cm[fb, t, folds])


def _fold_rows(folds: np.ndarray, true: np.ndarray, subjects: Optional[np.ndarray], labels: list[str],
               cv: CrossValidation, thresholds: np.ndarray, top1_cm: np.ndarray) -> list[dict]:
    """One JSON row per fold: size, subjects, classes, the choice made without it, its scores."""
    cv_scores, top1_scores = scores(cv.test_cm), scores(top1_cm)
    rows = []
    for f in range(len(cv.fallback)):
        in_fold = folds == f
        rows.append({"fold": f, "n": int(in_fold.sum()),
                     "subjects": None if subjects is None else len({s for s in subjects[in_fold] if s is not None}),
                     "class_counts": _class_counts(true[in_fold], labels),
                     "threshold": float(thresholds[cv.threshold[f]]), "fallback": FALLBACKS[cv.fallback[f]],
                     "train_score": float(cv.train_score[f]),
                     "test": {m: float(cv_scores[m][f]) for m in METRICS},
                     "top1_test": {m: float(top1_scores[m][f]) for m in METRICS}})
    return rows


def _class_counts(true: np.ndarray, labels: list[str]) -> dict[str, int]:
    n = np.bincount(true, minlength=len(labels))
    return {l: int(n[i]) for i, l in enumerate(labels) if n[i]}


def _sweep_report(sw: Sweep, thresholds: np.ndarray) -> dict:
    """Per fallback and threshold: mean and SD over the test folds, each fold, and all videos pooled."""
    test = scores(sw.threshold_cm)                                           # [F, T, folds]
    pooled = scores(sw.threshold_cm.sum(axis=2))                             # [F, T]
    mean, sd = _fold_mean_sd(test)
    return {"thresholds": [float(t) for t in thresholds],
            "by_fallback": {fb: {"mean_over_folds": _floats({m: mean[m][i] for m in METRICS}),
                                 "sd_over_folds": _floats({m: sd[m][i] for m in METRICS}),
                                 "per_fold": _floats({m: test[m][i].T for m in METRICS}),
                                 "all_videos": _floats({m: pooled[m][i] for m in METRICS})}
                            for i, fb in enumerate(FALLBACKS)}}


def evaluate_setting(counts: np.ndarray, true: np.ndarray, labels: Sequence[str], neutral: str,
                     subjects: Optional[np.ndarray], thresholds: np.ndarray, n_folds: int = DEFAULT_FOLDS,
                     seed: int = 0, select_by: str = "accuracy", name: str = "data set") -> SettingResult:
    """Cross-validate the threshold method against Top-1 on one label setting.

    counts: int64[videos, K] over ``labels``, every row with frames; true: int[videos] codes
    into ``labels``; subjects: object[videos] (None entries allowed) or None for stratified folds.
    Three choices of (fallback, threshold) are reported: per fold on the training folds
    (cross-validated), by the best mean over the test folds (the paper's, optimistic), and on
    all videos (``fitted``: what threshold.yaml gets).
    """
    if select_by not in METRICS:
        raise ValueError(f"select_by must be one of {METRICS}, got {select_by!r}")
    labels = list(labels)
    true = np.asarray(true, np.int64)
    grouped = subjects is not None and any(s is not None for s in subjects)
    subjects = np.asarray(subjects, dtype=object) if grouped else None
    folds = assign_folds(true, subjects, n_folds, seed)
    sw = sweep_thresholds(counts, labels, neutral, true, folds, n_folds, thresholds)
    cv = cross_validate(sw, select_by)

    mean_over_folds, _ = _fold_mean_sd(scores(sw.threshold_cm))               # [F, T]
    paper = first_best(mean_over_folds[select_by])
    fitted = first_best(scores(sw.threshold_cm.sum(axis=2))[select_by])
    cv_mean, cv_sd = _fold_mean_sd(scores(cv.test_cm))
    top1_mean, top1_sd = _fold_mean_sd(scores(sw.top1_cm))
    paper_mean = {m: float(mean_over_folds[m][paper]) for m in METRICS}

    def at(index: tuple[int, int]) -> dict:
        return {"threshold": float(thresholds[index[1]]), "fallback": FALLBACKS[index[0]]}

    seen = sum(np.bincount(codes.ravel(), minlength=len(labels)) for codes in (true, sw.top1_pred, sw.threshold_pred))
    report = {
        "evaluated": True,
        "labels": labels, "neutral": neutral, "n_videos": int(len(true)),
        "classes_seen": [l for i, l in enumerate(labels) if seen[i]],
        "class_counts": _class_counts(true, labels),
        "cv_scheme": "grouped by subject_id" if grouped else "stratified by true label",
        "groups": len({s for s in subjects if s is not None}) + int(sum(s is None for s in subjects)) if grouped else None,
        "select_by": select_by,
        "folds": _fold_rows(folds, true, subjects, labels, cv, thresholds, sw.top1_cm),
        "sweep": _sweep_report(sw, thresholds),
        "top1": {"mean_over_folds": _floats(top1_mean), "sd_over_folds": _floats(top1_sd),
                 "pooled": summary(sw.top1_cm.sum(axis=0), labels)},
        "cross_validated": {"mean_over_folds": _floats(cv_mean), "sd_over_folds": _floats(cv_sd),
                            "pooled_out_of_fold": summary(cv.test_cm.sum(axis=0), labels),
                            "fold_thresholds": [float(thresholds[t]) for t in cv.threshold],
                            "fold_fallbacks": [FALLBACKS[i] for i in cv.fallback]},
        "paper_style": {**at(paper), "mean_over_folds": _floats(paper_mean),
                        "note": "best threshold by the mean over the test folds: chosen after seeing them"},
        "optimism": _floats({m: paper_mean[m] - cv_mean[m] for m in METRICS}),
        "fitted": {**at(fitted), "all_videos_in_sample": summary(sw.threshold_cm.sum(axis=2)[fitted], labels)},
    }
    report["paper_table"] = paper_table_rows(report, name)
    names = np.asarray(labels, dtype=object)
    cv_pred = sw.threshold_pred[cv.fallback[folds], cv.threshold[folds], np.arange(len(true))]
    return SettingResult(report, folds, names[sw.top1_pred], names[cv_pred],
                         names[sw.threshold_pred[fitted[0], fitted[1]]])


def paper_table_rows(setting: dict, name: str) -> list[dict]:
    """The paper's table (data set | threshold accuracy | optimal threshold | Top-1 accuracy |
    difference): one cross-validated row, one row as the paper computed it (optimistic)."""
    top1 = setting["top1"]["mean_over_folds"]["accuracy"]
    cv = setting["cross_validated"]["mean_over_folds"]["accuracy"]
    paper = setting["paper_style"]["mean_over_folds"]["accuracy"]
    return [
        {"data_set": f"{name} (cross-validated)", "threshold_accuracy": cv,
         "optimal_threshold": setting["fitted"]["threshold"], "fallback": setting["fitted"]["fallback"],
         "fold_thresholds": setting["cross_validated"]["fold_thresholds"],
         "top1_accuracy": top1, "difference": round(cv - top1, 6)},
        {"data_set": f"{name} (mean over folds, as the paper: optimistic)", "threshold_accuracy": paper,
         "optimal_threshold": setting["paper_style"]["threshold"], "fallback": setting["paper_style"]["fallback"],
         "fold_thresholds": None, "top1_accuracy": top1, "difference": round(paper - top1, 6)},
    ]


# --- settings and the whole calibration ---------------------------------------------------

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
    return Calibration(report, pa.table(columns))


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

def fragment_text(report: dict) -> str:
    """threshold.yaml: ``job: {aggregate: {threshold, fallback}}`` with its provenance as comments."""
    fit = report["fitted"]
    setting = report["settings"][fit["setting"]]
    cv = setting["cross_validated"]["mean_over_folds"]["accuracy"]
    header = [
        f"affectflow calibrate, {report.get('created', '')}: fitted on {report['dataset']} "
        f"({setting['n_videos']} videos, {fit['setting']} setting, best {report['select_by']} on all of them).",
        f"Cross-validated accuracy {cv:.4f} ({report['folds']} folds, {setting['cv_scheme']}); "
        f"Top-1 {setting['top1']['mean_over_folds']['accuracy']:.4f}.",
        "Use: affectflow run --config runner_configs/local.yaml --config threshold.yaml ...",
        "     affectflow aggregate --output OUT --config threshold.yaml",
    ]
    body = yaml.safe_dump({"job": {"aggregate": {"threshold": round(float(fit["threshold"]), 10),
                                                 "fallback": fit["fallback"]}}}, sort_keys=False)
    return "".join(f"# {line}\n" for line in header) + body


def _write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
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
    from apache_beam.io.filesystems import FileSystems

    from pipelines.calibration_report import render_html
    paths = {k: FileSystems.join(report_dir, v) for k, v in REPORT_FILES.items()}
    report = {**calibration.report, "files": paths}
    _write_bytes(paths["fragment"], fragment_text(report).encode())
    _write_bytes(paths["json"], json.dumps(report, indent=1, allow_nan=False).encode())
    buffer = io.BytesIO()
    pq.write_table(calibration.predictions, buffer, compression="zstd")
    _write_bytes(paths["predictions"], buffer.getvalue())
    _write_bytes(paths["html"], render_html(report).encode())
    return paths


def format_paper_table(report: dict) -> str:
    """The paper-style tables of every evaluated setting, as text for the terminal."""
    lines = []
    for setting in SETTINGS:
        s = report["settings"][setting]
        if not s["evaluated"]:
            lines.append(f"{setting} setting: not evaluated ({s['reason']})")
            continue
        subjects = f" ({s['groups']} subjects)" if s["groups"] else ""
        lines.append(f"{setting} setting ({len(s['labels'])} labels: {', '.join(s['labels'])}): "
                     f"{s['n_videos']} videos, {report['folds']} folds {s['cv_scheme']}{subjects}")
        width = max(len(r["data_set"]) for r in s["paper_table"]) + 2
        lines.append(f"  {'data set':{width}s}{'threshold acc':>14s}  {'optimal threshold':22s}{'Top-1 acc':>10s}"
                     f"{'difference':>12s}")
        for r in s["paper_table"]:
            lines.append(f"  {r['data_set']:{width}s}{r['threshold_accuracy']:14.4f}  "
                         f"{r['optimal_threshold']:<5.2f} {r['fallback']:16s}{r['top1_accuracy']:10.4f}"
                         f"{r['difference']:+12.4f}")
        lines.append(f"  folds chose: " + ", ".join(f"{t:.2f}/{f}" for t, f in zip(
            s["cross_validated"]["fold_thresholds"], s["cross_validated"]["fold_fallbacks"]))
            + f"; the mean-over-folds row is optimistic by {s['optimism']['accuracy']:+.4f} accuracy")
        if s.get("left_out_labels"):
            lines.append(f"  left out (label not in this setting): {s['left_out_labels']}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `affectflow calibrate` (the CLI adds --config and --set)."""
    parser.add_argument("--output", required=True, metavar="RUN_DIR",
                        help="the run's output folder (its frames/ table is read; no video is decoded)")
    parser.add_argument("--manifest", required=True, metavar="PATH",
                        help="labelled manifest .csv/.parquet: label, video_id or path, optional subject_id")
    parser.add_argument("--report", metavar="DIR",
                        help="where report.html, calibration.json, threshold.yaml and predictions.parquet go "
                             "(default RUN_DIR/calibration)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"cross-validation folds (default {DEFAULT_FOLDS}); grouped by subject_id when the "
                             "manifest has one, stratified by label otherwise")
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, metavar="START:STOP:STEP|T1,T2,..",
                        help=f"thresholds to sweep, stop included (default {DEFAULT_THRESHOLDS}, as the paper)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--label-map", action="append", default=[], metavar="YAML_OR_KEY=VALUE",
                        help="map manifest labels to model labels: a YAML mapping file (happiness: happy) or "
                             "key=value pairs, comma-separated; repeatable")
    parser.add_argument("--select-by", choices=METRICS, default="accuracy",
                        help="metric that picks the threshold and fallback (default accuracy, as the paper)")
    parser.add_argument("--fit-on", choices=SETTINGS,
                        help="setting whose fitted threshold goes into threshold.yaml "
                             "(default specific, or broad when the manifest has broad labels)")
    parser.add_argument("--name", help="data set name in the report (default: the manifest's file name)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what groups the frame table into counts: duckdb, pyarrow (batched scan, any "
                             "filesystem), or auto (duckdb for local folders; default)")


def _settings(args) -> AggregationSettings:
    """Aggregation settings from --config/--set. When the run's frame table holds another
    model's labels (its prob_* columns) than the configured model's, those labels are used,
    with the config's neutral label and broad_map (which must then cover them)."""
    from models.registry import get_spec
    from pipelines.config import load_config
    from pipelines.extract import aggregation_settings
    config = load_config(args.config, None, args.set)
    labels = frame_labels(args.output)
    if not labels or labels == tuple(get_spec(config.job.emotion.model).labels):
        return aggregation_settings(config)
    a = config.job.aggregate
    return AggregationSettings(labels=labels, threshold=a.threshold, fallback=a.fallback,
                               neutral_label=a.neutral_label, broad_map=dict(a.broad_map))


def run(args) -> int:
    """`affectflow calibrate`: returns the exit code (0); raises ValueError on bad inputs."""
    from apache_beam.io.filesystems import FileSystems

    output = args.output.rstrip("/")
    if not FileSystems.exists(FileSystems.join(output, "frames")):
        raise ValueError(f"{output} has no frames/ table: give the output folder of an affectflow run")
    settings = _settings(args)
    thresholds = parse_thresholds(args.thresholds)
    label_map = parse_label_map(args.label_map)
    videos = read_labelled_manifest(args.manifest, label_map, output)
    table = count_frame_labels(output, settings.labels, args.engine)
    counts, present = counts_for(videos, table)
    name = args.name or os.path.splitext(os.path.basename(args.manifest.rstrip("/")))[0]
    subjects = videos.subjects if any(s is not None for s in videos.subjects) else None
    calibration = calibrate_counts(videos.video_ids, counts, videos.labels, subjects, settings, thresholds,
                                   args.folds, args.seed, args.select_by, args.fit_on, name)
    with_frames = counts.sum(axis=1) > 0
    calibration.report.update({
        "output": output, "manifest": args.manifest, "label_map": label_map,
        "videos": {"manifest_rows": videos.rows, "unlabelled": videos.unlabelled, "labelled": len(videos.video_ids),
                   "run_videos_with_frames": len(table.video_ids),
                   "not_in_run": int((~present).sum()), "not_in_run_ids": videos.video_ids[~present][:50].tolist(),
                   "without_face_frames": int((present & ~with_frames).sum()),
                   "without_face_frames_ids": videos.video_ids[present & ~with_frames][:50].tolist()}})
    paths = write_calibration(calibration, args.report or FileSystems.join(output, "calibration"))
    report, v = calibration.report, calibration.report["videos"]
    print(f"calibrate {name}: {v['labelled']} labelled videos; {v['not_in_run']} not in the run, "
          f"{v['without_face_frames']} without a face frame (left out)")
    print(format_paper_table(report))
    print(f"fitted on the {report['fitted']['setting']} setting: threshold {report['fitted']['threshold']:.2f}, "
          f"fallback {report['fitted']['fallback']}")
    for key in ("fragment", "html", "json", "predictions"):
        print(f"  {key:12s}{paths[key]}")
    return 0
