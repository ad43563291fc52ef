"""ResNet50 2048-d pooled face features (``features.resnet50``) through Beam's RunInference.

Preprocessing contract (registry entry ``resnet50``): a 224x224x3 RGB uint8 face crop, the
same square box as the emotion crop (transforms.faces.crop_face_rgb), then
``keras.applications.resnet50.preprocess_input`` (Caffe style: RGB -> BGR, ImageNet channel
means 103.939, 116.779, 123.68 subtracted, no scaling). Output: float32[2048], the global
average pool of the last residual stage, after its ReLU, so every value is >= 0.

No ResNet50 weights ship in a package here, so the weights file is always the user's
(``models.paths.resnet50`` or ``AFFECTFLOW_MODEL_RESNET50``). Accepted files:

* Keras weights of ``keras.applications.ResNet50(include_top=False, pooling="avg")``:
  ``*.weights.h5`` (Keras 3 ``save_weights``) or a legacy ``*.h5`` weights file such as
  Keras' own ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``. They are
  loaded into that architecture, built here with ``weights=None`` (never downloaded).
* A whole saved model (``.keras``, or ``.h5`` with a model config) taking 224x224x3 input
  whose output is the 2048-d pooled vector, or a 2048-channel feature map (pooled here), e.g.
  a face-trained ResNet50 saved by its trainer. It must expect the same Caffe preprocessing.

Anything else (a wrong architecture, a 1000-class ImageNet head, a truncated file) is a
ValueError naming the file, raised by ``load_resnet50``; the extraction job calls it before
the pipeline starts.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.registry import ResolvedModel, resolve
from core.elements import ScoredChunk
from schemas.features import RESNET50_VALUES

RESNET50_SIZE = 224
RESNET50_DIM = RESNET50_VALUES
# Faces per forward pass: ResNet50's first stages hold about 10 MB of activations per 224x224
# face, so 16 keeps a call under about 200 MB, where the emotion model's 256 would need 2.5 GB.
RESNET50_MAX_BATCH = 16


def preprocess_rgb(crops: np.ndarray) -> np.ndarray:
    """uint8[m, 224, 224, 3] RGB -> float32[m, 224, 224, 3], Keras' ResNet50 (Caffe) preprocessing."""
    from keras.applications.resnet50 import preprocess_input
    return np.asarray(preprocess_input(crops.astype(np.float32)), np.float32)


def resnet50_architecture():
    """``keras.applications.ResNet50(include_top=False, pooling="avg")`` with random weights (no download)."""
    import keras
    return keras.applications.ResNet50(include_top=False, pooling="avg", weights=None,
                                       input_shape=(RESNET50_SIZE, RESNET50_SIZE, 3))


