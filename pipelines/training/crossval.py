"""Cross-validated evaluation: every method of the results table on the same subject-grouped folds.

A row of the table is an `Evaluation`: a method (a sequence model, the mean/SD baseline, or
the run's own Top-1 and threshold labels) on a feature set and task, with its out-of-fold
prediction for every video. Fitting happens on the training folds only: the sequence models'
scaler and early-stopping split, and the baseline's scaler, never see the test fold.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from core.settings import TrainConfig
from models.sequence_data import mean_std_features
from pipelines.folds import inner_validation
from pipelines.metrics import confusion_matrices, scores, summary
from pipelines.training.data import Task
from pipelines.training.store import SequenceStore

BASELINE = "mean-std-logreg"
RUN_METHODS = ("top1", "threshold")          # the run's own labels (video table columns <method>_label)
OTHER = "(other)"                             # a run label outside the task's classes


@dataclass
class Evaluation:
    """One method's out-of-fold predictions on one task (rows: the task's videos)."""
    method: str
    feature_set: str                           # "-" for the run's own labels
    task: str
    classes: tuple[str, ...]                   # the task's; predictions may add OTHER
    video_ids: np.ndarray
    true: np.ndarray                           # int64[n] class codes
    folds: np.ndarray                          # int64[n]
    predicted: np.ndarray                      # int64[n]; len(classes) = OTHER
    probabilities: Optional[np.ndarray] = None   # float32[n, classes] (models only)
    histories: list[dict] = field(default_factory=list)   # per fold: loss / val_loss per epoch, best epoch
    seconds: float = 0.0
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.method}.{self.feature_set}.{self.task}" if self.feature_set != "-" else f"{self.method}.{self.task}"

    def metrics(self) -> dict:
        """Per fold and pooled: UAR, accuracy, macro-F1, per-class recall, confusion (JSON-ready);
        mean and SD over folds of the three headline figures."""
        shown = self.classes + ((OTHER,) if (self.predicted == len(self.classes)).any() else ())
        k = len(shown)
        folds = np.unique(self.folds)
        cms = confusion_matrices(self.true, self.predicted, k, np.searchsorted(folds, self.folds), len(folds))
        per_fold = [summary(cm, shown) for cm in cms]
        headline = scores(cms)
        return {"classes": list(shown), "folds": per_fold,
                "mean": {m: float(np.mean(v)) for m, v in headline.items()},
                "sd": {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in headline.items()},
                "pooled": summary(cms.sum(axis=0), shown)}


def cross_validate_sequence(kind: str, store: SequenceStore, positions: np.ndarray, task: Task, codes: np.ndarray,
                            groups: np.ndarray, folds: np.ndarray, video_ids: np.ndarray, feature_set: str,
                            train: TrainConfig, progress: Callable[[str], None] = print) -> Evaluation:
    """Train ``kind`` once per fold on the other folds (early stopping on whole subjects held out of
    them), predict the fold; seeds ``train.seed + fold``."""
    from models.sequence import fit_sequence_model, predict_probabilities
    started = time.time()
    probabilities = np.zeros((len(codes), len(task.classes)), np.float32)
    histories = []
    for fold in np.unique(folds):
        test = folds == fold
        fit_pos, fit_codes, fit_groups = positions[~test], codes[~test], groups[~test]
        held = inner_validation(fit_codes, fit_groups, train.validation_share, train.seed + int(fold))
        fit = fit_sequence_model(kind, store.read, fit_pos[~held], fit_codes[~held], fit_pos[held], fit_codes[held],
                                 len(task.classes), store.width, store.length, train, train.seed + int(fold))
        probabilities[test] = predict_probabilities(fit.model, fit.scaler, store.read, positions[test])
        histories.append({"fold": int(fold), "best_epoch": fit.best_epoch, "seconds": round(fit.seconds, 2),
                          **fit.history})
        progress(f"  {kind} {feature_set} {task.name}: fold {int(fold) + 1}/{len(np.unique(folds))} "
                 f"best epoch {fit.best_epoch}, {fit.seconds:.1f} s")
    return Evaluation(kind, feature_set, task.name, task.classes, video_ids, codes, folds,
                      probabilities.argmax(axis=1), probabilities, histories, time.time() - started)


def video_statistics(store: SequenceStore, positions: np.ndarray) -> np.ndarray:
    """float64[n, 2d]: each video's per-feature mean and SD over its valid frames, read batch by batch."""
    return np.concatenate([mean_std_features(x, m) for x, m in store.batches(positions)]) if len(positions) else \
        np.zeros((0, 2 * store.width))


def cross_validate_baseline(statistics: np.ndarray, task: Task, codes: np.ndarray, folds: np.ndarray,
                            video_ids: np.ndarray, feature_set: str, seed: int) -> Evaluation:
    """Logistic regression (balanced class weights) on the per-video mean and SD of the features,
    scaled on the training folds: what the sequence models must beat to earn their cost."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    started = time.time()
    probabilities = np.zeros((len(codes), len(task.classes)), np.float32)
    for fold in np.unique(folds):
        test = folds == fold
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                   random_state=seed))
        model.fit(statistics[~test], codes[~test])
        probabilities[np.ix_(test, model.classes_)] = model.predict_proba(statistics[test])
    return Evaluation(BASELINE, feature_set, task.name, task.classes, video_ids, codes, folds,
                      probabilities.argmax(axis=1), probabilities, seconds=time.time() - started)


def run_label_evaluation(method: str, run_labels: Sequence[Optional[str]], model_labels: Sequence[str], task: Task,
                         codes: np.ndarray, folds: np.ndarray, video_ids: np.ndarray) -> Optional[Evaluation]:
    """The run's own ``<method>_label`` of each video as a prediction of the task's class, scored on
    the same folds; None when the emotion model's labels cannot name the task's classes (another
    vocabulary). A label outside the classes (e.g. neutral in a task without it) counts as OTHER."""
    if task.name == "multiclass":
        to_class = {label: label for label in model_labels if label in task.classes}
    else:
        to_class = {label: task.mapping.get(label) for label in model_labels if task.mapping.get(label)}
    if len(set(to_class.values())) < 2:
        return None
    index = {c: i for i, c in enumerate(task.classes)}
    predicted = np.asarray([index.get(to_class.get(label), len(task.classes)) for label in run_labels], np.int64)
    return Evaluation(method, "-", task.name, task.classes, video_ids, codes, folds, predicted,
                      note="the run's own video labels (the emotion model's frames aggregated); nothing is fitted")
