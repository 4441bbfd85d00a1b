"""The run folder of an unfinished output, ``OUT.partial/``.

    manifest.json     the run's settings (provenance); a re-run with other
                      settings is refused (or, with --overwrite, starts over)
    layout.json       what the writer needs to check the output's structure
    done/A-B.json     completion markers: frames A…B−1 are in the output, with
                      their QC values and a record (bytes, CRC-32) per frame
    failed            written by a process that failed, so the others stop

A frame counts as done only when its marker exists, and a marker is written
(durably: fsync, rename, fsync of the folder) only after the frame's data
is fsynced. So whatever stops a run (an exception, Ctrl-C, kill -9, a power
loss) leaves markers only for frames that are whole on the disk; on resume
each marker's frames are checked against their records and damaged ones are
recomputed. When every frame is done, the QC table goes into the output
and the folder is removed (renamed away first, so the output is never seen
as unfinished with half a run folder).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import _durable

QC_FIELDS = ("residual", "max", "mean", "empty", "iterations", "blend", "antialiased")
# Per-frame facts that markers written before they existed lack (NaN then).
QC_OPTIONAL = ("iterations", "blend", "antialiased")


@dataclass(frozen=True)
class Marker:
    """Frames start…stop−1 done: their QC values and per-frame records."""

    start: int
    stop: int
    qc: dict  # QC_FIELDS → lists of stop − start values
    records: list  # one dict per frame (see Writer.write)

    @property
    def name(self) -> str:
        return f"{self.start:07d}-{self.stop:07d}.json"

    def to_json(self) -> dict:
        return {"frames": [self.start, self.stop], "qc": self.qc, "records": self.records}

    @classmethod
    def from_json(cls, value: dict) -> Marker:
        start, stop = (int(v) for v in value["frames"])
        n = stop - start
        qc = {
            k: list(value["qc"][k]) if k in value["qc"] or k not in QC_OPTIONAL else [None] * n
            for k in QC_FIELDS
        }
        records = list(value["records"])
        if n < 1 or len(records) != n or any(len(v) != n for v in qc.values()):
            raise ValueError("inconsistent lengths")
        return cls(start, stop, qc, records)

    def subset(self, start: int, stop: int) -> Marker:
        a, b = start - self.start, stop - self.start
        return Marker(start, stop, {k: v[a:b] for k, v in self.qc.items()}, self.records[a:b])


class RunFolder:
    """``OUT.partial/`` of the output ``output`` (see the module doc)."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".partial")
        self.done = self.path / "done"

    def exists(self) -> bool:
        return self.path.is_dir()

    def manifest(self) -> dict | None:
        return _read_json(self.path / "manifest.json")

    def layout(self) -> dict | None:
        return _read_json(self.path / "layout.json")

    def create(self, manifest: dict) -> None:
        """A new run folder with its manifest (durably)."""
        self.path.mkdir()
        self.done.mkdir()
        _durable.fsync_dir(self.path)
        _durable.fsync_dir(self.path.parent)
        self.write_json("manifest.json", manifest)

    def write_json(self, name: str, value: dict) -> None:
        data = json.dumps(value, indent=1, default=float).encode()
        _durable.write_bytes(self.path / name, data)

    # --- completion markers ---
    def write_marker(self, marker: Marker) -> None:
        data = json.dumps(marker.to_json(), default=float).encode()
        _durable.write_bytes(self.done / marker.name, data)

    def remove_marker(self, marker: Marker) -> None:
        (self.done / marker.name).unlink(missing_ok=True)
        _durable.fsync_dir(self.done)

    def markers(self) -> tuple[list[Marker], list[str]]:
        """The readable markers (sorted), and the names of damaged ones
        (which are removed: their frames count as not done)."""
        good, bad = [], []
        if not self.done.is_dir():
            return good, bad
        for path in sorted(self.done.glob("*.json")):
            try:
                marker = Marker.from_json(json.loads(path.read_text(encoding="utf-8")))
                if path.name != marker.name:
                    raise ValueError("name does not match its frames")
                good.append(marker)
            except (OSError, ValueError, KeyError, TypeError):
                bad.append(path.name)
        for name in bad:
            (self.done / name).unlink(missing_ok=True)
        return good, bad

    def has_markers(self) -> bool:
        return self.done.is_dir() and any(self.done.glob("*.json"))

    # --- a failed process tells the others ---
    def signal_failure(self, rank: int, message: str) -> None:
        try:
            (self.path / "failed").write_text(f"process {rank}: {message}", encoding="utf-8")
        except OSError:
            pass  # the collective at the end reports it anyway

    def failure(self) -> str | None:
        try:
            return (self.path / "failed").read_text(encoding="utf-8")
        except OSError:
            return None

    def clear_failure(self) -> None:
        (self.path / "failed").unlink(missing_ok=True)

    def remove(self) -> None:
        """Remove the folder: renamed away first (one atomic step), then deleted."""
        if not self.path.exists():
            return
        trash = self.path.with_name(f".{self.path.name}.removed-{os.getpid()}")
        os.replace(self.path, trash)
        _durable.fsync_dir(self.path.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self) -> None:
        """Remove what killed runs left beside the output: run folders being
        removed, outputs being laid out (call only while holding the lock)."""
        parent = self.path.parent
        for pattern in (f".{self.path.name}.removed-*", f".{self.output.name}.tmp-*"):
            for leftover in parent.glob(pattern):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
