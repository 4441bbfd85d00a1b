"""Image files: camera frames and light fields in (TIFF, PNG), volumes out (TIFF).

Camera frames come as TIFF (8-, 16-, 32-bit integer or float, one frame or a
multi-page stack) or PNG (8- or 16-bit grey, one frame; the format holds
nothing wider, so 32-bit float frames come as TIFF). PNG is read with Pillow,
a long-maintained library that matplotlib already depends on: it reports the
file's mode (grey, grey + alpha, palette, colour, 1-bit) before any
conversion, so colour and palette files are refused with a clear message
instead of being silently turned into grey. The format is told by the file's
first bytes, not its name.

Volumes are written as ImageJ hyperstacks with their voxel size (lateral
pixels per µm as the resolution, the depth step as ``spacing``, unit µm), so
Fiji and napari open them at the right scale; each slice is labelled with its
depth. Writes are atomic: a temporary file in the same folder is renamed
into place, so a crash never leaves half a file under the final name (and the data is
fsynced before the rename, so neither does a power loss).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from ._durable import durable_replace
from .errors import LFMError

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow modes of grey PNG files: 8-bit, and 16-bit (big-endian in the file;
# older Pillow versions open it as 32-bit "I").
_PNG_GREY = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32}
_PNG_REFUSED = {
    "1": "a 1-bit black-and-white image",
    "LA": "a grey image with an alpha channel",
    "PA": "a palette image with an alpha channel",
    "P": "a palette (indexed colour) image",
    "RGB": "a colour image",
    "RGBA": "a colour image with an alpha channel",
}


def is_png(path: str | Path) -> bool:
    """Whether a file starts with the PNG signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def png_shape(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(Y, X) of a grey PNG camera frame, from its header (not decoded);
    :class:`LFMError` for files that :func:`read_png` refuses."""
    with _open_png(path, what) as image:
        return image.height, image.width


def read_png(path: str | Path, what: str = "image") -> np.ndarray:
    """A grey PNG frame (Y, X) as stored: uint8 or uint16 counts.

    Colour, palette, grey + alpha, 1-bit and animated PNG files are
    :class:`LFMError` naming the file, what it holds and what to save instead.
    """
    with _open_png(path, what) as image:
        try:
            array = np.asarray(image)
        except (OSError, ValueError) as exc:  # truncated or corrupt data
            raise LFMError(f"cannot read {path} as a PNG image ({exc})") from None
    return array.astype(_PNG_GREY[image.mode], copy=False)


class _open_png:
    """Context manager: the opened, checked Pillow image of a grey PNG."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what

    def __enter__(self):
        from PIL import Image, UnidentifiedImageError

        path = self.path
        if not path.is_file():
            raise LFMError(f"{self.what} file {path} does not exist")
        try:
            self.image = Image.open(path, formats=["PNG"])
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise LFMError(f"cannot read {path} as a PNG image ({exc})") from None
        image = self.image
        fix = "save the camera frame as grey, 8 or 16 bits per pixel (PNG or TIFF)"
        if image.mode in _PNG_REFUSED:
            image.close()
            raise LFMError(f"{path} is {_PNG_REFUSED[image.mode]}, not camera counts; {fix}")
        if image.mode not in _PNG_GREY:
            image.close()
            raise LFMError(f"{path} holds PNG mode {image.mode!r}, not grey counts; {fix}")
        if getattr(image, "n_frames", 1) > 1:
            image.close()
            raise LFMError(
                f"{path} is an animated PNG of {image.n_frames} frames; save a time series as a"
                " multi-page TIFF (or one PNG per frame)"
            )
        return image

    def __exit__(self, *exc) -> None:
        self.image.close()


def read_frames(path: str | Path, what: str = "image") -> np.ndarray:
    """Camera frame(s) from a TIFF or PNG file: float32 (Y, X), or (T, Y, X)
    for a stack.

    Leading axes of length 1 are dropped, so a one-page stack (1, Y, X) is
    one frame. Missing, unreadable and colour files (samples last, or a
    palette), arrays of more than three axes and non-numeric pixels are
    :class:`LFMError` naming the file.

    Args:
        path: a TIFF file (the first image series is read) or a grey PNG
            (8 or 16 bits); told apart by content.
        what: what the file should hold, for messages (e.g. "white frame").

    Returns:
        float32 (Y, X) or (T, Y, X), camera counts as stored.
    """
    path = Path(path)
    if not path.is_file():
        raise LFMError(f"{what} file {path} does not exist")
    if is_png(path):
        return read_png(path, what).astype(np.float32)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            # Colour: samples interleaved last (Y, X, S), or palette indices. Planar
            # (S, Y, X) data is read as frames: tifffile and other writers tag a
            # plain 3- or 4-frame stack as planar RGB.
            colour = (
                series.axes.endswith("S")
                or series.keyframe.photometric == tifffile.PHOTOMETRIC.PALETTE
            )
            image = np.asarray(series.asarray())
    except Exception as exc:  # tifffile raises several types for bad files
        raise LFMError(f"cannot read {path} as a TIFF image ({exc})") from None
    if colour:
        raise LFMError(
            f"{path} is a colour (or palette) image {image.shape}; save the camera frame as"
            " grey (one value per pixel)"
        )
    while image.ndim > 2 and image.shape[0] == 1:
        image = image[0]
    if image.ndim not in (2, 3):
        raise LFMError(
            f"{path} holds an array of shape {image.shape}; expected one frame (Y, X) or a"
            " stack of frames (T, Y, X)"
        )
    if image.dtype.kind not in "uif":
        raise LFMError(f"{path} holds {image.dtype} values; expected camera counts")
    return image.astype(np.float32)


def write_volume_tiff(
    path: str | Path,
    volume: np.ndarray,
    voxel_size: tuple[float, float],
    depths=None,
) -> None:
    """Write a volume as an ImageJ hyperstack TIFF (float32).

    Args:
        path: output .tif file (replaced atomically).
        volume: (D, Yv, Xv) or a time series (T, D, Yv, Xv).
        voxel_size: (lateral, axial) µm; axial 0 (one depth) is stored as 1.
        depths: (D,) µm, written as slice labels (e.g. "z = -50.0 µm").
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim not in (3, 4):
        raise LFMError(f"volume must be (D, Yv, Xv) or (T, D, Yv, Xv), got {volume.shape}")
    with _atomic(Path(path)) as tmp:
        tifffile.imwrite(tmp, volume, **imagej_options(volume.shape, voxel_size, depths))


def imagej_options(shape: tuple[int, ...], voxel_size: tuple[float, float], depths=None) -> dict:
    """tifffile keywords for a float32 ImageJ hyperstack of ``shape``
    (D, Yv, Xv) or (T, D, Yv, Xv): voxel size (lateral, axial) µm as the
    resolution and ``spacing``, unit µm, one "z = … µm" label per slice,
    little-endian. Shared by every writer of volume TIFFs."""
    lateral, axial = (float(v) for v in voxel_size)
    axes = "ZYX" if len(shape) == 3 else "TZYX"
    metadata = {"spacing": axial if axial > 0 else 1.0, "unit": "um", "axes": axes}
    if depths is not None:
        labels = [f"z = {float(z):g} µm" for z in depths]
        metadata["Labels"] = labels * (shape[0] if len(shape) == 4 else 1)
    return {
        "imagej": True,
        "resolution": (1 / lateral, 1 / lateral),
        "metadata": metadata,
        "byteorder": "<",
    }


def read_volume_tiff(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a volume written by :func:`write_volume_tiff`: the array and its
    (lateral, axial) voxel size in µm."""
    with tifffile.TiffFile(path) as tif:
        volume = tif.asarray()
        meta = tif.imagej_metadata or {}
        x_res = tif.pages[0].tags["XResolution"].value
    lateral = x_res[1] / x_res[0]
    return volume, (lateral, float(meta.get("spacing", 1.0)))


class _atomic:
    """Context manager giving a temporary path next to ``path``; renamed onto
    ``path`` durably on success (data and folder entry fsynced), removed on
    failure."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        if not self.path.parent.is_dir():
            raise LFMError(f"output folder {self.path.parent} does not exist")
        fd, name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            durable_replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
