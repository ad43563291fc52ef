"""The run skeleton every job that writes an output follows: plan -> stage -> commit -> manifest -> validate.

    with OutputRun(config, command=argv, force=False) as run:
        inputs, extra_fields = discover(config.job.input)          # the job's own discovery
        plan = run.plan(inputs, extra_fields, settings, feature_groups, fingerprint, models)
        ... the job writes every processed video's partitions under plan.staging_root ...
        manifest = run.finish(plan, extra={...})                   # commit, manifest, validation

`affectflow run` (pipelines.extract) and `affectflow ingest` (pipelines.ingest) use it; the
output's layout, reruns and provenance are therefore the same whatever wrote the rows.

A run writes only into ``<output>/_staging/<run_id>/``; `finish` moves each processed video's
partitions into place (pipelines.output.commit), so a rerun never leaves stale files behind
and a reader never sees a video half-written.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.elements import PlannedVideo, RowFingerprint, VideoInput
from models.aggregation import AggregationSettings
from pipelines.config import RunConfig
from pipelines.output.commit import clear_stale_staging, commit_staging
from pipelines.output.layout import STAGING, TABLES, read_table
from pipelines.output.manifest import new_run_id, run_manifest, summarise_videos, write_manifest
from pipelines.output.state import check_same_frame_schema, previous_fingerprints
from transforms.parquet import json_metadata

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What one run works on, decided before any work starts."""
    run_id: str
    output: str
    staging_root: str                               # the run writes here; finish() commits it
    inputs: Sequence[VideoInput]
    settings: AggregationSettings                   # labels and the aggregate.* settings
    feature_groups: tuple[str, ...]                 # the frame table's optional column groups
    fingerprint: str                                # settings_fingerprint of every row written
    models: Sequence[dict]                          # registry manifest entries of the models used
    extra_fields: Sequence[pa.Field] = ()           # manifest columns carried to the video table
    previous: Mapping[str, RowFingerprint] = field(default_factory=dict)

    @property
    def planned(self) -> list[PlannedVideo]:
        """Every input with the fingerprint of the row a rerun may keep."""
        return [PlannedVideo(v, self.previous.get(v.video_id)) for v in self.inputs]

    @property
    def file_metadata(self) -> dict[str, str]:
        """Key-value metadata of every Parquet file the run writes."""
        return {"affectflow.run_id": self.run_id, "affectflow.models": json_metadata(list(self.models))}

    @property
    def provenance(self) -> dict[str, str]:
        """The provenance columns of every video row the run writes."""
        brief = [{"name": m["name"], "source": m["source"], "sha256": m["sha256"]} for m in self.models]
        return {"settings_fingerprint": self.fingerprint, "models": json_metadata(brief)}


class OutputRun:
    """One run into one output folder: its id, timings, plan, commit, manifest and validation."""

    def __init__(self, config: RunConfig, command: Optional[list[str]] = None, force: bool = False):
        job = config.job
        if not job.input or not job.output:
            raise ValueError("both input and output are required")
        self.config = config
        self.output = job.output.rstrip("/")
        self.command = command
        self.force = force
        self.run_id = new_run_id()
        self.started = time.time()
        self.work_started: Optional[float] = None
        self.work_done: Optional[float] = None

    def __enter__(self) -> "OutputRun":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def plan(self, inputs: Sequence[VideoInput], extra_fields: Sequence[pa.Field], settings: AggregationSettings,
             feature_groups: Sequence[str], fingerprint: str, models: Sequence[dict]) -> RunPlan:
        """Check the inputs against the output, clear what crashed runs left, and plan the run:
        which rows a rerun may keep (none with ``force``)."""
        video_ids = [v.video_id for v in inputs]
        check_same_frame_schema(self.output, video_ids, feature_groups, settings.labels)
        clear_stale_staging(self.output)
        plan = RunPlan(run_id=self.run_id, output=self.output,
                       staging_root=FileSystems.join(self.output, STAGING, self.run_id), inputs=list(inputs),
                       settings=settings, feature_groups=tuple(feature_groups), fingerprint=fingerprint,
                       models=list(models), extra_fields=list(extra_fields),
                       previous={} if self.force else previous_fingerprints(self.output, video_ids))
        _LOG.info("run %s: %d inputs matched %s", self.run_id, len(inputs), self.config.job.input)
        self.work_started = time.time()
        return plan

    def finish(self, plan: RunPlan, extra: Optional[Mapping] = None) -> dict:
        """Commit the staged partitions, write the run manifest (with ``extra`` keys) and, when
        validation.enabled, validate the output; return the manifest."""
        self.work_done = time.time()
        commit_staging(plan.staging_root, self.output, TABLES)
        video_ids = [v.video_id for v in plan.inputs]
        summary = summarise_videos(read_table(self.output, "videos", video_ids), len(plan.inputs), self.run_id)
        manifest = run_manifest(
            run_id=self.run_id, started=self.started, work_started=self.work_started, work_done=self.work_done,
            config=self.config, output=self.output, command=self.command, forced=self.force,
            fingerprint=plan.fingerprint, models=list(plan.models), labels=plan.settings.labels,
            broad_labels=plan.settings.broad_labels, counts=summary, tables=TABLES)
        manifest["frame_feature_groups"] = list(plan.feature_groups)
        manifest.update(extra or {})
        write_manifest(self.output, manifest)
        if self.config.job.validation.enabled:
            manifest["validation"] = validate_after_run(self.output, self.config, self.run_id)
        return manifest


def validate_after_run(output: str, config: RunConfig, run_id: str) -> dict:
    """Validate what the run left (pipelines.validation); the verdict also goes into the manifests.

    Validation reads the Parquet with DuckDB, which needs a local folder: for a remote output
    the entry says so and `affectflow validate` can be run where the output is mounted. A
    validation that cannot complete leaves the output committed and marks it not valid (exit 4),
    never a usage error.
    """
    if "://" in output and not output.startswith("file://"):
        _LOG.warning("validation skipped: %s is not a local folder; run affectflow validate on a local copy", output)
        return {"valid": None, "skipped": f"{output} is not a local folder"}
    from pipelines.validation.job import mark_manifests, validate_output
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
