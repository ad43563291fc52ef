"""Constructed sequences whose class depends only on the order of their frames.

Per group (a pretend subject) one set of frames is drawn and emitted once per class, each
time in the class's order: ascending or descending along a latent value (and rise-then-fall /
fall-then-rise for 4 classes). Within a group every class therefore has the same frames, the
same faceless frames and the same length: the per-video mean and SD are identical, and any
order-blind method scores chance when groups stay together in the folds.
"""
from __future__ import annotations

import numpy as np

from core.elements import VideoSequence

ORDERS = ("ascending", "descending", "rise-fall", "fall-rise")


def _permutation(u: np.ndarray, order: str) -> np.ndarray:
    ranks = np.argsort(u, kind="stable")
    return {"ascending": ranks, "descending": ranks[::-1],
            "rise-fall": np.concatenate([ranks[0::2], ranks[1::2][::-1]]),
            "fall-rise": np.concatenate([ranks[0::2][::-1], ranks[1::2]])}[order]


def order_dataset(n_groups: int = 60, n_classes: int = 2, n_features: int = 6, lengths: tuple[int, int] = (20, 36),
                  faceless: float = 0.1, seed: int = 0) -> tuple[list[VideoSequence], np.ndarray, np.ndarray]:
    """(sequences, labels object[n], groups object[n]); NaN features where a frame has no face."""
    rng = np.random.default_rng(seed)
    loading = rng.normal(size=n_features)
    sequences, labels, groups = [], [], []
    for g in range(n_groups):
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        u = rng.normal(size=n)
        frames = u[:, None] * loading + 0.4 * rng.normal(size=(n, n_features)) + rng.normal(size=n_features)
        face = rng.random(n) >= faceless
        for order in ORDERS[:n_classes]:
            p = _permutation(u, order)
            features = frames[p].astype(np.float32)
            features[~face[p]] = np.nan
            sequences.append(VideoSequence(f"g{g}-{order}", features, face[p]))
            labels.append(order)
            groups.append(f"subject{g}")
    return sequences, np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
