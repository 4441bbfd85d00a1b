"""The constant background of light fields, estimated from the frames.

Notation:
    y        rectified light fields (T, Y, X) = (T, ny·nnum, nx·nnum), counts
             (dark frame subtracted, flat corrected).
    cell     (u, v), 0 ≤ u, v < nnum: a pixel's position inside its lenslet's
             nnum × nnum block (DESIGN.md's layout).
    c        the constant level: what a pixel reads where the sample sends it
             no light (stray light, autofluorescence of the medium, and a camera
             offset the dark frame does not match), counts per rectified pixel.
             It can be negative: the GUV sample's dark frame reads about 107
             counts but its light field's floor about 54, so after dark
             subtraction c ≈ −53.

Estimate (:func:`estimate_background`): each lenslet images the objective's
pupil, a disc inside its block; the corners of the block, outside that disc,
get no light from the sample, in focus or not (out-of-focus fluorescence lights
whole pupil images, not their outsides). So:

    1. the cell image: for each (u, v), the median over the lenslets (of all
       frames) of one checkerboard half;
    2. the dark positions: the ``DARK_SHARE`` of cell positions with the lowest
       median (the corners: found from the data, so no optics are needed and
       a pupil image smaller or larger than its block is handled);
    3. the dim lenslets: the ``DIM_SHARE`` of lenslets (of all frames) whose
       other pixels hold the least light. Even outside the pupil image the
       diffraction tails of the sample's light reach a corner, in proportion
       to the light in its lenslet (on the simulated neurons, 0.2 counts at
       300 photons peak: a 5 % error on a background of 5);
    4. c: the mean of the corner pixels of those lenslets of the other
       checkerboard half (so that step 2 does not select low noise) within ±3σ of their
       median (σ = 1.4826 × the median absolute deviation; repeated), so
       corners lit next to a bright object do not pull it up, while noise
       below and above c weighs equally (a low percentile would sit below c
       by about two noise widths; a median below the mean of skewed Poisson
       counts); then the halves swap roles and the two values are averaged.

Few positions (2 %: the extreme corners) because real pupil images have soft
edges: the GUV sample's white frame still has 9 % of its peak in the corners.

Frames rectified by a calibration are flat-corrected, so a camera offset
is divided by each lenslet's transmission (0.91–1.03 for the GUV sample); c
is then its typical value, one number for the whole frame as the solvers'
model has it.

Use (:func:`split_level`): a solver models y ≈ H x + b with b ≥ 0. A level
c ≥ 0 is that background b (light, Poisson counts); a level c < 0 is a camera
offset, added back to the frames (y − c, whose floor is then 0) with b = 0.
Richardson–Lucy sets negative counts to 0, so leaving a negative floor in
the frames would bias it upwards (and give b < 0, which the model forbids).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import LFMError
from .recording import spread

AUTO = "auto"  # what --background takes to estimate the level
DARK_SHARE = 0.02  # share of the cell positions taken as dark corners (see the module doc)
DIM_SHARE = 0.5  # share of the lenslets (the least lit) whose corners are used
SAMPLE_FRAMES = 8  # frames of a recording the level is estimated from
_CLIP_SIGMAS = 3.0
_ROUNDS = 5


def estimate_background(lightfields, nnum: int) -> float:
    """The constant level c of rectified light fields (module doc), counts.

    Args:
        lightfields: (Y, X), (T, Y, X) or (T, 1, Y, X) rectified light fields,
            Y and X multiples of nnum; all frames are pooled.
        nnum: pixels per lenslet.

    Returns:
        c, counts per pixel; may be negative.

    Raises:
        LFMError: frames not on the lenslet grid, too small, or not finite.
    """
    y = np.asarray(lightfields, dtype=np.float64)
    if y.ndim == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        y = y[None]
    if isinstance(nnum, bool) or not isinstance(nnum, (int, np.integer)) or nnum < 2:
        raise LFMError(f"nnum must be an integer ≥ 2, got {nnum!r}")
    if y.ndim != 3 or y.shape[1] % nnum or y.shape[2] % nnum:
        raise LFMError(
            f"light fields must be (Y, X) or (T, Y, X) rectified frames with Y and X multiples"
            f" of nnum = {nnum}, got shape {y.shape}; rectify raw frames first (--calibration)"
        )
    if not np.isfinite(y).all():
        raise LFMError("light fields contain NaN or infinity; cannot estimate the background")
    t, ny, nx = y.shape[0], y.shape[1] // nnum, y.shape[2] // nnum
    if ny * nx < 4:
        raise LFMError(
            f"frames of {ny}×{nx} lenslets are too small to estimate the background; give"
            " frames of at least 2×2 lenslets, or a number for --background"
        )
    # (cell position, lenslet), lenslets of all frames in two interleaved
    # halves (a checkerboard): positions are ranked on one half and measured
    # on the other, so the ranking does not pick positions whose noise
    # happened to be low; then the other way round, and the two averaged.
    blocks = y.reshape(t, ny, nnum, nx, nnum).transpose(2, 4, 0, 1, 3)
    board = (np.arange(ny)[:, None] + np.arange(nx)[None, :]) % 2 == 0
    halves = [blocks[:, :, :, board], blocks[:, :, :, ~board]]
    halves = [h.reshape(nnum * nnum, -1) for h in halves]
    k = max(1, math.ceil(DARK_SHARE * nnum * nnum))
    estimates = []
    for rank, measure in ((halves[0], halves[1]), (halves[1], halves[0])):
        order = np.argsort(np.median(rank, axis=1), kind="stable")
        corners, inner = measure[order[:k]], measure[order[k:]].mean(axis=0)
        # Lenslets ranked by their other pixels, whose noise is independent of
        # the corners': picking the dimmer ones does not pick low corner noise.
        dim = inner <= np.quantile(inner, DIM_SHARE)
        estimates.append(_clipped_mean(corners[:, dim].ravel()))
    return float(np.mean(estimates))


def _clipped_mean(values: np.ndarray) -> float:
    """Mean of the values within ±3σ of their median (σ = 1.4826 MAD),
    iterated: robust to a minority of bright outliers, and a mean (not a
    median) because Poisson counts at a low level are skewed: their median
    sits below their mean, which is what the model's b stands for."""
    keep = values
    for _ in range(_ROUNDS):
        m = float(np.median(keep))
        sigma = 1.4826 * float(np.median(np.abs(keep - m)))
        if sigma <= 0:
            return m
        new = values[np.abs(values - m) <= _CLIP_SIGMAS * sigma]
        if new.size == keep.size:
            break
        keep = new
    return float(np.mean(keep))


