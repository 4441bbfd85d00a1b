"""Synthetic raw light-field frames and the real samples, shared by the
calibration tests.

The renderer is independent of the fitting code: each lenslet spot is a soft
disc (or a pixel-integrated Gaussian) drawn at its exact centre, supersampled;
the grid geometry is computed with this file's own formulas. Real samples are
read from ``$LFM_SAMPLES`` (default ``../shared/data/lf-samples`` next to the
project) and skipped when absent.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from scipy.special import erf

SAMPLES = Path(
    os.environ.get("LFM_SAMPLES", Path(__file__).resolve().parents[2] / "shared/data/lf-samples")
)


# --- an independent renderer ---------------------------------------------------
def lattice(pitch_y, pitch_x, rotation):
    """Lattice vectors (a, b) as (y, x) px; rotation in degrees,
    counter-clockwise as displayed (row 0 at the top)."""
    t = np.deg2rad(rotation)
    return (
        np.array([pitch_y * np.cos(t), pitch_y * np.sin(t)]),
        np.array([-pitch_x * np.sin(t), pitch_x * np.cos(t)]),
    )


def spot_centres(shape, a, b, origin):
    """All lattice points origin + i·a + j·b within a lenslet of the frame."""
    n = int(max(shape) / min(np.hypot(*a), np.hypot(*b))) + 4
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    c = np.asarray(origin) + i.reshape(-1, 1) * a + j.reshape(-1, 1) * b
    margin = max(np.hypot(*a), np.hypot(*b))
    keep = (c > -margin).all(1) & (c[:, 0] < shape[0] + margin) & (c[:, 1] < shape[1] + margin)
    return c[keep]


def render_discs(shape, centres, radius, edge=0.6, supersample=4):
    """Soft discs 1/(1+exp((ρ−R)/edge)), each averaged over a supersample² grid
    of points per pixel (pixel (r, c) spans r−½…r+½)."""
    img = np.zeros(shape)
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    half = int(radius + 8 * edge) + 2
    for cy, cx in centres:
        y0, y1 = max(0, int(cy) - half), min(shape[0], int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(shape[1], int(cx) + half + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        ys = (np.arange(y0, y1)[:, None] + sub).ravel() - cy
        xs = (np.arange(x0, x1)[:, None] + sub).ravel() - cx
        rho = np.hypot(ys[:, None], xs[None, :])
        disc = 1.0 / (1.0 + np.exp((rho - radius) / edge))
        img[y0:y1, x0:x1] += disc.reshape(y1 - y0, supersample, x1 - x0, supersample).mean((1, 3))
    return img


def render_gaussians(shape, centres, sigma):
    """Gaussian spots integrated exactly over each pixel (erf differences)."""
    img = np.zeros(shape)
    half = int(5 * sigma) + 2
    s = sigma * np.sqrt(2)
    for cy, cx in centres:
        y0, y1 = max(0, int(cy) - half), min(shape[0], int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(shape[1], int(cx) + half + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        y = np.arange(y0, y1) - cy
        x = np.arange(x0, x1) - cx
        py = 0.5 * (erf((y + 0.5) / s) - erf((y - 0.5) / s))
        px = 0.5 * (erf((x + 0.5) / s) - erf((x - 0.5) / s))
        img[y0:y1, x0:x1] += np.outer(py, px) * 2 * np.pi * sigma**2
    return img


def vignetting(shape, width):
    """Radial Gaussian fall-off from the frame centre (1 there), px."""
    y, x = np.indices(shape)
    r2 = (y - (shape[0] - 1) / 2) ** 2 + (x - (shape[1] - 1) / 2) ** 2
    return np.exp(-r2 / (2 * width**2))


def white_frame(shape, pitch, rotation, origin, spots="discs", photons=2000.0, seed=0):
    """A noisy vignetted white frame: (frame, true a, true b)."""
    a, b = lattice(*pitch, rotation)
    centres = spot_centres(shape, a, b, origin)
    if spots == "discs":
        clean = render_discs(shape, centres, 0.42 * min(pitch))
    else:
        clean = render_gaussians(shape, centres, 0.2 * min(pitch))
    clean *= vignetting(shape, 0.5 * max(shape))
    rng = np.random.default_rng(seed)
    frame = rng.poisson(photons * clean / clean.max() + 20.0) + rng.normal(100.0, 2.0, shape)
    return frame, a, b


# --- known light fields on a raw grid ------------------------------------------
def smooth_lightfield(fi, fj):
    """A smooth known light field as a function of lenslet coordinates."""
    return (
        2.0
        + np.sin(2 * np.pi * fi / 3.7 + 0.3) * np.cos(2 * np.pi * fj / 5.1)
        + 0.3 * np.sin(2 * np.pi * (fi + fj) / 2.3)
    )


def raw_from_lightfield(shape, a, b, origin):
    """Raw frame sampling smooth_lightfield at each pixel centre (multiply by
    raw/rectified pixel area = nnum² / |a × b| for counts per raw pixel)."""
    y, x = np.indices(shape, dtype=np.float64)
    d = np.stack([y.ravel() - origin[0], x.ravel() - origin[1]])
    fi, fj = np.linalg.solve(np.column_stack([a, b]), d)
    return smooth_lightfield(fi, fj).reshape(shape)


def expected_rectified(nnum, first, lenslets):
    fi = first[0] - 0.5 + (np.arange(lenslets[0] * nnum) + 0.5) / nnum
    fj = first[1] - 0.5 + (np.arange(lenslets[1] * nnum) + 0.5) / nnum
    return smooth_lightfield(fi[:, None], fj[None, :])


# --- real samples ---------------------------------------------------------------
def sample_path(folder, name) -> Path:
    """The path of a real sample file; the test is skipped when it is absent."""
    path = SAMPLES / folder / name
    if not path.is_file():
        pytest.skip(f"real sample {path} is absent (set LFM_SAMPLES to the lf-samples folder)")
    return path


def read_sample(folder, name):
    return tifffile.imread(sample_path(folder, name))


def raw_from_rectified(rectified, nnum, a, b, origin, first, shape):
    """A raw (Y, X) frame showing a rectified light field (ny·nnum, nx·nnum)
    laid on the true lattice (a, b, origin), its block starting at lattice
    index ``first``: rectified pixel (r, c) sits at lenslet coordinate
    first + ((r, c) + ½)/nnum − ½. Cubic interpolation clipped at 0, zero
    outside the block, in counts per raw pixel (× nnum² / |a × b|)."""
    y, x = np.indices(shape, dtype=np.float64)
    d = np.stack([y.ravel() - origin[0], x.ravel() - origin[1]])
    fi, fj = np.linalg.solve(np.column_stack([a, b]), d)
    r = (fi - first[0] + 0.5) * nnum - 0.5
    c = (fj - first[1] + 0.5) * nnum - 0.5
    values = ndimage.map_coordinates(np.asarray(rectified, np.float64), [r, c], order=3, cval=0.0)
    area = abs(a[0] * b[1] - a[1] * b[0])
    return np.clip(values, 0, None).reshape(shape) * nnum**2 / area
