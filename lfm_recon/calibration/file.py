"""The calibration: grid, crop, dark frame and flat field in one object and
one HDF5 file; :func:`calibrate` builds it from a white frame.

Notation (see :mod:`.grid`, :mod:`.rectification`, :mod:`.radiometry`):
    raw_shape      (Y, X) px of the raw frames the calibration applies to.
    dark           float32 (Y, X) counts, subtracted in raw pixels first.
    flat           float32 (ny, nx) lenslet transmission t(i, j), dimensionless.
    microscope     the optics of the *rectified* image: pixel_size =
                   mla_pitch / nnum exactly, µm (what the PSF bank needs).

A raw frame r becomes the light field
    y = rectify(r − dark) / t   (block by block),
in counts per rectified pixel (:meth:`Calibration.apply`).

File (HDF5, format ``lfm_recon.calibration`` version 1): attributes ``grid``
and ``microscope`` (JSON), ``raw_shape``, ``first_lenslet``, ``lenslets``,
``lfm_recon_version``; datasets ``dark`` (float32 (Y, X)) and ``flat``
(float32 (ny, nx)) when present.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import __version__
from .._h5 import atomic_write, open_checked
from ..errors import LFMError
from ..microscope import Microscope
from ._input import _frame, _same_shape
from .grid import LensletGrid, _cell_corners_inside, check_pitch, fit_lenslet_grid
from .radiometry import lenslet_transmission
from .rectification import (
    INTERPOLATION_ORDER,
    _centred_block,
    _resample,
    rectify_coordinates,
    whole_lenslets,
)

FORMAT = "lfm_recon.calibration"
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Calibration:
    """Everything that turns raw camera frames into rectified light fields.

    Attributes:
        grid: the lenslet grid on the raw frame.
        microscope: the optics of the *rectified* image (pixel_size is
            mla_pitch / nnum exactly, as the PSF bank needs).
        raw_shape: (Y, X) of the raw frames it applies to, px.
        first_lenslet: (i0, j0) grid index of rectified lenslet (0, 0).
        lenslets: (ny, nx) lenslets in the rectified image.
        dark: float32 (Y, X) dark frame subtracted first, counts; or None.
        flat: float32 (ny, nx) relative transmission of each rectified
            lenslet, which rectified frames are divided by (see
            :func:`lenslet_transmission`); or None.
    """

    grid: LensletGrid
    microscope: Microscope
    raw_shape: tuple[int, int]
    first_lenslet: tuple[int, int]
    lenslets: tuple[int, int]
    dark: np.ndarray | None = None
    flat: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.grid, LensletGrid):
            raise LFMError(f"grid must be a LensletGrid, got {type(self.grid).__name__}")
        if not isinstance(self.microscope, Microscope):
            raise LFMError(f"microscope must be a Microscope, got {type(self.microscope).__name__}")
        for name in ("raw_shape", "first_lenslet", "lenslets"):
            value = tuple(int(v) for v in np.ravel(getattr(self, name)))
            if len(value) != 2:
                raise LFMError(f"{name} must be two integers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if min(self.lenslets) < 1 or min(self.raw_shape) < 1:
            raise LFMError(
                f"raw_shape {self.raw_shape} and lenslets {self.lenslets} must be positive"
            )
        for name, shape in (("dark", self.raw_shape), ("flat", self.lenslets)):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value, dtype=np.float32)
            if array.shape != shape:
                raise LFMError(
                    f"the calibration's {name} must have shape {shape}, got {array.shape}"
                )
            if not np.all(np.isfinite(array)):
                raise LFMError(f"the calibration's {name} frame has NaN or infinite values")
            if name == "flat" and array.min() <= 0:
                raise LFMError("the calibration's flat field must be positive")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        i0, j0 = self.first_lenslet
        ny, nx = self.lenslets
        i, j = np.arange(i0, i0 + ny)[:, None], np.arange(j0, j0 + nx)[None, :]
        if not _cell_corners_inside(self.grid, i, j, self.raw_shape, margin=-0.5).all():
            raise LFMError(
                f"lenslets {i0}…{i0 + ny - 1} × {j0}…{j0 + nx - 1} of the grid do not all lie"
                f" inside the {self.raw_shape[0]}×{self.raw_shape[1]} px raw frame"
            )

    @property
    def nnum(self) -> int:
        """Rectified pixels per lenslet (the microscope's and PSF bank's nnum)."""
        return self.microscope.nnum

    @property
    def rectified_shape(self) -> tuple[int, int]:
        """(Y, X) = (ny·nnum, nx·nnum) of the rectified light field, px."""
        return self.lenslets[0] * self.nnum, self.lenslets[1] * self.nnum

    @property
    def raw_pixel_size(self) -> tuple[float, float]:
        """Effective raw pixel (y, x) in the sensor (MLA) plane, µm:
        mla_pitch / fitted pixels per lenslet."""
        pitch = self.microscope.mla_pitch
        return pitch / self.grid.pitch_y, pitch / self.grid.pitch_x

    @cached_property
    def _coordinates(self) -> np.ndarray:
        return rectify_coordinates(self.grid, self.nnum, self.first_lenslet, self.lenslets)

    def apply(self, raw) -> np.ndarray:
        """Dark-subtract, rectify and flat-correct raw frame(s).

        The dark frame is subtracted in raw pixels; after rectification each
        lenslet's block is divided by its transmission (the flat field is per
        lenslet, so this equals dividing before rectifying). Values below zero
        after dark subtraction are kept: clipping would bias the noise mean.

        Args:
            raw: (Y, X) or (T, Y, X) camera frame(s) of ``raw_shape``, counts.

        Returns:
            float32 (ny·nnum, nx·nnum) or (T, ny·nnum, nx·nnum) light field(s)
            in the operator's layout, counts per rectified pixel.
        """
        raw = np.asarray(raw)
        if raw.ndim not in (2, 3) or raw.dtype.kind not in "uif":
            raise LFMError(
                f"raw frames must be numeric (Y, X) or (T, Y, X), got {raw.dtype} {raw.shape}"
            )
        _same_shape(raw.shape[-2:], self.raw_shape, "the raw frame", "the calibration's frame")
        x = raw.astype(np.float32)
        if raw.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise LFMError("the raw frame has NaN or infinite pixels; pass the camera's frame")
        if self.dark is not None:
            x -= self.dark
        out = _resample(
            x, self._coordinates, self.grid.cell_area / self.nnum**2, INTERPOLATION_ORDER
        )
        if self.flat is not None:
            n = self.nnum
            out /= np.repeat(np.repeat(self.flat, n, axis=0), n, axis=1)
        return out

    def summary(self) -> str:
        """Human-readable lines: grid, effective pixel, crop and corrections."""
        py, px = self.raw_pixel_size
        ny, nx = self.lenslets
        return "\n".join(
            [
                self.grid.describe(),
                f"raw pixel   {py:.4f} × {px:.4f} µm effective (mla_pitch"
                f" {self.microscope.mla_pitch:g} µm / fitted pitch)",
                f"raw frame   {self.raw_shape[0]}×{self.raw_shape[1]} px; dark"
                f" {'subtracted' if self.dark is not None else 'none'}, flat field"
                f" {'per lenslet' if self.flat is not None else 'none'}",
                f"rectified   {ny}×{nx} lenslets from grid index {self.first_lenslet},"
                f" nnum {self.nnum}: {self.rectified_shape[0]}×{self.rectified_shape[1]} px"
                f" of {self.microscope.pixel_size:.6g} µm",
            ]
        )

    # --- file -------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write an HDF5 file atomically: attributes grid and microscope (JSON),
        raw_shape, first_lenslet, lenslets; datasets ``dark`` (float32 (Y, X))
        and ``flat`` (float32 (ny, nx)) when present."""
        path = Path(path)
        with atomic_write(path, FORMAT, FORMAT_VERSION) as f:
            f.attrs["grid"] = json.dumps(self.grid.to_dict())
            f.attrs["microscope"] = json.dumps(self.microscope.to_dict())
            f.attrs["raw_shape"] = self.raw_shape
            f.attrs["first_lenslet"] = self.first_lenslet
            f.attrs["lenslets"] = self.lenslets
            f.attrs["lfm_recon_version"] = __version__
            for name in ("dark", "flat"):
                if getattr(self, name) is not None:
                    f.create_dataset(
                        name, data=getattr(self, name), compression="gzip", compression_opts=1
                    )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        with open_checked(path, FORMAT, FORMAT_VERSION, "calibration", "lfm-recon calibrate") as f:
            return cls(
                grid=LensletGrid.from_dict(json.loads(f.attrs["grid"])),
                microscope=Microscope.from_dict(
                    json.loads(f.attrs["microscope"]), source=str(path)
                ),
                raw_shape=tuple(f.attrs["raw_shape"]),
                first_lenslet=tuple(f.attrs["first_lenslet"]),
                lenslets=tuple(f.attrs["lenslets"]),
                dark=f["dark"][...] if "dark" in f else None,
                flat=f["flat"][...] if "flat" in f else None,
            )


