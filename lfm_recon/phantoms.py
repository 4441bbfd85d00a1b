"""Seeded synthetic neuron-like volumes, parameterised in micrometres.

Somata are soft ellipsoids (a logistic edge about ``edge`` µm wide) of varied
size and brightness, placed sparsely; optional thin processes (tubes leaving
each soma along smooth random paths) and a dim, smooth neuropil background.
Sizes are in µm, so a phantom follows the voxel size of whatever PSF bank it
is made for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import LFMError


@dataclass(frozen=True)
class Phantom:
    """A synthetic volume and its ground-truth somata.

    Attributes:
        volume: float32 (D, Yv, Xv), non-negative, brightest soma ≈ 1.
        centres: float64 (N, 3) soma centres (z, y, x) in µm; z on the depth
            axis of the bank, y and x from the volume's top-left corner.
        radii: float64 (N, 3) semi-axes (z, y, x) in µm.
        brightness: float64 (N,) peak intensity of each soma.
    """

    volume: np.ndarray
    centres: np.ndarray
    radii: np.ndarray
    brightness: np.ndarray


def neurons(
    depths,
    lateral_shape: tuple[int, int],
    voxel_size: float,
    *,
    n_neurons: int = 20,
    radius: tuple[float, float] = (3.0, 6.0),
    brightness: tuple[float, float] = (0.3, 1.0),
    edge: float = 0.7,
    neuropil: float = 0.0,
    processes: int = 0,
    process_radius: float = 0.6,
    margin: float = 0.0,
    planes: str = "slab",
    seed: int = 0,
) -> Phantom:
    """Make a neuron-like volume.

    Args:
        depths: (D,) depth of each plane, µm (the PSF bank's depths).
        lateral_shape: (Yv, Xv) voxels.
        voxel_size: lateral voxel size, µm (``bank.voxel_size[0]``).
        n_neurons: number of somata.
        radius: (min, max) soma semi-axis, µm; each axis drawn independently
            within ±15 % of the soma's mean radius.
        brightness: (min, max) soma peak intensity.
        edge: width of the soft edge, µm.
        neuropil: mean intensity of a smooth positive background, relative to
            the brightest soma (0 for none; 0.05 is dim).
        processes: thin processes per soma (0 for none).
        process_radius: process tube radius, µm.
        margin: keep soma centres this far (µm) inside the lateral borders.
        planes: ``"slab"``: each plane is the mean density over its axial
            slab (halfway to its neighbours); ``"point"``: the density at
            the plane's depth (thin structures between planes vanish).
        seed: random seed; the same arguments give the same phantom.

    Returns:
        :class:`Phantom` with volume float32 (D, Yv, Xv); each plane as
        ``planes`` says, each voxel laterally the density at its centre.
    """
    depths = np.asarray(depths, dtype=np.float64)
    yv, xv = lateral_shape
    if depths.ndim != 1 or depths.size == 0:
        raise LFMError("depths must be a non-empty 1-D array of µm")
    if np.any(np.diff(depths) <= 0) or not np.all(np.isfinite(depths)):
        raise LFMError("depths must be finite and strictly increasing (the bank's depths)")
    if yv < 1 or xv < 1 or voxel_size <= 0:
        raise LFMError(
            f"lateral_shape {lateral_shape} and voxel_size {voxel_size} must be positive"
        )
    if not 0 < radius[0] <= radius[1] or not 0 <= brightness[0] <= brightness[1]:
        raise LFMError(f"radius {radius} and brightness {brightness} must be (min, max) ranges")
    rng = np.random.default_rng(seed)
    y = (np.arange(yv) + 0.5) * voxel_size
    x = (np.arange(xv) + 0.5) * voxel_size
    extent = np.array(
        [
            [depths[0], depths[-1]],
            [margin, yv * voxel_size - margin],
            [margin, xv * voxel_size - margin],
        ]
    )
    if np.any(extent[:, 1] < extent[:, 0]):
        raise LFMError(f"margin {margin} µm leaves no room in a {yv}×{xv} voxel volume")

    centres = rng.uniform(extent[:, 0], extent[:, 1], size=(n_neurons, 3))
    mean_r = rng.uniform(*radius, size=n_neurons)
    radii = mean_r[:, None] * rng.uniform(0.85, 1.15, size=(n_neurons, 3))
    peak = rng.uniform(*brightness, size=n_neurons)
    # Each plane holds the mean density over its axial slab (so a soma between
    # coarse planes is not lost): render k sub-planes per slab and average.
    if planes not in ("slab", "point"):
        raise LFMError(f"planes must be 'slab' or 'point', got {planes!r}")
    z, k = _axial_samples(depths, voxel_size) if planes == "slab" else (depths.copy(), 1)
    volume = np.zeros((z.size, yv, xv), dtype=np.float64)
    tubes = np.zeros_like(volume)  # processes combine by maximum, not by sum
    for c, r, b in zip(centres, radii, peak, strict=True):
        _draw_ellipsoid(volume, (z, y, x), c, r, b, edge, np.add)
        for _ in range(processes):
            _draw_process(tubes, (z, y, x), c, r, 0.5 * b, process_radius, edge, rng)
    volume = (volume + tubes).reshape(depths.size, k, yv, xv).mean(axis=1)
    if neuropil > 0:
        # Smooth texture with ~3 µm features, mean 1 and 50 % contrast.
        step_z = float(np.mean(np.diff(depths))) if depths.size > 1 else 3.0
        sigma = (3.0 / step_z, 3.0 / voxel_size, 3.0 / voxel_size)
        smooth = gaussian_filter(rng.random(volume.shape), sigma=sigma)
        texture = np.clip(1 + 0.5 * (smooth - smooth.mean()) / max(smooth.std(), 1e-12), 0, None)
        scale = peak.max() if peak.size else 1.0
        volume += neuropil * scale * texture / texture.mean()
    return Phantom(volume.astype(np.float32), centres, radii, peak)


def slab_edges(depths: np.ndarray, voxel_size: float) -> np.ndarray:
    """(D + 1,) µm: the boundaries of each plane's slab, halfway to its
    neighbours, the outer ones mirrored (one plane: a slab one lateral voxel
    thick)."""
    depths = np.asarray(depths, dtype=np.float64)
    if depths.size == 1:
        return np.array([depths[0] - voxel_size / 2, depths[0] + voxel_size / 2])
    return np.concatenate(
        [
            [1.5 * depths[0] - 0.5 * depths[1]],
            (depths[1:] + depths[:-1]) / 2,
            [1.5 * depths[-1] - 0.5 * depths[-2]],
        ]
    )


def _axial_samples(depths: np.ndarray, voxel_size: float) -> tuple[np.ndarray, int]:
    """k sub-plane positions per plane, evenly across each plane's slab (its
    edges halfway to the neighbouring planes), k ≈ slab / lateral voxel."""
    if depths.size == 1:
        return depths.copy(), 1
    edges = slab_edges(depths, voxel_size)
    k = int(min(16, max(1, np.ceil(np.diff(edges).max() / voxel_size))))
    frac = (np.arange(k) + 0.5) / k
    z = edges[:-1, None] + np.diff(edges)[:, None] * frac[None, :]
    return z.ravel(), k


def _draw_ellipsoid(volume, axes, centre, radii, peak, edge, combine):
    """Combine a soft ellipsoid into its bounding box (cheap for small ones)."""
    boxes = []
    for ax, c, r in zip(axes, centre, radii, strict=True):
        lo = np.searchsorted(ax, c - r - 3 * edge)
        hi = np.searchsorted(ax, c + r + 3 * edge)
        if hi <= lo:
            return
        boxes.append(slice(lo, hi))
    dz, dy, dx = (ax[b] - c for ax, b, c in zip(axes, boxes, centre, strict=True))
    rho = np.sqrt(
        (dz[:, None, None] / radii[0]) ** 2
        + (dy[None, :, None] / radii[1]) ** 2
        + (dx[None, None, :] / radii[2]) ** 2
    )
    mean_r = float(np.mean(radii))
    # logistic edge: 10 % → 90 % over about ``edge`` µm
    shape = peak / (1 + np.exp(np.clip((rho - 1) * mean_r * 4.4 / edge, -50, 50)))
    box = tuple(boxes)
    volume[box] = combine(volume[box], shape)


def _draw_process(volume, axes, centre, radii, peak, tube, edge, rng):
    """A smooth random path from the soma surface, drawn as small spheres."""
    direction = rng.normal(size=3)
    direction[0] *= 0.3  # processes run mostly laterally
    direction /= np.linalg.norm(direction)
    pos = centre + direction * radii
    step = tube
    for _ in range(int(rng.uniform(15.0, 40.0) / step)):
        _draw_ellipsoid(volume, axes, pos, np.full(3, tube), peak, min(edge, tube), np.maximum)
        direction += rng.normal(scale=0.15, size=3)
        direction /= np.linalg.norm(direction)
        pos = pos + step * direction
