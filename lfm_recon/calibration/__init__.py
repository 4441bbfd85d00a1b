"""Calibration of raw light-field frames: lenslet grid, flat field,
rectification and the calibration file.

A raw camera frame (Y, X) sees a non-integer number of pixels per lenslet on
a slightly rotated, offset grid. This package turns it into the operator's
layout (DESIGN.md: nnum × nnum pixels per lenslet, lenslet (0, 0) at the top
left, the grid axis-aligned), one job per module, each with its notation:

    grid.py            LensletGrid (raw (y, x) px ↔ lenslet (i, j)), its fit
                       to a white frame (fit_lenslet_grid) and the check
                       against the nominal pitch (check_pitch)
    radiometry.py      the per-lenslet flat field (lenslet_transmission)
    rectification.py   the crop (whole_lenslets) and the resampling (rectify)
    file.py            Calibration (dark → rectify → flat, its HDF5 file),
                       check_bank (does a PSF bank fit it) and calibrate

Lengths in µm; raw and rectified coordinates in px. Every public name is
importable from ``lfm_recon.calibration``.
"""

from .file import FORMAT, FORMAT_VERSION, Calibration, calibrate, check_bank
from .grid import (
    PITCH_ERROR,
    PITCH_WARNING,
    CalibrationWarning,
    LensletGrid,
    check_pitch,
    fit_lenslet_grid,
)
from .radiometry import FLAT_FLOOR, lenslet_transmission
from .rectification import INTERPOLATION_ORDER, rectify, rectify_coordinates, whole_lenslets

__all__ = [
    "FLAT_FLOOR",
    "FORMAT",
    "FORMAT_VERSION",
    "INTERPOLATION_ORDER",
    "PITCH_ERROR",
    "PITCH_WARNING",
    "Calibration",
    "CalibrationWarning",
    "LensletGrid",
    "calibrate",
    "check_bank",
    "check_pitch",
    "fit_lenslet_grid",
    "lenslet_transmission",
    "rectify",
    "rectify_coordinates",
    "whole_lenslets",
]