# Fields that shape the light-field PSF. tube_lens_focal_length is left out:
# it is informational (the PSF depends on the magnification only).
_OPTICS = (
    "magnification",
    "numerical_aperture",
    "medium_index",
    "wavelength",
    "mla_pitch",
    "mla_focal_length",
    "pixel_size",
    "mla_to_sensor",
)


def check_bank(calibration: Calibration, bank) -> None:
    """Check that a PSF bank fits the light fields a calibration produces.

    The bank must have the calibration's nnum (rectified pixels per lenslet)
    and be computed for the same optics: magnification, NA, medium index,
    wavelength, MLA pitch and focal length, rectified pixel size and
    MLA-to-sensor distance equal within 1e-9 (relative); the informational
    tube lens focal length may differ.

    Args:
        calibration: the :class:`Calibration` the light fields come from.
        bank: a :class:`~lfm_recon.PSFBank` (only its ``nnum`` and
            ``microscope`` are read, so this module needs no PSF import).

    Raises:
        LFMError: naming both values of every field that differs and saying
            how to build a matching bank.
    """
    if not isinstance(calibration, Calibration):
        raise LFMError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    cal, other = calibration.microscope, bank.microscope
    fix = (
        "build the PSF bank from the calibration's optics: `lfm-recon psf CALIBRATION.h5"
        " --depths … -s …` (a calibration file is accepted as the microscope)"
    )
    if calibration.nnum != bank.nnum:
        raise LFMError(
            f"the calibration rectifies to nnum = {calibration.nnum} pixels per lenslet but the"
            f" PSF bank has nnum = {bank.nnum}; {fix}"
        )
    differ = [
        f"{name} {getattr(cal, name):.8g} vs {getattr(other, name):.8g}"
        for name in _OPTICS
        if not math.isclose(getattr(cal, name), getattr(other, name), rel_tol=1e-9)
    ]
    if differ:
        raise LFMError(
            "the calibration's microscope and the PSF bank's differ (calibration vs bank: "
            + ", ".join(differ)
            + f"); {fix}"
        )


