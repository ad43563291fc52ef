"""Frame labels -> one label per video: the Top-1 and the threshold methods (pure NumPy).

The methods (Yang, Lee & Park: frame-to-video aggregation of facial-expression labels), on a video's per-class counts of frame labels,
counting only frames with a classified face (n_total):

* Top-1: the most frequent label. Ties go to the label that comes first in the model's
  label order.
* Threshold: m = the most frequent NON-neutral label (ties as above), n_m its count.
  If n_m >= threshold * n_total the video is m; otherwise the fallback: ``neutral``
  (the default: a video whose emotion never reaches the threshold is neutral, which is
  what keeps neutral videos neutral in the paper) or ``top1``.
* Broad setting: counts are first summed through a label -> broad-label map (default:
  happy, surprise -> positive; angry, disgust, fear, sad -> negative; neutral -> neutral)
  and both methods run on the broad counts.

Everything here is vectorised over a matrix of counts [videos, labels], so the same code
labels one video in the pipeline, re-aggregates a frame table (`affectflow aggregate`) and
sweeps thresholds over 100,000 videos in calibration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from core.errors import ConfigError
from core.settings import DEFAULT_BROAD_MAP, AggregateConfig
from schemas.columns import FALLBACKS, broad_count_column, count_column, frac_column

# Thresholds from a sweep carry rounding (3 * 0.05 = 0.15000000000000002, times 20 frames is
# 3.0000000000000004), which would reject n_m = 3; a tolerance far below one frame keeps the rule exact.
_EPS = 1e-9


@dataclass(frozen=True)
class AggregationSettings:
    """The aggregate.* settings bound to a model's label order: what both methods need."""
    labels: tuple[str, ...]
    threshold: float = 0.2
    fallback: str = "neutral"
    neutral_label: str = "neutral"
    broad_map: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_BROAD_MAP))

    def __post_init__(self):
        """ConfigError (aggregate.* keys named) when the settings do not fit the label set."""
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"aggregate.threshold must be in (0, 1], got {self.threshold}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"aggregate.fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.neutral_label not in self.labels:
            raise ConfigError(f"aggregate.neutral_label = {self.neutral_label!r} is not among the labels "
                              f"{list(self.labels)}")
        unmapped = [l for l in self.labels if l not in self.broad_map]
        if unmapped:
            raise ConfigError(f"aggregate.broad_map does not map the labels {unmapped}")
        if len({self.broad_map[l] for l in self.labels}) < 2:
            raise ConfigError("aggregate.broad_map maps every label to one broad label; the broad setting needs two "
                              "or more")

    @classmethod
    def from_config(cls, aggregate: AggregateConfig, labels: Sequence[str]) -> "AggregationSettings":
        """The one way settings are built from the job's ``aggregate`` section and a label order."""
        return cls(labels=tuple(labels), threshold=aggregate.threshold, fallback=aggregate.fallback,
                   neutral_label=aggregate.neutral_label, broad_map=dict(aggregate.broad_map))

    @property
    def broad_labels(self) -> tuple[str, ...]:
        """Broad labels in first-seen order of the specific labels."""
        return tuple(dict.fromkeys(self.broad_map[l] for l in self.labels))

    @property
    def broad_neutral(self) -> str:
        return self.broad_map[self.neutral_label]

    def broad_matrix(self) -> np.ndarray:
        """[labels, broad_labels] 0/1 matrix: counts @ matrix = broad counts."""
        broad = self.broad_labels
        m = np.zeros((len(self.labels), len(broad)), np.int64)
        for i, label in enumerate(self.labels):
            m[i, broad.index(self.broad_map[label])] = 1
        return m


@dataclass(frozen=True)
class MethodResult:
    """Per-video outcome of both methods on one label setting; None where n_total is 0."""
    top1: np.ndarray                # object[videos]
    candidate: np.ndarray           # object[videos], m
    candidate_count: np.ndarray     # int64[videos], n_m
    threshold: np.ndarray           # object[videos]
    n_total: np.ndarray             # int64[videos]


def apply_methods(counts: np.ndarray, labels: Sequence[str], neutral_label: str, threshold: float,
                  fallback: str) -> MethodResult:
    """Top-1 and threshold labels for every row of ``counts`` (int[videos, labels])."""
    counts = np.asarray(counts, np.int64).reshape(-1, len(labels))
    names = np.asarray(labels, dtype=object)
    n_total = counts.sum(axis=1)
    has_frames = n_total > 0
    top1 = np.where(has_frames, names[counts.argmax(axis=1)], None)
    neutral = list(labels).index(neutral_label)
    non_neutral = np.delete(np.arange(len(labels)), neutral)
    sub = counts[:, non_neutral]
    m_idx = non_neutral[sub.argmax(axis=1)]
    n_m = counts[np.arange(len(counts)), m_idx]
    # n_m > 0: a tiny threshold times n_total can fall below _EPS, and no label comes from zero frames.
    passes = (n_m > 0) & (n_m >= threshold * n_total - _EPS)
    fallback_label = top1 if fallback == "top1" else np.full(len(counts), neutral_label, dtype=object)
    chosen = np.where(passes & has_frames, names[m_idx], fallback_label)
    # No non-neutral frame at all: there is no candidate m (not the first label with count 0).
    return MethodResult(top1=top1,
                        candidate=np.where(has_frames & (n_m > 0), names[m_idx], None),
                        candidate_count=np.where(has_frames, n_m, 0),
                        threshold=np.where(has_frames, chosen, None),
                        n_total=n_total)


def video_labels(counts: Sequence[int], settings: AggregationSettings) -> dict:
    """The label columns of one video row from its per-label counts (see schemas.video_columns)."""
    counts = np.asarray(counts, np.int64)[None, :]
    specific = apply_methods(counts, settings.labels, settings.neutral_label, settings.threshold, settings.fallback)
    broad_counts = counts @ settings.broad_matrix()
    broad = apply_methods(broad_counts, settings.broad_labels, settings.broad_neutral, settings.threshold,
                          settings.fallback)
    n_total = int(specific.n_total[0])
    row = {count_column(l): int(counts[0, i]) for i, l in enumerate(settings.labels)}
    row.update({frac_column(l): (counts[0, i] / n_total if n_total else None) for i, l in enumerate(settings.labels)})
    row.update({broad_count_column(b): int(broad_counts[0, i]) for i, b in enumerate(settings.broad_labels)})
    has = n_total > 0
    row.update({
        "top1_label": specific.top1[0],
        "threshold": float(settings.threshold),
        "fallback": settings.fallback,
        "threshold_denominator": n_total,
        "threshold_candidate": specific.candidate[0],
        "threshold_candidate_count": int(specific.candidate_count[0]) if has else None,
        "threshold_label": specific.threshold[0],
        "broad_top1_label": broad.top1[0],
        "broad_threshold_label": broad.threshold[0],
    })
    return row


LABEL_COLUMNS_NULLED_WHEN_FAILED = ("top1_label", "threshold_candidate", "threshold_candidate_count",
                                    "threshold_label", "broad_top1_label", "broad_threshold_label")
