"""Video-level models that map frame sequences into the semantic emotion space (Keras 3).

Every model takes ``{"x": float32[B, T, d], "mask": bool[B, T]}`` (as models.sequence's) and
returns a unit vector of the sentence encoder's space (512-d): the point whose nearest emotion
words describe the video (models.sentence_encoder back-translates it). Trained with the cosine
loss against the embedding of the video's free-text annotation.

* ``semantic-bilstm``: bidirectional LSTM -> mean over the valid frames -> dense -> unit length;
* ``semantic-transformer``: a small Transformer encoder: frames projected to ``units``, a learned
  position embedding, one block of self-attention restricted to valid frames and a feed-forward
  layer (residuals, layer norm) -> mean over the valid frames -> dense -> unit length;
* ``semantic-dense``: a dense network on each video's mean and SD of its valid frames (no
  order) -> unit length.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from core.settings import TrainConfig
from models.sentence_encoder import EMBEDDING_DIM
from models.sequence import PACKAGE, MaskedMeanPooling
from models.sequence_data import SEMANTIC_KINDS


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMeanStd(layers.Layer):
    """[B, T, D] -> [B, 2D]: mean and population SD over the valid steps (0 when there is none)."""

    def call(self, inputs, mask=None):
        valid = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
        n = ops.maximum(ops.sum(valid, axis=1), 1.0)
        mean = ops.sum(inputs * valid, axis=1) / n
        var = ops.sum(ops.square(inputs - ops.expand_dims(mean, 1)) * valid, axis=1) / n
        return ops.concatenate([mean, ops.sqrt(var + 1e-12)], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(layers.Layer):
    """Adds a learned vector per time step (sequences of a fixed length)."""

    def __init__(self, length: int, **kwargs):
        super().__init__(**kwargs)
        self.length = int(length)

    def build(self, input_shape):
        self.positions = self.add_weight(name="positions", shape=(self.length, input_shape[-1]),
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + self.positions[None, :ops.shape(inputs)[1]]

    def get_config(self):
        return {**super().get_config(), "length": self.length}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedSelfAttentionBlock(layers.Layer):
    """One Transformer encoder block whose attention reads valid frames only; outputs 0 at masked steps."""

    def __init__(self, units: int, heads: int = 4, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.heads, self.dropout = int(units), int(heads), float(dropout)
        self.attention = layers.MultiHeadAttention(self.heads, max(1, self.units // self.heads), dropout=self.dropout,
                                                   name="attention")
        self.norm1 = layers.LayerNormalization(name="norm1")
        self.norm2 = layers.LayerNormalization(name="norm2")
        self.ff1 = layers.Dense(2 * self.units, activation="relu", name="ff1")
        self.ff2 = layers.Dense(self.units, name="ff2")

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.norm1.build(input_shape)
        self.ff1.build(input_shape)
        self.ff2.build((*input_shape[:-1], 2 * self.units))
        self.norm2.build(input_shape)

    def call(self, inputs, mask=None, training=None):
        valid = ops.cast(mask, "bool")
        pairs = ops.logical_and(ops.expand_dims(valid, 1), ops.expand_dims(valid, 2))
        attended = self.attention(inputs, inputs, attention_mask=pairs, training=training)
        h = self.norm1(inputs + attended)
        h = self.norm2(h + self.ff2(self.ff1(h)))
        return ops.where(ops.expand_dims(valid, -1), h, ops.zeros_like(h))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads, "dropout": self.dropout}


def build_semantic_model(kind: str, n_features: int, length: int, train: TrainConfig) -> keras.Model:
    """A compiled model of ``kind`` (SEMANTIC_KINDS) with the cosine loss."""
    if kind not in SEMANTIC_KINDS:
        raise ValueError(f"semantic model must be one of {SEMANTIC_KINDS}, got {kind!r}")
    x_in = keras.Input(shape=(length, n_features), dtype="float32", name="x")
    m_in = keras.Input(shape=(length,), dtype="bool", name="mask")
    if kind == "semantic-bilstm":
        h = layers.Bidirectional(layers.LSTM(train.units, return_sequences=True, name="lstm"), name="birnn")(
            x_in, mask=m_in)
        pooled = MaskedMeanPooling(name="pool")(h, mask=m_in)
    elif kind == "semantic-transformer":
        h = PositionEmbedding(length, name="positions")(layers.Dense(train.units, name="project")(x_in))
        h = MaskedSelfAttentionBlock(train.units, dropout=train.dropout, name="block")(h, mask=m_in)
        pooled = MaskedMeanPooling(name="pool")(h, mask=m_in)
    else:
        stats = MaskedMeanStd(name="statistics")(x_in, mask=m_in)
        pooled = layers.Dense(2 * train.units, activation="relu", name="hidden")(stats)
    if train.dropout:
        pooled = layers.Dropout(train.dropout, name="dropout")(pooled)
    out = layers.UnitNormalization(name="unit")(layers.Dense(EMBEDDING_DIM, name="embedding")(pooled))
    model = keras.Model({"x": x_in, "mask": m_in}, out, name=kind.replace("-", "_"))
    model.compile(optimizer=keras.optimizers.Adam(train.learning_rate), loss=keras.losses.CosineSimilarity())
    return model
