"""The semantic target: free-text annotations as points of the sentence encoder's space, and how
close a model's points come to them.

Annotations come from a manifest: ``annotation`` (any of the encoder's languages), ``video_id``
or ``path``, optionally ``start_s``/``end_s`` (a time window of the video; several rows per
video allowed) and ``subject_id``. Each row is one item: the frames of its window, and the
embedding of its text.

Metrics of a predicted point p_i (unit vector) for item i with annotation embedding a_i, over
the set A of the distinct annotation texts of the evaluated items:

* cosine: ``p_i . a_i``;
* z-score: ``(p_i . a_i - mean_{a in A} p_i . a) / sd_{a in A} p_i . a`` (population SD over A,
  a_i included): how far the true annotation stands out among all annotations, in SDs; 0 is
  chance; undefined (left out of the mean) when A has fewer than two texts;
* top-k back-translation accuracy: the item's reference word is the vocabulary word nearest to
  a_i; a hit when it is among the k words nearest to p_i.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from core.errors import InputError
from core.settings import TrainConfig
from models.sentence_encoder import Vocabulary, unit_rows
from pipelines.folds import inner_validation
from pipelines.inputs import read_manifest_table
from pipelines.labels import ids_from_paths
from pipelines.training.store import SequenceStore

MEAN_ANNOTATION = "mean-annotation"       # the baseline: the training folds' mean annotation, for every item
TOP_K = (1, 3, 5)


@dataclass(frozen=True)
class Annotations:
    """One row per annotated item (a video, or a window of it)."""
    video_ids: np.ndarray                 # object[n]
    texts: np.ndarray                     # object[n]
    starts: list[Optional[float]]
    ends: list[Optional[float]]
    subjects: Optional[np.ndarray]        # object[n]; None without a subject_id column
    rows: int                             # manifest rows, annotated or not

    def keep(self, mask: np.ndarray) -> "Annotations":
        mask = np.asarray(mask, bool)
        return Annotations(self.video_ids[mask], self.texts[mask], [s for s, k in zip(self.starts, mask) if k],
                           [e for e, k in zip(self.ends, mask) if k],
                           None if self.subjects is None else self.subjects[mask], self.rows)


def _optional_floats(table, name: str) -> list[Optional[float]]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return [None if v is None or v != v else float(v) for v in table.column(name).to_pylist()]


def read_annotations(path: str, output: Optional[str] = None) -> Annotations:
    """The annotated rows of a manifest (see the module docstring); InputError on a missing column
    or a window whose end is not after its start."""
    table = read_manifest_table(path)
    names = table.column_names
    if "annotation" not in names or not ({"video_id", "path"} & set(names)):
        raise InputError(f"manifest {path} needs an annotation column and a video_id or path column "
                         f"(columns: {names})")
    n = table.num_rows
    ids = table.column("video_id").to_pylist() if "video_id" in names else [None] * n
    if "path" in names and any(i is None for i in ids):
        from_paths = ids_from_paths(table.column("path").to_pylist(), path, output)
        ids = [i if i is not None else p for i, p in zip(ids, from_paths)]
    texts = table.column("annotation").to_pylist()
    starts, ends = _optional_floats(table, "start_s"), _optional_floats(table, "end_s")
    bad = [i + 1 for i in range(n) if starts[i] is not None and ends[i] is not None and ends[i] <= starts[i]]
    if bad:
        raise InputError(f"manifest {path}: rows {bad[:10]} have end_s <= start_s")
    keep = [i for i in range(n) if texts[i] is not None and str(texts[i]).strip() and ids[i] is not None]
    subjects = table.column("subject_id").to_pylist() if "subject_id" in names else None
    return Annotations(video_ids=np.asarray([str(ids[i]) for i in keep], dtype=object),
                       texts=np.asarray([str(texts[i]).strip() for i in keep], dtype=object),
                       starts=[starts[i] for i in keep], ends=[ends[i] for i in keep],
                       subjects=None if subjects is None else np.asarray(
                           [None if subjects[i] is None else str(subjects[i]) for i in keep], dtype=object),
                       rows=n)


def semantic_scores(predicted: np.ndarray, truth: np.ndarray, distinct: np.ndarray, vocabulary: Vocabulary,
                    ks: Sequence[int] = TOP_K) -> dict[str, np.ndarray]:
    """Per item: cosine, z-score (NaN when undefined) and top-k hits (see the module docstring).

    predicted, truth: float[n, dim]; distinct: float[m, dim], the distinct annotation embeddings.
    """
    predicted, truth, distinct = unit_rows(predicted), unit_rows(truth), unit_rows(distinct)
    cosine = np.einsum("ij,ij->i", predicted, truth)
    among = predicted @ distinct.T
    sd = among.std(axis=1)
    z = np.full(len(cosine), np.nan)
    if distinct.shape[0] >= 2:
        ok = sd > 0
        z[ok] = (cosine[ok] - among[ok].mean(axis=1)) / sd[ok]
    reference = vocabulary.back_translate(truth, 1)[0][:, 0]
    nearest = vocabulary.back_translate(predicted, max(ks))[0]
    hits = {f"top{k}": (nearest[:, :k] == reference[:, None]).any(axis=1) for k in ks}
    return {"cosine": cosine, "z": z, **hits}


@dataclass
class SemanticEvaluation:
    """One method's out-of-fold points for every item."""
    method: str
    feature_set: str
    predicted: np.ndarray                       # float32[n, dim]
    folds: np.ndarray
    histories: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.method}.{self.feature_set}.semantic"

    def metrics(self, truth: np.ndarray, distinct: np.ndarray, vocabulary: Vocabulary) -> dict:
        """Mean and SD over folds of each score; pooled means."""
        scores = semantic_scores(self.predicted, truth, distinct, vocabulary)
        per_fold = {name: [_mean(values[self.folds == f]) for f in np.unique(self.folds)]
                    for name, values in scores.items()}
        return {"folds": per_fold,
                "mean": {k: _mean(np.asarray(v, np.float64)) for k, v in per_fold.items()},
                "sd": {k: _sd(np.asarray(v, np.float64)) for k, v in per_fold.items()},
                "pooled": {k: _mean(v) for k, v in scores.items()}}


