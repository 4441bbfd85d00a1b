"""Reconstruction quality: PSNR, SSIM, correlation, reprojection residual, neuron detection.

Shapes: volumes (D, Yv, Xv) or batched (B, D, Yv, Xv), as numpy arrays or torch
tensors on any device. A single volume gives Python floats, a batch float64
numpy arrays (B,). Everything is computed in float64 numpy.

Normalisation: a reconstruction has an arbitrary scale (photons, not unit
brightness), so **each reconstruction is scaled to its ground truth by least
squares; peak = ground-truth maximum** (:func:`scale_to`, then PSNR and SSIM;
``scale=False`` compares the raw values). Pearson correlation is scale-free.

Geometry for detection: voxel (d, p, q) sits at depth ``depths[d]`` µm and
laterally at ((p+½)·lateral, (q+½)·lateral) µm from the volume's top-left
corner, the convention of ``Phantom.centres`` and the (z, y, x) columns of
``SimulatedData.somata``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .errors import LFMError

# Detection defaults, (axial, lateral) µm. LFM localises a neuron to ~10 µm in z
# but a few µm laterally; somata have 3–6 µm radii and sit ≳ 10 µm apart.
TOLERANCE = (10.0, 5.0)  # a peak this close (normalised distance ≤ 1) finds a soma
SEPARATION = (10.0, 4.0)  # maxima closer than this box are one neuron


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _array(a, name: str) -> tuple[np.ndarray, bool]:
    """float64 (B, D, Yv, Xv) and whether the input was a single volume."""
    a = _numpy(a)
    if a.ndim not in (3, 4):
        raise LFMError(
            f"{name} must be a volume (D, Yv, Xv) or a batch (B, D, Yv, Xv), got shape "
            f"{a.shape}; add or remove the batch axis"
        )
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise LFMError(
            f"{name} contains NaN or Inf ({bad} of {a.size} voxels); check the solver "
            "(step size, divergence) or the data before computing metrics"
        )
    return (a[None], True) if a.ndim == 3 else (a, False)


def _pair(x, gt) -> tuple[np.ndarray, np.ndarray, bool]:
    xa, single = _array(x, "reconstruction x")
    ga, gt_single = _array(gt, "ground truth gt")
    if xa.shape != ga.shape or single != gt_single:
        shapes = [a.shape[1:] if one else a.shape for a, one in ((xa, single), (ga, gt_single))]
        raise LFMError(
            f"reconstruction x has shape {shapes[0]} but ground truth gt has shape "
            f"{shapes[1]}; both must be (D, Yv, Xv) or (B, D, Yv, Xv) on the same "
            "voxel grid (reconstruct with the PSF bank the ground truth was made for)"
        )
    return xa, ga, single


def _out(values, single: bool):
    values = np.asarray(values, dtype=np.float64)
    return float(values[0]) if single else values


def _scale(x: np.ndarray, gt: np.ndarray) -> np.ndarray:
    xx = np.einsum("bdyx,bdyx->b", x, x)
    xg = np.einsum("bdyx,bdyx->b", x, gt)
    a = np.divide(xg, xx, out=np.zeros_like(xx), where=xx > 0)
    return x * a[:, None, None, None]


def scale_to(x, gt) -> np.ndarray:
    """x times the least-squares factor a = <x, gt> / <x, x> (a = 0 for an all-zero x).

    Args:
        x: reconstruction (D, Yv, Xv) or (B, D, Yv, Xv), any units.
        gt: ground truth of the same shape.

    Returns:
        float64 array shaped like x, a·x with one factor per volume.
    """
    xa, ga, single = _pair(x, gt)
    out = _scale(xa, ga)
    return out[0] if single else out


def psnr(x, gt, *, scale: bool = True):
    """Peak signal-to-noise ratio 10·log10(peak² / MSE) in dB, peak = max(gt).

    Args:
        x: reconstruction (D, Yv, Xv) or (B, D, Yv, Xv).
        gt: ground truth of the same shape.
        scale: first scale x to gt by least squares (:func:`scale_to`).

    Returns:
        float (single volume) or float64 (B,). +inf where x equals gt
        (MSE = 0); -inf where gt's maximum is ≤ 0 and x differs from it.
    """
    xa, ga, single = _pair(x, gt)
    if scale:
        xa = _scale(xa, ga)
    mse = np.mean((xa - ga) ** 2, axis=(1, 2, 3))
    peak = np.maximum(ga.max(axis=(1, 2, 3)), 0.0)
    with np.errstate(divide="ignore"):
        value = np.where(mse > 0, 10 * np.log10(peak**2 / np.where(mse > 0, mse, 1)), np.inf)
    return _out(value, single)


def _ssim_map(x: np.ndarray, gt: np.ndarray, sigma: float, data_range: float) -> np.ndarray:
    """Local SSIM of two (D, Yv, Xv) float64 volumes, Gaussian-weighted
    (Wang et al. 2004; population covariance), same shape as the inputs."""

    def blur(a):
        return ndimage.gaussian_filter(a, sigma=sigma, truncate=3.5, mode="reflect")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, mg = blur(x), blur(gt)
    vx = blur(x * x) - mx * mx
    vg = blur(gt * gt) - mg * mg
    cov = blur(x * gt) - mx * mg
    return ((2 * mx * mg + c1) * (2 * cov + c2)) / ((mx**2 + mg**2 + c1) * (vx + vg + c2))


def ssim(x, gt, *, sigma: float = 1.5, scale: bool = True):
    """Structural similarity in 3-D, the mean of the local SSIM over all voxels.

    Gaussian window of ``sigma`` voxels on every axis (truncated at 3.5σ,
    reflected at the borders), C1 = (0.01·L)², C2 = (0.03·L)², L = max(gt) −
    min(gt) (max |gt| or 1 when gt is constant). No border crop: volumes have
    only ~11 depth planes, so cropping the window radius would leave almost
    nothing. 1 for identical volumes.

    Args:
        x: reconstruction (D, Yv, Xv) or (B, D, Yv, Xv).
        gt: ground truth of the same shape.
        sigma: Gaussian window width, voxels.
        scale: first scale x to gt by least squares (:func:`scale_to`).

    Returns:
        float (single volume) or float64 (B,), at most 1.

    Caveat: on sparse volumes (a few % bright voxels) the empty background
    dominates the mean; an all-zero x scores ~0.9 against a neuron phantom, and
    least-squares scaling shrinks a very noisy x towards zero, which raises
    its SSIM. Read SSIM next to PSNR, correlation and detection scores.
    """
    xa, ga, single = _pair(x, gt)
    if not sigma > 0:
        raise LFMError(f"sigma must be a positive number of voxels, got {sigma}")
    if scale:
        xa = _scale(xa, ga)
    values = []
    for xv, gv in zip(xa, ga, strict=True):
        span = float(gv.max() - gv.min()) or float(np.abs(gv).max()) or 1.0
        values.append(_ssim_map(xv, gv, sigma, span).mean())
    return _out(values, single)


def pearson(x, gt):
    """Pearson correlation coefficient of x and gt over the voxels of each volume.

    Args:
        x: reconstruction (D, Yv, Xv) or (B, D, Yv, Xv); its scale does not matter.
        gt: ground truth of the same shape.

    Returns:
        float (single volume) or float64 (B,) in [-1, 1]; 0 where either
        volume is constant (the coefficient is undefined there).
    """
    xa, ga, single = _pair(x, gt)
    xc = xa - xa.mean(axis=(1, 2, 3), keepdims=True)
    gc = ga - ga.mean(axis=(1, 2, 3), keepdims=True)
    den = np.sqrt(np.einsum("bdyx,bdyx->b", xc, xc) * np.einsum("bdyx,bdyx->b", gc, gc))
    num = np.einsum("bdyx,bdyx->b", xc, gc)
    r = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return _out(np.clip(r, -1.0, 1.0), single)


def reprojection_residual(op, x, y, background=0.0):
    """Relative data misfit ‖H x + b − y‖₂ / ‖y‖₂ per light field.

    Args:
        op: the :class:`~lfm_recon.LightFieldOperator` H.
        x: volumes (B, D, Yv, Xv) (or one (D, Yv, Xv)), tensor or array.
        y: their light fields (B, 1, Y, X) (or one (1, Y, X)), same units as H x.
        background: b, a number or a tensor broadcastable to y (photons).

    Returns:
        float64 (B,) (float for one volume); 0 for y = H x + b exactly, inf
        where y is all zero but H x + b is not.
    """
    x = torch.as_tensor(x).to(device=op.device, dtype=op.dtype)
    y = torch.as_tensor(y).to(device=op.device, dtype=op.dtype)
    single = x.ndim == 3
    x, y = (x[None], y[None]) if single else (x, y)
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
            raise LFMError("x or y contains NaN or Inf; check the reconstruction and the data")
        hx = op(x)  # checks x's shape against the bank
        if y.shape != hx.shape:
            raise LFMError(
                f"light field y has shape {tuple(y.shape)} but H x has shape "
                f"{tuple(hx.shape)}; pass the light fields x was reconstructed from"
            )
        # dtype given directly: a Python float must not round through float32
        b = torch.as_tensor(background, dtype=op.dtype, device=op.device)
        num = torch.linalg.vector_norm((hx + b - y).double(), dim=(1, 2, 3))
        den = torch.linalg.vector_norm(y.double(), dim=(1, 2, 3))
    num, den = num.cpu().numpy(), den.cpu().numpy()
    ratio = np.divide(num, den, out=np.where(num > 0, np.inf, 0.0), where=den > 0)
    return _out(ratio, single)


# --- neuron detection ------------------------------------------------------------


def _geometry(shape, depths, lateral_voxel) -> tuple[np.ndarray, float]:
    depths = np.asarray(depths, dtype=np.float64)
    if depths.shape != (shape[0],) or not np.all(np.isfinite(depths)):
        raise LFMError(
            f"depths must be {shape[0]} finite µm values, one per plane of the volume, "
            f"got shape {depths.shape}; pass the PSF bank's depths"
        )
    if not lateral_voxel > 0:
        raise LFMError(f"lateral_voxel must be a positive size in µm, got {lateral_voxel}")
    return depths, float(lateral_voxel)


def _pair_um(value, name: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in np.ravel(value))
    if len(pair) != 2 or not all(v > 0 for v in pair):
        raise LFMError(f"{name} must be two positive lengths (axial, lateral) in µm, got {value}")
    return pair


def _peaks(vol, depths, lateral, separation, threshold) -> np.ndarray:
    """(N, 3) µm peak positions, brightest first."""
    if not 0 <= threshold <= 1:
        raise LFMError(f"threshold is a fraction of the maximum in [0, 1], got {threshold}")
    top = vol.max()
    if top <= 0:  # an empty volume has no neurons, not one flat peak
        return np.zeros((0, 3))
    step = float(np.mean(np.abs(np.diff(depths)))) if depths.size > 1 else math.inf
    axial, lat = _pair_um(separation, "separation")
    # 1e-9 slack so a separation of exactly k voxels is k, not k + 1 by rounding
    half = [max(1, math.ceil(s / v - 1e-9)) for s, v in ((axial, step), (lat, lateral))]
    size = (2 * half[0] + 1, 2 * half[1] + 1, 2 * half[1] + 1)
    mask = (vol == ndimage.maximum_filter(vol, size=size, mode="nearest")) & (
        vol >= threshold * top
    )
    # Adjacent maxima have equal values: each connected plateau is one neuron,
    # placed at its centroid (a flat-topped blob is one detection, not many).
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    index = np.arange(1, n + 1)
    centroid = np.array(ndimage.center_of_mass(mask, labels, index)).reshape(n, 3)
    values = np.asarray(ndimage.maximum(vol, labels, index), dtype=np.float64).reshape(n)
    z = np.interp(centroid[:, 0], np.arange(depths.size), depths)  # non-uniform depths
    um = np.column_stack([z, (centroid[:, 1:] + 0.5) * lateral])
    return um[np.argsort(-values, kind="stable")]


def find_peaks(x, depths, lateral_voxel, *, separation=SEPARATION, threshold=0.2) -> np.ndarray:
    """Local maxima of one volume, as candidate neuron centres.

    A voxel is a peak if it equals the maximum of the box around it, of
    half-widths ceil(separation / spacing) voxels (at least 1; axial spacing
    the mean depth step), and is ≥ ``threshold`` · max(x). A connected plateau
    of such voxels is one peak at its centroid.

    Args:
        x: one volume (D, Yv, Xv).
        depths: (D,) plane depths, µm.
        lateral_voxel: lateral voxel size, µm.
        separation: (axial, lateral) µm, the half-widths of the box; a
            maximum within it of a brighter voxel is suppressed. The default
            (10, 4) suits 3–6 µm somata imaged at LFM's ~10 µm axial resolution.
        threshold: fraction of the volume's maximum below which maxima are
            noise. A volume with max ≤ 0 has no peaks.

    Returns:
        float64 (N, 3) peak positions (z, y, x) µm, brightest first.
    """
    vol, single = _array(x, "x")
    if not single:
        raise LFMError(f"find_peaks takes one volume (D, Yv, Xv), got shape {vol.shape}")
    depths, lateral = _geometry(vol.shape[1:], depths, lateral_voxel)
    return _peaks(vol[0], depths, lateral, separation, threshold)


@dataclass(frozen=True)
class DetectionScore:
    """Peaks matched one-to-one to true neuron centres.

    Attributes:
        true_positives, false_positives, false_negatives: counts.
        precision: TP / (TP + FP), 1.0 when there are no peaks.
        recall: TP / (TP + FN), 1.0 when there are no centres.
        f1: 2·TP / (2·TP + FP + FN), 1.0 when there are neither peaks nor centres.
        matches: int64 (M, 2) pairs (peak index, centre index); empty after
            :meth:`combine`.
        peaks: float64 (N, 3) the detected peaks (z, y, x) µm that ``matches``
            indexes; empty after :meth:`combine`.
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    # arrays: not compared (== on arrays is ambiguous) and not in the repr
    matches: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 2), np.int64), compare=False, repr=False
    )
    peaks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), compare=False, repr=False)

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, **arrays) -> DetectionScore:
        """Score from counts, with the conventions above for empty sets."""
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        return cls(int(tp), int(fp), int(fn), precision, recall, f1, **arrays)

    @classmethod
    def combine(cls, scores) -> DetectionScore:
        """Pooled (micro-averaged) score: counts summed over volumes, rates recomputed."""
        scores = list(scores)
        return cls.from_counts(
            sum(s.true_positives for s in scores),
            sum(s.false_positives for s in scores),
            sum(s.false_negatives for s in scores),
        )


