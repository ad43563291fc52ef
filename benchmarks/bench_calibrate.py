"""Benchmark of `affectflow calibrate`: the sweep with cross-validation, and the count table.

    .venv/bin/python benchmarks/bench_calibrate.py [--videos 100000] [--subjects 5000]
        [--frames 10000000] [--frame-videos 2000] [--skip-parquet] [--repeats 3]

a) Sweep: ``calibrate_counts`` on a synthetic count matrix [videos, 7] made with numpy (no
   Parquet): both label settings, 20 thresholds x 2 fallbacks plus Top-1, 5-fold CV. Timed
   with folds grouped by subject (``--subjects``) and stratified (no subjects); fold
   assignment is timed apart as well. Median of ``--repeats``.
b) Count table: a synthetic frame table of ``--frames`` rows over ``--frame-videos`` videos in
   the run layout (frames/video_id=<id>/part-0.parquet; only the columns the count reads plus
   one probability column, zstd) is grouped into per-video counts by DuckDB and by the batched
   pyarrow scan, each in a fresh subprocess so its peak RSS is its own (printed with the
   process's peak after its imports, before the count).

Prints os.cpu_count() and the load average, since the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from models.registry import FER2013_LABELS  # noqa: E402
from pipelines.calibration.thresholds import parse_thresholds
from pipelines.folds import assign_folds  # noqa: E402
from pipelines.calibration.job import calibrate_counts
from pipelines.calibration.counts import count_frame_labels
from models.aggregation import AggregationSettings  # noqa: E402

LABELS = FER2013_LABELS
CHILD_MARKER = "BENCH_COUNT "


def synthetic_counts(n_videos: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int64[videos, labels] frame counts, object[videos] true labels).

    Every label has a 4% floor (model noise); a video of true emotion e adds 0.7 x Beta(2, 5)
    to e; neutral takes the rest. 50-500 frames per video, drawn multinomially.
    """
    k, neutral = len(LABELS), LABELS.index("neutral")
    true = rng.integers(0, k, n_videos)
    frames = rng.integers(50, 501, n_videos)
    p = np.full((n_videos, k), 0.04)
    share = np.where(true == neutral, 0.0, rng.beta(2, 5, n_videos))
    p[np.arange(n_videos), true] += 0.7 * share
    p[:, neutral] += 1.0 - p.sum(axis=1)
    counts = rng.multinomial(frames, p)
    return counts.astype(np.int64), np.asarray(LABELS, dtype=object)[true]


def time_sweep(args) -> None:
    rng = np.random.default_rng(args.seed)
    counts, true = synthetic_counts(args.videos, rng)
    subjects = np.asarray([f"s{i}" for i in rng.integers(0, args.subjects, args.videos)], dtype=object)
    ids = np.arange(args.videos).astype(str).astype(object)
    settings = AggregationSettings(labels=LABELS)
    thresholds = parse_thresholds("0.05:1.0:0.05")
    codes = np.searchsorted(np.asarray(sorted(LABELS)), true)
    print(f"a) sweep: {args.videos:,} videos x {len(LABELS)} labels, {len(thresholds)} thresholds x 2 fallbacks + "
          f"Top-1, specific + broad settings, {args.folds}-fold CV (median of {args.repeats})")
    for name, groups in ((f"grouped by {args.subjects:,} subjects", subjects), ("stratified, no subjects", None)):
        fold_times, total_times, report = [], [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assign_folds(codes, groups, args.folds, args.seed)
            fold_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = calibrate_counts(ids, counts, true, groups, settings, thresholds, args.folds, args.seed).report
            total_times.append(time.perf_counter() - t0)
        s = report["settings"]["specific"]
        print(f"   {name:32s} full calibration {statistics.median(total_times):6.2f} s "
              f"(of which fold assignment {statistics.median(fold_times):5.2f} s per setting); "
              f"fitted {report['fitted']['threshold']:.2f}/{report['fitted']['fallback']}, CV accuracy "
              f"{s['cross_validated']['mean_over_folds']['accuracy']:.4f} vs Top-1 "
              f"{s['top1']['mean_over_folds']['accuracy']:.4f}")


def write_frames(root: Path, n_rows: int, n_videos: int, rng: np.random.Generator) -> None:
    """frames/video_id=<id>/part-0.parquet: face_index (0, or null for ~5% faceless frames),
    face_found, emotion_label (dictionary-encoded, as pyarrow writes repeated strings) and prob_neutral."""
    per_video = np.full(n_videos, n_rows // n_videos)
    per_video[: n_rows % n_videos] += 1
    labels = np.asarray(LABELS, dtype=object)
    for v, n in enumerate(per_video):
        face = rng.random(n) >= 0.05
        label_idx = rng.choice(len(LABELS), n, p=[0.05, 0.02, 0.05, 0.15, 0.08, 0.05, 0.60])
        table = pa.table({
            "face_found": pa.array(face),
            "face_index": pa.array(np.zeros(n, np.int16), mask=~face),
            "emotion_label": pa.array(labels[label_idx], pa.string(), mask=~face),
            "prob_neutral": pa.array(rng.random(n).astype(np.float32), mask=~face),
        })
        folder = root / "frames" / f"video_id=vid{v:06d}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet", compression="zstd")


def count_child(output: str, engine: str) -> None:
    """Run in a fresh process: time one count table build and report this process's peak RSS."""
    import duckdb  # noqa: F401  (imported before the baseline RSS is read, like everything else used)
    from pipelines.output.layout import dataset  # noqa: F401
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    table = count_frame_labels(output, LABELS, engine)
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{CHILD_MARKER}{elapsed:.3f} {rss_mb:.0f} {baseline_mb:.0f} {len(table.video_ids)} "
          f"{int(table.counts.sum())} {int(table.faceless_frames.sum())}")


def time_count_table(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_calibrate_"))
    try:
        t0 = time.perf_counter()
        write_frames(tmp, args.frames, args.frame_videos, np.random.default_rng(args.seed))
        written = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in (tmp / "frames").rglob("*.parquet")) / 2 ** 20
        print(f"b) count table: {args.frames:,} frame rows over {args.frame_videos:,} videos "
              f"({size_mb:.0f} MB zstd Parquet, written in {written:.1f} s)")
        for engine in ("duckdb", "pyarrow"):
            times, line = [], None
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--count-child", str(tmp), engine],
                                     capture_output=True, text=True, check=True).stdout
                line = next(l for l in out.splitlines() if l.startswith(CHILD_MARKER))[len(CHILD_MARKER):].split()
                times.append(float(line[0]))
            elapsed = statistics.median(times)
            print(f"   {engine:8s} {elapsed:6.2f} s  ({args.frames / elapsed / 1e6:5.1f} M rows/s), peak RSS "
                  f"{line[1]} MB (after imports {line[2]} MB); {int(line[3]):,} videos, {int(line[4]):,} face "
                  f"frames, {int(line[5]):,} faceless")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000, help="videos in the synthetic count matrix")
    parser.add_argument("--subjects", type=int, default=5_000, help="subjects the videos are spread over")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--frames", type=int, default=10_000_000, help="rows of the synthetic frame table")
    parser.add_argument("--frame-videos", type=int, default=2_000, help="videos (partitions) of the frame table")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median printed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--skip-parquet", action="store_true", help="time the sweep only")
    parser.add_argument("--count-child", nargs=2, metavar=("OUTPUT", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_child:
        count_child(*args.count_child)
        return
    print(f"os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    time_sweep(args)
    if not args.skip_parquet:
        time_count_table(args)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
