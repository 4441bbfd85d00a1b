"""Depth-adaptive anti-aliasing of light-field reconstructions.

Richardson–Lucy on light-field data leaves grid-like artifacts in the planes
near the native focal plane (z ≈ 0): there a point's light stays behind one
lenslet wherever it sits inside that lenslet, so the light field samples
those planes about once per lenslet, and the estimate fills the detail it
cannot resolve with a blocky pattern locked to the lenslet grid. Stefanoiu
et al., "Artifact-free deconvolution in light field microscopy", Opt.
Express 27(22):31644 (2019), band-limit the estimate after every iteration
with a low-pass filter whose width follows the light field's sampling at
each depth, derived from the optics (their EMS scheme: estimate, maximise,
smooth). This module computes those widths (pure functions) and applies the
filter to batched volumes (:class:`AntiAliasFilter`); RL and ISRA take it as
``filter="antialias"``.

Notation (lengths in µm; paraxial thin-lens optics, telecentric objective):
    z        depth of a volume plane, > 0 farther from the objective.
    M, n     magnification and immersion index; p the MLA pitch, f the
             microlens focal length, v the MLA-to-sensor distance
             (``Microscope.mla_to_sensor``, = f unless the sensor is moved).
    s        voxels per lenslet (one pitch p is s voxels).
    a_z      M²·z / n: distance of the intermediate image of plane z from the
             MLA (longitudinal magnification M²/n into air), > 0 in front of it.
    λ_z      v / |a_z|: magnification with which one lenslet images plane z
             onto the sensor (∞ at z = 0).
    b_z      (p/2)·|1 − v/f + v/a_z|: radius of a point's blur on the sensor
             through one lenslet of aperture p (the lenslet images it at z3,
             1/z3 = 1/f − 1/a_z, and b = (p/2)|1 − v/z3|); (p/2)·λ_z for v = f.
    w_z      min(|λ_z·p − b_z|, p/2): the paper's filter half-width on the
             sensor behind one lenslet; p/2 near the native plane, shrinking
             like 1/|z| beyond it ((p/2)·min(λ_z, 1) for v = f).
    W_z      s·w_z / p: the same in voxels, the Lanczos kernel's zero spacing:
             detail with a period under 2 W_z is removed (cut-off 1/(2 W_z)
             cycles per voxel). At z = 0, W = s/2: the cut-off is the lenslet
             frequency 1/p, where the grid artifact lives. W_z ≤ 1: no filtering.
    h_z      the separable Lanczos kernel of plane z:
             h(t) = sinc(t/W)·sinc(t/(a·W)) for |t| < a·W voxels (a = 4 lobes),
             normalised to sum 1, along y and along x.

Which formula and why: the width is the paper's construction as we read
it, w_z = min(|λ_z p − b_z|, r_ml) with r_ml = p/2, written for this
package's optics with the lenslet blur b_z from the thin-lens geometry (so
it is a length). The reasoning, in this geometry: a lenslet sees plane z as
a camera of magnification λ_z whose image is blurred by b_z, and the
lenslets tile the plane once per pitch; near the native plane (|a_z| < v)
each lenslet's view collapses to its blurred pupil image and the plane is
sampled only once per lenslet, farther out the views overlap and sample it
finely, so no filter is needed. The
kernel's zero spacing is w_z itself (cut-off at the lenslet frequency at the
native plane); a kernel twice as wide (cut-off at the lenslet Nyquist
frequency, zero spacing 2 w_z) smoothed away detail that this package's
wave-optics kernels do resolve and cost 2.9 dB of PSNR on the benchmark,
while this one gains PSNR and removes the grid artifact
(``benchmarks/README.md``, ``bench_antialias.py``).

Why a Lanczos kernel: it is the windowed ideal low-pass the paper uses, flat
in its pass band, so detail the light field does resolve is kept: with
a = 4 lobes the benchmark's PSNR is 1.2 dB above a = 2, a softer window,
whose smaller side lobes, though, leave no faint rings beside a thin bright
membrane (the real vesicle of example 05; ``AntiAliasFilter(widths, 2)``).
The negative lobes can make the estimate slightly negative; those values
are set to 0 (RL and ISRA need x ≥ 0; taking |x| instead would turn
undershoot into signal). With the filter RL is no longer guaranteed to
lower its objective at every iteration.
With s ≤ 2 the filter does nothing: W_z ≤ s/2 ≤ 1, the lenslet frequency is
then already the voxel grid's Nyquist frequency.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import LFMError
from .microscope import Microscope

FILTERS = ("none", "antialias")
LANCZOS_LOBES = 4  # a: lobes of the Lanczos window (module doc: a = 2 measured 1.2 dB lower)


# --- widths from the optics (pure functions) ---------------------------------------
def intermediate_distance(microscope: Microscope, depths) -> np.ndarray:
    """a_z = M²·z / n, µm: distance of each plane's intermediate image from the
    MLA, > 0 in front of it (z > 0). ``depths`` (D,) µm → (D,)."""
    m = microscope
    return m.magnification**2 * np.asarray(depths, dtype=np.float64) / m.medium_index


def lenslet_magnification(microscope: Microscope, depths) -> np.ndarray:
    """λ_z = v / |a_z|, dimensionless (D,); ∞ at z = 0."""
    a = np.abs(intermediate_distance(microscope, depths))
    with np.errstate(divide="ignore"):
        return np.where(a > 0, microscope.mla_to_sensor / np.where(a > 0, a, 1.0), np.inf)


def microlens_blur(microscope: Microscope, depths) -> np.ndarray:
    """b_z = (p/2)·|1 − v/f + v/a_z|, µm (D,): blur radius on the sensor of a
    point of plane z through one lenslet; ∞ at z = 0."""
    m = microscope
    a = intermediate_distance(m, depths)
    v, f = m.mla_to_sensor, m.mla_focal_length
    with np.errstate(divide="ignore"):
        inverse = np.where(a != 0, v / np.where(a != 0, a, 1.0), np.inf)
    return 0.5 * m.mla_pitch * np.abs(1.0 - v / f + inverse)


def sensor_halfwidth(microscope: Microscope, depths) -> np.ndarray:
    """w_z = min(|λ_z·p − b_z|, p/2), µm on the sensor (D,): the paper's
    filter half-width; p/2 at z = 0."""
    p = microscope.mla_pitch
    lam = lenslet_magnification(microscope, depths)
    blur = microlens_blur(microscope, depths)
    with np.errstate(invalid="ignore"):
        w = np.where(np.isfinite(lam), np.abs(lam * p - blur), np.inf)
    return np.minimum(w, p / 2)


def filter_widths(microscope: Microscope, depths, voxels_per_lenslet: int) -> np.ndarray:
    """W_z = s·w_z / p, voxels (D,): the anti-aliasing filter width (the
    Lanczos kernel's zero spacing) of each plane; s/2 at z = 0, falling to 1
    (no filtering) and below away from it (module doc).

    Args:
        microscope: the optics (of the rectified image).
        depths: (D,) µm.
        voxels_per_lenslet: s.
    """
    if (
        isinstance(voxels_per_lenslet, bool)
        or not isinstance(voxels_per_lenslet, (int, np.integer))
        or voxels_per_lenslet < 1
    ):
        raise LFMError(f"voxels_per_lenslet must be a positive integer, got {voxels_per_lenslet!r}")
    w = sensor_halfwidth(microscope, depths)
    return int(voxels_per_lenslet) * w / microscope.mla_pitch


def lanczos_kernel(width: float, lobes: int = LANCZOS_LOBES) -> np.ndarray:
    """The 1-D kernel h(t) = sinc(t/W)·sinc(t/(a·W)), |t| < a·W, at integer t
    (voxels), normalised to sum 1; odd length. W ≤ 1 gives [1] (identity)."""
    if not (math.isfinite(width) and width >= 0):
        raise LFMError(f"filter width must be a number of voxels ≥ 0, got {width}")
    if width <= 1:
        return np.ones(1)
    half = math.ceil(lobes * width) - 1  # taps strictly inside |t| < a·W
    t = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(t / width) * np.sinc(t / (lobes * width))
    return h / h.sum()


# --- the filter on batched volumes -------------------------------------------------
def lanczos_matrix(width: float, size: int, lobes: int = LANCZOS_LOBES) -> np.ndarray:
    """(size, size) float64 matrix T with T @ v = the Lanczos kernel applied
    along a line v of ``size`` voxels, edges padded by replication (a constant
    line stays constant: every row sums to 1)."""
    h = lanczos_kernel(width, lobes)
    half = len(h) // 2
    rows = np.arange(size)
    out = np.zeros((size, size))
    for offset, tap in zip(range(-half, half + 1), h, strict=True):
        np.add.at(out, (rows, np.clip(rows + offset, 0, size - 1)), tap)
    return out


class AntiAliasFilter:
    """Per-depth separable low-pass of (B, D, Yv, Xv) volumes, x ≥ 0 after.

    Args:
        widths: (D,) filter width W_z per plane, voxels (:func:`filter_widths`);
            planes with W_z ≤ 1 are left as they are.
        lobes: a, the Lanczos window's lobes.

    Calling it returns a new tensor on the volume's device and in its dtype
    (``inplace=True``: the filtered planes are written into the input, which
    the solvers use on their own fresh estimate). Edges are padded by replication, so a uniform
    plane stays uniform. Batched: the filtered planes of every volume go
    through two batched matrix products, T_y · x_z · T_xᵀ with banded (Yv, Yv)
    and (Xv, Xv) matrices per plane (matrix units run these far faster than a
    depth-wise convolution with tens of taps), cached per plane size, device
    and dtype.
    """

    def __init__(self, widths, lobes: int = LANCZOS_LOBES) -> None:
        self.widths = np.asarray(widths, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(self.widths)) or np.any(self.widths < 0):
            raise LFMError(f"filter widths must be voxels ≥ 0, got {self.widths.tolist()}")
        if isinstance(lobes, bool) or not isinstance(lobes, int) or lobes < 1:
            raise LFMError(f"lobes must be a positive integer, got {lobes!r}")
        self.lobes = lobes
        self.active = np.flatnonzero(self.widths > 1)
        self._matrices: dict = {}

    @classmethod
    def for_operator(cls, op, lobes: int = LANCZOS_LOBES) -> AntiAliasFilter:
        """The filter of a :class:`~lfm_recon.LightFieldOperator`'s optics,
        depths and s (:func:`filter_widths`)."""
        bank = op.bank
        return cls(filter_widths(bank.microscope, bank.depths, bank.voxels_per_lenslet), lobes)

    @property
    def n_depths(self) -> int:
        return len(self.widths)

    def _matrix(self, size: int, device, dtype) -> torch.Tensor:
        key = (size, str(device), dtype)
        if key not in self._matrices:
            m = np.stack([lanczos_matrix(self.widths[d], size, self.lobes) for d in self.active])
            self._matrices[key] = torch.as_tensor(m, dtype=dtype, device=device)
        return self._matrices[key]

    def __call__(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """(B, D, Yv, Xv) → filtered (B, D, Yv, Xv), same device and dtype."""
        if x.ndim != 4 or x.shape[1] != self.n_depths:
            raise LFMError(
                f"the anti-aliasing filter has {self.n_depths} depths; got a volume of shape"
                f" {tuple(x.shape)}, expected (B, {self.n_depths}, Yv, Xv)"
            )
        if not len(self.active):
            return x
        ty = self._matrix(x.shape[2], x.device, x.dtype)  # (n, Yv, Yv)
        tx = self._matrix(x.shape[3], x.device, x.dtype)  # (n, Xv, Xv)
        index = torch.as_tensor(self.active, device=x.device)
        planes = ty @ x.index_select(1, index) @ tx.transpose(1, 2)
        out = x if inplace else x.clone()
        out[:, index] = planes.clamp_min(0)
        return out


def as_filter(op, filter) -> AntiAliasFilter | None:
    """A solver's ``filter`` argument resolved for an operator: None or
    ``"none"`` → None, ``"antialias"`` → :meth:`AntiAliasFilter.for_operator`,
    an :class:`AntiAliasFilter` → itself (checked against the depths)."""
    if filter is None or (isinstance(filter, str) and filter == "none"):
        return None
    if isinstance(filter, str) and filter == "antialias":
        return AntiAliasFilter.for_operator(op)
    if isinstance(filter, AntiAliasFilter):
        if filter.n_depths != op.n_depths:
            raise LFMError(
                f"the anti-aliasing filter has {filter.n_depths} depths but the operator"
                f" {op.n_depths}; build it with AntiAliasFilter.for_operator(op)"
            )
        return filter
    raise LFMError(
        f"filter must be one of {', '.join(FILTERS)} or an AntiAliasFilter, got {filter!r}"
    )
