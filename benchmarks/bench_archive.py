"""Speed of whole runs over archives as a user sees them: many short clips, a long clip, no-op reruns.

    .venv/bin/python benchmarks/bench_archive.py [--copies 200] [--compare 20] [--reference-copies 10]
        [--repeats 1] [--overhead-rounds 5] [--dask] [--work DIR] [--json OUT]

Every figure is the whole `affectflow run` process (start-up, pipeline, commit, end-of-run
validation), launched fresh, beside the run's own in-run figure (``timings_s.pipeline``):

  a) decode-only yardstick, measured in this process in the same session: OpenCV ``cap.read()``
     of every frame of every file of the archive, one file after another (frames/s);
  b) short-clip archive: ``--copies`` copies of the 72-frame sample clip ``single_face.mp4``
     (2.4 s each) and ``--compare`` copies: whole-process frames/s and its ratio to decode-only
     (target >= 0.30), CPU seconds of the run's processes, peak RSS (the larger archive within
     10% of the smaller one's);
  c) per-video overhead: the CPU a video costs beyond its frames (target <= 20 ms): ``--copies``
     copies of the sample clip's first 12 frames as ``--copies`` videos against the same clips
     joined into one video (FFmpeg's concat demuxer, no re-encoding: the same frames and pixels),
     (CPU(clips) - CPU(joined)) / (copies - 1), whole runs with validation off (the pipeline's
     CPU) on one worker thread, ``--overhead-rounds`` pairs run one after the other (the median
     and every pair are printed). Why so: the joined video is not on a constant frame grid (the
     concat leaves a gap at each join), so it is decoded as one work unit on one core, while the
     clips would keep two worker threads busy: one thread each compares like with like. Short
     clips keep the frames' share of the CPU small, so the machine's noise (5-10% between runs
     here) moves the figure less. And, for reference, the CPU per frame
     (CPU(reference x N) - CPU(reference x 1)) / ((N - 1) x 472);
  d) reference archive: ``--reference-copies`` copies of the 472-frame reference clip: whole
     process over decode-only (target >= 0.30);
  e) no-op rerun of the short-clip archive's output: whole process seconds (target <= 5 s); then a
     rerun after one of its files changed (a copy of the 20-frame-shorter clip under its name),
     with the end-of-run validation of what changed (default) and with validation.after_run=all;
  f) start-up: a run over one clip with validation off: the seconds from launching the process to
     its first decoded frame (target <= 2 s; the median of at least 3 runs), beside Python start and
     imports alone (the `affectflow` modules a run loads), the run's discover-and-resolve time and
     the whole one-clip run;
  g) analysts' queries: the short-clip output's first video cloned to ``--query-videos`` videos
     (one frames file and one videos file each, as a run writes them); DuckDB over the frames
     table: one video's frames, a per-video aggregate over all, and the videos table (median
     of 3 each, fresh connection);
  h) with ``--dask``: the short-clip archive on Beam's DaskRunner with a LocalCluster of 1 and of
     2 single-threaded worker processes (target: 2 workers >= 1.7x one).

Prints the core count and load average before and after: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The child process of every whole run: `affectflow run`, then its CPU (with its children's) and peak RSS.
# It also notes when the first frame came out of the decoder (the end of start-up: imports, graph build,
# runner, probe), by wrapping transforms.decode.iter_frames before anything imports it.
LAUNCH = """
import resource, sys, time
import transforms.decode as decode
first_frame = []
def noted(*args, _iter_frames=decode.iter_frames, **kwargs):
    for frame in _iter_frames(*args, **kwargs):
        if not first_frame:
            first_frame.append(time.time())
        yield frame
decode.iter_frames = noted
from pipelines.cli import command
code = command(sys.argv[1:])
r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("BENCH", r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime, max(r.ru_maxrss, c.ru_maxrss), *first_frame[:1])
sys.exit(code)
"""
REFERENCE_FRAMES = 472


def ffmpeg() -> str:
    """The FFmpeg of imageio-ffmpeg (the test extra), else the one on PATH."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        return shutil.which("ffmpeg") or "ffmpeg"


def fetch_samples(work: Path) -> dict[str, Path]:
    dest = work / "samples"
    subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
                    "samples", "--dest", str(dest)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return {p.name: p for p in dest.rglob("*.mp4")}


