"""Reading and committing a run's output folder.

`commit_staging` moves a finished run's staged partitions into place, one video at a
time: for every video the run processed, its old partitions in every table are removed
and the new ones moved in, so reruns replace rather than duplicate rows.
"""
from __future__ import annotations

import importlib.metadata
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from schemas.tables import PARTITION_COLUMN, VIDEO_STATUSES

PACKAGES = ("apache-beam", "tensorflow", "keras", "opencv-python-headless", "pyarrow", "numpy", "pandas",
            "duckdb", "great-expectations", "affectflow")


def package_versions() -> dict[str, Optional[str]]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _list_files(root: str) -> list[str]:
    pattern = FileSystems.join(root, "**")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def _partition_of(path: str) -> Optional[str]:
    for part in path.split("/"):
        if part.startswith(PARTITION_COLUMN + "="):
            return part.split("=", 1)[1]
    return None


def commit_staging(staging: str, output: str, tables: Sequence[str]) -> None:
    """Move ``staging/<table>/video_id=*/`` into ``output/<table>/``, replacing those videos' partitions."""
    staged = {t: _list_files(FileSystems.join(staging, t)) for t in tables}
    video_ids = {v for files in staged.values() for v in map(_partition_of, files) if v}
    for video_id in sorted(video_ids):
        for table in tables:
            dest_dir = FileSystems.join(output, table, f"{PARTITION_COLUMN}={video_id}")
            if FileSystems.exists(dest_dir):
                FileSystems.delete([dest_dir])
            sources = [f for f in staged[table] if _partition_of(f) == video_id]
            if not sources:
                continue
            FileSystems.mkdirs(dest_dir)
            FileSystems.rename(sources, [FileSystems.join(dest_dir, s.rsplit("/", 1)[1]) for s in sources])
    if FileSystems.exists(staging):
        FileSystems.delete([staging])
    parent = staging.rsplit("/", 1)[0]
    if FileSystems.exists(parent) and not _list_files(parent):
        FileSystems.delete([parent])


def dataset(output: str, table: str) -> ds.Dataset:
    """The Hive-partitioned dataset of one table (partition column typed as string)."""
    part = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return ds.dataset(FileSystems.join(output, table), format="parquet", partitioning=part)


def read_table(output: str, table: str, video_ids: Optional[Iterable[str]] = None,
               columns: Optional[list[str]] = None) -> pa.Table:
    d = dataset(output, table)
    flt = None if video_ids is None else pc.field(PARTITION_COLUMN).isin(list(video_ids))
    return d.to_table(filter=flt, columns=columns)


def summarise_videos(videos: pa.Table, matched: int) -> dict:
    """Counts for the run summary; ``accounted`` is ok + no_face + failed == matched."""
    status = videos.column("status").to_pylist()
    counts = {s: status.count(s) for s in VIDEO_STATUSES}

    def total(column: str) -> int:
        return int(pc.sum(videos.column(column)).as_py() or 0)

    return {"matched": matched, **counts, "video_rows": videos.num_rows,
            "accounted": sum(counts.values()) == matched == videos.num_rows,
            "frames_decoded": total("frames_decoded"), "frames_sampled": total("frames_sampled"),
            "frames_with_face": total("frames_with_face")}
