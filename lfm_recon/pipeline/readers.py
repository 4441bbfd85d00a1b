"""Reading the volume files of :func:`~lfm_recon.reconstruct_files`, every
kind: HDF5, one ImageJ hyperstack TIFF, a folder of per-frame TIFFs, and
OME-Zarr. :func:`open_volumes` opens lazily (for viewers), :func:`read_volumes`
loads into memory and refuses an unfinished output.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LFMError
from .writers import FORMAT, FORMAT_VERSION, output_kind

_LABEL = re.compile(r"^z = (-?[0-9.eE+-]+) µm$")


@dataclass
class VolumeFile:
    """An opened volume output.

    Attributes:
        path, kind: the output and its kind ("h5", "tif", "folder", "zarr").
        levels: array-likes (T, D, Yv, Xv) float32 photons per voxel (or
            (D, Yv, Xv) for one volume), full resolution first; more than one
            for an OME-Zarr pyramid (each halving Y and X).
        element_size_um: (z, y, x) voxel size of the first level, µm.
        depths_um: (D,) µm, z > 0 farther from the objective.
        provenance: the run description, when the output carries one.
        qc: per-frame QC arrays (residual, max, mean, flagged, …), when present.
        complete: False while a run is writing it (or was stopped).
    """

    path: Path
    kind: str
    levels: list
    element_size_um: tuple[float, float, float]
    depths_um: np.ndarray
    provenance: dict | None = None
    qc: dict | None = None
    complete: bool = True
    _close: list = field(default_factory=list, repr=False)

    @property
    def data(self):
        return self.levels[0]

    def close(self) -> None:
        for fn in self._close:
            fn()
        self._close.clear()


def is_volume_output(path: str | Path) -> bool:
    """Whether ``path`` is a volume output of this package (by content)."""
    path = Path(path)
    try:
        kind = output_kind(path)
    except LFMError:
        return False
    try:
        if kind == "h5":
            from .._h5 import file_format

            return file_format(path) == FORMAT
        if kind == "zarr":
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
            return attrs.get("lfm_recon", {}).get("format") == FORMAT
        if kind == "folder":
            if not path.is_dir():
                return False
            own = (_read_json(path / "provenance.json") or {}).get("output_kind") == "folder"
            first = next(iter(sorted(path.glob("frame_*.tif"))), None)
            return own or (first is not None and _tiff_depths(first) is not None)
        return path.is_file() and _tiff_depths(path) is not None
    except (OSError, ValueError, AttributeError):
        return False


def open_volumes(path: str | Path) -> VolumeFile:
    """Open a volume output lazily (see :class:`VolumeFile`); close it when done."""
    path = Path(path)
    if not path.exists():
        raise LFMError(f"volume output {path} does not exist")
    kind = output_kind(path)
    return {"h5": _open_h5, "tif": _open_tif, "folder": _open_folder, "zarr": _open_zarr}[kind](
        path
    )


def read_volumes(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a volume output of :func:`reconstruct_files` (any kind) into
    memory: the volumes (T, D, Yv, Xv) float32 photons per voxel, and a dict
    with ``provenance``, ``element_size_um`` (z, y, x) µm, ``depths_um`` and
    the ``qc`` arrays. An unfinished output is an error."""
    f = open_volumes(path)
    try:
        if not f.complete:
            raise LFMError(
                f"{f.path} is unfinished (a run is writing it, or was stopped): run the same"
                " command again to finish it"
            )
        volumes = np.asarray(f.data[...], dtype=np.float32)
        info = {
            "provenance": f.provenance,
            "element_size_um": f.element_size_um,
            "depths_um": f.depths_um,
            "qc": f.qc,
        }
    finally:
        f.close()
    return volumes, info


def _open_h5(path: Path) -> VolumeFile:
    import h5py

    from .._h5 import open_checked

    with open_checked(path, FORMAT, FORMAT_VERSION, "volume", "lfm-recon reconstruct") as f:
        d = f["volumes"]
        info = {
            "element_size_um": tuple(float(v) for v in d.attrs["element_size_um"]),
            "depths_um": np.asarray(d.attrs["depths_um"], dtype=float),
            "provenance": json.loads(f.attrs["provenance"]),
            "qc": {k: f["qc"][k][...] for k in f["qc"]},
        }
    done = info["qc"].pop("done", None)  # version 1 files were complete when written
    complete = True if done is None else bool(np.all(done))
    h = h5py.File(path, "r")
    return VolumeFile(path, "h5", [h["volumes"]], complete=complete, _close=[h.close], **info)


