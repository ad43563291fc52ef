"""`affectflow run`: videos -> frame, video and dead-letter Parquet (the extraction job).

    ProbeVideos -> SplitIntoWorkUnits -> ExtractFaces -> ScoreEmotions [-> ExtractDeepFeatures]
      -> WriteFrames -> CollectVideoResults [-> AddSeriesColumns] -> WriteVideoRows

Each stage returns its values and its dead letters; a failure fails its video, never the run.
`build(p, config, plan)` only wires the graph and returns its outputs; `execute(config)` runs
the job on the run skeleton (pipelines.runs): discover, plan, run the pipeline into the
staging folder, commit, manifest, validate.
"""
from __future__ import annotations

import hashlib
import json
from operator import attrgetter
from dataclasses import dataclass
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from models.aggregation import AggregationSettings
from models.registry import ResolvedModel, get_spec, resolve
from pipelines.beam_runtime import runner_environment, short_state_sampling
from pipelines.config import RunConfig
from pipelines.inputs import discover
from pipelines.progress import ProgressReporter
from pipelines.runs import OutputRun, RunPlan, kept_unchanged
from schemas.features import feature_set_columns
from transforms.deep import ExtractDeepFeatures
from transforms.emotions import ScoreEmotions
from transforms.faces import ExtractFaces
from transforms.frames import WriteFrames
from transforms.probe import ProbeVideos
from transforms.segments import SplitIntoWorkUnits
from transforms.series import AddSeriesColumns, SeriesSettings
from transforms.videos import CollectVideoResults, WriteVideoRows


@dataclass(frozen=True)
class PipelineOutputs:
    outcomes: beam.PCollection      # VideoOutcome, one per matched input


def aggregation_settings(config: RunConfig) -> AggregationSettings:
    """The aggregate.* settings bound to the configured emotion model's labels."""
    return AggregationSettings.from_config(config.job.aggregate, get_spec(config.job.emotion.model).labels)


def series_settings(config: RunConfig) -> SeriesSettings:
    return SeriesSettings.from_config(config.job.features, config.job.aggregate.neutral_label)


def frame_feature_groups(config: RunConfig) -> tuple[str, ...]:
    """The frame table's optional column groups this run writes (schemas.features.FEATURE_GROUPS)."""
    return config.job.features.groups + series_settings(config).groups


def build(p: beam.Pipeline, config: RunConfig, plan: RunPlan) -> PipelineOutputs:
    """Wire the extraction graph on ``p`` for ``plan.inputs``; files go under ``plan.staging_root``."""
    job = config.job
    paths = job.models.paths
    planned = p | "MatchedInputs" >> beam.Create(plan.planned)
    inputs = planned | "Inputs" >> beam.Map(attrgetter("input"))
    probed = planned | "ProbeVideos" >> ProbeVideos(job.decode.segment_seconds, plan.fingerprint)
    faces = (probed.infos
             | "SplitIntoWorkUnits" >> SplitIntoWorkUnits()
             | "ExtractFaces" >> ExtractFaces(job.decode, job.faces, job.features, paths))
    scored = faces.values | "ScoreEmotions" >> ScoreEmotions(job.emotion, paths.get(job.emotion.model),
                                                             job.features.embedding)
    failures = [probed.dead_letters, faces.dead_letters, scored.dead_letters]
    chunks = scored.values
    if job.features.resnet50:           # an extra stage only when asked: the default graph is unchanged
        deep = chunks | "ExtractDeepFeatures" >> ExtractDeepFeatures(paths.get("resnet50"))
        chunks = deep.values
        failures.append(deep.dead_letters)
    written = chunks | "WriteFrames" >> WriteFrames(plan.staging_root, plan.file_metadata, job.features.groups)
    failures.append(written.dead_letters)
    results = ({"inputs": inputs, "infos": probed.infos, "unchanged": probed.unchanged,
                "content_hashes": probed.content_hashes, "summaries": written.values,
                "dead_letters": tuple(failures)}
               | "CollectVideoResults" >> CollectVideoResults())
    series = series_settings(config)
    if series.groups:
        results = results | "AddSeriesColumns" >> AddSeriesColumns(
            plan.staging_root, plan.settings.labels, job.features.groups, series, plan.file_metadata)
    # The video rows depend on every branch and are applied last: the DaskRunner computes only the
    # graph behind the last transform applied.
    outcomes = results | "WriteVideoRows" >> WriteVideoRows(
        plan.staging_root, plan.settings, plan.run_id, plan.extra_fields, plan.file_metadata, plan.provenance)
    return PipelineOutputs(outcomes)


# The version of what a run computes per frame and per video. Bump it when a change to the code makes
# the same bytes and settings give other rows: every video is then processed again by its next run.
EXTRACTION_VERSION = 2
# Settings that change no frame row: file layout, batch sizes, where things are, display. The
# aggregate.* settings only decide video labels, which a rerun recomputes from the counts without
# decoding (pipelines.runs); segment_seconds stays in: it shows in segment_index and segments.
_NOT_FINGERPRINTED = {("input",), ("output",), ("archive_root",), ("progress",), ("validation",), ("models",),
                      ("aggregate",), ("train",), ("classifier",), ("space",), ("decode", "chunk_frames"), ("decode", "decoder_threads"),
                      ("emotion", "max_batch"), ("features", "feature_set")}


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
    if config.job.features.geometry_baseline:           # the baseline is the median over neutral-labelled frames
        shaped["features"]["neutral_label"] = config.job.aggregate.neutral_label
    payload = {"version": EXTRACTION_VERSION, "settings": shaped,
               "models": [(m.spec.name, dict(m.sha256)) for m in models]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def resolve_models(config: RunConfig) -> list[ResolvedModel]:
    """Resolve (and fetch if needed) every model the job uses, before any worker starts."""
    job = config.job
    meshes = {"face_mesh": ["face_mesh"], "face_landmarker": ["face_landmarker", "face_blendshapes"]}
    names = ([job.faces.detector, job.emotion.model]
             + (meshes[job.features.mesh_model] if job.features.needs_mesh else [])
             + (["resnet50"] if job.features.resnet50 else []))
    models = [resolve(name, job.models.paths.get(name)) for name in names]
    if job.features.resnet50:
        # The user's file: load it once here (about 1 s) so a wrong or corrupt file fails before any worker starts.
        from models.deep import load_resnet50
        load_resnet50(models[-1].paths["weights"])
    return models


def feature_set_entry(config: RunConfig) -> Optional[dict]:
    """The training feature set the run was configured for: its name and columns in concatenation order."""
    name = config.job.features.feature_set
    if name == "none":
        return None
    return {"name": name, "columns": feature_set_columns(name, frame_feature_groups(config))}


def run_pipeline(config: RunConfig, plan: RunPlan) -> None:
    """Build and run the graph on the configured runner, with progress from the staging folder."""
    with (short_state_sampling(), runner_environment(config) as beam_args,
          ProgressReporter(plan.staging_root, [v.video_id for v in plan.inputs], config.job.progress)):
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        build(p, config, plan)
        result = p.run()
        result.wait_until_finish()
        if hasattr(result, "client"):       # the DaskRunner leaves its client open; close it with the run
            result.client.close()


def execute(config: RunConfig, argv_for_manifest: Optional[list[str]] = None, force: bool = False,
            wait_s: float = 0.0, prune: bool = False) -> dict:
    """Run the whole job; return the run manifest.

    Videos whose bytes, models and settings are unchanged since their row was written are
    skipped (``force`` processes everything); ``wait_s``: how long to wait for another run
    holding the output; ``prune``: remove the videos whose input file is gone. The manifest
    goes to ``<output>/run_manifest.json`` (the latest run) and
    ``<output>/runs/<run_id>/run_manifest.json`` (kept for provenance).
    """
    classifier = config.job.classifier.model
    if classifier:                      # a model that cannot read this run's columns fails before any work
        from pipelines.predict import check_model_settings, model_folder
        from models.video_classifier import VideoClassifierHandler
        classifier = model_folder(classifier)
        check_model_settings(VideoClassifierHandler(classifier).card, frame_feature_groups(config))
    with OutputRun(config, argv_for_manifest, force, wait_s, prune) as run:
        inputs, extra_fields = discover(config.job.input, run.archive_root())
        models = resolve_models(config)
        plan = run.plan(inputs, extra_fields, aggregation_settings(config), frame_feature_groups(config),
                        settings_fingerprint(config, models), [m.manifest_entry() for m in models])
        todo = plan.without(kept_unchanged(plan))      # unchanged local files are never handed to the pipeline
        if todo.inputs:
            run_pipeline(config, todo)
        manifest = run.finish(plan, {"feature_set": feature_set_entry(config)})
        if classifier:                  # the classifier's Beam stage over the committed frame rows
            from pipelines.predict import predict_output
            manifest["predictions"] = predict_output(run.output, classifier, config, command=argv_for_manifest)
        return manifest
