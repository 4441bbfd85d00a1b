"""Rectification: a raw frame resampled to the operator's layout.

Notation (raw frame, lenslet coordinates and grid as in :mod:`.grid`):
    rectified      (ny·nnum, nx·nnum) px; rectified pixel (r, c) samples
                   lenslet coordinate (i0 + (r+½)/nnum − ½, j0 + (c+½)/nnum − ½),
                   (i0, j0) the crop's first lenslet: each lenslet's nnum × nnum
                   block is centred on its lenslet centre (DESIGN.md: lenslet
                   (0, 0) at the top left, the grid axis-aligned).
    crop           (i0, j0) first lenslet and (ny, nx) lenslets kept, whole
                   cells inside the raw frame (:func:`whole_lenslets`).
    scale          |a × b| / nnum²: raw px² per rectified pixel.

Rectification (:func:`rectify`) interpolates linearly (order 1): it keeps
intensities non-negative and does not ring at the sharp edges of the lenslet
images (cubic splines overshoot there, giving negative values that a Poisson
solver cannot take). It multiplies by the rectified pixel's area in raw pixels
(|a × b| / nnum²) so the rectified image keeps the raw counts (flux per
lenslet preserved): Richardson–Lucy and other Poisson-likelihood solvers
assume photon counts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import LFMError
from .grid import LensletGrid, _cell_corners_inside

INTERPOLATION_ORDER = 1  # see the module doc: non-negative, no ringing


def whole_lenslets(grid: LensletGrid, shape: tuple[int, int]) -> tuple[tuple, tuple]:
    """The largest axis-aligned block of lenslets whose cells all lie inside
    a (Y, X) frame: ((i0, j0) first lenslet, (ny, nx) lenslet counts)."""
    i, j, valid = _valid_box(grid, shape)
    best, best_area = None, 0
    heights = np.zeros(valid.shape[1], dtype=int)
    for row in range(valid.shape[0]):  # largest rectangle under a histogram, per row
        heights = np.where(valid[row], heights + 1, 0)
        stack: list[int] = []
        for col in range(len(heights) + 1):
            h = heights[col] if col < len(heights) else 0
            while stack and heights[stack[-1]] >= h:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = heights[top] * (col - left)
                if area > best_area:
                    best_area = area
                    best = (row - heights[top] + 1, left, int(heights[top]), col - left)
            stack.append(col)
    if best is None:
        raise LFMError(f"no whole lenslet fits inside the {shape[0]}×{shape[1]} px frame")
    r, c, h, w = best
    return (int(i[r]), int(j[c])), (h, w)


def _valid_box(grid, shape):
    """Lenslet index ranges covering the frame and which cells are whole."""
    ys, xs = np.array([0, 0, shape[0] - 1, shape[0] - 1]), np.array([0, shape[1] - 1] * 2)
    fi, fj = grid.raw_to_lenslet(ys, xs)
    i = np.arange(math.floor(fi.min()), math.ceil(fi.max()) + 1)
    j = np.arange(math.floor(fj.min()), math.ceil(fj.max()) + 1)
    valid = _cell_corners_inside(grid, i[:, None], j[None, :], shape, margin=-0.5)
    return i, j, valid


def _centred_block(grid, shape, lenslets) -> tuple[tuple, tuple]:
    """(i0, j0) of an (ny, nx) block centred on the frame; error if it does not fit."""
    try:
        ny, nx = (int(v) for v in lenslets)
    except (TypeError, ValueError):
        raise LFMError(f"lenslets must be (ny, nx) integers, got {lenslets!r}") from None
    if ny < 1 or nx < 1 or (ny, nx) != tuple(lenslets):
        raise LFMError(f"lenslets must be (ny, nx) positive integers, got {lenslets!r}")
    ci, cj = grid.raw_to_lenslet((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    i0, j0 = round(float(ci) - (ny - 1) / 2), round(float(cj) - (nx - 1) / 2)
    i, j = np.arange(i0, i0 + ny)[:, None], np.arange(j0, j0 + nx)[None, :]
    if not _cell_corners_inside(grid, i, j, shape, margin=-0.5).all():
        _, most = whole_lenslets(grid, shape)
        raise LFMError(
            f"{ny}×{nx} lenslets centred on the {shape[0]}×{shape[1]} px frame do not all lie"
            f" inside it; the largest whole block is {most[0]}×{most[1]} lenslets: ask for"
            " fewer (or leave lenslets unset for the largest)"
        )
    return (i0, j0), (ny, nx)


def rectify_coordinates(grid: LensletGrid, nnum: int, first: tuple, lenslets: tuple):
    """Raw (y, x) px sampled by each rectified pixel: float64 (2, ny·nnum, nx·nnum)."""
    (i0, j0), (ny, nx) = first, lenslets
    fi = i0 - 0.5 + (np.arange(ny * nnum) + 0.5) / nnum
    fj = j0 - 0.5 + (np.arange(nx * nnum) + 0.5) / nnum
    return np.stack(grid.lenslet_to_raw(fi[:, None], fj[None, :]))


def rectify(
    raw, grid: LensletGrid, nnum: int, first: tuple, lenslets: tuple, order: int = 1
) -> np.ndarray:
    """Resample a (dark- and flat-corrected) raw frame to the operator's layout.

    Args:
        raw: (Y, X) or (T, Y, X) raw frame(s), counts.
        grid: the lenslet grid on the raw frame.
        nnum: rectified pixels per lenslet along each axis.
        first: (i0, j0) grid index of the rectified lenslet (0, 0).
        lenslets: (ny, nx) lenslets to keep.
        order: spline order of the interpolation (1, the default, keeps values
            non-negative; see the module doc).

    Returns:
        float32 (ny·nnum, nx·nnum) (or (T, …)), scaled by the rectified pixel
        area |a × b| / nnum² in raw pixels so counts are preserved.
    """
    coords = rectify_coordinates(grid, nnum, first, lenslets)
    return _resample(np.asarray(raw), coords, grid.cell_area / nnum**2, order)


def _resample(raw: np.ndarray, coords: np.ndarray, scale: float, order: int) -> np.ndarray:
    frames = raw.reshape(-1, *raw.shape[-2:])
    out = np.empty((len(frames), *coords.shape[1:]), dtype=np.float32)
    for t, frame in enumerate(frames):
        # mode="nearest": samples within half a pixel of the frame edge do not fade.
        out[t] = ndimage.map_coordinates(
            np.asarray(frame, dtype=np.float32), coords, order=order, mode="nearest"
        )
    out *= np.float32(scale)
    return out.reshape(*raw.shape[:-2], *coords.shape[1:])
