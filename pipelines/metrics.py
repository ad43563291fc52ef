"""Classification metrics from confusion matrices, vectorised over any leading axes.

Everything starts from integer confusion matrices ``cm[..., true, predicted]`` so that a
sweep over (fallback, threshold, fold) is one array and every metric of every cell is a
handful of numpy reductions. Definitions follow scikit-learn's defaults, so the numbers
match ``accuracy_score``, ``f1_score(average=None | "macro")``, ``balanced_accuracy_score``
and ``confusion_matrix`` on the same labels:

* accuracy: trace / total;
* per-class F1: 2 TP / (2 TP + FP + FN), 0 where that is 0/0;
* macro F1: the mean of per-class F1 over the classes *present* (in the truth or the
  predictions), as ``f1_score(average="macro")`` without ``labels``;
* UAR (unweighted average recall, balanced accuracy): the mean recall over the classes
  present in the truth.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("accuracy", "macro_f1", "uar")


def encode(values, vocabulary: Sequence[str]) -> np.ndarray:
    """int64[n] position of each value in ``vocabulary``; -1 for null or a value not in it."""
    import pyarrow as pa            # here, not at the top: the command line's parser imports this module
    import pyarrow.compute as pc
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(values, dtype=object),
                                                                                   type=pa.string())
    codes = pc.index_in(arr, value_set=pa.array(list(vocabulary), type=pa.string()))
    return np.asarray(pc.fill_null(codes, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def confusion_matrices(true: np.ndarray, pred: np.ndarray, n_classes: int, group: np.ndarray | None = None,
                       n_groups: int = 1) -> np.ndarray:
    """int64[n_groups, K, K] confusion matrices (rows true, columns predicted) of codes in [0, K).

    ``group`` (int[n] in [0, n_groups), e.g. the fold of each video) splits the rows; without it
    there is one group.
    """
    true = np.asarray(true, np.int64)
    pred = np.asarray(pred, np.int64)
    if len(true) and (true.min() < 0 or pred.min() < 0 or true.max() >= n_classes or pred.max() >= n_classes):
        raise ValueError("confusion_matrices: every code must be in [0, n_classes)")
    group = np.zeros(len(true), np.int64) if group is None else np.asarray(group, np.int64)
    flat = (group * n_classes + true) * n_classes + pred
    return np.bincount(flat, minlength=n_groups * n_classes * n_classes).reshape(n_groups, n_classes, n_classes)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(np.broadcast(num, den).shape, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """float[..., K] F1 of every class of confusion matrices cm[..., K, K]."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    return _divide(2 * tp, cm.sum(axis=-1) + cm.sum(axis=-2))


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """float[..., K] recall of every class (0 for a class without true videos)."""
    return _divide(np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64), cm.sum(axis=-1))


def accuracy(cm: np.ndarray) -> np.ndarray:
    """float[...] trace / total (0 for an empty matrix)."""
    return _divide(np.trace(cm, axis1=-2, axis2=-1).astype(np.float64), cm.sum(axis=(-2, -1)))


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """float[...] mean F1 over the classes present in the truth or the predictions."""
    present = (cm.sum(axis=-1) + cm.sum(axis=-2)) > 0
    return _divide((per_class_f1(cm) * present).sum(axis=-1), present.sum(axis=-1))


def uar(cm: np.ndarray) -> np.ndarray:
    """float[...] unweighted average recall: mean recall over the classes present in the truth."""
    support = cm.sum(axis=-1) > 0
    return _divide((per_class_recall(cm) * support).sum(axis=-1), support.sum(axis=-1))


def scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """{accuracy, macro_f1, uar}: each float[...] over the leading axes of cm[..., K, K]."""
    return {"accuracy": accuracy(cm), "macro_f1": macro_f1(cm), "uar": uar(cm)}


def summary(cm: np.ndarray, classes: Sequence[str]) -> dict:
    """JSON-ready metrics of one confusion matrix int[K, K] whose axes are ``classes``.

    Per-class F1 and recall are null for a class absent from both truth and predictions
    (resp. from the truth), as they take no part in the macro averages.
    """
    cm = np.asarray(cm, np.int64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    f1, recall = per_class_f1(cm), per_class_recall(cm)
    return {
        "n": int(cm.sum()),
        **{k: float(v) for k, v in scores(cm).items()},
        "classes": list(classes),
        "per_class_f1": {c: (float(f1[i]) if support[i] + predicted[i] else None) for i, c in enumerate(classes)},
        "per_class_recall": {c: (float(recall[i]) if support[i] else None) for i, c in enumerate(classes)},
        "support": {c: int(support[i]) for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }
