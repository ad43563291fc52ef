"""Committing a run: its staged partitions replace the videos' partitions in the output, one video at a time."""
from __future__ import annotations

import os
import shutil
from typing import Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines.output.layout import STAGING, list_files, partition_of
from schemas.columns import PARTITION_COLUMN


def commit_staging(staging: str, output: str, tables: Sequence[str]) -> None:
    """Move ``staging/<table>/video_id=*/`` into ``output/<table>/``, replacing those videos' partitions.

    Per video, the frames and dead letters go first and the video row last, so a reader who
    finds the new row finds its frames. On a local filesystem each partition folder is swapped
    with two renames (the old folder out, the new one in): a reader sees the old partition or
    the new one, never a mix of their files; at most it briefly misses that one video. On
    object stores (no folder rename) the files are moved one by one.
    """
    staged = {t: list_files(FileSystems.join(staging, t)) for t in tables}
    video_ids = {v for files in staged.values() for v in map(partition_of, files) if v}
    ordered = [t for t in tables if t != "videos"] + [t for t in tables if t == "videos"]
    for video_id in sorted(video_ids):
        for table in ordered:
            part = f"{PARTITION_COLUMN}={video_id}"
            _replace_partition(FileSystems.join(staging, table, part), FileSystems.join(output, table, part),
                               [f for f in staged[table] if partition_of(f) == video_id],
                               FileSystems.join(staging, "_replaced", table, part))
    for path in (staging, staging.rsplit("/", 1)[0]):
        if FileSystems.exists(path) and not list_files(path):
            FileSystems.delete([path])


def _replace_partition(source_dir: str, dest_dir: str, source_files: list[str], trash: str) -> None:
    """Swap ``dest_dir`` for ``source_dir``; the old folder goes to ``trash`` (inside the staging
    folder, so no reader's glob of the table ever sees it) and is then deleted."""
    if "://" not in dest_dir:
        if os.path.isdir(dest_dir):
            os.makedirs(os.path.dirname(trash), exist_ok=True)
            os.replace(dest_dir, trash)
        if source_files:
            os.makedirs(os.path.dirname(dest_dir), exist_ok=True)
            os.replace(source_dir, dest_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if FileSystems.exists(dest_dir):
        FileSystems.delete([dest_dir])
    if source_files:
        FileSystems.mkdirs(dest_dir)
        FileSystems.rename(source_files, [FileSystems.join(dest_dir, f.rsplit("/", 1)[1]) for f in source_files])


def clear_stale_staging(output: str) -> None:
    """Remove what crashed runs left in ``output/_staging`` (their committed videos are already in
    place; the rest is recomputed). One run at a time may write into an output folder."""
    staging = FileSystems.join(output, STAGING)
    if FileSystems.exists(staging):
        FileSystems.delete([staging])
