"""Validation time and memory on a synthetic output of 1,000,000 frame rows.

    .venv/bin/python benchmarks/bench_validate.py [--videos 1000] [--frames 1000] [--dest DIR]
        [--memory-limit 2GB] [--corrupt] [--keep]

Writes an output folder laid out like a real one (``frames/``, ``videos/``, ``dead_letters/``,
Hive-partitioned by video_id, one frame file per video; ``run_manifest.json``), consistent so
that it validates: schemas from `schemas/`, the video rows' label columns from
`models.aggregation.video_labels` over the frames' labels, 2% failed videos (with a dead
letter each, frames kept as for a truncated video), 1% videos without a face. ``--corrupt``
pushes one probability out of range so the second (detail) pass runs too.

Then `validate_output` runs in a fresh process (so its memory is its own) and this prints
os.cpu_count(), the row count, the size on disk, the wall time of the validation and the
validating process's peak RSS (VmHWM from /proc, which exec resets).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from schemas.columns import PARTITION_COLUMN, file_schema, prob_column  # noqa: E402
from schemas.frames import frame_schema  # noqa: E402
from schemas.videos import dead_letter_schema, video_schema  # noqa: E402
from models.aggregation import AggregationSettings, LABEL_COLUMNS_NULLED_WHEN_FAILED, video_labels  # noqa: E402
from transforms.parquet import records_table  # noqa: E402

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
RUN_ID = "20260101T000000Z-bench0"
CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
started = time.time()
import pipelines.validation.suites  # noqa: F401 - Great Expectations itself, imported once per process
from core.settings import ValidationConfig
from pipelines.validation.job import validate_output
imported = time.time()
report = validate_output({output!r}, ValidationConfig(memory_limit={memory_limit!r}))
wall = time.time() - imported
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"wall_s": wall, "import_s": imported - started, "peak_rss_mb": hwm / 1024, "valid": report.valid,
                  "evaluated": report.evaluated, "failed": len(report.failed), "warnings": len(report.warnings)}}))
"""


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop_columns([PARTITION_COLUMN]) if PARTITION_COLUMN in table.column_names else table,
                   path, compression="zstd")


