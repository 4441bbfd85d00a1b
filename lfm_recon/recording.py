"""A recording: light-field frames from TIFF files, multi-page TIFF time
series, HDF5 datasets and globs, read lazily in index ranges.

Inputs, in the order given (globs sorted by name):

    frame.tif                 one frame (Y, X)
    frame.png                 one frame (Y, X), grey PNG of 8 or 16 bits
    series.tif                a multi-page time series (T, Y, X), one page per frame
    data.h5:NAME              an HDF5 dataset (Y, X), (T, Y, X) or (T, 1, Y, X)
    data.h5                   its only such dataset; for a data set of
                              ``lfm-recon simulate`` its ``lightfields``
    'frames/*.tif'            every file the glob matches

All frames must have one size. Frames are float32 camera counts.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tifffile

from .errors import LFMError
from .io import PNG_SUFFIXES, TIFF_SUFFIXES, png_shape, read_png

H5_SUFFIXES = (".h5", ".hdf5")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class _Source:
    """One input file (or dataset): ``count`` frames of ``shape``."""

    path: Path
    dataset: str | None  # HDF5 dataset name; None for TIFF
    count: int
    shape: tuple[int, int]
    squeeze_channel: bool = False  # (T, 1, Y, X) datasets
    whole: bool = False  # a TIFF stack stored as one page: read it whole
    png: bool = False  # one grey PNG frame

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start…stop−1 of this source, float32 (n, Y, X)."""
        try:
            if self.png:
                a = read_png(self.path, "frame")[None]
            elif self.dataset is None:
                with tifffile.TiffFile(self.path) as tif:
                    if self.count == 1:
                        a = tif.series[0].asarray()
                    elif self.whole:
                        a = tif.series[0].asarray()[start:stop]
                    else:  # one page per frame
                        a = tif.asarray(key=range(start, stop), series=0)
            else:
                with h5py.File(self.path, "r") as f:
                    d = f[self.dataset]
                    a = d[...][None] if d.ndim == 2 else d[start:stop]
                    if self.squeeze_channel:
                        a = a[:, 0]
        except (OSError, KeyError, ValueError, tifffile.TiffFileError) as exc:
            raise LFMError(
                f"cannot read frames {start}…{stop - 1} of {self.label} ({exc})"
            ) from None
        a = np.asarray(a, dtype=np.float32).reshape(stop - start, *self.shape)
        if not np.isfinite(a).all():
            bad = int(np.flatnonzero(~np.isfinite(a).reshape(len(a), -1).all(axis=1))[0])
            raise LFMError(f"frame {start + bad} of {self.label} contains NaN or infinity")
        return a

    @property
    def label(self) -> str:
        return str(self.path) + (f":{self.dataset}" if self.dataset else "")

    def describe(self) -> dict:
        st = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "dataset": self.dataset,
            "frames": self.count,
            "frame_shape": list(self.shape),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }


