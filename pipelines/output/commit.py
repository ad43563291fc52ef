"""Committing a run: its staged partitions replace the videos' partitions in the output, through a journal.

A finished run's ``_staging/<run_id>/`` holds, per processed video, its new partitions. The
commit first writes a journal (``_staging/<run_id>/_commit.json``) listing, per video, the
tables to replace and whether each has a staged partition; then, video by video, each old
partition is moved into ``_staging/<run_id>/_replaced/`` and the staged one moved into its
place; the old one is deleted last. A crash anywhere in between loses nothing: the next run
first rolls every journalled commit forward (`recover_commits`), since the staged partitions
of a journalled run are complete (the journal is written only after the pipeline finished).
Staging folders without a journal belong to runs that never finished; they are deleted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Mapping, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines.output.layout import STAGING, TABLES, list_files, partition_of
from schemas.columns import PARTITION_COLUMN

JOURNAL = "_commit.json"
_LOG = logging.getLogger(__name__)


def staged_tables(staging: str, tables: Sequence[str] = TABLES) -> dict[str, set[str]]:
    """video_id -> which of ``tables`` (a table may be a path such as ``predictions/model=m``) have a
    staged partition for it."""
    found: dict[str, set[str]] = {}
    for table in tables:
        for path in list_files(FileSystems.join(staging, table)):
            video_id = partition_of(path)
            if video_id:
                found.setdefault(video_id, set()).add(table)
    return found


def commit_staging(staging: str, output: str, replace: Mapping[str, Sequence[str]]) -> None:
    """Replace, for every video of ``replace`` (video_id -> tables), those tables' partitions in
    ``output`` by the staged ones; a listed table with nothing staged loses its partition.

    Per video, the frames and dead letters go first and the video row last, so a reader who finds
    the new row finds its frames. On a local filesystem each partition folder is swapped with two
    renames: a reader sees the old partition or the new one, never a mix of their files. On object
    stores (no folder rename) the files are moved one by one.
    """
    staged = staged_tables(staging, sorted({t for ts in replace.values() for t in ts}))
    journal = {video_id: {table: table in staged.get(video_id, ()) for table in tables}
               for video_id, tables in replace.items()}
    _write_text(FileSystems.join(staging, JOURNAL), json.dumps(journal, sort_keys=True))
    _apply(staging, output, journal)
    _remove_staging(staging)


def _apply(staging: str, output: str, journal: Mapping[str, Mapping[str, bool]]) -> None:
    """Roll a journalled commit forward; safe to repeat after a crash at any point of it."""
    for video_id in sorted(journal):
        tables = journal[video_id]
        for table in sorted(tables, key=lambda t: t == "videos"):       # the video row last
            part = f"{PARTITION_COLUMN}={video_id}"
            source = FileSystems.join(staging, table, part)
            dest = FileSystems.join(output, table, part)
            trash = FileSystems.join(staging, "_replaced", table, part)
            if tables[table] and not FileSystems.exists(source):
                continue                                                  # moved in before a crash: done
            _replace_partition(source, dest, tables[table], trash)


def _replace_partition(source_dir: str, dest_dir: str, has_source: bool, trash: str) -> None:
    """Swap ``dest_dir`` for ``source_dir`` (or just remove ``dest_dir`` when nothing is staged);
    the old folder goes to ``trash`` (inside the staging folder, where no reader's glob looks)."""
    if "://" not in dest_dir:
        if os.path.isdir(dest_dir):
            os.makedirs(os.path.dirname(trash), exist_ok=True)
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dest_dir, trash)
        if has_source:
            os.makedirs(os.path.dirname(dest_dir), exist_ok=True)
            os.replace(source_dir, dest_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if FileSystems.exists(dest_dir):
        FileSystems.delete([dest_dir])
    if has_source:
        files = list_files(source_dir)
        FileSystems.mkdirs(dest_dir)
        FileSystems.rename(files, [FileSystems.join(dest_dir, f.rsplit("/", 1)[1]) for f in files])


def recover_commits(output: str) -> list[str]:
    """Finish every commit a crashed run journalled, delete what unfinished runs left in
    ``output/_staging``; return the ids of the runs whose commits were completed."""
    root = FileSystems.join(output, STAGING)
    if not FileSystems.exists(root):
        return []
    recovered = []
    for run_dir in sorted({p[len(root):].lstrip("/").split("/", 1)[0] for p in list_files(root)}):
        staging = FileSystems.join(root, run_dir)
        journal_path = FileSystems.join(staging, JOURNAL)
        if FileSystems.exists(journal_path):
            with FileSystems.open(journal_path) as fh:
                journal = json.loads(fh.read())
            _LOG.warning("completing the commit of run %s, interrupted before it finished (%d videos)",
                         run_dir, len(journal))
            _apply(staging, output, journal)
            recovered.append(run_dir)
    FileSystems.delete([root])
    return recovered


def _write_text(path: str, text: str) -> None:
    parent = path.rsplit("/", 1)[0]
    if not FileSystems.exists(parent):
        FileSystems.mkdirs(parent)
    with FileSystems.create(path) as fh:
        fh.write(text.encode())


def _remove_staging(staging: str) -> None:
    """Delete the run's staging folder, and ``_staging`` itself when nothing else is in it."""
    for path in (staging, staging.rsplit("/", 1)[0]):
        if FileSystems.exists(path) and not [f for f in list_files(path) if not f.endswith(JOURNAL)]:
            FileSystems.delete([path])