def _mean(values) -> Optional[float]:
    """Mean of the defined values (None: none is), JSON-ready."""
    values = np.asarray([np.nan if v is None else v for v in np.ravel(values)], np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _sd(values) -> Optional[float]:
    values = np.asarray([np.nan if v is None else v for v in np.ravel(values)], np.float64)
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if len(values) else None)


def cross_validate_semantic(kind: str, store: SequenceStore, positions: np.ndarray, targets: np.ndarray,
                            groups: np.ndarray, folds: np.ndarray, feature_set: str, train: TrainConfig,
                            progress: Callable[[str], None] = print) -> SemanticEvaluation:
    """Fit ``kind`` per fold on the other folds (early stopping on whole subjects held out of them),
    predict the fold's points."""
    from models.semantic import build_semantic_model
    from models.sequence import fit_model, predict_outputs
    started = time.time()
    predicted = np.zeros(targets.shape, np.float32)
    histories = []
    for fold in np.unique(folds):
        test = folds == fold
        fit_pos, fit_targets, fit_groups = positions[~test], targets[~test], groups[~test]
        held = inner_validation(np.zeros(len(fit_pos), np.int64), fit_groups, train.validation_share,
                                train.seed + int(fold))
        model = build_semantic_model(kind, store.width, store.length, train)
        fit = fit_model(model, store.read, fit_pos[~held], fit_targets[~held], fit_pos[held], fit_targets[held],
                        train, train.seed + int(fold))
        predicted[test] = unit_rows(predict_outputs(fit.model, fit.scaler, store.read, positions[test]))
        histories.append({"fold": int(fold), "best_epoch": fit.best_epoch, "seconds": round(fit.seconds, 2),
                          **fit.history})
        progress(f"  {kind} {feature_set}: fold {int(fold) + 1}/{len(np.unique(folds))} best epoch "
                 f"{fit.best_epoch}, {fit.seconds:.1f} s")
    return SemanticEvaluation(kind, feature_set, predicted, folds, histories, time.time() - started)


def mean_annotation_baseline(targets: np.ndarray, folds: np.ndarray, feature_set: str) -> SemanticEvaluation:
    """Every item predicted by the normalised mean annotation of the other folds: the score a model
    gets for knowing only which emotions are common."""
    predicted = np.zeros(targets.shape, np.float32)
    for fold in np.unique(folds):
        test = folds == fold
        predicted[test] = unit_rows(targets[~test].mean(axis=0, keepdims=True))
    return SemanticEvaluation(MEAN_ANNOTATION, feature_set, predicted, folds)
