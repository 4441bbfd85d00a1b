"""Output files written in place, frame by frame, by whichever process
computed the frame.

Every kind lays out its whole output first (:meth:`Writer.create`, under a
temporary name, then a durable rename), with every frame's place fixed, so
that frames can then be written by several processes at once without
touching the file's structure:

* ``h5``: HDF5, ``volumes`` float32 (T, D, Yv, Xv) *contiguous* (frame t
  is one extent of D·Yv·Xv values), created last so its data is the end of
  the file, never filled (a sparse file: disk use grows with the frames
  written). Frames go to their byte offset with ``pwrite``; HDF5 metadata is
  never changed after creation, so a kill at any moment cannot corrupt it.
  The QC table and the per-frame ``qc/done`` flags are laid out (zeros) at
  creation and written the same way at the end.
* ``tif``: one ImageJ hyperstack (T, Z, Y, X), laid out by tifffile as a
  memory-mappable file (one header, contiguous data, the other pages'
  entries after it); frames are written at their offsets. The structure is
  deterministic, so a damaged one is repaired by copying it from a fresh
  layout.
* ``folder``: one ImageJ TIFF per frame, each written durably under a
  temporary name and renamed into place.
* ``zarr``: OME-Zarr (NGFF 0.4, Zarr format 2), one uncompressed chunk per
  frame and pyramid level, written through zarr.

:meth:`Writer.write` returns a record per frame (sizes and CRC-32s of what
is on the disk) and returns only once the data is fsynced; the caller then
writes the completion marker (:mod:`.store`). :meth:`Writer.verify` checks a
record against the disk on resume.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _durable
from ..errors import LFMError
from ..io import TIFF_SUFFIXES, imagej_options
from ..recording import H5_SUFFIXES

FORMAT = "lfm_recon.volumes"
FORMAT_VERSION = 2  # 2: contiguous volumes written in place, qc/done
ZARR_SUFFIX = ".zarr"
NGFF_VERSION = "0.4"
QC_KEYS = ("residual", "max", "mean", "empty")
# Per-frame iterations, the network's guard blend and whether the guard
# anti-aliased the frame (1/0; NaN: does not apply); an output laid out
# before they existed resumes without them.
QC_EXTRA = ("iterations", "blend", "antialiased")


def output_kind(path: Path) -> str:
    """ "h5", "tif" (one hyperstack), "zarr" (OME-Zarr) or "folder" (one TIFF
    per frame)."""
    suffix = Path(path).suffix.lower()
    if suffix in H5_SUFFIXES:
        return "h5"
    if suffix in TIFF_SUFFIXES:
        return "tif"
    if suffix == ZARR_SUFFIX:
        return "zarr"
    if suffix:
        raise LFMError(
            f"output {path}: give an .h5 file, a .tif file (one ImageJ hyperstack), an"
            " .ome.zarr folder (OME-Zarr) or a folder name without suffix (one ImageJ TIFF per"
            " frame)"
        )
    return "folder"


@dataclass(frozen=True)
class OutputSpec:
    """What an output holds.

    Attributes:
        frames: T.
        volume_shape: (D, Yv, Xv) voxels.
        voxel_size: (lateral, axial) µm; axial 0 for one depth.
        depths: (D,) µm.
        provenance: JSON-like run description, stored in the output.
        pyramid: OME-Zarr resolution levels (1 = full resolution only).
    """

    frames: int
    volume_shape: tuple[int, int, int]
    voxel_size: tuple[float, float]
    depths: tuple[float, ...]
    provenance: dict
    pyramid: int = 1

    @property
    def frame_bytes(self) -> int:
        return 4 * int(np.prod(self.volume_shape))

    @property
    def element_size_um(self) -> list[float]:
        """(z, y, x) µm (ImageJ/HDF5 convention; z is 1 for one depth)."""
        lateral, axial = self.voxel_size
        return [axial or 1.0, lateral, lateral]

    def level_shape(self, level: int) -> tuple[int, int, int]:
        d, y, x = self.volume_shape
        return d, y >> level, x >> level

    def output_bytes(self) -> int:
        """Bytes of volume data in the output (all pyramid levels)."""
        per = sum(4 * int(np.prod(self.level_shape(k))) for k in range(self.pyramid))
        return per * self.frames


def make_writer(path: Path, spec: OutputSpec) -> Writer:
    kind = output_kind(path)
    return {"h5": H5Writer, "tif": TiffWriter, "folder": FolderWriter, "zarr": ZarrWriter}[kind](
        path, spec
    )


class Writer:
    """One output of one kind (see the module doc)."""

    kind = ""

    def __init__(self, path: Path, spec: OutputSpec) -> None:
        self.path, self.spec = Path(path), spec

    # --- on rank 0 ---
    def create(self, sources: list[str]) -> dict:
        """Lay out the whole output at ``path`` (nothing there yet); returns
        what :meth:`check` needs to know of the layout (kept in the run
        folder)."""
        raise NotImplementedError

    def check(self, layout: dict | None) -> list[str]:
        """On resume: check the output's structure and repair what can be
        repaired; returns notices. Raises :class:`Damaged` when it must be
        laid out again (every frame is then recomputed)."""
        raise NotImplementedError

    def finish(self, qc: dict, sources: list[str]) -> None:
        """Write the QC table and mark the output complete (durably)."""
        raise NotImplementedError

    def remove(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)
        _durable.fsync_dir(self.path.parent)

    # --- on every rank ---
    def open(self) -> None:
        """Prepare for :meth:`write` and :meth:`verify`."""

    def write(self, start: int, volumes: np.ndarray) -> list[dict]:
        """Write frames start… (volumes float32 (n, D, Yv, Xv)); durable on
        return. Returns one record per frame for :meth:`verify`."""
        raise NotImplementedError

    def verify(self, t: int, record: dict) -> str | None:
        """None if frame t on the disk matches its record, else what is wrong."""
        raise NotImplementedError


class Damaged(Exception):
    """The output's structure cannot be repaired; it must be laid out again."""


