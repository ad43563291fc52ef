"""Throughput and memory of training and prediction on many videos, streamed from Parquet.

    .venv/bin/python benchmarks/bench_train.py [--videos 10000] [--compare 1000] [--frames 300]
        [--features 64] [--model rnn-attention] [--epochs 1] [--work DIR] [--json OUT]

1. Writes a synthetic run output: ``frames/video_id=<id>/part-00000-00000.parquet`` per video
   with ``--frames`` rows, ``face_found`` false on 5% of them (features null there) and
   ``--features`` float32 columns (zstd), as the extraction writes them.
2. For ``--compare`` videos and for ``--videos`` videos, in a fresh subprocess each (so the peak
   RSS is that run's own):
   a) the training store: every video's sequence read from its Parquet partition
      (transforms.sequences.read_video_sequence, as `affectflow train` does) and written to the
      on-disk store (videos/s);
   b) training: `fit_sequence_model` with the default train.* settings for ``--epochs`` epochs on
      80% of the videos, early-stopping loss on the other 20% (training sequences/s over the
      whole fit, scaler pass included);
   c) prediction from the store (sequences/s);
   d) prediction as `affectflow predict` reads: each video's Parquet -> sequence -> the saved,
      reloaded classifier in batches of 64 (sequences/s; the Beam pipeline around it is not timed);
   e) peak RSS (``ru_maxrss``), and RSS right after importing TensorFlow for reference.
   Bounded memory: the larger run's peak within 10% of the smaller one's.

Prints the core count and load average: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

CHILD_MARKER = "BENCH_TRAIN "


def write_output(root: Path, videos: int, frames: int, features: int, seed: int = 0) -> list[str]:
    """A synthetic run output's frame partitions; returns the video ids."""
    rng = np.random.default_rng(seed)
    names = [f"f{i:03d}" for i in range(features)]
    ids = []
    for v in range(videos):
        video_id = f"v{v:06d}"
        found = rng.random(frames) >= 0.05
        values = rng.normal(size=(frames, features)).astype(np.float32)
        columns = {"frame_index": pa.array(np.arange(frames, dtype=np.int64)),
                   "timestamp_s": pa.array(np.arange(frames) / 25.0),
                   "face_index": pa.array(np.where(found, 0, -1).astype(np.int16), mask=~found),
                   "face_found": pa.array(found)}
        columns.update({n: pa.array(values[:, i], mask=~found) for i, n in enumerate(names)})
        folder = root / "frames" / f"video_id={video_id}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "part-00000-00000.parquet", compression="zstd")
        ids.append(video_id)
    return ids


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(output: str, videos: int, features: int, frames: int, kind: str, epochs: int, work: str) -> dict:
    """One measured run over the first ``videos`` videos (see the module docstring)."""
    import keras  # noqa: F401 - imported first so its memory is measured apart
    from core.elements import VideoSequence  # noqa: F401
    from core.settings import TrainConfig
    from models.registry import resolve
    from models.sequence import fit_sequence_model, predict_probabilities
    from models.video_classifier import ModelCard, load_classifier, save_classifier
    from pipelines.training.data import build_store
    from transforms.sequences import read_video_sequence
    after_import = _rss_mb()
    ids = [f"v{v:06d}" for v in range(videos)]
    columns, sizes = tuple(f"f{i:03d}" for i in range(features)), (1,) * features
    started = time.perf_counter()
    store = build_store(Path(work) / "store", output, ids, columns, sizes, frames)
    store_s = time.perf_counter() - started
    codes = np.random.default_rng(1).integers(0, 2, videos)
    positions = np.arange(videos)
    held = positions % 5 == 0
    train = TrainConfig(epochs=epochs)
    fit = fit_sequence_model(kind, store.read, positions[~held], codes[~held], positions[held], codes[held], 2,
                             store.width, store.length, train, 0)
    started = time.perf_counter()
    predict_probabilities(fit.model, fit.scaler, store.read, positions)
    predict_s = time.perf_counter() - started
    card = ModelCard(name=f"{kind}.appearance.binary", kind=kind, task="binary", feature_set="appearance",
                     columns=columns, column_sizes=sizes, labels=("a", "b"), sequence_length=store.length,
                     scaler=fit.scaler.to_dict())
    save_classifier(Path(work) / "model", card, fit.model)
    classifier = load_classifier(resolve("video_classifier", str(Path(work) / "model")))
    started = time.perf_counter()
    for start in range(0, videos, 64):
        classifier.predict([read_video_sequence(output, v, columns, sizes) for v in ids[start:start + 64]])
    parquet_predict_s = time.perf_counter() - started
    return {"videos": videos, "frames": frames, "features": features, "model": kind, "epochs": epochs,
            "store_videos_per_s": videos / store_s,
            "train_sequences_per_s": int((~held).sum()) * epochs / fit.seconds, "train_s": fit.seconds,
            "predict_sequences_per_s": videos / predict_s,
            "predict_from_parquet_sequences_per_s": videos / parquet_predict_s,
            "rss_after_import_mb": after_import, "peak_rss_mb": _rss_mb()}


def measure(output: Path, videos: int, args, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="child-", dir=work))
    try:
        command = [sys.executable, __file__, "--_child", str(output), str(videos), str(args.features),
                   str(args.frames), args.model, str(args.epochs), str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [l for l in done.stdout.splitlines() if l.startswith(CHILD_MARKER)]
        if done.returncode or not lines:
            raise RuntimeError(f"child run failed ({done.returncode}): {done.stderr[-3000:]}")
        return json.loads(lines[0][len(CHILD_MARKER):])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=10000)
    ap.add_argument("--compare", type=int, default=1000, help="the smaller run the peak RSS is compared with")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--model", default="rnn-attention")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--work", help="folder for the synthetic output (default: a temporary one, removed)")
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--_child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        output, videos, features, frames, kind, epochs, work = args._child
        print(CHILD_MARKER + json.dumps(child(output, int(videos), int(features), int(frames), kind, int(epochs),
                                              work)))
        return 0
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()}")
    work = Path(args.work or tempfile.mkdtemp(prefix="affectflow-bench-train-"))
    output = work / "output"
    try:
        if not (output / "frames").is_dir():
            started = time.perf_counter()
            write_output(output, args.videos, args.frames, args.features)
            print(f"wrote {args.videos} videos x {args.frames} frames x {args.features} features in "
                  f"{time.perf_counter() - started:.0f} s")
        runs = [measure(output, n, args, work) for n in (args.compare, args.videos)]
        print(f"{'videos':>8} {'store v/s':>10} {'train seq/s':>12} {'predict seq/s':>14} {'from parquet':>13} "
              f"{'rss import':>11} {'peak rss':>9}")
        for r in runs:
            print(f"{r['videos']:8d} {r['store_videos_per_s']:10.0f} {r['train_sequences_per_s']:12.0f} "
                  f"{r['predict_sequences_per_s']:14.0f} {r['predict_from_parquet_sequences_per_s']:13.0f} "
                  f"{r['rss_after_import_mb']:9.0f}MB {r['peak_rss_mb']:7.0f}MB")
        growth = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1
        verdict = "PASS" if growth <= 0.10 else "FAIL"
        print(f"peak RSS {runs[1]['videos']} vs {runs[0]['videos']} videos: {growth:+.1%} (target <= +10%) {verdict}")
        print(f"load average after: {os.getloadavg()}")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": runs, "rss_growth": growth}, indent=1))
        return 0 if verdict == "PASS" else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
