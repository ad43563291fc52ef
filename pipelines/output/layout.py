"""Where an output folder keeps its tables, and reading them back (Hive-partitioned by video_id)."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from schemas.columns import PARTITION_COLUMN

TABLES = ("frames", "videos", "dead_letters")
STAGING = "_staging"
MANIFEST_FILE = "run_manifest.json"


def sql_literal(value: str) -> str:
    """A SQL string literal (DuckDB reads the tables' files by their paths)."""
    return "'" + value.replace("'", "''") + "'"


def list_files(root: str) -> list[str]:
    """Every file below ``root`` (any Beam filesystem), sorted."""
    pattern = FileSystems.join(root, "**")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def partition_of(path: str) -> Optional[str]:
    """The video id of a path inside a ``video_id=<id>`` folder, else None."""
    for part in path.split("/"):
        if part.startswith(PARTITION_COLUMN + "="):
            return part.split("=", 1)[1]
    return None


def table_files(output: str | Path, table: str) -> list[str]:
    """A local table's Parquet files, ``<output>/<table>/video_id=<id>/*.parquet``."""
    pattern = os.path.join(glob.escape(str(Path(output) / table)), f"{PARTITION_COLUMN}=*", "*.parquet")
    return sorted(glob.glob(pattern))


def dataset(output: str, table: str) -> ds.Dataset:
    """The Hive-partitioned dataset of one table (partition column typed as string)."""
    part = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return ds.dataset(FileSystems.join(output, table), format="parquet", partitioning=part)


def read_table(output: str, table: str, video_ids: Optional[Iterable[str]] = None,
               columns: Optional[list[str]] = None) -> pa.Table:
    """One table of an output (only ``video_ids``' rows and ``columns`` when given)."""
    d = dataset(output, table)
    flt = None if video_ids is None else pc.field(PARTITION_COLUMN).isin(list(video_ids))
    return d.to_table(filter=flt, columns=columns)


def has_table(output: str, table: str) -> bool:
    return FileSystems.exists(FileSystems.join(output, table))


def output_video_ids(output: str) -> list[str]:
    """Ids of every video with a row partition in the output (from the folder names: nothing is read)."""
    if not has_table(output, "videos"):
        return []
    pattern = FileSystems.join(output, "videos", f"{PARTITION_COLUMN}=*", "*.parquet")
    return sorted({partition_of(m.path) for r in FileSystems.match([pattern]) for m in r.metadata_list} - {None})
