"""Durable file replacement: a file published by a rename survives a power loss.

A rename (``os.replace``) is atomic against a killed process, but after a
power loss the new name may point to a file whose data never reached the
disk (a zero-length or truncated file), or the rename itself may be lost.
So every rename that publishes something (a model, a checkpoint, a PSF bank,
a volume frame, a completion marker) goes through :func:`durable_replace`:
fsync the file's data, rename, then fsync the folder that holds the new
name.

Use :func:`replacing` around code that writes a temporary file::

    with replacing(path) as tmp:
        torch.save(state, tmp)          # any writer that takes a path

On platforms or file systems where a folder cannot be opened or fsynced
(Windows, some network mounts) the folder step is skipped: the rename is
still atomic there.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Flush a file's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # folders cannot be opened here (Windows)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EACCES):
            raise
    finally:
        os.close(fd)


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """Rename ``tmp`` onto ``path`` so that after a crash or power loss
    ``path`` is either its old content or all of the new one: fsync the
    data of ``tmp`` (a file, or every file of a folder), rename, fsync the
    parent folder."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir():
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(root) / name)
            fsync_dir(root)
    else:
        fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def temporary_name(path: Path) -> Path:
    """A hidden name next to ``path`` for writing it (same folder, so the
    final rename stays on one file system)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds,
    :func:`durable_replace` it onto ``path``; when it fails, remove it."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably (temporary file, fsync, rename)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
