"""Smoothing a time series of class probabilities: a centred moving average or an exponential one.

Both are convex combinations of probability rows, so each smoothed row still sums to 1.

* ``window``: centred moving average over ``window`` (odd) consecutive rows; at the ends of the
  series the window is cut short (the mean of the rows it covers);
* ``ema``: s_0 = p_0, s_t = alpha * p_t + (1 - alpha) * s_(t-1);
* ``none``: the rows as they are.
"""
from __future__ import annotations

import numpy as np

METHODS = ("none", "window", "ema")


def smooth(probs: np.ndarray, method: str, window: int = 5, alpha: float = 0.3) -> np.ndarray:
    """float[n, k] rows in time order -> float32[n, k] smoothed (see the module docstring)."""
    probs = np.asarray(probs, np.float64)
    n = len(probs)
    if n == 0 or method == "none":
        return probs.astype(np.float32)
    if method == "window":
        half = window // 2
        csum = np.vstack([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0)])
        lo = np.clip(np.arange(n) - half, 0, n)
        hi = np.clip(np.arange(n) + half + 1, 0, n)
        return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)
    if method == "ema":
        out = np.empty_like(probs)
        out[0] = probs[0]
        for t in range(1, n):               # sequential by definition; n is one video's frames
            out[t] = alpha * probs[t] + (1.0 - alpha) * out[t - 1]
        return out.astype(np.float32)
    raise ValueError(f"unknown smoothing method {method!r}; use one of {METHODS}")
