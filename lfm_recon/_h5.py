"""Shared HDF5 plumbing for the package's files: atomic writes, and opening
with checks of existence, readability, format name and version."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ._durable import replacing
from .errors import LFMError


def file_format(path: Path) -> str | None:
    """The ``format`` attribute of an HDF5 file ("" if it has none), or None
    when ``path`` is not an existing, readable HDF5 file. Lets callers tell
    the package's files apart by content rather than by suffix."""
    path = Path(path)
    try:
        if not path.is_file() or not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        return None
    return fmt if isinstance(fmt, str) else ""


@contextmanager
def atomic_write(path: Path, fmt: str, version: int) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name, then rename it onto
    ``path`` durably (:func:`lfm_recon._durable.replacing`): an interrupted
    write or a power loss never leaves a half file there."""
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = fmt
        f.attrs["format_version"] = version
        yield f


@contextmanager
def open_checked(path: Path, fmt: str, version: int, what: str, maker: str):
    """Open ``path`` read-only after checking it is a ``fmt`` file of at
    most ``version``; errors name the file and ``maker`` (how to make one).
    Missing datasets or attributes inside the block become "damaged" errors."""
    if not path.is_file():
        raise LFMError(f"{what} file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise LFMError(f"{path} is not a readable HDF5 file ({exc})") from exc
    with f:
        if f.attrs.get("format") != fmt:
            raise LFMError(
                f"{path} is an HDF5 file but not a {what} (no format '{fmt}'); make one"
                f" with `{maker}`"
            )
        found = f.attrs.get("format_version")
        if not isinstance(found, (int, np.integer)) or found < 1:
            raise LFMError(f"{path} is a damaged {what} file (format_version {found!r})")
        if found > version:
            raise LFMError(
                f"{path} has {what} format {found}; this lfm_recon reads up to {version}:"
                " upgrade lfm_recon"
            )
        try:
            yield f
        except LFMError:
            raise
        except (KeyError, OSError, ValueError) as exc:
            raise LFMError(f"{path} is a damaged {what} file ({exc})") from exc
