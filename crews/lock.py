"""The single-flight lock: one crewbatch run per project at a time.

Two overlapping cron runs would race for the same tickets. An OS file lock (flock) on
runs/crewbatch.lock is held for the whole run; the kernel drops it when the process dies, so a
lock left by a killed run is never stale — the next run simply takes it. The file also says who
holds it, for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path


class LockHeld(Exception):
    """Another run holds the lock; the message names it and says what to do."""


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, run "
                   f"{holder.get('run_id') or '(starting)'}, since {holder.get('since')}"
                   if holder else "another process")
            raise LockHeld(f"another crewbatch run is active ({who}); it holds {self.path}. "
                           "Wait for it to finish, or stop it (SIGTERM) and run again") from None
        self._fd = fd
        try:
            self.describe(None)
        except OSError:
            self.__exit__()
            raise
        return self

    def describe(self, run_id: str | None) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(info).encode(), 0)
        except OSError as exc:  # a full disk: say which file could not be written
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # truncating only tidies the holder's description; the unlock matters
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
