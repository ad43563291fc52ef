"""Video-level sequence classifiers (Keras 3): RNN-attention, RNN-conv, RNN-average and a frame-average control.

Every model takes ``{"x": float32[B, T, d], "mask": bool[B, T]}`` (models.sequence_data makes
them) and returns softmax probabilities ``[B, classes]``; a binary task is a 2-way softmax.

* ``rnn-attention``: bidirectional GRU/LSTM over the frames -> additive attention pooling
  (score_t = v . tanh(W h_t + b), softmax over the valid steps) -> softmax layer;
* ``rnn-conv``: bidirectional RNN -> 1-D convolution over time -> max over the valid steps;
* ``rnn-average``: bidirectional RNN -> mean of its outputs over the valid steps;
* ``frame-average`` (a control, not one of the paper's models): a dense layer per frame ->
  mean over the valid frames. Without recurrence it is a function of the set of frames, so it
  cannot tell their order; the three RNN models can (their states summarise what came before
  and after), which the tests prove on data whose classes differ only in order.

The mask reaches every layer explicitly (``layer(h, mask=m)``): padding and faceless frames
never change a prediction, whatever values they hold. Keras' Conv1D drops masks, so the
convolution lives inside a mask-aware layer. The layers are registered under the package name
PACKAGE, which every saved ``.keras`` file names: importing this module is what lets
``keras.models.load_model`` read them (models.video_classifier does).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from core.settings import TrainConfig  # noqa: E402
from models.sequence_data import SEQUENCE_KINDS, Standardizer, balanced_class_weights  # noqa: E402

PACKAGE = "affectflow_seq"          # stored in every saved model: never rename
_MASKED_SCORE = -1e9                # finite "minus infinity" (no inf - inf = NaN)


def _valid(mask):
    return ops.expand_dims(ops.cast(mask, "bool"), -1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedAttentionPooling(layers.Layer):
    """[B, T, D] -> [B, D]: additive attention over the valid steps (an all-masked video gives zeros)."""

    def __init__(self, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        d = input_shape[-1]
        self.W = self.add_weight(name="W", shape=(d, self.units), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")
        self.v = self.add_weight(name="v", shape=(self.units, 1), initializer="glorot_uniform")

    def attention_weights(self, inputs, mask):
        """[B, T] weights: softmax of the scores over valid steps, 0 at masked ones."""
        scores = ops.squeeze(ops.matmul(ops.tanh(ops.matmul(inputs, self.W) + self.b), self.v), -1)
        mask = ops.cast(mask, "bool")
        alpha = ops.softmax(ops.where(mask, scores, ops.cast(_MASKED_SCORE, scores.dtype)), axis=-1)
        return alpha * ops.cast(mask, alpha.dtype)

    def call(self, inputs, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], "bool")
        alpha = self.attention_weights(inputs, mask)
        inputs = ops.where(_valid(mask), inputs, ops.zeros_like(inputs))
        return ops.sum(inputs * ops.expand_dims(alpha, -1), axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMeanPooling(layers.Layer):
    """[B, T, D] -> [B, D]: the mean over the valid steps (0 when there is none)."""

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        valid = _valid(mask)
        total = ops.sum(ops.where(valid, inputs, ops.zeros_like(inputs)), axis=1)
        return total / ops.maximum(ops.sum(ops.cast(valid, inputs.dtype), axis=1), 1.0)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedConv1DPooling(layers.Layer):
    """[B, T, D] -> [B, filters]: masked steps set to 0 (a faceless gap looks like the convolution's
    own zero padding, whatever padding follows), Conv1D(same, relu), then the max over valid steps."""

    def __init__(self, filters: int = 64, kernel_size: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.conv = layers.Conv1D(self.filters, self.kernel_size, padding="same", activation="relu", name="conv")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], "bool")
        valid = _valid(mask)
        h = self.conv(ops.where(valid, inputs, ops.zeros_like(inputs)))
        pooled = ops.max(ops.where(valid, h, ops.cast(_MASKED_SCORE, h.dtype)), axis=1)
        return ops.where(ops.any(valid, axis=1), pooled, ops.zeros_like(pooled))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


def build_model(kind: str, n_features: int, n_classes: int, length: Optional[int], train: TrainConfig
                ) -> keras.Model:
    """A compiled model of ``kind`` (SEQUENCE_KINDS) for ``n_features`` per frame and ``n_classes``;
    ``length`` None accepts any sequence length (tests use it to check padding invariance)."""
    if kind not in SEQUENCE_KINDS:
        raise ValueError(f"model must be one of {SEQUENCE_KINDS}, got {kind!r}")
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    x_in = keras.Input(shape=(length, n_features), dtype="float32", name="x")
    m_in = keras.Input(shape=(length,), dtype="bool", name="mask")
    if kind == "frame-average":
        h = layers.Dense(train.units, activation="tanh", name="frame_dense")(x_in)
        pooled = MaskedMeanPooling(name="pool")(h, mask=m_in)
    else:
        cell = {"gru": layers.GRU, "lstm": layers.LSTM}[train.rnn](train.units, return_sequences=True,
                                                                     name=train.rnn)
        # Bidirectional carries the state over masked steps and outputs exactly 0 there.
        h = layers.Bidirectional(cell, name="birnn")(x_in, mask=m_in)
        if kind == "rnn-attention":
            pooled = MaskedAttentionPooling(train.units, name="pool")(h, mask=m_in)
        elif kind == "rnn-conv":
            pooled = MaskedConv1DPooling(train.units, train.conv_kernel, name="pool")(h, mask=m_in)
        else:
            pooled = MaskedMeanPooling(name="pool")(h, mask=m_in)
    if train.dropout:
        pooled = layers.Dropout(train.dropout, name="dropout")(pooled)
    out = layers.Dense(n_classes, activation="softmax", name="probabilities")(pooled)
    model = keras.Model({"x": x_in, "mask": m_in}, out, name=kind.replace("-", "_"))
    model.compile(optimizer=keras.optimizers.Adam(train.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def attention_weights(model: keras.Model, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32[B, T] attention of an rnn-attention model over each video's steps (0 at masked ones)."""
    states = keras.Model(model.inputs, model.get_layer("birnn").output)({"x": x, "mask": mask})
    return ops.convert_to_numpy(model.get_layer("pool").attention_weights(states, mask))