def archive_of(clip: Path, folder: Path, copies: int) -> Path:
    """``copies`` hard links (or copies) of ``clip``: distinct paths, so distinct videos."""
    if folder.exists() and len(list(folder.glob("*.mp4"))) == copies:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(copies):
        target = folder / f"clip_{i:05d}.mp4"
        try:
            os.link(clip, target)
        except OSError:
            shutil.copy(clip, target)
    return folder


def joined_clip(clip: Path, folder: Path, copies: int) -> Path:
    """A folder with one video: ``copies`` times ``clip`` one after another (bench_extract's concat_video:
    FFmpeg's concat demuxer, stream copy)."""
    from bench_extract import concat_video
    target = folder / f"{clip.stem}_x{copies}{clip.suffix}"
    if target.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    joined, why = concat_video(str(clip), copies, folder.parent)      # written beside the folder, then moved in
    if joined is None:
        raise RuntimeError(why)
    os.replace(joined, target)
    return folder


def first_frames(clip: Path, frames: int, target: Path) -> Path:
    """The first ``frames`` frames of ``clip`` (stream copy: the same pixels)."""
    if not target.is_file():
        subprocess.run([ffmpeg(), "-v", "error", "-y", "-i", str(clip), "-frames:v", str(frames), "-c", "copy",
                        str(target)], check=True)
    return target


def per_video_overhead(clips: Path, joined: Path, out: Path, copies: int, rounds: int) -> list[float]:
    """ms of CPU a video costs beyond its frames, one value per pair of runs (see c) above)."""
    one_thread = ("validation.enabled=false", "pipeline_options.direct_num_workers=1")
    values = []
    for _ in range(rounds):
        a, b = whole_run(clips, out / "clips", *one_thread), whole_run(joined, out / "joined", *one_thread)
        if a["frames"] != b["frames"]:
            print(f"WARNING: the joined video decoded {b['frames']} frames, the clips {a['frames']}")
        values.append((a["cpu_s"] - b["cpu_s"]) / (copies - 1) * 1000)
        print(f"  pair: {copies} clips {a['cpu_s']:.1f} s of CPU, joined {b['cpu_s']:.1f} s: "
              f"{values[-1]:.1f} ms a video")
    return values


def decode_only(folder: Path) -> tuple[int, float]:
    """(frames, seconds) of reading every frame of every file, one after another, in this process."""
    import cv2
    frames, started = 0, time.perf_counter()
    for path in sorted(folder.glob("*.mp4")):
        cap = cv2.VideoCapture(str(path))
        while cap.read()[0]:
            frames += 1
        cap.release()
    return frames, time.perf_counter() - started


def whole_run(folder: Path, output: Path, *sets: str, fresh: bool = True) -> dict:
    """One `affectflow run` process: wall seconds, CPU seconds, peak RSS MiB, the manifest's figures."""
    if fresh:
        shutil.rmtree(output, ignore_errors=True)
    args = ["run", "--input", str(folder), "--output", str(output), "--set", "progress=false"]
    for s in sets:
        args += ["--set", s]
    launched, started = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"affectflow run exited {done.returncode}: {done.stderr[-2000:]}")
    cpu, rss, *first_frame = next(l.split()[1:] for l in done.stdout.splitlines() if l.startswith("BENCH "))
    manifest = json.loads((output / "run_manifest.json").read_text())
    results = output / "validation" / "results.json"
    validated = json.loads(results.read_text()) if results.is_file() else {}
    return {"wall_s": round(wall, 2), "cpu_s": round(float(cpu), 2), "peak_rss_mib": round(int(rss) / 1024),
            "frames": manifest["counts"]["frames_decoded"], "processed": manifest["counts"]["processed"],
            "timings_s": manifest["timings_s"],
            "first_frame_s": round(float(first_frame[0]) - launched, 2) if first_frame else None,
            "validation_s": validated.get("duration_s") if validated.get("run_id") == manifest["run_id"] else 0.0}