# --- raw frames at fixed offsets (h5, tif) ------------------------------------------------------
def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class _OffsetWriter(Writer):
    """Frames at ``data_offset + t · frame_bytes`` of one file."""

    data_offset: int | None = None

    def _layout_offset(self) -> int:
        raise NotImplementedError

    def open(self) -> None:
        self.data_offset = self._layout_offset()

    def write(self, start: int, volumes: np.ndarray) -> list[dict]:
        data = np.ascontiguousarray(volumes, dtype="<f4")
        n = self.spec.frame_bytes
        records = []
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(data).cast("B")
            _pwrite(fd, view, self.data_offset + start * n)
            os.fsync(fd)
        finally:
            os.close(fd)
        for k in range(len(data)):
            records.append({"bytes": n, "crc32": _crc(view[k * n : (k + 1) * n])})
        return records

    def verify(self, t: int, record: dict) -> str | None:
        n = self.spec.frame_bytes
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.data_offset + t * n)
                data = fh.read(n)
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if len(data) < n:
            return "truncated"
        if _crc(data) != record.get("crc32"):
            return "checksum mismatch"
        return None

    def _expected_size(self) -> int:
        return self.data_offset + self.spec.frames * self.spec.frame_bytes


class H5Writer(_OffsetWriter):
    kind = "h5"

    def create(self, sources: list[str]) -> None:
        import h5py

        spec, p = self.spec, self.spec.provenance
        t = spec.frames
        with _durable.replacing(self.path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["provenance"] = json.dumps(p, default=float)
                g = f.create_group("qc")
                for key in ("residual", "max", "mean"):
                    g.create_dataset(key, data=np.zeros(t))
                for key in QC_EXTRA:
                    g.create_dataset(key, data=np.full(t, np.nan))
                for key in ("empty", "flagged", "done"):
                    g.create_dataset(key, data=np.zeros(t, dtype=bool))
                g.create_dataset("source", data=np.array(sources, dtype=h5py.string_dtype()))
                # The volumes last, contiguous and never filled: their data is
                # the file's tail and only grows on disk as frames are written.
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_layout(h5py.h5d.CONTIGUOUS)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                space = h5py.h5s.create_simple((t, *spec.volume_shape))
                h5py.h5d.create(f.id, b"volumes", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
                d = f["volumes"]
                d.attrs["axes"] = "TZYX"
                d.attrs["element_size_um"] = spec.element_size_um
                d.attrs["depths_um"] = list(spec.depths)
                d.attrs["unit"] = "photons per voxel"
                f.flush()
                d[0, 0, 0, 0] = 0.0  # allocates the data (after all metadata)
                offset = d.id.get_offset()
        return {"size": offset + t * spec.frame_bytes}

    def _layout_offset(self) -> int:
        import h5py

        try:
            with h5py.File(self.path, "r", locking=False) as f:
                d = f["volumes"]
                offset = d.id.get_offset()
                keys = (*QC_KEYS, "flagged", "done", *(k for k in QC_EXTRA if k in f["qc"]))
                self._qc_offsets = {k: f["qc"][k].id.get_offset() for k in keys}
                shape = d.shape
        except (OSError, KeyError) as exc:
            raise Damaged(f"cannot be opened as HDF5 ({exc})") from None
        if offset is None or shape != (self.spec.frames, *self.spec.volume_shape):
            raise Damaged("its volumes are not laid out as this run's")
        return offset

    def check(self, layout: dict | None) -> list[str]:
        # The data is the file's tail: a truncated file is extended back to
        # its size (HDF5 refuses to open it otherwise) and its lost frames
        # fail their checksums.
        notices = _extend_truncated(self.path, (layout or {}).get("size"))
        self.open()
        return notices

    def finish(self, qc: dict, sources: list[str]) -> None:
        self.open()
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for key in ("residual", "max", "mean", *QC_EXTRA):
                if key not in self._qc_offsets:  # laid out by an older version
                    continue
                data = np.ascontiguousarray(qc[key], dtype="<f8")
                _pwrite(fd, memoryview(data).cast("B"), self._qc_offsets[key])
            for key in ("empty", "flagged"):
                data = np.ascontiguousarray(qc[key], dtype=np.uint8)
                _pwrite(fd, memoryview(data).cast("B"), self._qc_offsets[key])
            os.fsync(fd)  # the table before the flags that say it is complete
            done = np.ones(self.spec.frames, dtype=np.uint8)
            _pwrite(fd, memoryview(done).cast("B"), self._qc_offsets["done"])
            os.fsync(fd)
        finally:
            os.close(fd)


def _extend_truncated(path: Path, expected: int | None) -> list[str]:
    """A file cut short (its tail being frame data) is extended back to its
    size with a hole; the frames there then fail their checksums."""
    if expected is None:
        return []
    size = path.stat().st_size
    if size >= expected:
        return []
    os.truncate(path, expected)
    _durable.fsync_file(path)
    return [f"{path} was truncated ({size} of {expected} bytes): the frames it lost are recomputed"]


class TiffWriter(_OffsetWriter):
    kind = "tif"

    def _options(self) -> dict:
        shape = (self.spec.frames, *self.spec.volume_shape)
        return imagej_options(shape, self.spec.voxel_size, self.spec.depths)

    def _layout(self, target: Path) -> int:
        """Lay out the hyperstack at ``target``; returns its data offset."""
        import tifffile

        shape = (self.spec.frames, *self.spec.volume_shape)
        with warnings.catch_warnings():
            # Over 4 GB tifffile keeps one page entry (ImageJ's contiguous
            # variant, read by Fiji and tifffile) and says so: expected here.
            warnings.filterwarnings("ignore", message=".*truncating ImageJ file")
            m = tifffile.memmap(target, shape=shape, dtype="float32", **self._options())
        offset = int(m.offset)
        del m
        return offset

    def create(self, sources: list[str]) -> dict:
        with _durable.replacing(self.path) as tmp:
            self._layout(tmp)
        return {}

    def _layout_offset(self) -> int:
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                offset, shape = series.dataoffset, series.shape
        except Exception as exc:  # tifffile raises several types for bad files
            raise Damaged(f"cannot be read as TIFF ({exc})") from None
        # ImageJ drops a time axis of length 1: compare sizes and the volume's axes.
        want = (self.spec.frames, *self.spec.volume_shape)
        if offset is None or tuple(shape[-3:]) != want[1:] or np.prod(shape) != np.prod(want):
            raise Damaged("its hyperstack is not laid out as this run's")
        return int(offset)

    def check(self, layout: dict | None) -> list[str]:
        """Compare the structure (everything but frame data) with a fresh
        layout, byte for byte, and copy it over where it differs."""
        fresh = _durable.temporary_name(self.path.with_name(self.path.name + ".layout"))
        try:
            offset = self._layout(fresh)
            end = offset + self.spec.frames * self.spec.frame_bytes
            size = fresh.stat().st_size
            repaired = False
            with open(fresh, "rb") as src, open(self.path, "r+b") as dst:
                for a, b in ((0, offset), (end, size)):
                    src.seek(a)
                    want = src.read(b - a)
                    dst.seek(a)
                    if dst.read(b - a) != want:
                        dst.seek(a)
                        dst.write(want)
                        repaired = True
                old = os.fstat(dst.fileno()).st_size
                if old != size:
                    dst.truncate(size)
                    repaired = True
                dst.flush()
                os.fsync(dst.fileno())
        finally:
            fresh.unlink(missing_ok=True)
        self.open()
        if repaired:
            return [
                f"{self.path}'s TIFF structure was damaged (was the file truncated?): repaired;"
                " the frames it lost are recomputed"
            ]
        return []

    def finish(self, qc: dict, sources: list[str]) -> None:
        base = self.path.with_suffix("")
        write_qc_csv(base.with_name(base.name + ".qc.csv"), qc, sources)
        write_json(base.with_name(base.name + ".provenance.json"), self.spec.provenance)


class FolderWriter(Writer):
    kind = "folder"

    def frame_path(self, t: int) -> Path:
        return self.path / f"frame_{t:06d}.tif"

    def create(self, sources: list[str]) -> dict:
        self.path.mkdir()
        _durable.fsync_dir(self.path.parent)
        return {}

    def check(self, layout: dict | None) -> list[str]:
        if not self.path.is_dir():
            raise Damaged("is not a folder")
        return []

    def write(self, start: int, volumes: np.ndarray) -> list[dict]:
        import tifffile

        options = imagej_options(self.spec.volume_shape, self.spec.voxel_size, self.spec.depths)
        records = []
        for k, volume in enumerate(volumes):
            buf = io.BytesIO()
            tifffile.imwrite(buf, np.asarray(volume, dtype=np.float32), **options)
            data = buf.getvalue()
            _durable.write_bytes(self.frame_path(start + k), data)
            records.append({"bytes": len(data), "crc32": _crc(data)})
        return records

    def verify(self, t: int, record: dict) -> str | None:
        path = self.frame_path(t)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if len(data) != record.get("bytes"):
            return "truncated" if len(data) < record.get("bytes", 0) else "wrong size"
        if _crc(data) != record.get("crc32"):
            return "checksum mismatch"
        return None

    def finish(self, qc: dict, sources: list[str]) -> None:
        write_qc_csv(self.path / "qc.csv", qc, sources)
        write_json(self.path / "provenance.json", self.spec.provenance)


class ZarrWriter(Writer):
    """OME-Zarr (NGFF 0.4 on Zarr format 2): arrays "0"… (pyramid levels,
    2× mean-downsampled laterally each), shape (T, D, Yk, Xk), one
    uncompressed chunk (1, D, Yk, Xk) per frame, keys ``k/t/0/0/0``."""

    kind = "zarr"

    def __init__(self, path: Path, spec: OutputSpec) -> None:
        super().__init__(path, spec)
        zarr_package()  # a clear error before anything is written when zarr is absent
        self.arrays: list = []

    def attributes(self, complete: bool = False, qc: dict | None = None, sources=None) -> dict:
        spec = self.spec
        lateral, axial = spec.voxel_size
        datasets = []
        for k in range(spec.pyramid):
            f = 2**k
            shift = (f - 1) / 2 * lateral  # centre of a 2^k block of level-0 voxels
            datasets.append(
                {
                    "path": str(k),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, axial or 1.0, lateral * f, lateral * f]},
                        {"type": "translation", "translation": [0.0, spec.depths[0], shift, shift]},
                    ],
                }
            )
        micrometer = {"type": "space", "unit": "micrometer"}
        multiscale = {
            "version": NGFF_VERSION,
            "name": self.path.name.removesuffix(".zarr").removesuffix(".ome"),
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "z", **micrometer},
                {"name": "y", **micrometer},
                {"name": "x", **micrometer},
            ],
            "datasets": datasets,
        }
        if spec.pyramid > 1:
            multiscale["type"] = "mean"
            multiscale["metadata"] = {"description": "2×2 lateral mean per level; depths kept"}
        own = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": complete,
            "depths_um": list(spec.depths),
            "element_size_um": spec.element_size_um,
            "unit": "photons per voxel",
            "provenance": spec.provenance,
        }
        if qc is not None:
            # JSON has no NaN: a value that does not apply is null
            own["qc"] = {
                k: [None if isinstance(e, float) and e != e else e for e in np.asarray(v).tolist()]
                for k, v in qc.items()
            }
            own["qc"]["source"] = list(sources)
        return {"multiscales": [multiscale], "lfm_recon": own}

    def _layout(self, target: Path) -> None:
        zarr = zarr_package()
        root = zarr.open_group(str(target), mode="w", zarr_format=2)
        for k in range(self.spec.pyramid):
            shape = self.spec.level_shape(k)
            root.create_array(
                str(k),
                shape=(self.spec.frames, *shape),
                chunks=(1, *shape),
                dtype="<f4",
                compressors=None,
                filters=None,
                fill_value=0.0,
                chunk_key_encoding={"name": "v2", "separator": "/"},
            )
        _write_json_file(target / ".zattrs", self.attributes(), durable=False)

    def create(self, sources: list[str]) -> dict:
        tmp = _durable.temporary_name(self.path)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._layout(tmp)
            _durable.durable_replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {}

    def open(self) -> None:
        zarr = zarr_package()
        try:
            self.arrays = [
                zarr.open_array(str(self.path / str(k)), mode="r+")
                for k in range(self.spec.pyramid)
            ]
        except Exception as exc:  # zarr raises several types for missing/bad metadata
            raise Damaged(f"cannot be opened as Zarr ({exc})") from None
        for k, a in enumerate(self.arrays):
            if a.shape != (self.spec.frames, *self.spec.level_shape(k)) or a.chunks[0] != 1:
                raise Damaged(f"its array {k} is not laid out as this run's")

    def check(self, layout: dict | None) -> list[str]:
        # The metadata is small and known: rewrite it when damaged, keep the chunks.
        try:
            self.open()
            attrs = json.loads((self.path / ".zattrs").read_text(encoding="utf-8"))
            if attrs.get("multiscales") != self.attributes()["multiscales"]:
                raise ValueError("other multiscales metadata")
            return []
        except (Damaged, OSError, ValueError):
            if not self.path.is_dir():
                raise Damaged("is not a folder") from None
        tmp = _durable.temporary_name(self.path)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._layout(tmp)
            for src in sorted(tmp.rglob(".z*")):
                dst = self.path / src.relative_to(tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _durable.write_bytes(dst, src.read_bytes())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.open()
        return [f"{self.path}'s Zarr metadata was damaged: rewritten"]

    def _level_data(self, volumes: np.ndarray, k: int) -> np.ndarray:
        if k == 0:
            return volumes
        f = 2**k
        n, d, y, x = volumes.shape
        yk, xk = y // f, x // f
        v = volumes[:, :, : yk * f, : xk * f].reshape(n, d, yk, f, xk, f)
        return v.mean(axis=(3, 5), dtype=np.float64).astype(np.float32)

    def chunk_path(self, k: int, t: int) -> Path:
        return self.path / str(k) / str(t) / "0" / "0" / "0"

    def write(self, start: int, volumes: np.ndarray) -> list[dict]:
        n = len(volumes)
        for t in range(start, start + n):  # leftovers of a write that was killed
            for k in range(self.spec.pyramid):
                stale = self.path / str(k) / str(t)
                if stale.exists():
                    shutil.rmtree(stale)
        for k, a in enumerate(self.arrays):
            a[start : start + n] = self._level_data(volumes, k)
        records = []
        for t in range(start, start + n):
            sizes, crcs = [], []
            for k in range(self.spec.pyramid):
                path = self.chunk_path(k, t)
                data = path.read_bytes()
                _durable.fsync_file(path)
                for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
                    _durable.fsync_dir(folder)
                sizes.append(len(data))
                crcs.append(_crc(data))
            records.append({"bytes": sizes, "crc32": crcs})
        for k in range(self.spec.pyramid):
            _durable.fsync_dir(self.path / str(k))
        return records

    def verify(self, t: int, record: dict) -> str | None:
        for k in range(self.spec.pyramid):
            path = self.chunk_path(k, t)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return f"chunk {path.relative_to(self.path)} is missing"
            except OSError as exc:
                return f"chunk {path.relative_to(self.path)} is unreadable: {exc.strerror}"
            if len(data) != record["bytes"][k]:
                return f"chunk {path.relative_to(self.path)} is truncated"
            if _crc(data) != record["crc32"][k]:
                return f"chunk {path.relative_to(self.path)} fails its checksum"
        return None

    def finish(self, qc: dict, sources: list[str]) -> None:
        _write_json_file(self.path / ".zattrs", self.attributes(True, qc, sources), durable=True)


def zarr_package():
    """The zarr module, or an LFMError saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise LFMError(
            "writing OME-Zarr (.ome.zarr) needs the zarr package: pip install 'lfm_recon[zarr]'"
        ) from None
    return zarr


# --- small side files -------------------------------------------------------------------------
def _write_json_file(path: Path, value: dict, durable: bool = True) -> None:
    text = json.dumps(value, indent=1, default=float).encode()
    if durable:
        _durable.write_bytes(path, text)
    else:
        path.write_bytes(text)


def write_json(path: Path, value: dict) -> None:
    """A JSON file, written durably."""
    _write_json_file(path, value, durable=True)


def write_qc_csv(path: Path, qc: dict, sources: list[str]) -> None:
    """The QC table as CSV (frame, source, residual, max, mean, iterations,
    blend, antialiased, flagged; empty where a value does not apply),
    written durably."""
    import csv

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["frame", "source", "residual", "max", "mean", *QC_EXTRA, "flagged"])
    for i, src in enumerate(sources):
        w.writerow(
            [
                i,
                src,
                f"{qc['residual'][i]:.6g}",
                f"{qc['max'][i]:.6g}",
                f"{qc['mean'][i]:.6g}",
                *("" if np.isnan(qc[k][i]) else f"{qc[k][i]:.6g}" for k in QC_EXTRA),
                int(qc["flagged"][i]),
            ]
        )
    _durable.write_bytes(path, buf.getvalue().encode("utf-8"))
