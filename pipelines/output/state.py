"""What an output already holds: the rows a rerun may keep, the videos it must repair, and what it must not mix."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core.elements import RowFingerprint
from core.errors import UsageError
from pipelines.output.layout import MANIFEST_FILE, dataset, has_table, list_files, output_video_ids, partition_of
from schemas.columns import PARTITION_COLUMN
from transforms.parquet import VIDEO_ROW_FILE, partition_dir

_LOG = logging.getLogger(__name__)
# Failures recorded before dead letters had a ``retryable`` column: retried by these type names.
_OLD_TRANSIENT_NAMES = ("MemoryError", "OSError", "IOError", "BeamIOError", "TimeoutError", "ConnectionError")


@dataclass(frozen=True)
class OutputState:
    """The matched videos' rows in an output, as a rerun sees them."""
    rows: pa.Table                                             # readable rows of the matched videos
    previous: dict[str, RowFingerprint] = field(default_factory=dict)   # rows a rerun may keep
    damaged: tuple[str, ...] = ()                              # rows or partitions unreadable or incomplete
    retried: tuple[str, ...] = ()                              # last failure may pass: processed again


def read_video_rows(output: str, video_ids: Sequence[str]) -> tuple[pa.Table, list[str]]:
    """(the readable rows of ``video_ids``, ids whose row file cannot be read). Reads the table at
    once and, only when a file is damaged, file by file."""
    try:
        return dataset(output, "videos").to_table(filter=pc.field(PARTITION_COLUMN).isin(list(video_ids))), []
    except Exception:  # noqa: BLE001 - some file is damaged: find which, keep the rest
        tables, damaged = [], []
        for video_id in video_ids:
            path = FileSystems.join(partition_dir(output, "videos", video_id), VIDEO_ROW_FILE)
            if not FileSystems.exists(path):
                continue
            try:
                with FileSystems.open(path) as fh:
                    row = pq.read_table(fh)
                tables.append(row.append_column(PARTITION_COLUMN, pa.array([video_id] * row.num_rows, pa.string())))
            except Exception:  # noqa: BLE001
                damaged.append(video_id)
        return (pa.concat_tables(tables, promote_options="default") if tables else pa.table({})), damaged


def _footer_rows(path: str) -> Optional[int]:
    """Rows a Parquet file's footer declares; None when the file cannot be read."""
    try:
        with FileSystems.open(path) as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    except Exception:  # noqa: BLE001 - truncated or not Parquet
        return None


def unreconciled(output: str, rows: pa.Table) -> list[str]:
    """Ids of rows whose partitions do not hold what the row says: a frame or dead-letter file that
    cannot be read, fewer frame rows than ``frames_sampled``, or no dead-letter partition."""
    frames = {}
    for path in list_files(FileSystems.join(output, "frames")) if has_table(output, "frames") else []:
        if path.endswith(".parquet"):
            frames.setdefault(partition_of(path), []).append(path)
    bad = []
    for video_id, sampled in zip(rows.column(PARTITION_COLUMN).to_pylist(), rows.column("frames_sampled").to_pylist()):
        counts = [_footer_rows(p) for p in frames.get(video_id, [])]
        letters = _footer_rows(FileSystems.join(partition_dir(output, "dead_letters", video_id), VIDEO_ROW_FILE))
        if None in counts or letters is None or sum(counts) < (sampled or 0):
            bad.append(video_id)
    return bad


def _retryable_failures(output: str, video_ids: list[str]) -> set[str]:
    """Ids of videos whose last run recorded a failure that may pass (dead_letters.retryable)."""
    if not has_table(output, "dead_letters"):
        return set()
    try:
        letters = dataset(output, "dead_letters").to_table(filter=pc.field(PARTITION_COLUMN).isin(video_ids))
    except Exception:  # noqa: BLE001 - a damaged file: those videos are repaired anyway
        return set()
    ids = letters.column(PARTITION_COLUMN).to_pylist()
    if "retryable" in letters.column_names:
        flags = letters.column("retryable").to_pylist()
    else:
        flags = [e in _OLD_TRANSIENT_NAMES for e in letters.column("error_type").to_pylist()]
    return {v for v, retry in zip(ids, flags) if retry}


def read_state(output: str, video_ids: Iterable[str]) -> OutputState:
    """The matched videos' rows, and which of them a rerun may keep.

    A row is kept (its video is not processed again) when its bytes and settings fingerprint
    match the run's, its partitions reconcile with it (`unreconciled`), and its last failure, if
    any, is a lasting one (a retryable failure is processed again).
    """
    video_ids = list(video_ids)
    if not has_table(output, "videos"):
        return OutputState(pa.table({}))
    rows, damaged = read_video_rows(output, video_ids)
    if not rows.num_rows or "settings_fingerprint" not in rows.column_names:    # written before provenance
        return OutputState(rows, {}, tuple(damaged))
    damaged += unreconciled(output, rows)
    retry = _retryable_failures(output, video_ids)
    skip = set(damaged) | retry
    ids, shas, fps = (rows.column(c).to_pylist() for c in (PARTITION_COLUMN, "content_sha256", "settings_fingerprint"))
    previous = {v: RowFingerprint(sha, fp) for v, sha, fp in zip(ids, shas, fps) if sha and fp and v not in skip}
    if damaged:
        _LOG.warning("%d videos' partitions are damaged or incomplete and will be processed again: %s",
                     len(damaged), ", ".join(sorted(damaged)[:5]))
    return OutputState(rows, previous, tuple(sorted(set(damaged))), tuple(sorted(retry)))


def previous_fingerprints(output: str, video_ids: Iterable[str]) -> dict[str, RowFingerprint]:
    """video_id -> RowFingerprint of the rows a rerun may keep (see `read_state`)."""
    return read_state(output, video_ids).previous


def latest_manifest(output: str) -> Optional[dict]:
    """The output's latest run manifest, or None for a new output."""
    path = FileSystems.join(output, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as fh:
        return json.loads(fh.read())


def output_manifest(output: str) -> dict:
    """The latest run manifest of an existing output, for the commands that read one (aggregate, predict,
    space project): UsageError when ``output`` holds no manifest or no videos table."""
    manifest = latest_manifest(output)
    if manifest is None or not has_table(output, "videos"):
        raise UsageError(f"{output} is not an affectflow output (no run_manifest.json or videos/ table)")
    return manifest


def deleted_inputs(output: str, matched: Iterable[str]) -> list[str]:
    """Ids of the output's videos that no input of this run matched and whose source file is gone
    (a rerun cannot tell a file left out of this run's input from a deleted one without looking)."""
    others = sorted(set(output_video_ids(output)) - set(matched))
    if not others:
        return []
    rows, _ = read_video_rows(output, others)
    if not rows.num_rows:
        return []
    ids, paths = rows.column(PARTITION_COLUMN).to_pylist(), rows.column("source_path").to_pylist()
    return [v for v, path in zip(ids, paths) if path and not FileSystems.exists(path)]
