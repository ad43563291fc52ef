"""`affectflow ingest` on the run skeleton: discover the CSVs, map each one, commit, manifest, validate.

Plain Python rather than a Beam graph: each CSV is one independent, already-computed table
(no decoding, no model), so the work is parse + write, I/O-bound and small per file;
``workers`` spreads files over processes for folders of thousands of CSVs.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from core.elements import ChunkSummary, DeadLetter, RowFingerprint, VideoInfo, VideoInput
from core.errors import InputError
from models.aggregation import AggregationSettings
from models.emfacs import EMFACS_NEUTRAL_GAIN, EMFACS_PROTOTYPES, EMFACS_REQUIRED
from models.registry import FER2013_LABELS, get_spec, resolve
from pipelines.config import RunConfig
from pipelines.ingest.frames import map_csv
from pipelines.inputs import (check_inputs, default_root, is_manifest_spec, make_video_id, match_files,
                              read_manifest)
from pipelines.runs import OutputRun, RunPlan
from schemas.external import EXTERNAL_GROUPS, OPENFACE, PYFEAT
from schemas.videos import video_schema
from transforms.parquet import frame_file, write_parquet
from transforms.videos import build_video_row, completeness_failures, dead_letter_rows, write_video_files

SOURCES = EXTERNAL_GROUPS
STAGE = "ingest"
EMFACS_MODEL = "emfacs_rules"
# Manifest columns that set how a CSV is read; they are not carried to the video table.
INGEST_MANIFEST_COLUMNS = ("frame_width", "frame_height", "fps")


@dataclass(frozen=True)
class IngestTask:
    """One CSV and how to read it."""
    video: VideoInput
    source: str                     # openface | pyfeat
    frame_width: int
    frame_height: int
    fps: Optional[float]            # None: from the OpenFace timestamps
    staging_root: str
    run_id: str
    settings: AggregationSettings
    extra_fields: tuple[pa.Field, ...]
    file_metadata: tuple[tuple[str, str], ...]
    provenance: tuple[tuple[str, str], ...]     # models (JSON), settings_fingerprint (this file's)
    previous: Optional[RowFingerprint] = None   # of its row in the output, if a rerun may keep it


def parse_frame_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"1280x720"`` -> (1280, 720); None stays None; anything else is an InputError."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise InputError(f"--frame-size must be WIDTHxHEIGHT in pixels, e.g. 1280x720; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _is_manifest(path: str) -> bool:
    """A .parquet, or a .csv whose header has a ``path`` column (a tool CSV has none)."""
    if path.lower().endswith(".parquet"):
        return True
    with FileSystems.open(path) as fh:
        header = fh.readline().decode("utf-8", "replace")
    return "path" in [c.strip().strip('"') for c in header.split(",")]


def discover_csvs(spec: str, root: Optional[str] = None) -> tuple[list[VideoInput], list[pa.Field]]:
    """Inputs for a folder, glob, single tool CSV or manifest; plus the manifest's carried columns.

    The manifest's ingest columns (INGEST_MANIFEST_COLUMNS) stay in each VideoInput's ``extra``
    but are not among the returned fields; `split_ingest_columns` takes them out.
    Raises InputError when nothing matches or the manifest is malformed.
    """
    root = root or default_root(spec)
    if is_manifest_spec(spec) and FileSystems.exists(spec):
        if _is_manifest(spec):
            inputs, fields = read_manifest(spec, root)
            check_inputs(inputs, root, given_ids=True)
            return inputs, [f for f in fields if f.name not in INGEST_MANIFEST_COLUMNS]
        inputs = [VideoInput(make_video_id(spec, root), spec)]
    else:
        inputs = match_files(spec, (".csv",), ".csv files", root)
    check_inputs(inputs, root)
    return inputs, []


def split_ingest_columns(video: VideoInput) -> tuple[VideoInput, dict]:
    """(the input without its ingest manifest columns, {frame_width, frame_height, fps} given)."""
    given = {k: v for k, v in video.extra if k in INGEST_MANIFEST_COLUMNS and v is not None}
    return replace(video, extra=tuple((k, v) for k, v in video.extra if k not in INGEST_MANIFEST_COLUMNS)), given


# --- one CSV -> frame rows --------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def task_fingerprint(common: str, task: IngestTask) -> str:
    """SHA-256 of the run's row-shaping settings and this file's frame size and fps."""
    payload = [common, task.frame_width, task.frame_height, task.fps]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


@dataclass(frozen=True)
class Mapped:
    """What mapping one CSV gave: its probe-like facts, one chunk summary, its failures."""
    info: Optional[VideoInfo]
    summaries: tuple[ChunkSummary, ...]
    failures: tuple[DeadLetter, ...]
    content: Optional[tuple[str, int]]         # (sha256, size) when the bytes could be read


def map_one(task: IngestTask) -> Union[Mapped, str]:
    """Read and map one CSV, writing its frame file under ``task.staging_root``; "skipped" when its
    bytes and settings are those of its row. A bad file is a failure, never an exception."""
    video, settings = task.video, task.settings
    content = None
    try:
        with FileSystems.open(video.path) as fh:
            data = fh.read()
        content = (_sha256(data), len(data))
        if task.previous == RowFingerprint(content[0], dict(task.provenance)["settings_fingerprint"]):
            return "skipped"
        table, fps = map_csv(data, task.source, video.video_id, task.frame_width, task.frame_height, task.fps,
                             settings.labels)
        primary = table.filter(pc.equal(table.column("face_index"), 0))
        primary_labels = primary.column("emotion_label").to_pylist()
        n_frames = int(len(np.unique(table.column("frame_index").to_numpy())))
        info = VideoInfo(video, content[0], content[1], None, task.frame_width, task.frame_height, fps, None,
                         n_frames, 1)
        summary = ChunkSummary(
            video_id=video.video_id, segment_index=0, chunk_index=0, last=True, frames_decoded=n_frames,
            frames_sampled=n_frames, frames_with_face=primary.num_rows,
            label_counts=tuple(primary_labels.count(l) for l in settings.labels),
            last_timestamp_s=float(table.column("timestamp_s").to_numpy().max()) if fps else None,
            rows_written=table.num_rows)
        write_parquet(table, frame_file(task.staging_root, video.video_id, 0, 0), dict(task.file_metadata))
        return Mapped(info, (summary,), (), content)
    except Exception as exc:  # noqa: BLE001 - one bad file is a dead letter, not a failed run
        return Mapped(None, (), (DeadLetter.from_exception(video.video_id, video.path, STAGE, exc),), content)


def ingest_one(task: IngestTask) -> str:
    """Map one CSV and write its partitions under ``task.staging_root``; return the video status
    (ok | no_face | failed | skipped). Never raises for a bad file: that is a dead letter."""
    mapped = map_one(task)
    if mapped == "skipped":
        return "skipped"
    video, settings = task.video, task.settings
    failures = [*mapped.failures, *completeness_failures(video, mapped.info, mapped.summaries, mapped.failures)]
    row = build_video_row(video, mapped.info, mapped.summaries, failures, settings, task.run_id)
    if mapped.info is None and mapped.content is not None:
        row.update(content_sha256=mapped.content[0], size_bytes=mapped.content[1])
    row.update(dict(task.provenance), processed_at=dt.datetime.now(dt.timezone.utc))
    write_video_files(task.staging_root, row, video_schema(settings.labels, settings.broad_labels, task.extra_fields),
                      dead_letter_rows(failures, task.run_id), dict(task.file_metadata))
    return row["status"]


def _model_entry(source: str) -> dict:
    """What produced the emotion columns, for the manifest, the models column and file metadata."""
    if source == OPENFACE:
        return {**resolve(EMFACS_MODEL).manifest_entry(), "note": "rule-based EMFACS-7 scores, not a trained model",
                "features_from": "OpenFace 2.0 CSV (not run here)"}
    return {"name": "pyfeat", "kind": "external", "source": "py-feat CSV output (not run here)", "origin": "input",
            "files": {}, "sha256": {}, "labels": list(FER2013_LABELS),
            "note": "py-feat's own emotion scores, renamed to the FER labels and renormalised to sum 1"}


def _rule_settings(config: RunConfig, source: str, model: dict) -> str:
    """The row-shaping settings every CSV of the run shares, as JSON (hashed into each fingerprint)."""
    return json.dumps({"source": source, "emotion": model["name"],
                       "rule": {k: list(v) for k, v in EMFACS_PROTOTYPES.items()} if source == OPENFACE else None,
                       "required": dict(EMFACS_REQUIRED) if source == OPENFACE else None,
                       "ties": "neutral", "neutral_gain": EMFACS_NEUTRAL_GAIN,
                       "aggregate": config.as_dict()["job"]["aggregate"]}, sort_keys=True)


def _tasks(plan: RunPlan, source: str, common: str, frame_size: Optional[tuple[int, int]],
           fps: Optional[float]) -> list[IngestTask]:
    """One task per CSV; InputError when a CSV's frame size (or, for py-feat, fps) is known from neither
    the command line nor the manifest."""
    tasks, unknown = [], []
    metadata = tuple({**plan.file_metadata, "affectflow.source": source}.items())
    for video in plan.inputs:
        video, given = split_ingest_columns(video)
        width = int(given["frame_width"]) if "frame_width" in given else (frame_size or (None, None))[0]
        height = int(given["frame_height"]) if "frame_height" in given else (frame_size or (None, None))[1]
        video_fps = float(given["fps"]) if "fps" in given else fps
        if not width or not height or (source == PYFEAT and not video_fps):
            unknown.append(video.path)
            continue
        task = IngestTask(video, source, width, height, video_fps, plan.staging_root, plan.run_id, plan.settings,
                          tuple(plan.extra_fields), metadata, (), plan.previous.get(video.video_id))
        provenance = {**plan.provenance, "settings_fingerprint": task_fingerprint(common, task)}
        tasks.append(replace(task, provenance=tuple(provenance.items())))
    if unknown:
        need = "frame size" + (" and fps" if source == PYFEAT else "")
        raise InputError(f"{len(unknown)} CSV(s) have no {need}: give --frame-size WxH"
                         + (" and --fps F" if source == PYFEAT else "")
                         + f" or manifest columns frame_width, frame_height{', fps' if source == PYFEAT else ''} "
                         f"(first: {unknown[0]})")
    return tasks


def execute_ingest(config: RunConfig, source: str, frame_size: Optional[tuple[int, int]] = None,
                   fps: Optional[float] = None, workers: int = 1, force: bool = False,
                   argv_for_manifest: Optional[list[str]] = None, wait_s: float = 0.0) -> dict:
    """Ingest ``config.job.input`` (tool CSVs) into ``config.job.output``; return the run manifest.

    ``frame_size`` (width, height) and ``fps`` apply to every CSV whose manifest row does not give
    its own. Raises InputError when nothing matches, or when a CSV's frame size (or, for py-feat,
    fps) is known from neither. Bad CSVs do not raise: they are dead letters and failed rows.
    The manifest has `affectflow run`'s keys plus ``source`` and ``ingest``; validation runs at
    the end when ``validation.enabled``.
    """
    if source not in SOURCES:
        raise InputError(f"source must be one of {SOURCES}, got {source!r}")
    with OutputRun(config, argv_for_manifest, force, wait_s) as run:
        inputs, extra_fields = discover_csvs(config.job.input, run.archive_root())
        model = _model_entry(source)
        settings = AggregationSettings.from_config(config.job.aggregate, get_spec(EMFACS_MODEL).labels)
        common = _rule_settings(config, source, model)
        plan = run.plan(inputs, extra_fields, settings, (source,), hashlib.sha256(common.encode()).hexdigest(),
                        [model])
        tasks = _tasks(plan, source, common, frame_size, fps)
        if workers > 1 and len(tasks) > 1:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(ingest_one, tasks, chunksize=max(1, len(tasks) // (workers * 8))))
        else:
            for task in tasks:
                ingest_one(task)
        return run.finish(plan, {
            "feature_set": None,            # no training feature set is configured by an ingest
            "source": source,
            "ingest": {"frame_size": list(frame_size) if frame_size else None, "fps": fps, "workers": workers,
                       "emotion": model["name"], "note": "config.job.decode/faces/emotion/features do not apply "
                                                         "to an ingest; the CSVs' tool did that work"}})
