"""The threshold sweep, its cross-validation, and the numbers of one label setting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from models.aggregation import apply_methods
from pipelines.folds import assign_folds, can_stratify
from pipelines.metrics import METRICS, confusion_matrices, encode, scores, summary
from schemas.columns import FALLBACKS

from pipelines.calibration.constants import DEFAULT_FOLDS

_TIE = 1e-12


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
        "cv_scheme": ("grouped by subject_id" if grouped else "by video")
                     + (", stratified by true label" if can_stratify(true, n_folds)
                        else f", not stratified (every class has fewer than {n_folds} videos)"),
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
