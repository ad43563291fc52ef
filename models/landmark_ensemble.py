"""The landmark ensemble: base learners on per-frame features, a Keras meta model on their probabilities.

    ensemble = LandmarkEnsemble.fit(frames, codes, groups, n_classes, train, seed)
    probs, learned = ensemble.predict(frames)         # per frame: classes, and the learned features

* Base learners (scikit-learn API): LightGBM, logistic regression (on standardised features) and
  a random forest, each with balanced class weights.
* Meta model: a small dense network on the base learners' probabilities. It is trained on
  *out-of-fold* probabilities (the base learners fitted on the other subjects of the training
  data, GroupKFold), so it learns how far to trust each learner on frames it did not see; the
  base learners are then refitted on all the training frames.
* Learned features of a frame: the base learners' probabilities and the meta model's hidden
  layer, side by side (models.emotion_space builds its space on them).

Frames are balanced before fitting: every class is undersampled to the size of the smallest
(`balance_classes`, seeded). A video's label comes from its frames' probabilities smoothed over
adjacent frames (models.smoothing) and averaged.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.settings import TrainConfig
from models.smoothing import smooth
from models.store import sha256_of

BASE_LEARNERS = ("lightgbm", "logistic_regression", "random_forest")
ENSEMBLE_CARD = "ensemble_card.json"
BASE_FILE = "base_learners.joblib"
META_FILE = "meta.keras"
INNER_FOLDS = 3
# The meta model is tiny (base probabilities in, a few units): it gets its own schedule, long enough to
# converge on a few hundred frames, with early stopping on a seeded tenth of them.
META_EPOCHS, META_PATIENCE, META_LEARNING_RATE, META_BATCH = 300, 30, 0.01, 64


def balance_classes(codes: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices of an undersample in which every class present has as many rows as the smallest."""
    codes = np.asarray(codes, np.int64)
    rng = np.random.default_rng(seed)
    present = np.unique(codes)
    smallest = min(int((codes == c).sum()) for c in present)
    picked = [rng.choice(np.flatnonzero(codes == c), smallest, replace=False) for c in present]
    return np.sort(np.concatenate(picked))


def make_base_learners(seed: int) -> dict:
    """The three base learners, unfitted (their classes are the codes they are fitted on)."""
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return {
        "lightgbm": LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, class_weight="balanced",
                                   random_state=seed, n_jobs=1, verbose=-1),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(
            max_iter=2000, class_weight="balanced", random_state=seed)),
        "random_forest": RandomForestClassifier(n_estimators=200, min_samples_leaf=2, class_weight="balanced_subsample",
                                                random_state=seed, n_jobs=1),
    }


def _probabilities(learner, frames: np.ndarray, n_classes: int) -> np.ndarray:
    """float32[n, n_classes]; a class the learner never saw gets 0."""
    out = np.zeros((len(frames), n_classes), np.float32)
    out[:, learner.classes_] = learner.predict_proba(frames)
    return out


def _clean(frames: np.ndarray) -> np.ndarray:
    """NaN features (a missing blendshape, a degenerate mesh) as 0, the scaled features' mean."""
    return np.nan_to_num(np.asarray(frames, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class EnsembleCard:
    """What a saved ensemble reads and predicts (ensemble_card.json)."""
    name: str
    columns: tuple[str, ...]                 # frame-table columns read, in order
    feature_names: tuple[str, ...]           # the per-frame vector's values, in order
    labels: tuple[str, ...]
    task: str
    smoothing: dict                          # method, window, alpha
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    files_sha256: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "EnsembleCard":
        data = json.loads(text)
        for key in ("columns", "feature_names", "labels"):
            data[key] = tuple(data[key])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class LandmarkEnsemble:
    """Fitted base learners and meta model (see the module docstring)."""

    def __init__(self, base: dict, meta, n_classes: int):
        self.base, self.meta, self.n_classes = base, meta, n_classes

    @classmethod
    def fit(cls, frames: np.ndarray, codes: np.ndarray, groups: np.ndarray, n_classes: int, train: TrainConfig,
            seed: int) -> "LandmarkEnsemble":
        """Fit on frames (float[n, d]) with class codes and subject groups; balanced first."""
        from sklearn.model_selection import GroupKFold
        keep = balance_classes(codes, seed)
        frames, codes, groups = _clean(frames[keep]), np.asarray(codes)[keep], np.asarray(groups)[keep]
        inner = min(INNER_FOLDS, len(set(groups)))
        oof = np.zeros((len(codes), n_classes * len(BASE_LEARNERS)), np.float32)
        if inner >= 2:
            for fit_rows, held in GroupKFold(n_splits=inner).split(frames, codes, groups):
                for i, learner in enumerate(make_base_learners(seed).values()):
                    learner.fit(frames[fit_rows], codes[fit_rows])
                    oof[held, i * n_classes:(i + 1) * n_classes] = _probabilities(learner, frames[held], n_classes)
        base = make_base_learners(seed)
        for learner in base.values():
            learner.fit(frames, codes)
        if inner < 2:                       # one subject: the meta model sees in-sample probabilities
            oof = np.hstack([_probabilities(l, frames, n_classes) for l in base.values()])
        meta = _fit_meta(oof, codes, n_classes, train, seed)
        return cls(base, meta, n_classes)

    def base_probabilities(self, frames: np.ndarray) -> np.ndarray:
        frames = _clean(frames)
        return np.hstack([_probabilities(l, frames, self.n_classes) for l in self.base.values()])

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n, classes] probabilities, float32[n, learned] learned features) per frame."""
        if not len(frames):
            return np.zeros((0, self.n_classes), np.float32), np.zeros((0, self.learned_width), np.float32)
        import keras
        base = self.base_probabilities(frames)
        hidden = keras.Model(self.meta.inputs, self.meta.get_layer("hidden").output)
        probs = np.asarray(self.meta.predict_on_batch(base), np.float32)
        learned = np.hstack([base, np.asarray(hidden.predict_on_batch(base), np.float32)])
        return probs / probs.sum(axis=1, keepdims=True), learned

    @property
    def learned_width(self) -> int:
        return self.n_classes * len(BASE_LEARNERS) + int(self.meta.get_layer("hidden").units)

    def save(self, folder: str | Path, card: EnsembleCard) -> EnsembleCard:
        """base_learners.joblib, meta.keras and ensemble_card.json (with the two files' SHA-256)."""
        import joblib
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.base, folder / BASE_FILE)
        self.meta.save(folder / META_FILE)
        card = EnsembleCard(**{**asdict(card), "files_sha256": {BASE_FILE: sha256_of(folder / BASE_FILE),
                                                                 META_FILE: sha256_of(folder / META_FILE)}})
        (folder / ENSEMBLE_CARD).write_text(card.to_json())
        return card

    @classmethod
    def load(cls, folder: str | Path) -> tuple["LandmarkEnsemble", EnsembleCard]:
        """A saved ensemble, its files checked against the card's checksums."""
        import joblib
        import keras
        folder = Path(folder)
        card = EnsembleCard.from_json((folder / ENSEMBLE_CARD).read_text())
        for name, digest in card.files_sha256.items():
            if sha256_of(folder / name) != digest:
                raise ValueError(f"{folder / name} is not the file its card describes (SHA-256 differs)")
        return cls(joblib.load(folder / BASE_FILE), keras.models.load_model(folder / META_FILE), len(card.labels)), card