def sample_indices(count: int, n: int = SAMPLE_FRAMES) -> np.ndarray:
    """Up to ``n`` frame indices spread evenly over ``count`` frames (first
    and last included), the frames a recording's level is estimated from."""
    if count < 1:
        raise LFMError("no frames to estimate the background from")
    return spread(count, n)


def frames_background(frames, nnum: int, calibration=None) -> float:
    """c of frames held in memory, (Y, X), (T, Y, X) or (T, 1, Y, X), from
    :func:`sample_indices` of them (rectified with ``calibration`` when
    given); see :func:`estimate_background`."""
    a = np.asarray(frames)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    y = a[sample_indices(len(a))].astype(np.float32)
    if calibration is not None:
        y = calibration.apply(y)
    return estimate_background(y, nnum)


def recording_background(recording, calibration, nnum: int) -> float:
    """c of a :class:`~lfm_recon.recording.Recording`, from
    :func:`sample_indices` of its frames (rectified with ``calibration``
    when given); see :func:`estimate_background`."""
    frames = [recording.read(int(i), int(i) + 1) for i in sample_indices(len(recording))]
    y = np.concatenate(frames)
    if calibration is not None:
        y = calibration.apply(y)
    return estimate_background(y, nnum)


def split_level(level: float) -> tuple[float, float]:
    """(lift, b): a level c ≥ 0 is the solvers' background b; c < 0 is a
    camera offset, lift = −c is added to the frames and b = 0 (module doc)."""
    c = float(level)
    if not math.isfinite(c):
        raise LFMError(f"background level must be a finite number of counts, got {level}")
    return max(-c, 0.0), max(c, 0.0)
