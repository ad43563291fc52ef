"""The extraction pipeline: videos -> frame, video and dead-letter Parquet.

    discover (launcher) -> ProbeVideos -> SplitIntoWorkUnits -> ExtractFaces -> ScoreEmotions
      -> WriteFrames -> AggregateVideos (rows + dead letters written per video)

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
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models.registry import ResolvedModel, get_spec, resolve
from pipelines.config import RunConfig
from pipelines.outputs import commit_staging, package_versions, read_table, summarise_videos
from pipelines.progress import ProgressReporter
from transforms.aggregate import AggregationSettings
from transforms.discover import ProbeVideos, SplitIntoWorkUnits, discover, split_errors
from transforms.elements import VideoInput
from transforms.emotions import ScoreEmotions
from transforms.faces import ExtractFaces
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


def build(p: beam.Pipeline, config: RunConfig, inputs: Sequence[VideoInput], staging_root: str, run_id: str,
          extra_fields: Sequence[pa.Field] = (), file_metadata: Optional[dict] = None) -> PipelineOutputs:
    """Wire the extraction graph on ``p`` for ``inputs``; files go under ``staging_root``."""
    job = config.job
    metadata = file_metadata or {}
    paths = job.models.paths
    videos = p | "MatchedInputs" >> beam.Create(list(inputs))
    probed = videos | "ProbeVideos" >> ProbeVideos(job.decode.segment_seconds)          # VideoInfo | DeadLetter
    extracted = (probed
                 | "SplitIntoWorkUnits" >> SplitIntoWorkUnits()                       # skips dead letters
                 | "ExtractFaces" >> ExtractFaces(job.faces.detector, paths.get(job.faces.detector),
                                                  job.faces.min_score, job.faces.keep_all_faces,
                                                  job.faces.crop_margin, job.decode.chunk_frames,
                                                  job.decode.sample_fps))            # FaceChunk | DeadLetter
    chunks, extract_failures = split_errors(extracted, "Extract")
    written = (chunks
               | "ScoreEmotions" >> ScoreEmotions(job.emotion.model, paths.get(job.emotion.model),
                                                  job.emotion.max_batch, job.emotion.runtime)
               | "WriteFrames" >> WriteFrames(staging_root, {v.video_id: v.path for v in inputs}, metadata))
    # Everything known per video (probe results, chunk summaries, dead letters of every stage) goes to
    # AggregateVideos as one PCollection. It depends on every branch and is applied last: the
    # DaskRunner computes only the graph behind the last transform applied.
    results = (probed, extract_failures, written) | "AllVideoResults" >> beam.Flatten()
    outcomes = ({"inputs": videos, "results": results}
                | "AggregateVideos" >> AggregateVideos(staging_root, aggregation_settings(config), run_id,
                                                       extra_fields, metadata))
    return PipelineOutputs(outcomes)


def resolve_models(config: RunConfig) -> list[ResolvedModel]:
    """Resolve (and fetch if needed) every model the job uses, before any worker starts."""
    job = config.job
    return [resolve(name, job.models.paths.get(name)) for name in (job.faces.detector, job.emotion.model)]


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


def execute(config: RunConfig, argv_for_manifest: Optional[list[str]] = None) -> dict:
    """Run the whole job; return the run manifest (also written to <output>/run_manifest.json)."""
    job = config.job
    if not job.input or not job.output:
        raise ValueError("both input and output are required")
    started = time.time()
    run_id = new_run_id()
    output = job.output.rstrip("/")
    staging = FileSystems.join(output, "_staging", run_id)
    inputs, extra_fields = discover(job.input)
    models = resolve_models(config)
    settings = aggregation_settings(config)
    metadata = {"affectflow.run_id": run_id,
                "affectflow.models": json_metadata([m.manifest_entry() for m in models])}
    _LOG.info("run %s: %d videos matched %s", run_id, len(inputs), job.input)
    discovered = time.time()

    reporter = ProgressReporter(staging, [v.video_id for v in inputs], enabled=job.progress)
    with runner_environment(config) as beam_args, reporter:
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        build(p, config, inputs, staging, run_id, extra_fields, metadata)
        result = p.run()
        result.wait_until_finish()
        if hasattr(result, "client"):       # the DaskRunner leaves its client open; close it with the run
            result.client.close()
    pipeline_done = time.time()

    commit_staging(staging, output, TABLES)
    videos = read_table(output, "videos", [v.video_id for v in inputs])
    summary = summarise_videos(videos, len(inputs))
    manifest = {
        "run_id": run_id,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "input": job.input,
        "output": output,
        "command": argv_for_manifest,
        "config": config.as_dict(),
        "models": [m.manifest_entry() for m in models],
        "labels": list(settings.labels),
        "broad_labels": list(settings.broad_labels),
        "packages": package_versions(),
        "counts": summary,
        "timings_s": {"discover_and_resolve": round(discovered - started, 3),
                      "pipeline": round(pipeline_done - discovered, 3),
                      "commit_and_summarise": round(time.time() - pipeline_done, 3),
                      "total": round(time.time() - started, 3)},
        "throughput_frames_per_s": round(summary["frames_decoded"] / max(pipeline_done - discovered, 1e-9), 1),
        "tables": {t: FileSystems.join(output, t) for t in TABLES},
    }
    with FileSystems.create(FileSystems.join(output, "run_manifest.json")) as fh:
        fh.write(json.dumps(manifest, indent=2, default=str).encode())
    return manifest
