"""Thresholds to sweep and cross-validation folds (scikit-learn's StratifiedGroupKFold / StratifiedKFold)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold


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


def can_stratify(strata: np.ndarray, k: int) -> bool:
    """scikit-learn stratifies only when some class has at least ``k`` videos."""
    return bool(len(strata)) and int(np.bincount(np.asarray(strata, np.int64)).max()) >= k


def assign_folds(strata: np.ndarray, groups: Optional[np.ndarray], k: int, seed: int = 0) -> np.ndarray:
    """int64[n] fold in [0, k) of each video.

    strata: int[n] class codes. groups: object[n] subject ids (None = a group of its own) or
    None for plain stratified folds: scikit-learn's StratifiedKFold (per class and in total,
    fold sizes differ by at most 1). With groups, StratifiedGroupKFold: no group is in two
    folds, and each fold's class shares stay as near the whole's as whole groups allow. When
    every class has fewer than ``k`` videos nothing can be stratified: KFold / GroupKFold.
    All shuffle with ``seed``.
    """
    strata = np.asarray(strata, np.int64)
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    if len(strata) < k:
        raise ValueError(f"{len(strata)} scored videos cannot fill {k} folds; lower --folds")
    stratified = can_stratify(strata, k)
    if groups is None:
        splitter = StratifiedKFold if stratified else KFold
        splits = splitter(n_splits=k, shuffle=True, random_state=seed).split(strata, strata)
    else:
        ids = np.asarray([f"video:{i}" if g is None else f"subject:{g}" for i, g in enumerate(groups)], dtype=object)
        n_groups = len(set(ids))
        if n_groups < k:
            raise ValueError(f"{n_groups} subjects cannot fill {k} folds without splitting a subject; lower --folds")
        splitter = StratifiedGroupKFold if stratified else GroupKFold
        splits = splitter(n_splits=k, shuffle=True, random_state=seed).split(strata, strata, ids)
    folds = np.empty(len(strata), np.int64)
    for fold, (_, test) in enumerate(splits):
        folds[test] = fold
    return folds