def _fit_meta(inputs: np.ndarray, codes: np.ndarray, n_classes: int, train: TrainConfig, seed: int):
    """A dense network on the base learners' probabilities (its own schedule, META_*; ``train`` gives
    its units and dropout)."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    x_in = keras.Input(shape=(inputs.shape[1],), name="base_probabilities")
    hidden = layers.Dense(max(8, train.units // 2), activation="relu", name="hidden")(x_in)
    out = layers.Dense(n_classes, activation="softmax", name="probabilities")(
        layers.Dropout(train.dropout, name="dropout")(hidden) if train.dropout else hidden)
    model = keras.Model(x_in, out, name="landmark_meta")
    model.compile(optimizer=keras.optimizers.Adam(META_LEARNING_RATE), loss="sparse_categorical_crossentropy")
    order = np.random.default_rng(seed).permutation(len(codes))
    held = order[: max(1, len(codes) // 10)]
    fit = np.setdiff1d(order, held)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=META_PATIENCE, restore_best_weights=True)
    model.fit(_batches(inputs[fit], codes[fit], seed), validation_data=_batches(inputs[held], codes[held]),
              epochs=META_EPOCHS, callbacks=[stop], verbose=0)
    return model


def _batches(inputs: np.ndarray, codes: np.ndarray, shuffle_seed: Optional[int] = None):
    """The rows as a tf.data dataset of META_BATCH rows (reshuffled every epoch with ``shuffle_seed``).

    Given numpy arrays, Keras builds a new input pipeline every epoch: about 100 ms an epoch on 160 frames,
    whatever their number, against about 21 ms with one dataset built here (the meta model's up to 300
    epochs: 1.3 s instead of 7 s). Keras runs on TensorFlow here (setup.py pins it)."""
    import tensorflow as tf
    rows = tf.data.Dataset.from_tensor_slices((inputs.astype(np.float32), codes.astype(np.int64)))
    if shuffle_seed is not None:
        rows = rows.shuffle(len(codes), seed=shuffle_seed, reshuffle_each_iteration=True)
    return rows.batch(META_BATCH)


def video_probabilities(frame_probs: np.ndarray, smoothing: dict) -> np.ndarray:
    """float32[classes]: a video's frame probabilities (time order) smoothed, then averaged."""
    smoothed = smooth(frame_probs, smoothing["method"], smoothing.get("window", 5), smoothing.get("alpha", 0.3))
    mean = smoothed.mean(axis=0)
    return (mean / mean.sum()).astype(np.float32)


def evenly_spaced(n: int, at_most: int) -> np.ndarray:
    """Indices of at most ``at_most`` evenly spaced rows of ``n`` (all of them when fewer)."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.rint(np.linspace(0, n - 1, at_most)).astype(np.int64))


def frame_vectors(mesh: Optional[np.ndarray], extra: Optional[np.ndarray]) -> np.ndarray:
    """A frame's vector: the mesh features (models.landmark_features) then the extra columns."""
    from models.landmark_features import flat_mesh, mesh_features
    parts = []
    if mesh is not None:
        parts.append(mesh_features(flat_mesh(mesh)))
    if extra is not None and extra.shape[1]:
        parts.append(np.asarray(extra, np.float32))
    return np.hstack(parts) if parts else np.zeros((0, 0), np.float32)


def names_of(columns: Sequence[str], mesh_column: Optional[str]) -> list[str]:
    """The per-frame vector's value names for a mesh column and extra columns (in `frame_vectors` order)."""
    from models.landmark_features import feature_names
    return (feature_names() if mesh_column else []) + [c for c in columns if c != mesh_column]
