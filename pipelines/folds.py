"""Cross-validation folds of videos, by subject when known (scikit-learn's StratifiedGroupKFold /
StratifiedKFold): calibration and training assign folds the same way."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold


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
    with warnings.catch_warnings():     # "the least populated class has only 1 member": stratified as near as can be
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test) in enumerate(splits):
            folds[test] = fold
    return folds


def inner_validation(strata: np.ndarray, groups: Optional[np.ndarray], share: float, seed: int = 0) -> np.ndarray:
    """bool[n]: the videos of a training fold held out for early stopping, about ``share`` of them.

    Whole subjects when ``groups`` are given (one fold of ``round(1 / share)`` grouped, stratified
    folds; fewer when there are fewer subjects), so no subject is on both sides. A training fold
    of one subject holds out some of its videos instead (early stopping then sees that person,
    the test fold still does not). Raises ValueError with fewer than two videos.
    """
    strata = np.asarray(strata, np.int64)
    k = max(2, int(round(1 / share)))
    if groups is not None and len(set(groups)) < 2:
        groups = None
    units = len(set(groups)) if groups is not None else len(strata)
    k = min(k, units)
    if k < 2:
        raise ValueError(f"{units} video(s) in a training fold: nothing left to hold out for early stopping")
    return assign_folds(strata, groups, k, seed) == 0


LEAVE_ONE_SUBJECT_OUT = "loso"


def leave_one_subject_out(groups: np.ndarray) -> np.ndarray:
    """int64[n]: one fold per subject (in order of first appearance). ValueError with fewer than two."""
    order = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    if len(order) < 2:
        raise ValueError(f"{len(order)} subject(s): leave-one-subject-out needs at least two")
    return np.asarray([order[g] for g in groups], np.int64)


def make_folds(strata: np.ndarray, groups: np.ndarray, folds: int | str, seed: int = 0) -> np.ndarray:
    """`assign_folds` with ``folds`` folds, or one fold per subject for ``folds == "loso"``."""
    if folds == LEAVE_ONE_SUBJECT_OUT:
        return leave_one_subject_out(groups)
    return assign_folds(strata, groups, int(folds), seed)
