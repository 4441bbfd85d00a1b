"""Checks of the frames handed to the calibration (white, dark, raw)."""

from __future__ import annotations

import numpy as np

from ..errors import LFMError


def _frame(array, what: str) -> np.ndarray:
    """A (Y, X) float64 frame; a (T, Y, X) stack is averaged over T."""
    a = np.asarray(array)
    if a.dtype.kind not in "uif":
        raise LFMError(f"{what} must be a numeric image, got dtype {a.dtype}")
    if a.ndim == 3:
        a = a.mean(axis=0)
    if a.ndim != 2:
        raise LFMError(f"{what} must be (Y, X) or a (T, Y, X) stack, got shape {a.shape}")
    a = a.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise LFMError(
            f"{what} has {bad} NaN or infinite pixel(s); pass the camera's raw frame"
            " (replace dead pixels by a neighbour's value first)"
        )
    return a


def _same_shape(shape: tuple[int, ...], expected: tuple[int, ...], what: str, ref: str) -> None:
    if tuple(shape) != tuple(expected):
        raise LFMError(
            f"{what} is {shape[0]}×{shape[1]} px but {ref} is {expected[0]}×{expected[1]} px;"
            " use frames from the same camera region of interest and binning"
        )


def _dark_subtracted(white, dark) -> np.ndarray:
    img = _frame(white, "white frame")
    if dark is not None:
        d = _frame(dark, "dark frame")
        _same_shape(d.shape, img.shape, "the dark frame", "the white frame")
        img = img - d
    return img
