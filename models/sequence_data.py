"""Per-video frame features as fixed-length sequences, and the statistics fitted on them (numpy only).

A video is its primary face's frames in time order: ``features float32[n, d]`` and ``valid
bool[n]`` (a face was found and every feature is present). A model sees ``x float32[T, d]``
and ``mask bool[T]``:

* ``n > T``: the whole video is resampled to T evenly spaced frames (the first and the last
  are always kept, so the end of a long video is never cut off); faceless frames are resampled
  with the others, so the spacing in time stays even;
* ``n <= T``: the frames are followed by padding;
* masked steps (padding, frames without a face or with a missing feature) hold 0.0 so no NaN
  enters a graph; the models never read them (models.sequence passes the mask to every layer).

`Standardizer` z-scores each feature with statistics of the valid frames of the training
videos only, fitted batch by batch (Chan et al.'s parallel update), so a training set larger
than memory is fitted while streaming.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# The video-level models (models.sequence builds them). frame-average has no recurrence: a
# control that cannot see the order of frames, next to the three RNN models of the paper.
SEQUENCE_KINDS = ("rnn-attention", "rnn-conv", "rnn-average", "frame-average")
PAPER_KINDS = SEQUENCE_KINDS[:3]
# The models that map a video into the semantic emotion space (models.semantic builds them).
SEMANTIC_KINDS = ("semantic-bilstm", "semantic-transformer", "semantic-dense")


def resample_indices(n_frames: int, length: int) -> np.ndarray:
    """int64 indices of at most ``length`` evenly spaced frames of ``range(n_frames)``.

    ``n_frames <= length``: every frame. Otherwise ``rint(linspace(0, n - 1, length))``, which
    keeps the first and the last frame and is strictly increasing (the spacing exceeds 1).
    """
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    if n_frames <= length:
        return np.arange(n_frames, dtype=np.int64)
    if length == 1:
        return np.zeros(1, np.int64)
    return np.rint(np.linspace(0.0, n_frames - 1, length)).astype(np.int64)


def fixed_length(features: np.ndarray, valid: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One video -> (x float32[length, d], mask bool[length]); see the module docstring.

    A frame with a non-finite feature is masked whatever ``valid`` says.
    """
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be [frames, features], got shape {features.shape}")
    valid = np.asarray(valid, bool) & np.isfinite(features).all(axis=1)
    idx = resample_indices(len(features), length)
    x = np.zeros((length, features.shape[1]), np.float32)
    mask = np.zeros(length, bool)
    mask[:len(idx)] = valid[idx]
    x[:len(idx)] = np.where(mask[:len(idx), None], features[idx], 0.0)
    return x, mask


@dataclass
class Standardizer:
    """Per-feature mean and population SD over valid frames; a feature with SD <= eps is only centred.

    ``partial_fit`` merges batches exactly (float64), so fitting batch by batch equals one fit on
    all of them; ``transform`` gives float32 with 0 at masked steps. ``to_dict``/``from_dict``
    round-trip through JSON (the model card stores it).
    """
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None
    count: int = 0
    eps: float = 1e-8
    _m2: Optional[np.ndarray] = field(default=None, repr=False)

    def partial_fit(self, x: np.ndarray, mask: np.ndarray) -> "Standardizer":
        """Add the valid frames of ``x[..., d]`` (``mask[...]`` selects them)."""
        values = np.asarray(x)[np.asarray(mask, bool)].astype(np.float64)
        n_b = len(values)
        if n_b == 0:
            return self
        mean_b = values.mean(axis=0)
        m2_b = ((values - mean_b) ** 2).sum(axis=0)
        if self.count == 0:
            self.mean, self._m2, self.count = mean_b, m2_b, n_b
        else:
            n = self.count + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / n)
            self._m2 = self._m2 + m2_b + delta ** 2 * (self.count * n_b / n)
            self.count = n
        self.std = np.sqrt(self._m2 / self.count)
        return self

    def transform(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """z-scores, float32, 0 at masked steps."""
        if self.mean is None:
            raise ValueError("the standardizer saw no valid frame: nothing to scale by")
        scale = np.where(self.std > self.eps, self.std, 1.0)
        z = ((np.asarray(x, np.float64) - self.mean) / scale).astype(np.float32)
        z[~np.asarray(mask, bool)] = 0.0
        return z

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "count": int(self.count), "eps": self.eps}

    @classmethod
    def from_dict(cls, data: dict) -> "Standardizer":
        scaler = cls(eps=float(data.get("eps", 1e-8)))
        scaler.mean = np.asarray(data["mean"], np.float64)
        scaler.std = np.asarray(data["std"], np.float64)
        scaler.count = int(data["count"])
        scaler._m2 = scaler.std ** 2 * scaler.count
        return scaler


def mean_std_features(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64[B, 2d]: each video's mean and population SD over its valid frames (0 without any):
    the non-sequence baseline's input, blind to the order of frames by construction."""
    valid = np.asarray(mask, bool)[..., None]
    n = np.maximum(valid.sum(axis=1), 1).astype(np.float64)
    values = np.where(valid, x, 0.0).astype(np.float64)
    mean = values.sum(axis=1) / n
    var = np.where(valid, (x - mean[:, None, :]) ** 2, 0.0).sum(axis=1) / n
    return np.concatenate([mean, np.sqrt(var)], axis=1)


def balanced_class_weights(codes: np.ndarray, n_classes: int) -> dict[int, float]:
    """{class: n / (K * n_class)}, scikit-learn's "balanced" weights; a class absent here gets 0."""
    counts = np.bincount(np.asarray(codes, np.int64), minlength=n_classes).astype(np.float64)
    return {c: float(counts.sum() / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}