def median_run(repeats: int, *args, by: str = "wall_s", **kwargs) -> dict:
    """The run with the median ``by`` figure of ``repeats`` whole runs."""
    runs = [whole_run(*args, **kwargs) for _ in range(repeats)]
    return sorted(runs, key=lambda r: r[by])[len(runs) // 2]


def dask_run(folder: Path, output: Path, workers: int) -> dict:
    """The archive on Beam's DaskRunner with a LocalCluster of ``workers`` single-threaded processes."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        return whole_run(folder, output, "pipeline_options.runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                         f"pipeline_options.dask_client_address={cluster.scheduler_address}",
                         "pipeline_options.dask_npartitions=8")


def query_figures(source: Path, folder: Path, videos: int) -> dict:
    """Seconds of three typical DuckDB queries over ``videos`` clones of the source's first video."""
    import duckdb
    if not (folder / "frames").exists() or len(list((folder / "videos").iterdir())) != videos:
        shutil.rmtree(folder, ignore_errors=True)
        for table in ("frames", "videos"):
            part = sorted((source / table).glob("video_id=*"))[0]
            for i in range(videos):
                shutil.copytree(part, folder / table / f"video_id=v{i:05d}")
        shutil.copy(source / "run_manifest.json", folder / "run_manifest.json")
    frames = f"read_parquet('{folder}/frames/*/*.parquet', hive_partitioning = true)"
    queries = {
        "one video's frames": f"SELECT frame_index, prob_happy FROM {frames} WHERE video_id = 'v00042'",
        "per-video mean over all frames": f"SELECT video_id, avg(prob_happy), count(*) FROM {frames} GROUP BY 1",
        "videos table": f"SELECT top1_label, count(*) FROM read_parquet('{folder}/videos/*/*.parquet', "
                        "hive_partitioning = true) GROUP BY 1"}
    subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
                    "compact", str(folder)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    compacted = folder / "compact"
    queries.update({
        f"{name} (compact/)": sql.replace(f"read_parquet('{folder}/frames/*/*.parquet', hive_partitioning = true)",
                                          f"read_parquet('{compacted}/frames/*.parquet')")
                                 .replace(f"read_parquet('{folder}/videos/*/*.parquet', hive_partitioning = true)",
                                          f"read_parquet('{compacted}/videos.parquet')")
        for name, sql in list(queries.items())})
    out = {}
    for name, sql in queries.items():
        times = []
        for _ in range(3):
            con = duckdb.connect()
            started = time.perf_counter()
            con.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
            con.close()
        out[name] = round(sorted(times)[1], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--compare", type=int, default=20)
    parser.add_argument("--reference-copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="whole runs per figure (the median is shown)")
    parser.add_argument("--overhead-rounds", type=int, default=5, help="pairs of runs for the per-video overhead")
    parser.add_argument("--dask", action="store_true", help="also the DaskRunner scaling curve")
    parser.add_argument("--query-videos", type=int, default=10000, help="videos of the analysts' query output (0: skip)")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-archive-"))
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    samples = fetch_samples(work)
    short = archive_of(samples["single_face.mp4"], work / f"short-{args.copies}", args.copies)
    small = archive_of(samples["single_face.mp4"], work / f"short-{args.compare}", args.compare)
    clip12 = first_frames(samples["single_face.mp4"], 12, work / "single_face_12.mp4")
    clips12 = archive_of(clip12, work / f"short12-{args.copies}", args.copies)
    joined12 = joined_clip(clip12, work / f"joined12-{args.copies}", args.copies)
    ref1 = archive_of(samples["WolfgangLanger_Pexels.mp4"], work / "reference-1", 1)
    refn = archive_of(samples["WolfgangLanger_Pexels.mp4"], work / f"reference-{args.reference_copies}",
                      args.reference_copies)
    figures: dict = {"cores": os.cpu_count()}

    for name, folder in (("short", short), ("reference", refn)):
        frames, seconds = decode_only(folder)
        figures[f"decode_only_{name}_fps"] = round(frames / seconds, 1)
    out = work / "out"
    runs = {"short": median_run(args.repeats, short, out / "short"),
            "small": median_run(args.repeats, small, out / "small"),
            "reference": median_run(args.repeats, refn, out / "reference"),
            "reference_1": median_run(args.repeats, ref1, out / "reference-1")}
    runs["noop"] = median_run(args.repeats, short, out / "short", fresh=False)
    for i, scope in enumerate(("changed", "all")):
        target = short / "clip_00000.mp4"
        target.unlink()                     # a hard link: replace it, never write through it
        subprocess.run([ffmpeg(), "-v", "error", "-y", "-i", str(samples["single_face.mp4"]), "-frames:v",
                        str(40 + 10 * i), "-c:v", "libx264", str(target)], check=True)
        runs[f"one_changed_{scope}"] = whole_run(short, out / "short", f"validation.after_run={scope}", fresh=False)
    one = archive_of(samples["single_face.mp4"], work / "short-1", 1)
    runs["startup"] = median_run(max(3, args.repeats), one, out / "one", "validation.enabled=false", by="first_frame_s")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipelines.cli.commands, pipelines.extract"], cwd=REPO, check=True)
    imports_s = time.perf_counter() - started
    figures["runs"] = runs
    for name, key in (("short", "short"), ("reference", "reference")):
        r = runs[key]
        whole, in_run = r["frames"] / r["wall_s"], r["frames"] / r["timings_s"]["pipeline"]
        yardstick = figures[f"decode_only_{name}_fps"]
        print(f"{name:9s} archive: {r['processed']} videos, {r['frames']} frames: whole process {r['wall_s']:.1f} s = "
              f"{whole:.0f} fps = {whole / yardstick:.2f} of decode-only ({yardstick:.0f} fps; target >= 0.30); "
              f"in-run pipeline {r['timings_s']['pipeline']:.1f} s = {in_run:.0f} fps = {in_run / yardstick:.2f}; "
              f"validation {r['validation_s']} s; CPU {r['cpu_s']:.1f} s; peak RSS {r['peak_rss_mib']} MiB")
        figures[f"{name}_whole_over_decode"] = round(whole / yardstick, 3)
    cpu_per_frame = (runs["reference"]["cpu_s"] - runs["reference_1"]["cpu_s"]) / (
        (args.reference_copies - 1) * REFERENCE_FRAMES)
    print(f"per-video overhead ({args.copies} 12-frame clips against the same clips joined, one worker thread, "
          "validation off):")
    overheads = per_video_overhead(clips12, joined12, out / "overhead", args.copies, args.overhead_rounds)
    per_video = statistics.median(overheads) / 1000
    print(f"per-video overhead: median {per_video * 1000:.0f} ms of CPU a video (target <= 20) over "
          f"{len(overheads)} pairs ({min(overheads):.0f} to {max(overheads):.0f}); CPU per frame "
          f"{cpu_per_frame * 1000:.2f} ms (reference x{args.reference_copies} - x1)")
    noop = runs["noop"]
    print(f"no-op rerun of {args.copies} videos: whole process {noop['wall_s']:.1f} s (target <= 5), in-run "
          f"{noop['timings_s']['total']:.1f} s, validation {noop['validation_s']} s")
    for scope in ("changed", "all"):
        r = runs[f"one_changed_{scope}"]
        print(f"rerun with one of {args.copies} videos changed, validation.after_run={scope}: whole process "
              f"{r['wall_s']:.1f} s, validation {r['validation_s']} s")
    print(f"peak RSS {args.copies} / {args.compare} videos: {runs['short']['peak_rss_mib']} / "
          f"{runs['small']['peak_rss_mib']} MiB = {runs['short']['peak_rss_mib'] / runs['small']['peak_rss_mib']:.2f} "
          "(target <= 1.10)")
    s = runs["startup"]
    startup = s["first_frame_s"]
    print(f"start-up: the first frame decoded {startup:.2f} s after launch (target <= 2; one clip, validation off): "
          f"Python and imports {imports_s:.2f} s (alone), discover and resolve {s['timings_s']['discover_and_resolve']:.2f} s, "
          f"graph, runner and probe the rest; the whole one-clip run {s['wall_s']:.2f} s (pipeline "
          f"{s['timings_s']['pipeline']:.2f} s)")
    figures.update(cpu_per_frame_ms=round(cpu_per_frame * 1000, 3), per_video_overhead_ms=round(per_video * 1000, 1),
                   per_video_overhead_pairs_ms=[round(v, 1) for v in overheads],
                   noop_whole_s=noop["wall_s"], first_frame_s=startup, startup_one_clip_s=s["wall_s"],
                   imports_s=round(imports_s, 2))
    if args.query_videos:
        figures["queries_s"] = query_figures(out / "short", work / f"query-{args.query_videos}", args.query_videos)
        for name, seconds in figures["queries_s"].items():
            print(f"DuckDB over {args.query_videos} videos' output, {name}: {seconds:.2f} s")
    if args.dask:
        scaling = {w: dask_run(short, out / f"dask-{w}", w) for w in (1, 2)}
        one, two = (scaling[w]["frames"] / scaling[w]["wall_s"] for w in (1, 2))
        for w, r in scaling.items():
            print(f"DaskRunner, {w} worker(s): whole process {r['wall_s']:.1f} s = {r['frames'] / r['wall_s']:.0f} fps, "
                  f"in-run {r['timings_s']['pipeline']:.1f} s")
        print(f"2 workers / 1 worker: {two / one:.2f}x (target >= 1.7)")
        figures["dask"] = scaling
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
