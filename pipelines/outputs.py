"""Reading and committing a run's output folder.

`commit_staging` moves a finished run's staged partitions into place, one video at a
time: for every video the run processed, its old partitions in every table are removed
and the new ones moved in, so reruns replace rather than duplicate rows.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from schemas.tables import INPUT_STAGES, PARTITION_COLUMN, TRANSIENT_ERRORS, VIDEO_STATUSES

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
    """Move ``staging/<table>/video_id=*/`` into ``output/<table>/``, replacing those videos' partitions.

    Per video, the frames and dead letters go first and the video row last, so a reader who
    finds the new row finds its frames. On a local filesystem each partition folder is swapped
    with two renames (the old folder out, the new one in): a reader sees the old partition or
    the new one, never a mix of their files; at most it briefly misses that one video. On
    object stores (no folder rename) the files are moved one by one.
    """
    staged = {t: _list_files(FileSystems.join(staging, t)) for t in tables}
    video_ids = {v for files in staged.values() for v in map(_partition_of, files) if v}
    ordered = [t for t in tables if t != "videos"] + [t for t in tables if t == "videos"]
    for video_id in sorted(video_ids):
        for table in ordered:
            part = f"{PARTITION_COLUMN}={video_id}"
            _replace_partition(FileSystems.join(staging, table, part), FileSystems.join(output, table, part),
                               [f for f in staged[table] if _partition_of(f) == video_id],
                               FileSystems.join(staging, "_replaced", table, part))
    for path in (staging, staging.rsplit("/", 1)[0]):
        if FileSystems.exists(path) and not _list_files(path):
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
    staging = FileSystems.join(output, "_staging")
    if FileSystems.exists(staging):
        FileSystems.delete([staging])


def previous_fingerprints(output: str, video_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """video_id -> (content_sha256, settings_fingerprint) of the rows already in ``output`` that
    a rerun may skip.

    A video that failed in a stage of ``INPUT_STAGES`` (its bytes could not be probed, decoded
    or parsed) is left as it is: the same bytes fail the same way. A failure in any other stage
    (detection, inference, features, writing), or of a ``TRANSIENT_ERRORS`` type in any stage,
    may be passing (memory, disk, a worker lost), so such a video is not listed and the next
    run processes it again.
    """
    if not FileSystems.exists(FileSystems.join(output, "videos")):
        return {}
    video_ids = list(video_ids)
    table = read_table(output, "videos", video_ids)
    if "settings_fingerprint" not in table.column_names:       # written before provenance existed
        return {}
    retry = _retryable_failures(output, video_ids)
    ids, shas, fps = (table.column(c).to_pylist() for c in (PARTITION_COLUMN, "content_sha256", "settings_fingerprint"))
    return {v: (sha, fp) for v, sha, fp in zip(ids, shas, fps) if sha and fp and v not in retry}


def _retryable_failures(output: str, video_ids: list[str]) -> set[str]:
    """Ids of videos with a dead letter outside ``INPUT_STAGES`` or of a transient error type."""
    if not FileSystems.exists(FileSystems.join(output, "dead_letters")):
        return set()
    letters = read_table(output, "dead_letters", video_ids, [PARTITION_COLUMN, "stage", "error_type"])
    ids, stages, errors = (letters.column(c).to_pylist() for c in (PARTITION_COLUMN, "stage", "error_type"))
    return {v for v, stage, error in zip(ids, stages, errors)
            if stage not in INPUT_STAGES or error in TRANSIENT_ERRORS}


def run_manifest(*, run_id: str, started: float, work_started: float, work_done: float, config, output: str,
                 command: Optional[list[str]], forced: bool, fingerprint: str, models: list[dict],
                 labels: Sequence[str], broad_labels: Sequence[str], counts: dict, tables: Sequence[str]) -> dict:
    """The keys every run_manifest.json has (a video run's and an ingest's); callers add their own.

    Times are ``time.time()`` values: the run started, its main work (pipeline / ingest)
    started and finished; ``config`` is the RunConfig; ``counts`` is `summarise_videos`'s.
    """
    import datetime as dt
    import time
    now = time.time()
    return {
        "run_id": run_id,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
        "input": config.job.input,
        "output": output,
        "command": command,
        "forced": forced,
        "config": config.as_dict(),
        "settings_fingerprint": fingerprint,
        "models": models,
        "labels": list(labels),
        "broad_labels": list(broad_labels),
        "packages": package_versions(),
        "counts": counts,
        "timings_s": {"discover_and_resolve": round(work_started - started, 3),
                      "pipeline": round(work_done - work_started, 3),
                      "commit_and_summarise": round(now - work_done, 3),
                      "total": round(now - started, 3)},
        "throughput_frames_per_s": round(counts["frames_decoded"] / max(work_done - work_started, 1e-9), 1),
        "tables": {t: FileSystems.join(output, t) for t in tables},
    }


def manifest_feature_groups(manifest: dict) -> tuple[str, ...]:
    """The frame table's optional column groups: ``frame_feature_groups`` of the manifest; older
    manifests only have the config's boolean switches (landmarks, geometry)."""
    if "frame_feature_groups" in manifest:
        return tuple(manifest["frame_feature_groups"])
    features = ((manifest.get("config") or {}).get("job") or {}).get("features") or {}
    return tuple(g for g in ("landmarks", "geometry") if features.get(g) is True)


