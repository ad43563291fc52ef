"""What a command prints: its own output, its warnings, and nothing of the libraries' chatter.

TensorFlow, TF Lite, absl and FFmpeg write to the process's stderr from C++ (oneDNN and CUDA
notices, "Created TensorFlow Lite XNNPACK delegate", a damaged file's demuxer complaints), most
of it before any Python setting can reach it. While a command runs, file descriptor 2 therefore
points at a log file; Python's ``sys.stderr`` (progress, warnings, errors) keeps the terminal. The
log is deleted after a run that could complete and kept, with its path printed, after one that
could not. Python logging: affectflow's own loggers at WARNING (INFO with ``-v``), every other
library's at ERROR (so Beam's import-time notices stay out of a cron log). With ``-v`` nothing is
redirected. Python warnings go through logging like everything else, never silently filtered.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Optional

PACKAGES = ("core", "models", "transforms", "pipelines", "schemas", "affectflow")


def configure_logging(verbose: bool) -> None:
    """affectflow's loggers at WARNING (INFO when verbose), the libraries' at ERROR (INFO when verbose)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, stream=sys.stderr, force=True,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)


@contextlib.contextmanager
def native_output_to_log(enabled: bool = True) -> Iterator[Optional[str]]:
    """Send file descriptor 2 (C and C++ libraries' stderr) to a log file while the context is open;
    Python's ``sys.stderr`` keeps writing to the terminal. Yields the log's path (None when off)."""
    if not enabled:
        yield None
        return
    sys.stderr.flush()
    fd, path = tempfile.mkstemp(prefix="affectflow-native-", suffix=".log")
    saved = os.dup(2)
    python_stderr = sys.stderr
    # Python's stderr moves to a copy of the terminal only where it writes to descriptor 2 itself
    # (not where a caller, such as a test harness, has replaced it).
    terminal = (os.fdopen(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                          errors="backslashreplace") if _writes_to_fd2(python_stderr) else None)
    os.dup2(fd, 2)
    os.close(fd)
    if terminal is not None:
        sys.stderr = terminal
    try:
        yield path
    finally:
        if terminal is not None:
            terminal.flush()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        if terminal is not None:
            terminal.close()


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def keep_log(path: Optional[str]) -> bool:
    """Whether a native log holds anything worth pointing at."""
    return bool(path) and os.path.exists(path) and os.path.getsize(path) > 0


def discard_log(path: Optional[str]) -> None:
    """Delete a native log (after a run that could complete, or an empty one)."""
    if path:
        with contextlib.suppress(OSError):
            os.remove(path)
