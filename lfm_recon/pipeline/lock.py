"""One writer per output: an advisory lock beside it, ``OUT.lock``.

The lock is the kernel's (``flock``) on that file, not the file's existence:
the kernel drops it when the process ends in any way (exit, exception,
Ctrl-C, kill -9, a crash), so a killed run never leaves it stuck. The file
itself may stay behind after kill -9; the next run simply takes the lock on
it. A finished or failed run removes it. The file holds the holder's pid,
host and start time, for the refusal message.

Removing the file is safe against a run that opened it just before: after
taking the lock, a run checks that the name still points to the file it
locked, and starts over if not.

On a network file system, Linux maps ``flock`` to the server's byte-range
locks (NFSv4): a lock of a machine that died is released when its lease
expires (typically 90 s). Where locking is not supported at all, the run
goes on with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import LFMError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None


class OutputLock:
    """The lock of one output (file or folder) ``output``."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LFMError` at once naming the run
        that holds it."""
        if fcntl is None:
            return
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LFMError(
                        f"another run is writing {self.output}{holder}; wait for it to finish"
                        " or stop it (a stopped run does not hold the lock), then run again"
                    ) from None
                print(
                    f"lfm-recon: warning: cannot lock {self.path} ({exc.strerror}); make sure"
                    f" no other run writes {self.output}",
                    file=sys.stderr,
                )
                return
            # The name may have been removed (or replaced) by the run that
            # held it between our open and our lock: then lock the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _write_holder(fd)
                return
            os.close(fd)
        raise LFMError(f"cannot take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first, while it
        is held, so no run locks a name about to disappear)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f" (process {info['pid']} on {info['host']}, since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