def write_output(root: Path, n_videos: int, n_frames: int, corrupt: bool, seed: int = 0) -> int:
    """A consistent synthetic output under ``root``; returns the frame row count."""
    rng = np.random.default_rng(seed)
    settings = AggregationSettings(labels=LABELS)
    frames_schema = file_schema(frame_schema(LABELS))
    videos_schema = video_schema(LABELS, settings.broad_labels)
    dead_schema = dead_letter_schema()
    label_names = np.array(LABELS, dtype=object)
    statuses = {"ok": 0, "no_face": 0, "failed": 0}
    rows = 0
    for v in range(n_videos):
        video_id = f"video{v:06d}"
        failed, faceless = v % 50 == 49, v % 100 == 0
        index = np.arange(n_frames, dtype=np.int64)
        face = np.zeros(n_frames, bool) if faceless else rng.random(n_frames) > 0.1
        logits = rng.normal(size=(n_frames, len(LABELS))) * 2
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
        if corrupt and v == n_videos // 2 + 1:
            probs[np.flatnonzero(face)[0], 0] = 1.5
        x = rng.uniform(0, 400, n_frames).astype(np.float32)
        y = rng.uniform(0, 200, n_frames).astype(np.float32)
        no = ~face
        cols = {
            "segment_index": pa.array(index // 300, pa.int32()),
            "frame_index": pa.array(index), "timestamp_s": pa.array(index / 30.0),
            "frame_width": pa.array(np.full(n_frames, 640, np.int32)),
            "frame_height": pa.array(np.full(n_frames, 480, np.int32)),
            "faces_in_frame": pa.array(face.astype(np.int16)), "face_found": pa.array(face),
            "face_index": pa.array(np.zeros(n_frames, np.int16), mask=no),
            "box_x": pa.array(x, mask=no), "box_y": pa.array(y, mask=no),
            "box_w": pa.array(np.full(n_frames, 200, np.float32), mask=no),
            "box_h": pa.array(np.full(n_frames, 240, np.float32), mask=no),
            "detector_score": pa.array(rng.uniform(0.7, 1, n_frames).astype(np.float32), mask=no),
        }
        for i, label in enumerate(LABELS):
            cols[prob_column(label)] = pa.array(probs[:, i], mask=no)
        top = probs.argmax(1)
        cols["emotion_label"] = pa.array(label_names[top], pa.string(), mask=no)
        cols["emotion_confidence"] = pa.array(probs.max(1), mask=no)
        _write(pa.table(cols, schema=frames_schema),
               root / "frames" / f"{PARTITION_COLUMN}={video_id}" / "part-00000-00000.parquet")
        rows += n_frames

        counts = np.bincount(top[face], minlength=len(LABELS))
        status = "failed" if failed else ("no_face" if faceless else "ok")
        statuses[status] += 1
        row = {PARTITION_COLUMN: video_id, "source_path": f"/archive/{video_id}.mp4", "content_sha256": "0" * 64,
               "size_bytes": 1 << 20, "codec": "avc1", "width": 640, "height": 480, "fps": 30.0,
               "duration_s": n_frames / 30.0, "frame_count_header": n_frames, "segments": 1,
               "frames_decoded": n_frames, "frames_sampled": n_frames, "frames_with_face": int(face.sum()),
               "face_coverage": float(face.sum()) / n_frames, **video_labels(counts, settings),
               "status": status, "error": "decode: TruncatedVideo: synthetic" if failed else None,
               "run_id": RUN_ID, "settings_fingerprint": "f" * 64, "models": "[]",
               "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
        if failed:
            row.update({c: None for c in LABEL_COLUMNS_NULLED_WHEN_FAILED})
        _write(records_table([row], videos_schema), root / "videos" / f"{PARTITION_COLUMN}={video_id}" / "part-00000.parquet")
        dead = [{PARTITION_COLUMN: video_id, "source_path": row["source_path"], "stage": "decode", "segment_index": None,
                 "error_type": "TruncatedVideo", "error_message": "synthetic", "retryable": False,
                 "run_id": RUN_ID}] if failed else []
        _write(records_table(dead, dead_schema), root / "dead_letters" / f"{PARTITION_COLUMN}={video_id}" / "part-00000.parquet")
    manifest = {"run_id": RUN_ID, "labels": list(LABELS), "broad_labels": list(settings.broad_labels),
                "counts": {"matched": n_videos, "processed": n_videos, "skipped": 0, **statuses,
                           "video_rows": n_videos, "accounted": True}}
    (root / "run_manifest.json").write_text(json.dumps(manifest, indent=2))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=1000, help="frame rows per video")
    parser.add_argument("--dest", help="write the synthetic output here (default: a temporary folder)")
    parser.add_argument("--memory-limit", default="2GB", help="validation.memory_limit (DuckDB)")
    parser.add_argument("--corrupt", action="store_true", help="one probability out of range (runs the detail pass)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output")
    args = parser.parse_args(argv)

    root = Path(args.dest) if args.dest else Path(tempfile.mkdtemp(prefix="affectflow-bench-validate-"))
    shutil.rmtree(root, ignore_errors=True)
    started = time.time()
    rows = write_output(root, args.videos, args.frames, args.corrupt)
    written = time.time() - started
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    child = CHILD.format(repo=str(REPO), output=str(root), memory_limit=args.memory_limit)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"os.cpu_count()     {os.cpu_count()}")
    print(f"frame rows         {rows:,} ({args.videos:,} videos x {args.frames:,} frames; "
          f"{args.videos:,} video rows; {sum(1 for _ in root.rglob('*.parquet')):,} Parquet files, "
          f"{size / 2**20:.0f} MiB zstd; written in {written:.1f} s)")
    print(f"validation wall    {result['wall_s']:.1f} s ({result['evaluated']} expectations, "
          f"memory_limit {args.memory_limit}{', one corruption' if args.corrupt else ''}; "
          f"+ {result['import_s']:.1f} s to import Great Expectations)")
    print(f"peak RSS           {result['peak_rss_mb']:.0f} MiB (validating process, VmHWM)")
    print(f"verdict            {'valid' if result['valid'] else 'INVALID'}: {result['failed']} critical, "
          f"{result['warnings']} warnings")
    if not (args.dest or args.keep):
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
