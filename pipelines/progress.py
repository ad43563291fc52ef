"""Progress while a run is going: a thread that watches the run's staging folder.

It works the same on every runner (the workers only write files; nothing is sent back),
reading the row count from the footer of each new frame file once.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems


class ProgressReporter:
    def __init__(self, staging: str, video_ids: Sequence[str], enabled: bool = True, interval_s: float = 2.0,
                 stream=None):
        self._staging = staging
        self._total = len(video_ids)
        self._enabled = enabled
        self._interval = interval_s
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = None
        self._rows: dict[str, int] = {}
        self._start = 0.0

    def __enter__(self):
        if self._enabled:
            self._start = time.time()
            self._thread = threading.Thread(target=self._loop, name="affectflow-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=10)
            self.poll()
            self._stream.write("\n")
        return False

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - progress must never break a run
                pass

    def poll(self) -> tuple[int, int]:
        """Scan for new frame files; print and return (videos with frames, frame rows)."""
        pattern = FileSystems.join(self._staging, "frames", "**")
        for result in FileSystems.match([pattern]):
            for meta in result.metadata_list:
                if meta.path.endswith(".parquet") and meta.path not in self._rows:
                    try:
                        with FileSystems.open(meta.path) as fh:
                            self._rows[meta.path] = pq.ParquetFile(fh).metadata.num_rows
                    except Exception:  # noqa: BLE001 - still being written
                        continue
        videos = len({p.split("/video_id=")[1].split("/")[0] for p in self._rows if "/video_id=" in p})
        frames = sum(self._rows.values())
        elapsed = max(time.time() - self._start, 1e-9)
        if self._enabled:
            self._stream.write(f"\r[affectflow] videos with frames written {videos}/{self._total} | "
                               f"frame rows {frames} | {frames / elapsed:.1f} frames/s | {elapsed:.0f} s")
            self._stream.flush()
        return videos, frames