def _open_tif(path: Path) -> VolumeFile:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.imagej_metadata or {}
            x_res = tif.pages[0].tags["XResolution"].value
    except Exception as exc:  # tifffile raises several types for bad files
        raise LFMError(f"cannot read {path} as a TIFF volume ({exc})") from None
    try:
        data = tifffile.memmap(path, mode="r")
    except ValueError:  # not memory-mappable (compressed or not contiguous)
        data = tifffile.imread(path)
    base = path.with_suffix("")
    provenance = _read_json(base.with_name(base.name + ".provenance.json"))
    qc = _read_qc_csv(base.with_name(base.name + ".qc.csv"))
    lateral = x_res[1] / x_res[0]
    depths = _depths(_tiff_depths(path), provenance, data.shape[-3])
    partial = path.with_name(path.name + ".partial")
    return VolumeFile(
        path,
        "tif",
        [data],
        (float(meta.get("spacing", 1.0)), lateral, lateral),
        depths,
        provenance,
        qc,
        complete=not partial.exists(),
    )


def _open_folder(path: Path) -> VolumeFile:
    import tifffile

    frames = sorted(path.glob("frame_*.tif"))
    if not frames:
        raise LFMError(f"{path} holds no frame_*.tif volumes")
    provenance = _read_json(path / "provenance.json")
    qc = _read_qc_csv(path / "qc.csv")
    with tifffile.TiffFile(frames[0]) as tif:
        meta = tif.imagej_metadata or {}
        x_res = tif.pages[0].tags["XResolution"].value
        shape = tif.series[0].shape
    lateral = x_res[1] / x_res[0]
    total = (provenance or {}).get("frames", len(frames))
    data = _FolderStack(path, total, tuple(shape))
    depths = _depths(_tiff_depths(frames[0]), provenance, shape[0])
    complete = provenance is not None and not path.with_name(path.name + ".partial").exists()
    return VolumeFile(
        path,
        "folder",
        [data],
        (float(meta.get("spacing", 1.0)), lateral, lateral),
        depths,
        provenance,
        qc,
        complete=complete,
    )


class _FolderStack:
    """A folder of frame_NNNNNN.tif (D, Yv, Xv) as one lazy (T, D, Yv, Xv)
    array; frames not written yet read as zeros."""

    def __init__(self, path: Path, frames: int, shape: tuple[int, ...]) -> None:
        self.path, self.shape, self.dtype = path, (frames, *shape), np.dtype(np.float32)
        self.ndim = len(self.shape)

    def _frame(self, t: int) -> np.ndarray:
        import tifffile

        p = self.path / f"frame_{t:06d}.tif"
        return tifffile.imread(p) if p.exists() else np.zeros(self.shape[1:], np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None), *key)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self._frame(int(first) % self.shape[0])[rest]
        ts = range(self.shape[0])[first]
        return (
            np.stack([self._frame(t)[rest] for t in ts])
            if len(ts)
            else np.zeros((0, *np.zeros(self.shape[1:])[rest].shape), np.float32)
        )

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype)


def _open_zarr(path: Path) -> VolumeFile:
    try:
        import zarr
    except ImportError:
        raise LFMError(
            "reading OME-Zarr needs the zarr package: pip install 'lfm_recon[zarr]'"
        ) from None
    try:
        attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        own = attrs["lfm_recon"]
        multiscale = attrs["multiscales"][0]
        levels = [zarr.open_array(str(path / d["path"]), mode="r") for d in multiscale["datasets"]]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise LFMError(f"{path} is not an lfm_recon OME-Zarr volume output ({exc})") from None
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    qc = own.get("qc")
    if qc is not None:
        qc = {k: np.asarray(v) for k, v in qc.items()}
    return VolumeFile(
        path,
        "zarr",
        levels,
        tuple(float(v) for v in scale[1:]),
        np.asarray(own["depths_um"], dtype=float),
        own.get("provenance"),
        qc,
        complete=bool(own.get("complete")),
    )


def _tiff_depths(path: Path) -> list[float] | None:
    """Depths from the slice labels "z = … µm" this package writes, or None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            labels = (tif.imagej_metadata or {}).get("Labels")
            series = tif.series[0]
            depth_count = series.shape[-3] if len(series.shape) >= 3 else 1
    except Exception:  # tifffile raises several types for bad files
        return None
    if not labels:
        return None
    values = []
    for label in labels[:depth_count]:
        m = _LABEL.match(str(label))
        if m is None:
            return None
        values.append(float(m.group(1)))
    return values


def _depths(from_labels, provenance, count: int) -> np.ndarray:
    if provenance and "depths_um" in provenance:
        return np.asarray(provenance["depths_um"], dtype=float)
    if from_labels is not None and len(from_labels) == count:
        return np.asarray(from_labels, dtype=float)
    return np.arange(count, dtype=float)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_qc_csv(path: Path) -> dict | None:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return None
    return {
        "residual": np.array([float(r["residual"]) for r in rows]),
        "max": np.array([float(r["max"]) for r in rows]),
        "mean": np.array([float(r["mean"]) for r in rows]),
        "flagged": np.array([r["flagged"] == "1" for r in rows]),
        "source": np.array([r["source"] for r in rows]),
    }
