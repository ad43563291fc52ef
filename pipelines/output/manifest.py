"""The run manifest: what a run (or ingest, or re-aggregation) did, kept beside its output."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import time
import uuid
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from pipelines.output.layout import MANIFEST_FILE
from schemas.columns import VIDEO_STATUSES

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


def new_run_id() -> str:
    """A sortable, unique run id: UTC time and 6 random hex digits."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_manifest(*, run_id: str, started: float, work_started: float, work_done: float, config, output: str,
                 command: Optional[list[str]], forced: bool, fingerprint: str, models: list[dict],
                 labels: Sequence[str], broad_labels: Sequence[str], counts: dict, tables: Sequence[str]) -> dict:
    """The keys every run_manifest.json has (a video run's, an ingest's); callers add their own.

    Times are ``time.time()`` values: the run started, its main work (pipeline / ingest)
    started and finished; ``config`` is the RunConfig; ``counts`` is `summarise_videos`'s.
    """
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


def write_manifest(output: str, manifest: dict) -> None:
    """``output/run_manifest.json`` (latest run) and ``output/runs/<run_id>/run_manifest.json`` (kept)."""
    data = json.dumps(manifest, indent=2, default=str).encode()
    for path in (FileSystems.join(output, "runs", manifest["run_id"], MANIFEST_FILE),
                 FileSystems.join(output, MANIFEST_FILE)):
        parent = path.rsplit("/", 1)[0]
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
        with FileSystems.create(path) as fh:
            fh.write(data)


# The video-table columns `summarise_videos` reads: reading only these back from a run's one-row files takes
# about half the CPU of reading whole rows (0.22-0.32 against 0.48-0.59 s for 200 videos).
SUMMARY_COLUMNS = ("video_id", "status", "run_id", "frames_decoded", "frames_sampled", "frames_with_face")


def summarise_videos(videos: pa.Table, matched: int, run_id: Optional[str] = None,
                     rewritten: Sequence[str] = ()) -> dict:
    """Counts for the run summary over the matched videos' current rows (at least SUMMARY_COLUMNS).

    ``accounted``: ok + no_face + failed == matched == video rows. ``processed`` videos were
    decoded (or ingested) by ``run_id``; ``skipped`` kept an earlier run's work (unchanged input
    and settings), ``relabelled`` of them got new labels (``rewritten``: rows the run rewrote
    without processing their video). ``failed_now`` failed in this run, ``failed_kept`` are
    earlier failures of unchanged files. Frame counts are over the processed videos.
    """
    status = videos.column("status").to_pylist()
    counts = {s: status.count(s) for s in VIDEO_STATUSES}
    ids = videos.column("video_id").to_pylist() if "video_id" in videos.column_names else []
    written = [run_id is None or r == run_id for r in videos.column("run_id").to_pylist()]
    relabelled = set(rewritten)
    mine = videos.filter(pa.array([w and v not in relabelled for w, v in zip(written, ids)], pa.bool_()))
    failed_now = mine.column("status").to_pylist().count("failed")

    def total(column: str) -> int:
        return int(pc.sum(mine.column(column)).as_py() or 0)

    return {"matched": matched, "processed": mine.num_rows, "skipped": matched - mine.num_rows,
            "relabelled": len(set(rewritten) & set(ids)), "rows_written": sum(written),
            **counts, "failed_now": failed_now, "failed_kept": counts["failed"] - failed_now,
            "video_rows": videos.num_rows, "accounted": sum(counts.values()) == matched == videos.num_rows,
            "frames_decoded": total("frames_decoded"), "frames_sampled": total("frames_sampled"),
            "frames_with_face": total("frames_with_face")}