# A reader of the training data: video positions -> (x float32[k, T, d], mask bool[k, T]).
BatchReader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class SequenceBatches(keras.utils.PyDataset):
    """Batches of standardised sequences read on demand, so memory holds a few batches whatever
    the number of videos; ``targets`` (class codes or vectors, one row per position) or None to
    predict. ``shuffle_seed`` (training) reshuffles the videos every epoch."""

    def __init__(self, read: BatchReader, positions: np.ndarray, targets: Optional[np.ndarray],
                 scaler: Standardizer, batch_size: int, shuffle_seed: Optional[int] = None):
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=4)
        self._read, self._positions, self._targets = read, np.asarray(positions, np.int64), targets
        self._scaler, self._batch_size, self._seed, self._epoch = scaler, batch_size, shuffle_seed, 0
        self._order = np.arange(len(self._positions))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self._positions) / self._batch_size)

    def __getitem__(self, index: int):
        take = np.sort(self._order[index * self._batch_size:(index + 1) * self._batch_size])
        x, mask = self._read(self._positions[take])
        inputs = {"x": self._scaler.transform(x, mask), "mask": mask}
        return inputs if self._targets is None else (inputs, self._targets[take])

    def on_epoch_end(self) -> None:
        if self._seed is not None:
            self._order = np.random.default_rng((self._seed, self._epoch)).permutation(len(self._positions))
            self._epoch += 1


@dataclass
class FitResult:
    """A fitted model, the scaler it expects and how training went."""
    model: keras.Model
    scaler: Standardizer
    history: dict[str, list[float]]      # loss, val_loss, accuracy, val_accuracy per epoch
    best_epoch: int                       # 1-based epoch whose weights were kept
    seconds: float


def fit_scaler(read: BatchReader, positions: np.ndarray, batch: int = 256) -> Standardizer:
    """A Standardizer over the valid frames of ``positions``, read ``batch`` videos at a time."""
    scaler = Standardizer()
    for start in range(0, len(positions), batch):
        scaler.partial_fit(*read(np.asarray(positions[start:start + batch])))
    return scaler


def fit_model(model: keras.Model, read: BatchReader, train_pos: np.ndarray, train_targets: np.ndarray,
              val_pos: np.ndarray, val_targets: np.ndarray, train: TrainConfig, seed: int,
              class_weight: Optional[dict[int, float]] = None) -> FitResult:
    """Fit a compiled ``model`` on the videos at ``train_pos`` (targets: class codes or vectors): a
    scaler fitted on them alone, early stopping on the loss of the videos at ``val_pos`` (the best
    epoch's weights are restored). Same data and seed: same weights."""
    keras.utils.set_random_seed(seed)
    scaler = fit_scaler(read, train_pos)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=train.patience, restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(
        SequenceBatches(read, train_pos, train_targets, scaler, train.batch_size, shuffle_seed=seed),
        validation_data=SequenceBatches(read, val_pos, val_targets, scaler, max(train.batch_size, 128)),
        epochs=train.epochs, class_weight=class_weight, callbacks=[stop], verbose=0)
    losses = history.history["val_loss"]
    return FitResult(model, scaler, {k: [float(v) for v in vals] for k, vals in history.history.items()},
                     int(np.argmin(losses)) + 1, time.perf_counter() - started)


def fit_sequence_model(kind: str, read: BatchReader, train_pos: np.ndarray, train_codes: np.ndarray,
                       val_pos: np.ndarray, val_codes: np.ndarray, n_classes: int, n_features: int, length: int,
                       train: TrainConfig, seed: int) -> FitResult:
    """A classifier of ``kind`` fitted with `fit_model` and balanced class weights."""
    keras.utils.set_random_seed(seed)
    model = build_model(kind, n_features, n_classes, length, train)
    return fit_model(model, read, train_pos, train_codes, val_pos, val_codes, train, seed,
                     balanced_class_weights(train_codes, n_classes))


def predict_outputs(model: keras.Model, scaler: Standardizer, read: BatchReader, positions: np.ndarray,
                    batch_size: int = 256) -> np.ndarray:
    """float32[n, outputs]: the model's outputs for the videos at ``positions``, read a batch at a time."""
    if not len(positions):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([
        np.asarray(model.predict_on_batch({"x": scaler.transform(x, m), "mask": m}), np.float32)
        for x, m in (read(np.asarray(positions[i:i + batch_size])) for i in range(0, len(positions), batch_size))])


def predict_probabilities(model: keras.Model, scaler: Standardizer, read: BatchReader, positions: np.ndarray,
                          batch_size: int = 256) -> np.ndarray:
    """float32[n, classes] for the videos at ``positions``, rows summing to 1 (renormalised)."""
    probs = predict_outputs(model, scaler, read, positions, batch_size)
    return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-30)


def load_sequence_model(path: str) -> keras.Model:
    """A model saved by `keras.Model.save` (this module's layers registered)."""
    return keras.models.load_model(path)