def _match(peaks, centres, tolerance) -> np.ndarray:
    if len(peaks) == 0 or len(centres) == 0:
        return np.zeros((0, 2), np.int64)
    d = peaks[:, None, :] - centres[None, :, :]
    dist = np.sqrt(
        (d[..., 0] / tolerance[0]) ** 2 + (d[..., 1] ** 2 + d[..., 2] ** 2) / tolerance[1] ** 2
    )
    # An infeasible pair costs more than all feasible ones together, so the
    # assignment first maximises the number of matches, then minimises distance.
    big = 2.0 * (min(dist.shape) + 1)
    rows, cols = linear_sum_assignment(np.where(dist <= 1, dist, big))
    keep = dist[rows, cols] <= 1
    return np.column_stack([rows[keep], cols[keep]]).astype(np.int64)


def detection_scores(
    x, centres, depths, lateral_voxel, *, tolerance=TOLERANCE, separation=SEPARATION, threshold=0.2
):
    """Detect neurons as peaks (:func:`find_peaks`) and score them against true centres.

    Peaks and centres are matched one-to-one by optimal assignment (Hungarian)
    on the normalised distance sqrt((Δz/tol_z)² + (Δy² + Δx²)/tol_lat²); a pair
    counts when that distance is ≤ 1.

    Args:
        x: one volume (D, Yv, Xv) or a batch (B, D, Yv, Xv).
        centres: float (N, 3) true centres (z, y, x) µm, or a list of B such
            arrays for a batch (from ``SimulatedData.somata``:
            ``somata[somata[:, 0] == i, 1:4]`` for sample i).
        depths: (D,) plane depths, µm.
        lateral_voxel: lateral voxel size, µm.
        tolerance: (axial, lateral) µm, default (10, 5); axial is looser
            because LFM localises neurons far worse along z than laterally.
        separation, threshold: as in :func:`find_peaks`.

    Returns:
        :class:`DetectionScore` for one volume, a list of B for a batch
        (:meth:`DetectionScore.combine` pools them).
    """
    vols, single = _array(x, "x")
    depths, lateral = _geometry(vols.shape[1:], depths, lateral_voxel)
    tol = _pair_um(tolerance, "tolerance")
    sets = [centres] if single else list(centres)
    if len(sets) != len(vols):
        raise LFMError(
            f"centres must be a list of {len(vols)} (N, 3) arrays, one per volume, got {len(sets)}"
        )
    scores = []
    for vol, c in zip(vols, sets, strict=True):
        c = _numpy(c)
        if c.size == 0:  # a volume without neurons: accept [] as well as (0, 3)
            c = c.reshape(0, 3)
        if c.ndim != 2 or c.shape[1] != 3 or not np.all(np.isfinite(c)):
            raise LFMError(
                f"centres must be finite (N, 3) arrays of (z, y, x) µm, got shape {c.shape}; "
                "take columns 1:4 of SimulatedData.somata"
            )
        peaks = _peaks(vol, depths, lateral, separation, threshold)
        m = _match(peaks, c, tol)
        tp = len(m)
        scores.append(
            DetectionScore.from_counts(tp, len(peaks) - tp, len(c) - tp, matches=m, peaks=peaks)
        )
    return scores[0] if single else scores