def calibrate(
    white,
    dark=None,
    *,
    microscope: Microscope,
    raw_pixel_size: float | None = None,
    nnum: int | None = None,
    lenslets: tuple[int, int] | None = None,
    flat: bool = True,
) -> Calibration:
    """Fit the lenslet grid to a white frame and build a :class:`Calibration`.

    Args:
        white: (Y, X) white (radiometry) frame, counts; a (T, Y, X) stack is
            averaged.
        dark: optional dark frame of the same size (also averaged if a stack).
        microscope: the optics of the rectified image (e.g. a preset); its
            nnum is the PSF bank's.
        raw_pixel_size: optional nominal camera pixel in the sensor (MLA) plane,
            µm (e.g. 6.5). When given, the fitted pitch is checked against
            mla_pitch / raw_pixel_size (see :func:`check_pitch`).
        nnum: rectified pixels per lenslet; default ``microscope.nnum``. Another
            value returns a microscope with pixel_size = mla_pitch / nnum.
        lenslets: (ny, nx) lenslets to keep, centred on the frame; default the
            largest whole-lenslet block inside the frame.
        flat: compute a per-lenslet flat field from the white frame
            (:func:`lenslet_transmission`).

    Returns:
        The :class:`Calibration`; ``calibration.apply(raw)`` rectifies frames.

    Raises:
        LFMError: no visible grid, frames of different sizes, NaN, a fitted
            pitch more than 5 % from the nominal one, a crop that does not fit.
    """
    if not isinstance(microscope, Microscope):
        raise LFMError(f"microscope must be a Microscope, got {type(microscope).__name__}")
    white = _frame(white, "white frame")
    dark = None if dark is None else _frame(dark, "dark frame")
    if dark is not None:
        _same_shape(dark.shape, white.shape, "the dark frame", "the white frame")
    grid = fit_lenslet_grid(white, dark)
    if raw_pixel_size is not None:
        check_pitch(grid, microscope.mla_pitch, raw_pixel_size)
    if nnum is not None:
        if isinstance(nnum, bool) or not isinstance(nnum, (int, np.integer)) or nnum < 1:
            raise LFMError(f"nnum must be a positive integer, got {nnum!r}")
        microscope = dataclasses.replace(microscope, pixel_size=microscope.mla_pitch / int(nnum))
    if lenslets is None:
        first, size = whole_lenslets(grid, white.shape)
    else:
        first, size = _centred_block(grid, white.shape, lenslets)
    calibration = Calibration(
        grid=grid,
        microscope=microscope,
        raw_shape=white.shape,
        first_lenslet=first,
        lenslets=size,
        dark=dark,
    )
    if not flat:
        return calibration
    transmission = lenslet_transmission(calibration.apply(white), calibration.nnum)
    return dataclasses.replace(calibration, flat=transmission)