def check_same_frame_schema(output: str, video_ids: Iterable[str], feature_groups: Sequence[str],
                            labels: Sequence[str]) -> None:
    """Refuse a run that would leave ``output``'s frame table with two schemas.

    The frame schema follows the feature groups and the emotion labels (schemas.tables); the
    latest ``run_manifest.json`` records those of every frame partition in the folder (this check
    keeps it so). A run with other groups or labels must rewrite every video already there,
    so it may go ahead only when all of them are among its matched inputs (a changed setting
    changes the fingerprint: each is processed again). Raises ConfigError naming the videos.
    """
    from pipelines.config import ConfigError
    latest = FileSystems.join(output, "run_manifest.json")
    if not FileSystems.exists(latest):
        return
    with FileSystems.open(latest) as fh:
        before = json.loads(fh.read())
    old_groups, old_labels = manifest_feature_groups(before), before.get("labels", list(labels))
    if list(old_groups) == list(feature_groups) and list(old_labels) == list(labels):
        return
    pattern = FileSystems.join(output, "frames", f"{PARTITION_COLUMN}=*", "part-*.parquet")
    existing = {_partition_of(m.path) for m in FileSystems.match([pattern])[0].metadata_list}
    left_out = sorted(existing - set(video_ids))
    if left_out:
        raise ConfigError(
            f"{output} holds frames of {len(existing)} videos written with frame feature groups {list(old_groups)} and labels "
            f"{list(old_labels)}; this run writes {list(feature_groups)} / {list(labels)} but does not match "
            f"{len(left_out)} of them (e.g. {left_out[0]}), so the frame table would mix two schemas. "
            "Write to a new output folder, or include every video already in it.")


def write_manifest(output: str, manifest: dict) -> None:
    """``output/run_manifest.json`` (latest run) and ``output/runs/<run_id>/run_manifest.json`` (kept)."""
    data = json.dumps(manifest, indent=2, default=str).encode()
    for path in (FileSystems.join(output, "runs", manifest["run_id"], "run_manifest.json"),
                 FileSystems.join(output, "run_manifest.json")):
        parent = path.rsplit("/", 1)[0]
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
        with FileSystems.create(path) as fh:
            fh.write(data)


def dataset(output: str, table: str) -> ds.Dataset:
    """The Hive-partitioned dataset of one table (partition column typed as string)."""
    part = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return ds.dataset(FileSystems.join(output, table), format="parquet", partitioning=part)


def read_table(output: str, table: str, video_ids: Optional[Iterable[str]] = None,
               columns: Optional[list[str]] = None) -> pa.Table:
    d = dataset(output, table)
    flt = None if video_ids is None else pc.field(PARTITION_COLUMN).isin(list(video_ids))
    return d.to_table(filter=flt, columns=columns)


def summarise_videos(videos: pa.Table, matched: int, run_id: Optional[str] = None) -> dict:
    """Counts for the run summary over the matched videos' current rows.

    ``accounted``: ok + no_face + failed == matched == video rows. ``processed`` rows were
    written by ``run_id``; ``skipped`` kept an earlier run's row (unchanged input and settings).
    Frame counts are over the processed videos.
    """
    status = videos.column("status").to_pylist()
    counts = {s: status.count(s) for s in VIDEO_STATUSES}
    mine = videos if run_id is None else videos.filter(pc.equal(videos.column("run_id"), run_id))

    def total(column: str) -> int:
        return int(pc.sum(mine.column(column)).as_py() or 0)

    return {"matched": matched, "processed": mine.num_rows, "skipped": videos.num_rows - mine.num_rows,
            **counts, "video_rows": videos.num_rows,
            "accounted": sum(counts.values()) == matched == videos.num_rows,
            "frames_decoded": total("frames_decoded"), "frames_sampled": total("frames_sampled"),
            "frames_with_face": total("frames_with_face")}
