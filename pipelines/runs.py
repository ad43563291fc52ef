"""The run skeleton every job that writes an output follows: plan -> stage -> commit -> manifest -> validate.

    with OutputRun(config, command=argv) as run:                   # the output's lock; crashed commits finished
        inputs, extra_fields = discover(config.job.input, run.archive_root())
        plan = run.plan(inputs, extra_fields, settings, feature_groups, fingerprint, models)
        ... the job writes every processed video's partitions under plan.staging_root ...
        manifest = run.finish(plan, extra={...})                   # commit, manifest, validation

`affectflow run` (pipelines.extract) and `affectflow ingest` (pipelines.ingest.job) use it; the
output's layout, reruns and provenance are therefore the same whatever wrote the rows.

A run writes only into ``<output>/_staging/<run_id>/``; `finish` commits each video's
partitions through a journal (pipelines.output.commit), so a rerun never leaves stale files
behind, a reader never sees a video half-written, and a crash never loses the only copy.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.elements import DeadLetter, PlannedVideo, RowFingerprint, VideoInput
from core.errors import InputError, UsageError
from models.aggregation import AggregationSettings
from pipelines.config import RunConfig
from pipelines.inputs import default_root
from pipelines.output.commit import commit_staging, recover_commits, staged_tables
from pipelines.output.layout import STAGING, TABLES, output_video_ids, read_table
from pipelines.output.lock import OutputLock
from pipelines.output.manifest import SUMMARY_COLUMNS, new_run_id, run_manifest, summarise_videos, write_manifest
from pipelines.output.rows import rewrite_kept_rows
from pipelines.output.schema import added_columns, carried_columns, check_outputs_schema, union_carried
from pipelines.output.state import OutputState, deleted_inputs, latest_manifest, read_state, read_video_rows
from schemas.videos import video_schema
from transforms.decode import hash_file
from transforms.parquet import json_metadata
from transforms.videos import build_video_row, dead_letter_rows, write_video_files

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
    extra_fields: Sequence[pa.Field] = ()           # carried manifest columns: the output's and this run's
    previous: Mapping[str, RowFingerprint] = field(default_factory=dict)
    archive_root: str = ""

    def without(self, video_ids: Collection[str]) -> "RunPlan":
        """The same plan for the other inputs only (what the pipeline still has to look at)."""
        return dataclasses.replace(self, inputs=[v for v in self.inputs if v.video_id not in video_ids])

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

    @property
    def video_schema(self) -> pa.Schema:
        return video_schema(self.settings.labels, self.settings.broad_labels, self.extra_fields)


def kept_unchanged(plan: RunPlan, threads: int = 8) -> frozenset[str]:
    """Ids of local inputs whose row the run keeps as it is: a row with the run's settings fingerprint
    and the same bytes, hashed here in ``threads`` threads (hashlib releases the GIL).

    The pipeline then never sees them, and a rerun in which nothing changed starts no pipeline at
    all. The pipeline's own check (transforms.probe) stays for the rest: remote inputs are hashed
    by its workers, since hashing them here would pull every byte through this one machine. A
    file that cannot be read here is left to the pipeline, which records why.
    """
    candidates = [p for p in plan.planned if p.previous is not None and "://" not in p.input.path
                  and p.previous.settings_fingerprint == plan.fingerprint]

    def same_bytes(planned: PlannedVideo) -> bool:
        try:
            return hash_file(planned.input.path)[0] == planned.previous.content_sha256
        except OSError:
            return False

    if not candidates:
        return frozenset()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return frozenset(p.video_id for p, same in zip(candidates, pool.map(same_bytes, candidates)) if same)


def check_output_path(output: str) -> None:
    """UsageError for an output that cannot be a folder of tables: an existing file, or a path inside
    a ``video_id=`` partition (readers would take it for one)."""
    if "video_id=" in output:
        raise UsageError(f"output {output} contains 'video_id=': readers would take it for a partition; choose "
                         "another folder")
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"output {output} exists and is not a folder")


class OutputRun:
    """One run into one output folder: its lock, id, timings, plan, commit, manifest and validation."""

    def __init__(self, config: RunConfig, command: Optional[list[str]] = None, force: bool = False,
                 wait_s: float = 0.0, prune: bool = False):
        job = config.job
        if not job.input or not job.output:
            raise UsageError("both input and output are required")
        self.output = job.output.rstrip("/")
        check_output_path(self.output)
        self.config = config
        self.command = command
        self.force = force
        self.prune = prune
        self.run_id = new_run_id()
        self.started = time.time()
        self.work_started: Optional[float] = None
        self._lock = OutputLock(self.output, self.run_id, " ".join(command or []), wait_s, create=True)
        self._before: Optional[dict] = None
        self._state: Optional[OutputState] = None
        self.recovered: list[str] = []

    def __enter__(self) -> "OutputRun":
        self._lock.acquire()
        try:
            self.recovered = recover_commits(self.output)
            self._before = latest_manifest(self.output)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._lock.release()
        return False

    def archive_root(self) -> str:
        """The folder generated ids are relative to: archive_root, else the output's recorded one, else
        the input's (pipelines.inputs)."""
        root = self.config.job.archive_root or (self._before or {}).get("archive_root")
        return (root.rstrip("/") + "/") if root else default_root(self.config.job.input)

    def plan(self, inputs: Sequence[VideoInput], extra_fields: Sequence[pa.Field], settings: AggregationSettings,
             feature_groups: Sequence[str], fingerprint: str, models: Sequence[dict]) -> RunPlan:
        """Check the inputs against the output before any work, and plan the run: which rows a rerun
        may keep (none with ``force``), which videos must be repaired."""
        video_ids = [v.video_id for v in inputs]
        carried = union_carried(self._before, self.output, extra_fields)
        try:
            video_schema(settings.labels, settings.broad_labels, carried)
        except ValueError as exc:           # a manifest column named like a table column
            raise InputError(str(exc)) from None
        check_outputs_schema(self.output, self._before, video_ids, feature_groups, settings)
        self._state = read_state(self.output, video_ids)
        plan = RunPlan(run_id=self.run_id, output=self.output,
                       staging_root=FileSystems.join(self.output, STAGING, self.run_id), inputs=list(inputs),
                       settings=settings, feature_groups=tuple(feature_groups), fingerprint=fingerprint,
                       models=list(models), extra_fields=carried,
                       previous={} if self.force else self._state.previous, archive_root=self.archive_root())
        _LOG.info("run %s: %d inputs matched %s", self.run_id, len(inputs), self.config.job.input)
        self.work_started = time.time()
        return plan

    def finish(self, plan: RunPlan, extra: Optional[Mapping] = None) -> dict:
        """Commit the staged partitions (with the kept rows that need new labels or columns, and the
        pruned videos), write the run manifest (with ``extra`` keys) and, when validation.enabled,
        validate; return the manifest."""
        work_done = time.time()
        staged = staged_tables(plan.staging_root)
        self._write_missing_rows(plan, staged)
        matched = {v.video_id for v in plan.inputs}
        others = self._other_rows(plan, staged)                 # every row of the output the run did not write
        rewritten = rewrite_kept_rows(others, plan.staging_root, plan.settings, plan.video_schema, self.run_id,
                                      plan.file_metadata, relabel=self._aggregate_changed()) if others else []
        gone = deleted_inputs(self.output, matched)
        pruned = gone if self.prune else []
        replace = {v: TABLES for v in staged} | {v: ("videos",) for v in rewritten} | {v: TABLES for v in pruned}
        commit_staging(plan.staging_root, self.output, replace)
        summary = summarise_videos(read_table(self.output, "videos", sorted(matched), list(SUMMARY_COLUMNS)),
                                   len(plan.inputs), self.run_id, rewritten)
        summary.update(rows_written=summary["processed"] + len(rewritten), pruned=len(pruned),
                       deleted_inputs=len(gone) - len(pruned))
        manifest = run_manifest(
            run_id=self.run_id, started=self.started, work_started=self.work_started, work_done=work_done,
            config=self.config, output=self.output, command=self.command, forced=self.force,
            fingerprint=plan.fingerprint, models=list(plan.models), labels=plan.settings.labels,
            broad_labels=plan.settings.broad_labels, counts=summary, tables=TABLES)
        manifest.update({"frame_feature_groups": list(plan.feature_groups), "archive_root": plan.archive_root,
                         "carried_columns": carried_columns(plan.extra_fields),
                         "rewritten_rows": rewritten, "pruned": pruned, "deleted_inputs": gone[:50],
                         "repaired": list(self._state.damaged) if self._state else [],
                         "recovered_commits": self.recovered})
        manifest.update(extra or {})
        write_manifest(self.output, manifest)
        if self.config.job.validation.enabled:
            unchanged = not (replace or self.recovered or (self._state and self._state.damaged))
            # Only the videos this run wrote have new frame files, unless other rules apply now, or an
            # earlier run's commit was completed here (its videos are not in ``replace``).
            full = (self.recovered or self.config.job.validation.after_run == "all"
                    or not self._same_validation_settings())
            scope = None if full else set(replace)
            manifest["validation"] = (self._standing_verdict() if unchanged else None) or validate_after_run(
                self.output, self.config, self.run_id, scope)
            if "reused_from" in manifest["validation"]:
                write_manifest(self.output, manifest)
        return manifest

    def _standing_verdict(self) -> Optional[dict]:
        """The previous run's validation verdict, when this run changed no file of the output and the
        validation settings are the same: the tables it checked are the tables as they are. None
        otherwise (validate). `affectflow validate` always checks everything again."""
        before = self._before or {}
        verdict = before.get("validation") or {}
        if verdict.get("valid") is None or "error" in verdict or not self._same_validation_settings():
            return None
        state = "VALID" if verdict["valid"] else "NOT VALID"
        validated_by = verdict.get("reused_from") or before.get("run_id")
        return {**verdict, "reused_from": validated_by,
                "summary": f"validation: nothing in {self.output} changed since run {validated_by}, whose "
                           f"validation stands: {state} (affectflow validate checks everything again)"}

    def _same_validation_settings(self) -> bool:
        """Whether the previous run validated with the validation.* settings of this one."""
        before = ((self._before or {}).get("config") or {}).get("job", {}).get("validation")
        return before == self.config.as_dict()["job"]["validation"]

    def _aggregate_changed(self) -> bool:
        """Whether the aggregate.* settings differ from the ones the output's rows were labelled with."""
        before = ((self._before or {}).get("config") or {}).get("job", {}).get("aggregate")
        return before is not None and before != self.config.as_dict()["job"]["aggregate"]

    def _other_rows(self, plan: RunPlan, staged: Mapping[str, set]) -> pa.Table:
        """The rows the run keeps or does not touch, when they need rewriting: all of them after the
        aggregate settings changed (one set of labels per output) or a manifest added a column."""
        if not (self._aggregate_changed() or added_columns(self._before, self.output, plan.extra_fields)):
            return pa.table({})
        ids = sorted(set(output_video_ids(self.output)) - set(staged))
        rows, damaged = read_video_rows(self.output, ids)
        if damaged:
            _LOG.warning("%d video rows cannot be read and are left as they are: %s", len(damaged), damaged[:5])
        return rows

    def _write_missing_rows(self, plan: RunPlan, staged: dict[str, set[str]]) -> None:
        """A processed video (with staged frames or dead letters) whose row the pipeline could not write
        gets a failed row here, so every matched input keeps exactly one row."""
        by_id = {v.video_id: v for v in plan.inputs}
        for video_id, tables in staged.items():
            if "videos" in tables or video_id not in by_id:
                continue
            video = by_id[video_id]
            failure = DeadLetter(video_id, video.path, "write", "MissingVideoRow",
                                 "the pipeline finished without writing this video's row", retryable=True)
            row = build_video_row(video, None, (), [failure], plan.settings, self.run_id)
            row.update(plan.provenance, processed_at=dt.datetime.now(dt.timezone.utc))
            write_video_files(plan.staging_root, row, plan.video_schema, dead_letter_rows([failure], self.run_id),
                              plan.file_metadata)
            tables.update({"videos", "dead_letters"})


def validate_after_run(output: str, config: RunConfig, run_id: str, scope: Optional[set[str]] = None) -> dict:
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
        report = validate_output(local, config.job.validation, scope)
    except Exception as exc:  # noqa: BLE001 - the data is committed; an unvalidated output is not valid
        _LOG.exception("validation of %s could not complete", output)
        message = f"validation of {output} could not complete: {type(exc).__name__}: {exc}"
        entry = {"valid": False, "error": message}
        with contextlib.suppress(Exception):        # the run's own verdict, as a finished validation records it
            mark_manifests(Path(local), run_id, entry)
        return {**entry, "summary": message}
    return {**report.manifest_entry(), "summary": report.summary()}
