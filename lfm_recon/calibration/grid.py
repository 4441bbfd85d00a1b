"""The lenslet grid on a raw camera frame, and its fit to a white frame.

A real camera sees a non-integer number of pixels per microlens, and the
microlens array (MLA) sits slightly rotated and offset on it. This module
describes that lattice (:class:`LensletGrid`) and fits it to a white
(radiometry) frame (:func:`fit_lenslet_grid`).

Notation:
    raw frame      (Y, X) camera pixels. Pixel (row, column) has its centre at
                   raw coordinates (y, x) = (row, column), so the frame spans
                   −½ … Y−½ by −½ … X−½; px.
    lenslet        coordinates (i, j), floats; integer (i, j) is the centre of
                   lenslet (i, j). i runs along the grid axis nearest +y (down
                   the rows), j along the one nearest +x.
    grid           (y, x) = origin + i·a + j·b with lattice vectors a
                   (``vector_i``) and b (``vector_j``), px.
    rotation       degrees, positive = counter-clockwise as displayed with row 0
                   at the top (matplotlib ``imshow``): a = p_y (cos θ, sin θ),
                   b = p_x (−sin θ, cos θ) in (y, x) components.
    cell           the parallelogram lenslet (i, j) ± ½ along both axes.
    lengths        µm (mla_pitch, pixel sizes).

Grid fit (:func:`fit_lenslet_grid`):
    1. Fourier first guess: the two shortest non-collinear peaks of the white
       frame's power spectrum are the reciprocal lattice; they give both
       lattice vectors (pitch and rotation) to a few tenths of a percent.
    2. Origin: the frame near its centre folded modulo one lattice cell; the
       centroid of the bright part of that mean cell is a spot centre.
    3. Refinement, iterated: every pixel belongs to its nearest predicted
       lenslet; each spot's centroid is taken over the pixels brighter than
       half-way between its gap level and its peak (on the frame divided by
       its smooth envelope, so vignetting gradients do not pull centroids
       inwards); only spots whose whole cell is inside the frame and that are
       bright enough are used; a linear least-squares fit of
       centre = origin + i·a + j·b follows, outliers (dust) rejected once.
       The quality figure is the RMS distance of the spot centroids from the
       fitted grid.

The fitted pitch can be checked against the nominal optics
(:func:`check_pitch`: mla_pitch / camera pixel).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import LFMError
from ._input import _dark_subtracted

PITCH_WARNING = 0.01  # relative disagreement with the nominal pitch that warns
PITCH_ERROR = 0.05  # ... and that is an error

_MIN_PITCH = 3.0  # px: finer grids cannot be told apart from pixel noise
_MIN_LENSLETS = 4  # lenslets per side for the Fourier guess
_PEAK_SNR = 100.0  # grid peak power over the spectrum's median (noise gives ~20)
_PEAK_SHARE = 0.05  # Fourier peaks weaker than this share of the strongest are ignored
_MIN_SPOTS = 16  # spots needed for the least-squares fit
_BRIGHT = 0.3  # spots below this share of the typical spot contrast are ignored
_FIRST_REACH = 150.0  # px around the frame centre fitted first (≥ 5 lenslets), then 3× wider
_MAX_SKEW = 5.0  # degrees: axes further from perpendicular are not a square/rectangular MLA
_MAX_ITERATIONS = 8
_CONVERGED = 1e-3  # px: largest change of a predicted centre that ends iterations


class CalibrationWarning(UserWarning):
    """The white frame and the nominal optics disagree a little (1–5 %); the
    fitted values are used."""


# --- the grid ----------------------------------------------------------------
@dataclass(frozen=True)
class LensletGrid:
    """A lenslet lattice on the raw frame: (y, x) = origin + i·a + j·b.

    Attributes:
        origin: (y, x) raw px of the centre of lenslet (0, 0) (the fit puts it
            at the lenslet nearest the frame centre).
        vector_i: a = (dy, dx) px from lenslet (i, j) to (i+1, j); mostly +y.
        vector_j: b = (dy, dx) px from lenslet (i, j) to (i, j+1); mostly +x.
        rms_residual: RMS distance (px) of the fitted spot centroids from the
            grid; NaN for a grid that was not fitted.
        n_spots: spots used by the fit (0 if not fitted).
    """

    origin: tuple[float, float]
    vector_i: tuple[float, float]
    vector_j: tuple[float, float]
    rms_residual: float = math.nan
    n_spots: int = 0

    def __post_init__(self) -> None:
        for name in ("origin", "vector_i", "vector_j"):
            value = tuple(float(v) for v in np.ravel(getattr(self, name)))
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise LFMError(
                    f"lenslet grid {name} must be two finite numbers (y, x), got {value}"
                )
            object.__setattr__(self, name, value)
        object.__setattr__(self, "rms_residual", float(self.rms_residual))
        object.__setattr__(self, "n_spots", int(self.n_spots))
        if self.cell_area < 1.0:
            raise LFMError(
                f"lenslet grid vectors {self.vector_i} and {self.vector_j} span a cell of"
                f" {self.cell_area:.3g} px²; a lenslet must cover at least one pixel"
            )

    @classmethod
    def from_pitch(
        cls,
        pitch_y: float,
        pitch_x: float,
        rotation: float = 0.0,
        origin: tuple[float, float] = (0.0, 0.0),
    ) -> LensletGrid:
        """A rectangular grid: pitches in px, rotation in degrees (see module doc)."""
        t = math.radians(rotation)
        return cls(
            origin=origin,
            vector_i=(pitch_y * math.cos(t), pitch_y * math.sin(t)),
            vector_j=(-pitch_x * math.sin(t), pitch_x * math.cos(t)),
        )

    @property
    def pitch_y(self) -> float:
        """|a|: raw pixels per lenslet along the i axis (≈ y)."""
        return math.hypot(*self.vector_i)

    @property
    def pitch_x(self) -> float:
        """|b|: raw pixels per lenslet along the j axis (≈ x)."""
        return math.hypot(*self.vector_j)

    @property
    def rotation(self) -> float:
        """Degrees, counter-clockwise as displayed; mean of both axes' angles."""
        (ay, ax), (by, bx) = self.vector_i, self.vector_j
        return math.degrees(0.5 * (math.atan2(ax, ay) + math.atan2(-by, bx)))

    @property
    def skew(self) -> float:
        """Degrees by which the two axes depart from perpendicular (0 for a
        rectangular grid)."""
        (ay, ax), (by, bx) = self.vector_i, self.vector_j
        return math.degrees(math.atan2(ax, ay) - math.atan2(-by, bx))

    @property
    def cell_area(self) -> float:
        """|a × b|: raw px² per lenslet."""
        (ay, ax), (by, bx) = self.vector_i, self.vector_j
        return abs(ay * bx - ax * by)

    def lenslet_to_raw(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        """Lenslet coordinates (i, j) (floats, any broadcastable shapes) to raw
        (y, x) px."""
        i, j = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)
        (oy, ox), (ay, ax), (by, bx) = self.origin, self.vector_i, self.vector_j
        return oy + i * ay + j * by, ox + i * ax + j * bx

    def raw_to_lenslet(self, y, x) -> tuple[np.ndarray, np.ndarray]:
        """Raw (y, x) px (any broadcastable shapes) to lenslet coordinates (i, j)."""
        dy = np.asarray(y, dtype=np.float64) - self.origin[0]
        dx = np.asarray(x, dtype=np.float64) - self.origin[1]
        (ay, ax), (by, bx) = self.vector_i, self.vector_j
        det = ay * bx - ax * by
        return (bx * dy - by * dx) / det, (ay * dx - ax * dy) / det

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN residual stored as None)."""
        d = dataclasses.asdict(self)
        d["origin"], d["vector_i"], d["vector_j"] = (
            list(self.origin),
            list(self.vector_i),
            list(self.vector_j),
        )
        if math.isnan(self.rms_residual):
            d["rms_residual"] = None
        return d

    @classmethod
    def from_dict(cls, values: dict) -> LensletGrid:
        values = dict(values)
        if values.get("rms_residual") is None:
            values["rms_residual"] = math.nan
        return cls(**values)

    def describe(self) -> str:
        """One line: pitches, rotation, origin and fit quality."""
        text = (
            f"lenslet grid {self.pitch_y:.4f} × {self.pitch_x:.4f} px per lenslet,"
            f" rotation {self.rotation:+.4f}°, lenslet (0, 0) at"
            f" (y, x) = ({self.origin[0]:.3f}, {self.origin[1]:.3f}) px"
        )
        if self.n_spots:
            text += f"; fit RMS {self.rms_residual:.3f} px over {self.n_spots} spots"
        return text


# --- grid fit ----------------------------------------------------------------
def fit_lenslet_grid(white, dark=None) -> LensletGrid:
    """Fit the lenslet grid to a white (radiometry) frame.

    Args:
        white: (Y, X) frame of a uniform fluorescent sample through the MLA
            (or a (T, Y, X) stack, averaged), camera counts.
        dark: optional (Y, X) dark frame (camera bias), subtracted first.

    Returns:
        The fitted :class:`LensletGrid`; lenslet (0, 0) is the one nearest the
        frame centre. Steps: see the module doc.

    Raises:
        LFMError: no visible grid (no clear Fourier peak, too few spots), NaN,
            or frames of different sizes.
    """
    img = _dark_subtracted(white, dark)
    a, b = _fourier_guess(img)
    grid = _recentred(
        LensletGrid(origin=_fold_origin(img, a, b), vector_i=a, vector_j=b), img.shape
    )
    # Divide out the smooth envelope (vignetting) so that its gradient does not
    # pull the thresholded centroids toward the frame centre.
    envelope = _local_mean(img, max(grid.pitch_y, grid.pitch_x))
    flattened = img / np.maximum(envelope, 1e-3 * max(envelope.max(), 1e-30))
    images = (flattened, ndimage.gaussian_filter(flattened, 1.0), ndimage.gaussian_filter(img, 1.0))
    # Start near the centre and widen: the Fourier guess drifts by up to a few
    # pixels at the edges of a large frame, which would bias the first centroids.
    reach = max(_FIRST_REACH, 5 * max(grid.pitch_y, grid.pitch_x))
    for _ in range(_MAX_ITERATIONS):
        centres, index = _spot_centroids(images, grid, reach)
        new = _recentred(_fit_lattice(centres, index), img.shape)
        change = _largest_change(grid, new, img.shape)
        grid = new
        if reach >= max(img.shape) / 2 and change < _CONVERGED:
            break
        reach *= 3
    if abs(grid.skew) > _MAX_SKEW:
        raise LFMError(
            f"the lenslet grid's axes are {90 + grid.skew:.1f}° apart, not 90°: only square"
            " or rectangular microlens arrays are supported (is it a hexagonal array?)"
        )
    return grid


def _local_mean(img: np.ndarray, pitch: float) -> np.ndarray:
    """The frame's smooth envelope: a Gaussian mean of σ = one lenslet, which
    averages the lenslet pattern out (ripple ~e^-20) yet follows vignetting
    closely (a wider one leaves its curvature, biasing the pitch). Normalised by the
    filtered frame support, so the edges are not padded with copies of an
    edge row (that would imprint the pattern's phase there)."""
    sigma = 1.0 * pitch
    support = ndimage.gaussian_filter(np.ones_like(img), sigma, mode="constant")
    return ndimage.gaussian_filter(img, sigma, mode="constant") / support


def _fourier_guess(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lattice vectors (a, b), px, from the two shortest independent peaks of
    the power spectrum (a Hann window keeps leakage from the edges low)."""
    ny, nx = img.shape
    max_pitch = min(ny, nx) / _MIN_LENSLETS
    if max_pitch < _MIN_PITCH:
        raise LFMError(
            f"white frame is only {ny}×{nx} px; it must show at least {_MIN_LENSLETS} lenslets"
            " per side"
        )
    window = np.hanning(ny)[:, None] * np.hanning(nx)[None, :]
    power = np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * window))) ** 2
    ky = np.fft.fftshift(np.fft.fftfreq(ny))[:, None]
    kx = np.fft.fftshift(np.fft.fftfreq(nx))[None, :]
    k = np.hypot(ky, kx)
    band = (k >= 1.0 / max_pitch) & (k <= 1.0 / _MIN_PITCH)
    half = (ky > 0) | ((ky == 0) & (kx > 0))  # one of each ±k pair
    floor = float(np.median(power[band]))
    masked = np.where(band & half, power, 0.0)
    strongest = float(masked.max())
    snr = strongest / max(floor, 1e-300)
    if not snr >= _PEAK_SNR:
        raise LFMError(
            f"the white frame shows no lenslet grid: its strongest periodic component is"
            f" only {snr:.3g}× the spectrum's median power (a grid gives ≥ {_PEAK_SNR:g}×);"
            " pass a white (radiometry) frame of a uniform fluorescent sample imaged"
            " through the microlens array, in focus and not saturated"
        )
    is_peak = (masked == ndimage.maximum_filter(masked, size=3)) & (
        masked > max(_PEAK_SHARE * strongest, _PEAK_SNR * floor)
    )
    rows, cols = np.nonzero(is_peak)
    freqs = np.array([_refine_peak(power, r, c, ky, kx) for r, c in zip(rows, cols, strict=True)])
    order = np.argsort(np.hypot(freqs[:, 0], freqs[:, 1]))
    k1 = freqs[order[0]]
    for n in order[1:]:
        k2 = freqs[n]
        cross = abs(k1[0] * k2[1] - k1[1] * k2[0])
        if cross > 0.5 * np.hypot(*k1) * np.hypot(*k2):  # more than 30° apart
            break
    else:
        raise LFMError(
            "the white frame shows stripes in one direction only, not a lenslet grid;"
            " pass a white (radiometry) frame taken through the microlens array"
        )
    # Real lattice vectors are the columns of the inverse of the reciprocal basis.
    basis = np.linalg.inv(np.array([k1, k2]))
    return _label_axes(*_reduced(basis[:, 0], basis[:, 1]))


def _refine_peak(power, r: int, c: int, ky, kx) -> np.ndarray:
    """Sub-bin peak position (ky, kx) in cycles/px by Gaussian (log-parabola)
    interpolation along each axis."""

    def offset(m1: float, m0: float, p1: float) -> float:
        lm, l0, lp = np.log(max(m1, 1e-300)), np.log(m0), np.log(max(p1, 1e-300))
        denom = lm - 2 * l0 + lp
        return 0.0 if denom >= 0 else float(np.clip(0.5 * (lm - lp) / denom, -0.5, 0.5))

    ny, nx = power.shape
    dr = offset(power[(r - 1) % ny, c], power[r, c], power[(r + 1) % ny, c])
    dc = offset(power[r, (c - 1) % nx], power[r, c], power[r, (c + 1) % nx])
    return np.array([ky[r, 0] + dr / ny, kx[0, c] + dc / nx])


def _reduced(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange–Gauss reduction: the shortest basis of the same lattice."""
    for _ in range(100):
        if a @ a > b @ b:
            a, b = b, a
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    return a, b


def _label_axes(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and orient two lattice vectors as (a ≈ +y, b ≈ +x)."""
    a, b = (u, v) if abs(u[0]) * abs(v[1]) >= abs(u[1]) * abs(v[0]) else (v, u)
    return (a if a[0] > 0 else -a), (b if b[1] > 0 else -b)


def _fold_origin(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(y, x) of one spot centre: fold the central part of the frame modulo the
    lattice cell and take the centroid of the bright part of the mean cell."""
    ny, nx = img.shape
    reach = 6 * max(np.hypot(*a), np.hypot(*b))  # short reach: the guessed pitch drifts
    y0, y1 = max(0, int(ny / 2 - reach)), min(ny, int(ny / 2 + reach) + 1)
    x0, x1 = max(0, int(nx / 2 - reach)), min(nx, int(nx / 2 + reach) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    grid = LensletGrid(origin=(0.0, 0.0), vector_i=a, vector_j=b)
    fi, fj = grid.raw_to_lenslet(yy, xx)
    nb = 24
    bins = (np.floor(np.mod(fi, 1.0) * nb).astype(int) % nb) * nb + (
        np.floor(np.mod(fj, 1.0) * nb).astype(int) % nb
    )
    total = np.bincount(bins.ravel(), img[y0:y1, x0:x1].ravel(), minlength=nb * nb)
    count = np.bincount(bins.ravel(), minlength=nb * nb)
    cell = (total / np.maximum(count, 1)).reshape(nb, nb)
    cell = ndimage.gaussian_filter(cell, 1.0, mode="wrap")
    # Put the brightest bin in the middle, then centroid the upper half of the range.
    pu, pv = np.unravel_index(np.argmax(cell), cell.shape)
    shift = (nb // 2 - pu, nb // 2 - pv)
    cell = np.roll(cell, shift, axis=(0, 1))
    weight = np.clip(cell - 0.5 * (cell.max() + cell.min()), 0, None)
    u, v = np.indices(cell.shape)
    cu = (weight * u).sum() / weight.sum() - shift[0]
    cv = (weight * v).sum() / weight.sum() - shift[1]
    y, x = grid.lenslet_to_raw((cu + 0.5) / nb, (cv + 0.5) / nb)
    return float(y), float(x)


def _recentred(grid: LensletGrid, shape: tuple[int, int]) -> LensletGrid:
    """The same grid with lenslet (0, 0) the one nearest the frame centre."""
    ci, cj = grid.raw_to_lenslet((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    y, x = grid.lenslet_to_raw(np.rint(ci), np.rint(cj))
    return dataclasses.replace(grid, origin=(float(y), float(x)))


def _cell_corners_inside(grid, i, j, shape, margin: float) -> np.ndarray:
    """Whether the cells (lenslet ± ½ along both axes) of lenslets (i, j) lie
    inside the frame shrunk by ``margin`` px (negative: grown)."""
    ok = np.ones(np.broadcast(i, j).shape, dtype=bool)
    for di in (-0.5, 0.5):
        for dj in (-0.5, 0.5):
            y, x = grid.lenslet_to_raw(i + di, j + dj)
            ok &= (y >= margin) & (y <= shape[0] - 1 - margin)
            ok &= (x >= margin) & (x <= shape[1] - 1 - margin)
    return ok


def _nearest_lenslet(grid: LensletGrid, yy: np.ndarray, xx: np.ndarray):
    """Each pixel's nearest lenslet, labelled over the bounding (ni, nj) index
    box: (flat labels, i of each label, j of each label, (ni, nj))."""
    fi, fj = grid.raw_to_lenslet(yy, xx)
    ii, jj = np.rint(fi).astype(np.int64), np.rint(fj).astype(np.int64)
    i0, j0 = int(ii.min()), int(jj.min())
    ni, nj = int(ii.max()) - i0 + 1, int(jj.max()) - j0 + 1
    labels = ((ii - i0) * nj + (jj - j0)).ravel()
    cell_i, cell_j = np.divmod(np.arange(ni * nj), nj)
    return labels, cell_i + i0, cell_j + j0, (ni, nj)


def _spot_centroids(images, grid: LensletGrid, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) (y, x) px and indices (n, 2) (i, j) of the usable spots
    within ``reach`` px of the frame centre.

    ``images`` = (flattened, flattened smoothed, raw smoothed): the frame divided by its
    envelope, and both lightly smoothed for levels. A spot's weight is its
    flattened intensity above half-way between its gap level (cell corners)
    and its peak (predicted centre), over the pixels nearest to it; spots cut
    by the frame (or reach) edge, dim ones and strays (dust) are dropped."""
    flattened, flat_smooth, raw_smooth = images
    ny, nx = flattened.shape
    y0, y1 = max(0, int(ny / 2 - reach)), min(ny, int(ny / 2 + reach) + 1)
    x0, x1 = max(0, int(nx / 2 - reach)), min(nx, int(nx / 2 + reach) + 1)
    window = (slice(y0, y1), slice(x0, x1))
    # Work in the window's own pixel coordinates.
    local = dataclasses.replace(grid, origin=(grid.origin[0] - y0, grid.origin[1] - x0))
    yy, xx = np.indices((y1 - y0, x1 - x0), dtype=np.float64)
    labels, ci, cj, _ = _nearest_lenslet(local, yy, xx)
    py, px = local.lenslet_to_raw(ci, cj)
    corners = [local.lenslet_to_raw(ci + di, cj + dj) for di in (-0.5, 0.5) for dj in (-0.5, 0.5)]

    def levels(smooth):
        peak = ndimage.map_coordinates(smooth[window], [py, px], order=1, mode="nearest")
        gap = [ndimage.map_coordinates(smooth[window], c, order=1, mode="nearest") for c in corners]
        return peak, np.mean(gap, axis=0)

    peak, gap = levels(flat_smooth)
    threshold = gap + 0.5 * (peak - gap)
    weight = np.clip(flattened[window].ravel() - threshold[labels], 0.0, None)
    n = len(ci)
    total = np.bincount(labels, weight, minlength=n)
    sy = np.bincount(labels, weight * yy.ravel(), minlength=n)
    sx = np.bincount(labels, weight * xx.ravel(), minlength=n)
    raw_peak, raw_gap = levels(raw_smooth)  # brightness judged before flattening
    contrast = raw_peak - raw_gap
    inside = _cell_corners_inside(local, ci, cj, (y1 - y0, x1 - x0), margin=0.5)
    usable = inside & (total > 0) & (peak > gap)
    if usable.any():
        usable &= contrast >= _BRIGHT * np.percentile(contrast[usable], 90)
    cy = np.divide(sy, total, out=np.full(n, np.nan), where=total > 0)
    cx = np.divide(sx, total, out=np.full(n, np.nan), where=total > 0)
    # A centroid far from its prediction is not this lenslet's spot (dust, a gap).
    di, dj = local.raw_to_lenslet(cy, cx)
    usable &= (np.abs(di - ci) < 0.3) & (np.abs(dj - cj) < 0.3)
    centres = np.stack([cy[usable] + y0, cx[usable] + x0], 1)
    return centres, np.stack([ci[usable], cj[usable]], 1)


def _fit_lattice(centres: np.ndarray, index: np.ndarray) -> LensletGrid:
    """Least-squares lattice through spot centres (n, 2) at indices (n, 2);
    spots off by more than 3× the median residual (≥ 0.2 px) are dropped once."""
    if len(centres) < _MIN_SPOTS or np.ptp(index[:, 0]) < 2 or np.ptp(index[:, 1]) < 2:
        raise LFMError(
            f"the white frame shows only {len(centres)} usable lenslet spots (need at least"
            f" {_MIN_SPOTS}, over 3 rows and columns); pass an evenly lit white"
            " (radiometry) frame of a uniform fluorescent sample through the microlens array"
        )
    design = np.column_stack([np.ones(len(index)), index.astype(np.float64)])

    def fit(keep):
        coef, *_ = np.linalg.lstsq(design[keep], centres[keep], rcond=None)
        return coef, np.hypot(*(design @ coef - centres).T)

    coef, dist = fit(np.ones(len(index), dtype=bool))
    keep = dist <= max(3.0 * np.median(dist), 0.2)
    coef, dist = fit(keep)
    rms = float(np.sqrt(np.mean(dist[keep] ** 2)))
    return LensletGrid(
        origin=coef[0], vector_i=coef[1], vector_j=coef[2], rms_residual=rms, n_spots=keep.sum()
    )


def _largest_change(old: LensletGrid, new: LensletGrid, shape) -> float:
    """Largest move (px) of a lenslet centre near the frame's corners between
    two fits (matched by position: their indices may differ by whole lenslets)."""
    ys, xs = np.array([0, 0, shape[0] - 1, shape[0] - 1]), np.array([0, shape[1] - 1] * 2)
    i, j = new.raw_to_lenslet(ys, xs)
    y1, x1 = new.lenslet_to_raw(np.rint(i), np.rint(j))
    oi, oj = old.raw_to_lenslet(y1, x1)
    y0, x0 = old.lenslet_to_raw(np.rint(oi), np.rint(oj))
    return float(np.max(np.hypot(y1 - y0, x1 - x0)))


# --- the nominal optics ---------------------------------------------------------
def check_pitch(grid: LensletGrid, mla_pitch: float, raw_pixel_size: float) -> None:
    """Compare the fitted pitch with the nominal mla_pitch / raw_pixel_size.

    More than ``PITCH_ERROR`` (5 %) apart on either axis is an :class:`LFMError`;
    more than ``PITCH_WARNING`` (1 %) a :class:`CalibrationWarning` (the fitted
    pitch is used). Both name the two numbers.
    """
    if isinstance(raw_pixel_size, bool) or not raw_pixel_size > 0:
        raise LFMError(f"raw_pixel_size must be a positive number of µm, got {raw_pixel_size!r}")
    nominal = mla_pitch / raw_pixel_size
    fitted = (grid.pitch_y, grid.pitch_x)
    off = max(abs(p - nominal) / nominal for p in fitted)
    text = (
        f"the white frame shows {fitted[0]:.3f} × {fitted[1]:.3f} px per lenslet but the nominal"
        f" optics give mla_pitch / raw_pixel_size = {mla_pitch:g} / {raw_pixel_size:g} µm"
        f" = {nominal:.3f} px ({off:.1%} off)"
    )
    if off > PITCH_ERROR:
        raise LFMError(
            f"{text}, beyond the {PITCH_ERROR:.0%} limit; check mla_pitch, the camera's pixel"
            " size, any relay magnification between the MLA and the camera, and that the white"
            " frame comes from this microscope"
        )
    if off > PITCH_WARNING:
        warnings.warn(
            f"{text}; using the fitted pitch (effective raw pixel"
            f" {mla_pitch / fitted[0]:.4f} × {mla_pitch / fitted[1]:.4f} µm)",
            CalibrationWarning,
            stacklevel=3,
        )