class Recording:
    """Frames of one or more inputs, as one indexable sequence.

    Args:
        inputs: paths, ``file.h5:dataset`` specs or globs (see the module doc).

    Attributes:
        frame_shape: (Y, X) px of every frame.
    """

    def __init__(self, inputs) -> None:
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        specs = [str(s) for s in inputs]
        if not specs:
            raise LFMError("no input frames given")
        self.sources = [src for spec in specs for src in _open(spec)]
        shapes = {s.shape for s in self.sources}
        if len(shapes) > 1:
            first = self.sources[0]
            odd = next(s for s in self.sources if s.shape != first.shape)
            raise LFMError(
                f"frames differ in size: {first.label} has {first.shape[0]}×{first.shape[1]} px"
                f" but {odd.label} has {odd.shape[0]}×{odd.shape[1]} px; one run takes frames"
                " of one camera region"
            )
        self.frame_shape = self.sources[0].shape
        self._ends = np.cumsum([s.count for s in self.sources])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start…stop−1 (across sources), float32 (n, Y, X)."""
        if not 0 <= start < stop <= len(self):
            raise LFMError(f"frames {start}…{stop - 1} are outside the recording of {len(self)}")
        parts, i = [], start
        while i < stop:
            k = int(np.searchsorted(self._ends, i, side="right"))
            first = int(self._ends[k - 1]) if k else 0
            end = min(stop, int(self._ends[k]))
            parts.append(self.sources[k].read(i - first, end - first))
            i = end
        return np.concatenate(parts)

    def describe(self) -> list[dict]:
        """Each source's path, dataset, frame count, size and modification
        time (for provenance and for recognising a resumed run)."""
        return [s.describe() for s in self.sources]

    def source_of(self, index: int) -> str:
        """The input a frame came from, with its index there ("a.tif[3]")."""
        k = int(np.searchsorted(self._ends, index, side="right"))
        first = int(self._ends[k - 1]) if k else 0
        return f"{self.sources[k].label}[{index - first}]"


def _open(spec: str) -> list[_Source]:
    path_text, dataset = _split_dataset(spec)
    if any(c in path_text for c in _GLOB_CHARS) and not Path(path_text).exists():
        matches = sorted(glob.glob(path_text))
        if not matches:
            raise LFMError(f"no file matches {path_text!r}")
        return [src for m in matches for src in _open(m if dataset is None else f"{m}:{dataset}")]
    path = Path(path_text)
    if not path.is_file():
        raise LFMError(f"input {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        if dataset is not None:
            raise LFMError(f"{spec}: a TIFF file has no datasets; drop ':{dataset}'")
        return [_tiff_source(path)]
    if suffix in H5_SUFFIXES:
        return [_h5_source(path, dataset)]
    if suffix in PNG_SUFFIXES:
        if dataset is not None:
            raise LFMError(f"{spec}: a PNG file has no datasets; drop ':{dataset}'")
        return [_Source(path, None, 1, png_shape(path, "frame"), png=True)]
    raise LFMError(
        f"input {path} is neither TIFF (.tif, .tiff), PNG (.png) nor HDF5 (.h5, .hdf5);"
        " convert it to one"
    )


def _split_dataset(spec: str) -> tuple[str, str | None]:
    """``file.h5:NAME`` → (file.h5, NAME); a Windows drive colon is kept."""
    for suffix in H5_SUFFIXES:
        marker = suffix + ":"
        at = spec.lower().find(marker)
        if at >= 0:
            return spec[: at + len(suffix)], spec[at + len(marker) :] or None
    return spec, None


def _tiff_source(path: Path) -> _Source:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            colour = axes.endswith("S") or (
                series.keyframe.photometric == tifffile.PHOTOMETRIC.PALETTE
            )
            dtype = series.dtype
            pages = len(series.pages) if hasattr(series, "pages") else 1
    except Exception as exc:  # tifffile raises several types for bad files
        raise LFMError(f"cannot read {path} as a TIFF image ({exc})") from None
    if colour:
        raise LFMError(f"{path} is a colour image {shape}; save camera frames as grey")
    if np.dtype(dtype).kind not in "uif":
        raise LFMError(f"{path} holds {dtype} values; expected camera counts")
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return _Source(path, None, 1, shape)
    if len(shape) == 3 and pages in (1, shape[0]):
        # One page per frame; or a small stack that a writer tagged as planar
        # samples (tifffile does so for 3 or 4 frames), read whole.
        return _Source(path, None, shape[0], shape[1:], whole=pages == 1)
    raise LFMError(
        f"{path} holds an array of shape {shape} (axes {axes}); expected one frame (Y, X) or"
        " a time series of frames (T, Y, X), one page per frame"
    )


def _h5_source(path: Path, dataset: str | None) -> _Source:
    try:
        with h5py.File(path, "r") as f:
            if dataset is None:
                dataset = _default_dataset(f, path)
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise LFMError(f"{path} has no dataset {dataset!r}")
            d = f[dataset]
            shape, kind = d.shape, d.dtype.kind
    except OSError as exc:
        raise LFMError(f"cannot read {path} as an HDF5 file ({exc})") from None
    if kind not in "uif":
        raise LFMError(f"{path}:{dataset} holds {kind!r} values; expected camera counts")
    if len(shape) == 2:
        return _Source(path, dataset, 1, tuple(shape))
    if len(shape) == 3:
        return _Source(path, dataset, shape[0], tuple(shape[1:]))
    if len(shape) == 4 and shape[1] == 1:
        return _Source(path, dataset, shape[0], tuple(shape[2:]), squeeze_channel=True)
    raise LFMError(
        f"{path}:{dataset} has shape {shape}; expected (Y, X), (T, Y, X) or (T, 1, Y, X) frames"
    )


def _default_dataset(f: h5py.File, path: Path) -> str:
    if f.attrs.get("format") == "lfm_recon.dataset":
        return "lightfields"
    names: list[str] = []
    f.visititems(
        lambda name, obj: (
            names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3, 4) else None
        )
    )
    if len(names) != 1:
        found = ", ".join(names[:8]) or "none"
        raise LFMError(
            f"{path} holds {len(names)} image datasets ({found}); name one as {path}:NAME"
        )
    return names[0]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (model and calibration provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def spread(count: int, n: int) -> np.ndarray:
    """Up to ``n`` indices spread evenly over ``count`` frames (first and last
    included): the frames a whole recording is judged or adapted on."""
    return np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(int))
