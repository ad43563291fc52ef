"""Job configuration: runner YAMLs, overrides, and the typed settings every stage reads.

A runner YAML has two top-level sections and nothing else:

    pipeline_options:    # handed to Beam as --key=value flags (runner, workers, ...)
      runner: DirectRunner
    job:                 # affectflow's own settings (the dataclasses below)
      decode: {sample_fps: 5}

Unknown keys are rejected with the path of the key and the keys allowed there. Any key
can be overridden on the command line: ``--set decode.sample_fps=10`` (a ``job.`` prefix
is optional) or ``--set pipeline_options.direct_num_workers=2``; values are parsed as YAML.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, get_type_hints

import yaml

from transforms.aggregate import DEFAULT_BROAD_MAP

RUNNER_CONFIGS = Path(__file__).resolve().parent.parent / "runner_configs"
DEFAULT_CONFIG = RUNNER_CONFIGS / "local.yaml"


class ConfigError(ValueError):
    """The configuration is not valid; the message names the key."""


@dataclass
class DecodeConfig:
    segment_seconds: Optional[float] = 10.0   # work-unit length; null = one unit per video
    sample_fps: Optional[float] = None         # null = every frame
    chunk_frames: int = 1024                   # sampled frames per chunk = per frame Parquet file
    decoder_threads: int = 1                   # FFmpeg threads per work unit; 0 = one per core


@dataclass
class FacesConfig:
    detector: str = "blazeface_short"          # registry name (affectflow models list)
    min_score: float = 0.7                      # measured: cartoon false positives score <= 0.62, real faces >= 0.8
    keep_all_faces: bool = False                # false: one row per frame, primary (largest) face
    crop_margin: float = 0.1                    # emotion crop: square of max(w, h) * (1 + margin)


@dataclass
class SmoothingConfig:
    method: str = "none"                        # none | window (centred moving average) | ema (exponential)
    window: int = 5                             # frames in the centred window (odd), method window
    alpha: float = 0.3                          # weight of the newest frame, method ema


@dataclass
class FeaturesConfig:
    landmarks: bool = False                     # 468 face-mesh points, image and normalised (feature group "landmarks")
    geometry: bool = False                      # geo_* FACS-named measures from the landmarks (group "geometry")
    embedding: bool = False                     # the emotion network's embedding, the layer before its classifier
    resnet50: bool = False                      # ResNet50 2048-d pooled features; weights: models.paths.resnet50
    geometry_baseline: bool = False             # geo_*_rel: each measure minus the video's neutral-frame median
    baseline_min_frames: int = 10               # fewer neutral frames than this: no baseline (null), never invented
    feature_set: str = "none"                   # none | appearance | deep | both: the training vector (README "Feature sets")
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)

    @property
    def groups(self) -> tuple[str, ...]:
        """The frame-table feature groups the run writes (schemas.tables.FEATURE_GROUPS order)."""
        return tuple(g for g in ("landmarks", "geometry", "embedding", "resnet50") if getattr(self, g))

    @property
    def needs_mesh(self) -> bool:
        return self.landmarks or self.geometry


@dataclass
class EmotionConfig:
    model: str = "fer_mini_xception"
    max_batch: int = 256
    runtime: str = "tflite"                     # tflite (compiled once from the Keras file, verified) | keras


@dataclass
class AggregateConfig:
    threshold: float = 0.2
    fallback: str = "neutral"                   # neutral | top1
    neutral_label: str = "neutral"
    broad_map: dict = field(default_factory=lambda: dict(DEFAULT_BROAD_MAP))


@dataclass
class ModelsConfig:
    paths: dict = field(default_factory=dict)   # model name -> path (or role -> path map)


@dataclass
class ValidationConfig:
    enabled: bool = True                        # validate every run's output at its end (affectflow validate always does)
    min_face_coverage_warn: Optional[float] = 0.5   # a video with face_coverage below this: warning (null = off)
    min_face_coverage_fail: Optional[float] = None  # ... below this: critical (null = off)
    max_failed_share_warn: Optional[float] = 0.2    # share of failed videos above this: warning (null = off)
    max_failed_share_fail: Optional[float] = 0.5    # ... above this: critical (null = off)
    probability_tolerance: float = 0.0001       # |sum of a row's probabilities - 1| allowed
    box_tolerance_px: float = 1.0               # a face box may end this far past the frame edge
    memory_limit: str = "2GB"                   # DuckDB memory cap while validating; more spills to disk


@dataclass
class JobConfig:
    input: Optional[str] = None                 # glob, directory, or manifest (.csv / .parquet)
    output: Optional[str] = None                # output folder (any Beam filesystem path)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    progress: bool = True
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class RunConfig:
    pipeline_options: dict
    job: JobConfig

    def beam_args(self) -> list[str]:
        """pipeline_options as Beam command-line flags."""
        args = []
        for key, value in self.pipeline_options.items():
            if value is None or value is False:
                continue
            if value is True:
                args.append(f"--{key}")
            elif isinstance(value, (list, tuple)):
                args += [f"--{key}={v}" for v in value]
            else:
                args.append(f"--{key}={value}")
        return args

    def as_dict(self) -> dict:
        return {"pipeline_options": dict(self.pipeline_options), "job": dataclasses.asdict(self.job)}


def _build(cls, data: Mapping[str, Any], path: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'job'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{path}.{k}'.lstrip('.') for k in unknown)}; "
                          f"allowed under {path or 'job'}: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{path}.{name}".lstrip("."))
        else:
            kwargs[name] = _coerce(value, hint, f"{path}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(value, hint, path):
    text = str(hint)
    if value is None:
        if "Optional" in text or "None" in text:
            return None
        raise ConfigError(f"{path} must not be null")
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if "float" in text and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int or text == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if "str" in text and not isinstance(value, str):
        raise ConfigError(f"{path} must be a string, got {value!r}")
    if hint is dict and not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    if "float" in text and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ConfigError(f"{path} must be a number, got {value!r}")
    return value


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with pipeline_options and/or job")
    unknown = sorted(set(raw) - {"pipeline_options", "job"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: pipeline_options, job")
    return raw


_REPLACED_WHOLE = {"broad_map"}     # a map for another label set replaces the default, never mixes with it


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key not in _REPLACED_WHOLE:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(paths: Optional[str | os.PathLike | Sequence[str | os.PathLike]] = None,
                overrides: Mapping[str, Any] | None = None, sets: list[str] | None = None) -> RunConfig:
    """Layer runner YAMLs over runner_configs/local.yaml, apply overrides, validate.

    Layering: each file's ``job`` is merged key by key over the ones before it (so a
    fragment such as a calibrated ``aggregate: {threshold: 0.15}`` changes just that);
    ``pipeline_options`` come whole from the last file that has them. ``overrides`` maps
    dotted keys to values (from --input/--output); ``sets`` are ``key=value`` strings.
    """
    if paths is None or isinstance(paths, (str, os.PathLike)):
        paths = [] if paths is None else [paths]
    tree = {"pipeline_options": {}, "job": {}}
    for path in [DEFAULT_CONFIG, *(Path(p) for p in paths)]:
        raw = _read_yaml(Path(path))
        if "pipeline_options" in raw:
            tree["pipeline_options"] = dict(raw["pipeline_options"] or {})
        tree["job"] = _deep_merge(tree["job"], raw.get("job") or {})
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key.startswith(("pipeline_options.", "job.")):
            key = "job." + key
        _set_dotted(tree, key, yaml.safe_load(text))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, "job." + key, value)
    job = _build(JobConfig, tree["job"], "")
    _check_decode(job.decode)
    _check_features(job.features)
    check_validation(job.validation)
    return RunConfig(tree["pipeline_options"], job)


FEATURE_SETS = ("none", "appearance", "deep", "both")
SMOOTHING_METHODS = ("none", "window", "ema")


def _check_decode(d: DecodeConfig) -> None:
    if d.decoder_threads < 0:
        raise ConfigError(f"decode.decoder_threads must be >= 0 (0 = one per core), got {d.decoder_threads}")


def _check_features(f: FeaturesConfig) -> None:
    """Choices and the groups a feature set needs (schemas.tables.feature_set_columns says which)."""
    if f.feature_set not in FEATURE_SETS:
        raise ConfigError(f"features.feature_set must be one of {', '.join(FEATURE_SETS)}, got {f.feature_set!r}")
    if f.feature_set in ("appearance", "both") and not f.geometry:
        raise ConfigError(f"features.feature_set={f.feature_set} needs features.geometry: true (the appearance features)")
    if f.feature_set in ("deep", "both") and not (f.embedding or f.resnet50):
        raise ConfigError(f"features.feature_set={f.feature_set} needs features.embedding or features.resnet50: true")
    if f.geometry_baseline and not f.geometry:
        raise ConfigError("features.geometry_baseline needs features.geometry: true")
    if f.baseline_min_frames < 1:
        raise ConfigError(f"features.baseline_min_frames must be >= 1, got {f.baseline_min_frames}")
    s = f.smoothing
    if s.method not in SMOOTHING_METHODS:
        raise ConfigError(f"features.smoothing.method must be one of {', '.join(SMOOTHING_METHODS)}, got {s.method!r}")
    if s.window < 1 or s.window % 2 == 0:
        raise ConfigError(f"features.smoothing.window must be an odd number >= 1, got {s.window}")
    if not 0.0 < s.alpha <= 1.0:
        raise ConfigError(f"features.smoothing.alpha must be in (0, 1], got {s.alpha}")


def check_validation(v: ValidationConfig) -> None:
    """Ranges of the validation settings: checked when the config loads, so a bad one stops a
    run before any video is decoded (pipelines.validate checks again for direct callers)."""
    for key in ("min_face_coverage_warn", "min_face_coverage_fail", "max_failed_share_warn", "max_failed_share_fail"):
        value = getattr(v, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"validation.{key} must be in [0, 1] (or null to turn the check off), got {value}")
    if not v.probability_tolerance > 0:
        raise ConfigError(f"validation.probability_tolerance must be > 0, got {v.probability_tolerance}")
    if v.box_tolerance_px < 0:
        raise ConfigError(f"validation.box_tolerance_px must be >= 0, got {v.box_tolerance_px}")
