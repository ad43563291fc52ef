"""Time and memory of `affectflow report` as the archive grows.

    .venv/bin/python benchmarks/bench_report.py [--videos 5000] [--compare 200] [--source OUTPUT] [--work DIR]

1. A source output: ``--source``, or one run of `affectflow run` over the sample clip
   ``single_face.mp4`` with blendshapes (fetched with `affectflow samples`).
2. Two synthetic archives of ``--compare`` and ``--videos`` videos: the source's video, frame and
   dead-letter partitions copied under new ids (the rows are the same; the ids live in the folder
   names), with its run manifest.
3. `affectflow report` over each, in a fresh process (its whole time: start-up, DuckDB overview,
   20 timelines, writing the page) with the child's peak RSS.
Bounded memory: the larger archive's peak within 10% of the smaller one's. Prints the core count
and load average: the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AFFECTFLOW = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"]


def source_output(work: Path) -> Path:
    """One real run over the sample clip."""
    samples, out = work / "samples", work / "source"
    subprocess.run([*AFFECTFLOW, "samples", "--dest", str(samples), "single_face.mp4"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    clip = next(samples.rglob("single_face.mp4"))
    subprocess.run([*AFFECTFLOW, "run", "--input", str(clip), "--output", str(out),
                    "--set", "features.blendshapes=true", "--set", "progress=false"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return out


def cloned_archive(source: Path, dest: Path, videos: int) -> Path:
    """``videos`` copies of the source's first video under the ids v00000, v00001, ..."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy(source / "run_manifest.json", dest / "run_manifest.json")
    for table in ("videos", "frames", "dead_letters"):
        parts = sorted((source / table).glob("video_id=*"))
        if not parts:
            continue
        for i in range(videos):
            shutil.copytree(parts[0], dest / table / f"video_id=v{i:05d}")
    return dest


def report_once(output: Path, dest: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `affectflow report` process."""
    code = ("import resource, sys; from pipelines.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "report", str(output), "--dest", str(dest)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return seconds, int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--compare", type=int, default=200)
    parser.add_argument("--source", type=Path, help="an affectflow output to clone (default: a run over a sample)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-report-"))
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    source = args.source or source_output(work)
    figures = {}
    for n in (args.compare, args.videos):
        archive = cloned_archive(source, work / f"archive-{n}", n)
        seconds, rss = report_once(archive, work / f"report-{n}")
        size = (work / f"report-{n}" / "archive.html").stat().st_size / 1e6
        figures[n] = (seconds, rss)
        print(f"{n:6d} videos: report {seconds:6.1f} s whole process, peak RSS {rss:6.0f} MiB, page {size:.1f} MB")
    (small_s, small_rss), (large_s, large_rss) = figures[args.compare], figures[args.videos]
    print(f"peak RSS {args.videos} / {args.compare} videos: {large_rss / small_rss:.3f} (bounded: <= 1.10); "
          f"time ratio {large_s / small_s:.2f} for {args.videos / args.compare:.0f}x the videos")
    print(f"children's peak RSS as the OS counts it: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
