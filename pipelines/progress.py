"""Progress while a run is going: a thread that watches the run's staging folder.

It works the same on every runner (the workers only write files; nothing is sent back),
reading the row count from the footer of each new frame file once. On a terminal it draws a
tqdm bar (videos with frames written of those matched); anywhere else (a cron log, a
scheduler's capture) it writes one plain line every ``log_every_s`` seconds.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems


class ProgressReporter:
    """Context manager reporting a run's progress from its staging folder (see the module docstring)."""

    def __init__(self, staging: str, video_ids: Sequence[str], enabled: bool = True, interval_s: float = 1.0,
                 log_every_s: float = 30.0, stream=None):
        self._staging = staging
        self._total = len(video_ids)
        self._enabled = enabled
        self._interval = interval_s
        self._log_every = log_every_s
        self._stream = stream
        self._stop = threading.Event()
        self._thread = None
        self._rows: dict[str, int] = {}
        self._start = 0.0
        self._bar = None
        self._last_line = 0.0

    def __enter__(self):
        if self._enabled:
            self._start = self._last_line = time.time()
            stream = self._stream or sys.stderr
            if stream.isatty():
                from tqdm import tqdm
                self._bar = tqdm(total=self._total, unit="video", desc="affectflow", file=stream, leave=True,
                                 dynamic_ncols=True)
            self._thread = threading.Thread(target=self._loop, name="affectflow-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=10)
            self._report(self.poll(), final=True)
            if self._bar is not None:
                self._bar.close()
        return False

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                self._report(self.poll())
            except Exception:  # noqa: BLE001 - progress must never break a run
                pass

    def poll(self) -> tuple[int, int]:
        """Scan for new frame files; return (videos with frames written, frame rows)."""
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
        return videos, sum(self._rows.values())

    def _report(self, progress: tuple[int, int], final: bool = False) -> None:
        videos, frames = progress
        elapsed = max(time.time() - self._start, 1e-9)
        if self._bar is not None:
            self._bar.n = videos
            self._bar.set_postfix_str(f"{frames} frame rows, {frames / elapsed:.0f} frames/s", refresh=True)
            return
        if final or time.time() - self._last_line >= self._log_every:
            self._last_line = time.time()
            stream = self._stream or sys.stderr
            stream.write(f"[affectflow] videos with frames written {videos}/{self._total}, frame rows {frames}, "
                         f"{frames / elapsed:.1f} frames/s, {elapsed:.0f} s\n")
            stream.flush()
