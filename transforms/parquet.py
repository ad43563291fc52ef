"""Parquet files, one per unit of work, through Beam's FileSystems.

Beam's WriteToParquet is not used: under the DaskRunner it reports success and leaves empty
files. Each stage writes its own complete file with pyarrow (zstd; files of a few rows plain),
named deterministically from the unit it holds, so a retried bundle overwrites rather than
duplicates, and every runner produces the same files.

Layout: ``<root>/<table>/video_id=<id>/part-<...>.parquet`` (Hive style; see schemas).
"""
from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.columns import PARTITION_COLUMN

COMPRESSION = "zstd"
# Files of at most this many rows (a video's row, its dead letters, the frames of a very short clip) are
# written without compression or dictionaries: there is nothing to compress, and zstd and a dictionary per
# column cost CPU per column (the 48-column video row: 3.3 ms of CPU zstd, 1.0 ms plain).
PLAIN_MAX_ROWS = 8
VIDEO_ROW_FILE = "part-00000.parquet"          # the one file of a video's videos/ and dead_letters/ partitions


def partition_dir(root: str, table: str, video_id: str) -> str:
    return FileSystems.join(root, table, f"{PARTITION_COLUMN}={video_id}")


def frame_file(root: str, video_id: str, segment_index: int, chunk_index: int) -> str:
    """The frame file of one chunk: ``frames/video_id=<id>/part-<segment:05d>-<chunk:05d>.parquet``."""
    return FileSystems.join(partition_dir(root, "frames", video_id), f"part-{segment_index:05d}-{chunk_index:05d}.parquet")


def ensure_dir(path: str) -> None:
    """mkdir -p that tolerates another worker creating the folder at the same moment."""
    try:
        FileSystems.mkdirs(path)
    except IOError:
        if not FileSystems.exists(path):
            raise


def write_parquet(table: pa.Table, path: str, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``table`` (its partition column dropped) to any Beam filesystem path."""
    if PARTITION_COLUMN in table.column_names:
        table = table.drop_columns([PARTITION_COLUMN])
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    ensure_dir(path.rsplit("/", 1)[0])
    plain = table.num_rows <= PLAIN_MAX_ROWS
    with FileSystems.create(path) as fh:
        pq.write_table(table, fh, compression="none" if plain else COMPRESSION, use_dictionary=not plain)


def read_parquet(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """One Parquet file from any Beam filesystem path (only ``columns`` when given)."""
    with FileSystems.open(path) as fh:
        return pq.read_table(fh, columns=list(columns) if columns else None)


def records_table(rows: Sequence[Mapping], schema: pa.Schema) -> pa.Table:
    """A table from row dicts, exactly in ``schema`` (missing keys are null)."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def json_metadata(value) -> str:
    """A value as the JSON text stored in a Parquet file's key-value metadata."""
    return json.dumps(value, sort_keys=True, default=str)
