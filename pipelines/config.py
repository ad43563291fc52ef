"""Job configuration: runner YAMLs, overrides, and the checks that run before any work starts.

A runner YAML has two top-level sections and nothing else:

    pipeline_options:    # handed to Beam as --key=value flags (runner, workers, ...)
      runner: DirectRunner
    job:                 # affectflow's own settings (core.settings.JobConfig)
      decode: {sample_fps: 5}

Files layer over runner_configs/local.yaml: each file's ``job`` merges key by key over the
ones before it (a fragment such as a calibrated ``aggregate: {threshold: 0.15}`` changes just
that); ``pipeline_options`` come whole from the last file that has them. Any key can be
overridden on the command line: ``--set decode.sample_fps=10`` (a ``job.`` prefix is
optional) or ``--set pipeline_options.direct_num_workers=2``; values are parsed as YAML.
Every error (unknown key, wrong type, value out of range, unknown model, YAML syntax) is a
ConfigError naming the dotted key or the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import ConfigError
from core.settings import JobConfig
from models.registry import REGISTRY

RUNNER_CONFIGS = Path(__file__).resolve().parent.parent / "runner_configs"
DEFAULT_CONFIG = RUNNER_CONFIGS / "local.yaml"
_REPLACED_WHOLE = {"broad_map"}     # a map for another label set replaces the default, never mixes with it


@dataclass(frozen=True)
class RunConfig:
    """Beam's pipeline options and affectflow's validated job settings."""
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
        return {"pipeline_options": dict(self.pipeline_options), "job": self.job.model_dump(mode="json")}

    def with_job(self, **sections: Any) -> "RunConfig":
        """A copy with some job settings replaced (validated again)."""
        return RunConfig(dict(self.pipeline_options), build_job({**self.job.model_dump(), **sections}))


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
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with pipeline_options and/or job")
    unknown = sorted(set(raw) - {"pipeline_options", "job"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: pipeline_options, job")
    if not isinstance(raw.get("pipeline_options") or {}, dict) or not isinstance(raw.get("job") or {}, dict):
        raise ConfigError(f"{path}: pipeline_options and job must be mappings")
    return raw


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key not in _REPLACED_WHOLE:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _section_at(model: type[BaseModel], loc: Sequence) -> Optional[type[BaseModel]]:
    """The settings class at a location of the tree (for the allowed keys of an unknown one)."""
    for key in loc:
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _message(error: dict) -> str:
    loc = [str(k) for k in error["loc"]]
    dotted = ".".join(loc) or "job"
    if error["type"] == "extra_forbidden":
        section = _section_at(JobConfig, loc[:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown key {dotted}; allowed under {'.'.join(loc[:-1]) or 'job'}: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{dotted} = {error['input']!r}: {message}"


def build_job(tree: Mapping[str, Any]) -> JobConfig:
    """Validate a job settings tree; every problem is listed in one ConfigError."""
    try:
        job = JobConfig.model_validate(dict(tree))
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + "; ".join(_message(e) for e in exc.errors())) from None
    _check_models(job)
    return job


def _check_models(job: JobConfig) -> None:
    """Model names must be registry entries of the right kind (the registry lives above core). The
    aggregate.* settings are checked against a label set where one is known: a run's or calibration's
    (models.aggregation.AggregationSettings)."""
    for key, name, kind in (("faces.detector", job.faces.detector, "face_detector"),
                            ("emotion.model", job.emotion.model, "emotion")):
        spec = REGISTRY.get(name)
        if spec is None or spec.kind != kind:
            known = sorted(n for n, s in REGISTRY.items() if s.kind == kind)
            raise ConfigError(f"{key} = {name!r}: not a {kind} in the model registry; known: {', '.join(known)}")


def load_config(paths: Optional[str | os.PathLike | Sequence[str | os.PathLike]] = None,
                overrides: Mapping[str, Any] | None = None, sets: list[str] | None = None) -> RunConfig:
    """Layer runner YAMLs over runner_configs/local.yaml, apply overrides, validate.

    ``overrides`` maps dotted keys to values (from --input/--output); ``sets`` are
    ``key=value`` strings (from --set). Raises ConfigError.
    """
    if paths is None or isinstance(paths, (str, os.PathLike)):
        paths = [] if paths is None else [paths]
    tree: dict = {"pipeline_options": {}, "job": {}}
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
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML: {exc}") from None
        _set_dotted(tree, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, "job." + key, value)
    return RunConfig(tree["pipeline_options"], build_job(tree["job"]))