class ResNet50Features:
    """A 2048-d feature extractor with one traced inference function for every batch size
    (the KerasClassifier pattern: ``predict_on_batch`` would retrace for each new batch shape)."""

    def __init__(self, model):
        import tensorflow as tf
        self.model = model
        spec = tf.TensorSpec([None, RESNET50_SIZE, RESNET50_SIZE, 3], tf.float32)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32[b, 224, 224, 3] -> float32[b, 2048]."""
        return self._predict(x).numpy()


def _is_saved_model_h5(path: str) -> bool:
    import h5py
    with h5py.File(path, "r") as f:
        return "model_config" in f.attrs


def load_resnet50(path: str) -> ResNet50Features:
    """Load a user's ResNet50 file (see the module docstring for the accepted formats).

    Raises ValueError naming ``path`` when the file cannot be read or does not give a
    2048-d pooled output for a 224x224x3 input.
    """
    import keras
    try:
        if path.endswith(".keras") or (path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
                                       and _is_saved_model_h5(path)):
            model = keras.models.load_model(path, compile=False)
            kind = "saved model"
        else:
            model = resnet50_architecture()
            model.load_weights(path)
            kind = "weights"
    except Exception as exc:  # noqa: BLE001 - h5py, zipfile and Keras raise many types; all mean "not this file"
        raise ValueError(f"cannot load ResNet50 from {path}: expected Keras weights of "
                         f"keras.applications.ResNet50(include_top=False, pooling='avg') (*.weights.h5 or legacy "
                         f"*.h5) or a saved .keras/.h5 model with a 2048-d pooled output; "
                         f"{type(exc).__name__}: {str(exc)[:500]}") from exc
    if kind == "saved model":
        model = _pooled(model, path)
    return ResNet50Features(model)


def _pooled(model, path: str):
    """A saved model's 2048-d pooled output: as is, or global-average-pooled from a 2048-channel map."""
    import keras
    inputs, outputs = model.inputs, model.outputs
    in_shape = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else None
    if in_shape != (RESNET50_SIZE, RESNET50_SIZE, 3) or len(outputs) != 1:
        raise ValueError(f"ResNet50 model {path} must take one 224x224x3 input and give one output; "
                         f"it takes {[tuple(i.shape) for i in inputs]} and gives {len(outputs)} output(s)")
    shape = tuple(outputs[0].shape[1:])
    if shape == (RESNET50_DIM,):
        return model
    if len(shape) == 3 and shape[-1] == RESNET50_DIM:
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(outputs[0]))
    raise ValueError(f"ResNet50 model {path} gives output shape {shape}, not the 2048-d pooled features "
                     f"(save it with include_top=False, pooling='avg')")


def resnet50_features(model: ResNet50Features, crops_rgb: np.ndarray, max_batch: int = RESNET50_MAX_BATCH) -> np.ndarray:
    """uint8 RGB crops[m, 224, 224, 3] -> float32[m, 2048], ``max_batch`` faces per call."""
    if len(crops_rgb) == 0:
        return np.zeros((0, RESNET50_DIM), np.float32)
    return np.concatenate([np.asarray(model.predict(preprocess_rgb(crops_rgb[i:i + max_batch])), np.float32)
                           for i in range(0, len(crops_rgb), max_batch)])


class ResNet50ModelHandler(ModelHandler[ScoredChunk, ScoredChunk, Any]):
    """RunInference handler: ScoredChunk (with ``chunk.face_rgb``) -> the same ScoredChunk with
    ``resnet50`` float32[m, 2048] filled and the 224x224 crops dropped (147 KB a face that no
    later stage reads).

    Like the emotion handler it takes whole chunks (RunInference batching off) and runs
    sub-batches of ``max_batch`` faces; RunInference loads one model per worker process.
    """

    def __init__(self, model_name: str = "resnet50", explicit_path: Optional[str] = None,
                 max_batch: int = RESNET50_MAX_BATCH):
        self._model_name = model_name
        self._explicit_path = explicit_path
        self._max_batch = max_batch

    def resolve(self) -> ResolvedModel:
        return resolve(self._model_name, self._explicit_path)

    def load_model(self) -> ResNet50Features:
        return load_resnet50(self.resolve().paths["weights"])

    def run_inference(self, batch: Sequence[ScoredChunk], model: ResNet50Features,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[ScoredChunk]:
        """Each chunk of the batch -> the chunk with its features. A failure raises: RunInference's
        exception handling turns the batch into dead letters (stage ``features``)."""
        out = []
        for scored in batch:
            rgb = scored.chunk.face_rgb
            if rgb is None:
                raise ValueError("chunk has no 224x224 RGB face crops: ExtractFaces must run with resnet50 on")
            out.append(dataclasses.replace(scored, resnet50=resnet50_features(model, rgb, self._max_batch),
                                           chunk=dataclasses.replace(scored.chunk, face_rgb=None)))
        return out

    def should_skip_batching(self) -> bool:
        return True

    def get_num_bytes(self, batch: Sequence[ScoredChunk]) -> int:
        return int(sum(s.chunk.face_rgb.nbytes for s in batch if s.chunk.face_rgb is not None))

    def get_metrics_namespace(self) -> str:
        return "affectflow_resnet50"
