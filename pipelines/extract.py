"""The extraction pipeline: videos -> frame, video and dead-letter Parquet.

    discover (launcher) -> ProbeVideos -> SplitIntoWorkUnits -> ExtractFaces -> ScoreEmotions
      [-> ExtractDeepFeatures, features.resnet50] -> WriteFrames
      -> AggregateVideos (rows + dead letters written per video; per-video series columns)

A model's failure on a chunk is a dead letter (stage emotion / features) that fails its video;
the rest of the run goes on.

At the end `execute` validates the output (pipelines.validate) when validation.enabled.

`build(p, ...)` only wires the graph and returns its outputs; `execute(config)` discovers
the inputs, runs the pipeline into a staging folder, commits the staged partitions into
the output and writes ``run_manifest.json``.

The run writes into ``<output>/_staging/<run_id>/`` and, once the pipeline has finished,
moves each video's partitions into ``<output>/<table>/video_id=<id>/`` (replacing that
video's previous partitions), so a rerun never leaves stale chunk files behind and a
reader never sees a video half-written.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models.registry import ResolvedModel, get_spec, resolve
from schemas.tables import feature_set_columns
from pipelines.beam_runtime import shorten_state_sampling
from pipelines.config import RunConfig
from pipelines.outputs import (check_same_frame_schema, clear_stale_staging, commit_staging, previous_fingerprints,
                               read_table, run_manifest, summarise_videos, write_manifest)
from pipelines.progress import ProgressReporter
from transforms.aggregate import AggregationSettings
from transforms.discover import ProbeVideos, SplitIntoWorkUnits, discover, split_errors
from transforms.elements import VideoInput
from transforms.deep import ExtractDeepFeatures
from transforms.emotions import ScoreEmotions
from transforms.faces import ExtractFaces
from transforms.series import SeriesSettings
from transforms.videos import AggregateVideos
from transforms.write import WriteFrames, json_metadata

_LOG = logging.getLogger(__name__)
TABLES = ("frames", "videos", "dead_letters")


def aggregation_settings(config: RunConfig) -> AggregationSettings:
    a = config.job.aggregate
    labels = get_spec(config.job.emotion.model).labels
    return AggregationSettings(labels=tuple(labels), threshold=a.threshold, fallback=a.fallback,
                               neutral_label=a.neutral_label, broad_map=dict(a.broad_map))


@dataclass(frozen=True)
class PipelineOutputs:
    outcomes: beam.PCollection      # VideoOutcome, one per matched input


@dataclass(frozen=True)
class RunPlan:
    """What one run works on, decided before the graph is built."""
    run_id: str
    staging_root: str                               # the run writes here; execute() commits it
    inputs: Sequence[VideoInput]
    extra_fields: Sequence[pa.Field] = ()           # manifest columns carried to the video table
    file_metadata: Mapping[str, str] = field(default_factory=dict)
    previous: Mapping[str, tuple[str, str]] = field(default_factory=dict)   # id -> (sha256, fingerprint)
    fingerprint: str = ""
    models_json: str = "[]"


def build(p: beam.Pipeline, config: RunConfig, plan: RunPlan) -> PipelineOutputs:
    """Wire the extraction graph on ``p`` for ``plan.inputs``; files go under ``plan.staging_root``."""
    job = config.job
    paths = job.models.paths
    videos = p | "MatchedInputs" >> beam.Create(list(plan.inputs))
    probed = (videos                                                       # VideoInfo | Unchanged | DeadLetter
              | "ProbeVideos" >> ProbeVideos(job.decode.segment_seconds, plan.previous, plan.fingerprint))
    extracted = (probed
                 | "SplitIntoWorkUnits" >> SplitIntoWorkUnits()             # skips Unchanged and dead letters
                 | "ExtractFaces" >> ExtractFaces(job.faces.detector, paths.get(job.faces.detector),
                                                  job.faces.min_score, job.faces.keep_all_faces,
                                                  job.faces.crop_margin, job.decode.chunk_frames,
                                                  job.decode.sample_fps, job.features.needs_mesh,
                                                  paths.get("face_mesh"), job.features.resnet50,
                                                  job.decode.decoder_threads))              # FaceChunk | DeadLetter
    chunks, extract_failures = split_errors(extracted, "Extract")
    scored = chunks | "ScoreEmotions" >> ScoreEmotions(job.emotion.model, paths.get(job.emotion.model),
                                                       job.emotion.max_batch, job.emotion.runtime,
                                                       job.features.embedding)
    scored, model_failures = split_errors(scored, "Emotion")          # chunks the model failed on
    failures = [extract_failures, model_failures]
    if job.features.resnet50:           # an extra stage only when asked: the default graph is unchanged
        deep = scored | "ExtractDeepFeatures" >> ExtractDeepFeatures(paths.get("resnet50"))
        scored, deep_failures = split_errors(deep, "Deep")
        failures.append(deep_failures)
    written = (scored
               | "WriteFrames" >> WriteFrames(plan.staging_root, {v.video_id: v.path for v in plan.inputs},
                                              plan.file_metadata, job.features.groups))
    # Everything known per video (probe results, chunk summaries, dead letters of every stage) goes to
    # AggregateVideos. It depends on every branch and is applied last: the DaskRunner computes only
    # the graph behind the last transform applied.
    outcomes = ({"inputs": videos, "results": (probed, *failures, written)}
                | "AggregateVideos" >> AggregateVideos(
                    plan.staging_root, aggregation_settings(config), plan.run_id, plan.extra_fields,
                    plan.file_metadata, {"settings_fingerprint": plan.fingerprint, "models": plan.models_json},
                    series_settings(config), job.features.groups))
    return PipelineOutputs(outcomes)


def series_settings(config: RunConfig) -> SeriesSettings:
    f = config.job.features
    return SeriesSettings(method=f.smoothing.method, window=f.smoothing.window, alpha=f.smoothing.alpha,
                          baseline=f.geometry_baseline, baseline_min_frames=f.baseline_min_frames,
                          neutral_label=config.job.aggregate.neutral_label)


def frame_feature_groups(config: RunConfig) -> tuple[str, ...]:
    """The frame table's optional column groups this run writes (schemas.tables.FEATURE_GROUPS)."""
    return config.job.features.groups + series_settings(config).groups


