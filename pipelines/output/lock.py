"""One run at a time per output folder: an advisory lock file with the holder's run id, pid and host.

``<output>/_lock.json`` is created atomically (``O_CREAT | O_EXCL``). A second run waits up to
``wait_s`` seconds for it, then refuses with a message naming the holder; it never touches the
holder's staging folder. A lock left by a process that no longer exists on this host (a crash,
kill -9) is taken over with a warning. Object stores have no atomic create: on a remote output
the lock is written but only advisory, and one run at a time must be ensured by the scheduler.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
import time
from typing import Optional

from core.errors import OutputLockedError, UsageError

LOCK_FILE = "_lock.json"
_LOG = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Context manager holding ``<output>/_lock.json`` for ``run_id`` (see the module docstring)."""

    def __init__(self, output: str, run_id: str, command: str = "", wait_s: float = 0.0, poll_s: float = 1.0,
                 create: bool = False):
        """``create``: make a missing ``output`` folder (a run's new output); otherwise a missing folder
        is a UsageError, so a command given a mistyped output never creates it."""
        self.output = output
        self.create = create
        self.path = os.path.join(output, LOCK_FILE)
        self.run_id = run_id
        self.command = command
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._held = False

    def _record(self) -> dict:
        return {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}

    def _holder(self) -> Optional[dict]:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}                    # being written, or damaged: treat as held

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self._record(), fh)
        return True

    def _stale(self, holder: dict) -> bool:
        return bool(holder) and holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))

    def acquire(self) -> None:
        if "://" in self.output:
            _LOG.warning("%s is not a local folder: the run lock is advisory only", self.output)
            return
        if self.create:
            os.makedirs(self.output, exist_ok=True)
        elif not os.path.isdir(self.output):
            raise UsageError(f"{self.output} does not exist: give an affectflow output folder")
        deadline = time.monotonic() + self.wait_s
        while not self._try_create():
            holder = self._holder()
            if holder is None:
                continue                 # released between our two calls
            if self._stale(holder):
                _LOG.warning("taking over the lock of run %s (pid %s on %s), whose process is gone",
                             holder.get("run_id"), holder.get("pid"), holder.get("host"))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            if time.monotonic() >= deadline:
                raise OutputLockedError(
                    f"{self.output} is in use by run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('since', '?')}: {holder.get('command', '')}). "
                    "Wait for it to finish (--wait SECONDS), or remove "
                    f"{self.path} if that run is gone.")
            time.sleep(self.poll_s)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        holder = self._holder()
        if holder and holder.get("run_id") == self.run_id:
            try:
                os.remove(self.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        self._held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