# --- the lenslet-grid artifact ------------------------------------------------------


def lenslet_grid_index(volume, voxels_per_lenslet: int) -> np.ndarray:
    """How strongly each plane's lateral detail is locked to the lenslet grid.

    E_k, k = 0 … s−1: the mean squared difference between laterally
    neighbouring voxels p and p+1 with p mod s = k (along y and along x,
    pooled; k = s−1 straddles a lenslet edge). The index is max_k E_k /
    min_k E_k. Detail that ignores the grid changes alike at every position
    of the lenslet period: about 1 (a linear ramp exactly 1). A pattern tied
    to the grid does not: blocks constant inside each lenslet (all change at
    the edges) give ∞, a dot at each lenslet's centre (changes next to it,
    none across edges) ≫ 1 — the two forms Richardson–Lucy leaves near the
    native plane. Compare a reconstruction's value with its ground truth's.
    (Power at the exact lenslet harmonics misses the blocks: a lenslet-wise
    constant image has zeros there.)

    Args:
        volume: (D, Yv, Xv) or (B, D, Yv, Xv), Yv and Xv multiples of s.
        voxels_per_lenslet: s ≥ 2.

    Returns:
        float64 (D,) or (B, D); inf where some E_k is 0 and another is not,
        NaN for constant planes.
    """
    a, single = _array(volume, "volume")
    s = voxels_per_lenslet
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 2:
        raise LFMError(f"voxels_per_lenslet must be an integer ≥ 2, got {s!r}")
    if a.shape[2] % s or a.shape[3] % s:
        raise LFMError(f"volume planes {a.shape[2]}×{a.shape[3]} are not multiples of s = {s}")
    dy, dx = np.diff(a, axis=2) ** 2, np.diff(a, axis=3) ** 2
    ky, kx = np.arange(a.shape[2] - 1) % s, np.arange(a.shape[3] - 1) % s
    energy = np.stack(
        [
            np.concatenate(
                [
                    dy[:, :, ky == k].reshape(*a.shape[:2], -1),
                    dx[:, :, :, kx == k].reshape(*a.shape[:2], -1),
                ],
                axis=2,
            ).mean(axis=2)
            for k in range(s)
        ]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out = energy.max(axis=0) / energy.min(axis=0)
    return out[0] if single else out