# Settings that change no row: work-unit and file layout, batch sizes, where things are, display.
_NOT_FINGERPRINTED = {("input",), ("output",), ("progress",), ("validation",), ("models",),
                      ("decode", "segment_seconds"), ("decode", "chunk_frames"), ("decode", "decoder_threads"),
                      ("emotion", "max_batch"),
                      ("features", "feature_set")}


def _drop_unused_feature_settings(features: dict) -> None:
    """Remove the settings of features.* steps that are off (a smoothing window while smoothing
    is off changes no row, so it must not make a rerun decode everything again)."""
    smoothing = features.get("smoothing", {})
    method = smoothing.get("method", "none")
    used = {"none": (), "window": ("window",), "ema": ("alpha",)}.get(method, tuple(smoothing))
    features["smoothing"] = {"method": method, **{k: smoothing[k] for k in used if k in smoothing}}
    if not features.get("geometry_baseline"):
        features.pop("baseline_min_frames", None)


def settings_fingerprint(config: RunConfig, models: Sequence[ResolvedModel]) -> str:
    """SHA-256 over the models' file checksums and every job setting that shapes the output rows."""
    job = config.as_dict()["job"]
    shaped = {section: ({k: v for k, v in value.items() if (section, k) not in _NOT_FINGERPRINTED}
                        if isinstance(value, dict) else value)
              for section, value in job.items() if (section,) not in _NOT_FINGERPRINTED}
    _drop_unused_feature_settings(shaped["features"])
    payload = {"settings": shaped, "models": [(m.spec.name, dict(m.sha256)) for m in models]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def resolve_models(config: RunConfig) -> list[ResolvedModel]:
    """Resolve (and fetch if needed) every model the job uses, before any worker starts."""
    job = config.job
    names = ([job.faces.detector, job.emotion.model] + (["face_mesh"] if job.features.needs_mesh else [])
             + (["resnet50"] if job.features.resnet50 else []))
    models = [resolve(name, job.models.paths.get(name)) for name in names]
    if job.features.resnet50:
        # The user's file: load it once here (about 1 s) so a wrong or corrupt file fails before any worker starts.
        from models.deep import load_resnet50
        load_resnet50(models[-1].paths["weights"])
    return models


@contextlib.contextmanager
def runner_environment(config: RunConfig) -> Iterator[list[str]]:
    """Beam flags for the run; for the DaskRunner with ``dask_client_address: local``, a
    LocalCluster (one single-threaded worker process per core) for the run's lifetime."""
    opts = dict(config.pipeline_options)
    if "DaskRunner" not in str(opts.get("runner", "")) or opts.get("dask_client_address") != "local":
        yield config.beam_args()
        return
    from distributed import LocalCluster
    with LocalCluster(n_workers=os.cpu_count() or 2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        opts["dask_client_address"] = cluster.scheduler_address
        yield RunConfig(opts, config.job).beam_args()


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def execute(config: RunConfig, argv_for_manifest: Optional[list[str]] = None, force: bool = False) -> dict:
    """Run the whole job; return the run manifest.

    Videos whose bytes, models and settings are unchanged since their row was written are
    skipped (``force`` processes everything). The manifest goes to ``<output>/run_manifest.json``
    (the latest run) and ``<output>/runs/<run_id>/run_manifest.json`` (kept for provenance).
    """
    job = config.job
    if not job.input or not job.output:
        raise ValueError("both input and output are required")
    started = time.time()
    run_id = new_run_id()
    output = job.output.rstrip("/")
    inputs, extra_fields = discover(job.input)
    models = resolve_models(config)
    settings = aggregation_settings(config)
    video_ids = [v.video_id for v in inputs]
    check_same_frame_schema(output, video_ids, frame_feature_groups(config), settings.labels)
    clear_stale_staging(output)
    plan = RunPlan(
        run_id=run_id, staging_root=FileSystems.join(output, "_staging", run_id), inputs=inputs,
        extra_fields=extra_fields,
        file_metadata={"affectflow.run_id": run_id,
                       "affectflow.models": json_metadata([m.manifest_entry() for m in models])},
        previous={} if force else previous_fingerprints(output, video_ids),
        fingerprint=settings_fingerprint(config, models),
        models_json=json_metadata([{"name": m.spec.name, "source": m.spec.source, "sha256": dict(m.sha256)}
                                   for m in models]))
    _LOG.info("run %s: %d videos matched %s", run_id, len(inputs), job.input)
    discovered = time.time()

    shorten_state_sampling()        # the DirectRunner runs bundles in this process
    with runner_environment(config) as beam_args, ProgressReporter(plan.staging_root, video_ids, job.progress):
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        build(p, config, plan)
        result = p.run()
        result.wait_until_finish()
        if hasattr(result, "client"):       # the DaskRunner leaves its client open; close it with the run
            result.client.close()
    pipeline_done = time.time()

    commit_staging(plan.staging_root, output, TABLES)
    summary = summarise_videos(read_table(output, "videos", video_ids), len(inputs), run_id)
    manifest = run_manifest(
        run_id=run_id, started=started, work_started=discovered, work_done=pipeline_done, config=config,
        output=output, command=argv_for_manifest, forced=force, fingerprint=plan.fingerprint,
        models=[m.manifest_entry() for m in models], labels=settings.labels, broad_labels=settings.broad_labels,
        counts=summary, tables=TABLES)
    manifest.update({
        "frame_feature_groups": list(frame_feature_groups(config)),
        "feature_set": feature_set_entry(config),
    })
    write_manifest(output, manifest)
    if job.validation.enabled:
        manifest["validation"] = validate_after_run(output, config, run_id)
    return manifest


def feature_set_entry(config: RunConfig) -> Optional[dict]:
    """The training feature set the run was configured for: its name and columns in concatenation order."""
    name = config.job.features.feature_set
    if name == "none":
        return None
    return {"name": name, "columns": feature_set_columns(name, frame_feature_groups(config))}


def validate_after_run(output: str, config: RunConfig, run_id: str) -> dict:
    """Validate what the run left (pipelines.validate); the verdict also goes into the manifests.

    Validation reads the Parquet with DuckDB, which needs a local folder: for a remote output
    the entry says so and `affectflow validate` can be run where the output is mounted. A
    validation that cannot complete leaves the output committed and marks it not valid (exit 4),
    never a usage error.
    """
    if "://" in output and not output.startswith("file://"):
        _LOG.warning("validation skipped: %s is not a local folder; run affectflow validate on a local copy", output)
        return {"valid": None, "skipped": f"{output} is not a local folder"}
    from pipelines.validate import mark_manifests, validate_output
    local = output.removeprefix("file://")
    try:
        report = validate_output(local, config.job.validation)
    except Exception as exc:  # noqa: BLE001 - the data is committed; an unvalidated output is not valid
        _LOG.exception("validation of %s could not complete", output)
        message = f"validation of {output} could not complete: {type(exc).__name__}: {exc}"
        entry = {"valid": False, "error": message}
        with contextlib.suppress(Exception):        # the run's own verdict, as a finished validation records it
            mark_manifests(Path(local), run_id, entry)
        return {**entry, "summary": message}
    return {**report.manifest_entry(), "summary": report.summary()}


def run(argv: Optional[list[str]] = None) -> int:
    """Script entry (orchestrators' Beam operators): the options and exit codes of `affectflow run`."""
    import sys
    from pipelines.cli import main
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(run())
