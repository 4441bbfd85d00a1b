"""Build the per-depth light-field PSF filter bank.

For each depth and each of the s×s sub-lenslet voxel positions, the kernel is
the sensor image of a point at that position (:mod:`.lightfield`), cropped to
(2R+1)² lenslets around the voxel's own lenslet and normalised to sum 1.

Speed comes from the symmetries of square lenslets: kernel(s−1−a, b) is
kernel(a, b) flipped in y, likewise in x, and kernel(b, a) its transpose, so
only positions with a ≤ b ≤ (s−1)//2 are computed (6 of 25 at s = 5); one
radial Debye profile per depth serves every position, and −z reuses +z.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import LFMError
from ..microscope import Microscope
from .bank import PSFBank
from .debye import APODIZATIONS, enclosed_energy
from .lightfield import (
    RadialProfile,
    geometric_blur_radius,
    grid_sizes,
    nyquist_spacing,
    radial_profiles,
    sensor_images,
)

DEFAULT_ENERGY = 0.99
"""Fraction of a point's light its kernel keeps. The hard pupil edge gives the
Debye field an Airy-like tail (1 − enclosed energy ≈ 2/(π v)); keeping 99.9 %
would need ~14 lenslets of support in focus for the reference optics."""

_MAX_RADIUS = 64  # lenslets; beyond this the optics are not an LFM
_CHUNK_BYTES = 32 * 2**20  # one complex grid batch of sub-positions


def generate_psf(
    microscope: Microscope,
    depths,
    voxels_per_lenslet: int,
    *,
    oversampling: int | None = None,
    energy: float = DEFAULT_ENERGY,
    support_radius: int | None = None,
    apodization: str = "sine",
    device: str | torch.device = "cpu",
    progress: bool = False,
    use_symmetry: bool = True,
) -> PSFBank:
    """Compute the light-field PSF bank of a microscope.

    Args:
        microscope: the optics (rectified sensor, integer ``nnum``).
        depths: (D,) depths in µm from the native focal plane, strictly
            increasing; z > 0 is farther from the objective.
        voxels_per_lenslet: s, voxels per lenslet along each axis, 1 ≤ s ≤ nnum.
        oversampling: field samples per sensor pixel per axis. Default
            (:func:`default_oversampling`): half the Nyquist spacing of the
            field behind the MLA (λ·f_ml/(2·pitch) for a matched MLA), which
            is converged to L1 ≤ 0.02 against double (tested).
        energy: fraction of each point's light the kernel support must keep,
            which sets the radius R (lenslets) per depth.
        support_radius: force R for every depth instead (lenslets).
        apodization: ``"sine"`` (sqrt(cos θ), default) or ``"uniform"``.
        device: torch device for the FFTs (``"cuda"`` if available and wanted).
        progress: show a progress bar over depths.
        use_symmetry: compute only the symmetry-distinct sub-positions (False
            computes all s², for testing).

    Returns:
        :class:`PSFBank` with kernels float32 (D, s, s, K, K), K = nnum·(2R+1)
        for the largest R; each depth's kernels are zero beyond its own radius.
    """
    depths = _check_inputs(
        microscope, depths, voxels_per_lenslet, oversampling, energy, support_radius, apodization
    )
    m, s = microscope, voxels_per_lenslet
    if oversampling is None:
        oversampling = default_oversampling(m)
    device = _check_device(device)

    subpos = _subpositions(s, use_symmetry)  # (a, b) index pairs computed
    offsets = ((np.arange(s) + 0.5) / s - 0.5) * m.lenslet_pitch_object
    points = np.array([[offsets[a], offsets[b]] for a, b in subpos])

    # One profile per depth, long enough for the window we expect.
    blur = max(geometric_blur_radius(m, z) for z in depths)
    reach = math.sqrt(2) * (blur + 3 * m.mla_pitch) + m.mla_pitch
    profiles = radial_profiles(m, depths, reach, apodization)

    per_depth, radii, captured = [], [], []
    for d in tqdm(
        range(len(depths)), desc="PSF depths", unit="depth", disable=not progress, leave=False
    ):
        kern, radius, frac = _depth_kernels(
            m,
            profiles[d],
            depths[d],
            points,
            oversampling,
            energy,
            support_radius,
            apodization,
            device,
        )
        per_depth.append(kern)
        radii.append(radius)
        captured.append(frac)

    r_max = max(radii)
    k = m.nnum * (2 * r_max + 1)
    computed = np.zeros((len(depths), len(subpos), k, k), dtype=np.float32)
    for d, kern in enumerate(per_depth):
        o = (k - kern.shape[-1]) // 2
        computed[d, :, o : o + kern.shape[-1], o : o + kern.shape[-1]] = kern
    kernels = (
        _unfold(computed, subpos, s) if use_symmetry else computed.reshape(len(depths), s, s, k, k)
    )
    return PSFBank(
        kernels=kernels,
        depths=depths,
        microscope=m,
        radii=np.array(radii, dtype=np.int32),
        captured_energy=np.array(captured, dtype=np.float64),
        generation={
            "oversampling": oversampling,
            "energy": energy if support_radius is None else None,
            "support_radius": support_radius,
            "apodization": apodization,
            "lfm_recon_version": __version__,
        },
    )


def default_oversampling(m: Microscope) -> int:
    """Samples per pixel per axis at half the Nyquist spacing: at the bare
    condition kernels are still ~5 % off in L1 (square lenslet borders are
    not band-limited), at half it they are converged."""
    return max(1, math.ceil(2 * m.pixel_size / nyquist_spacing(m) - 1e-9))


def _depth_kernels(
    m,
    profile: RadialProfile,
    depth,
    points,
    oversampling,
    energy,
    support_radius,
    apodization,
    device,
):
    """Kernels (P, K, K) float32 of one depth, its radius and kept energy.

    The NIP window is one lenslet wider than the kernel (light crossing the
    NIP lands within about a lenslet); the radius is first guessed from the
    NIP enclosed energy, then grown until the sensor kernels keep ``energy``.
    """
    if support_radius is not None:
        radius = support_radius
    else:
        radius = 0
        ee = enclosed_energy(profile.radius, profile.values)
        while 1 - np.interp((radius + 0.5) * m.mla_pitch, profile.radius, ee) > 1 - energy:
            radius += 1
            if radius > _MAX_RADIUS:
                break
            if (radius + 0.5) * m.mla_pitch > profile.radius[-1]:
                profile = radial_profiles(
                    m, np.array([depth]), 2 * profile.radius[-1], apodization
                )[0]
                ee = enclosed_energy(profile.radius, profile.values)
    while True:
        if radius > _MAX_RADIUS:
            raise LFMError(
                f"the PSF at z = {depth:g} µm needs more than {_MAX_RADIUS} lenslets of"
                f" support to keep {energy:g} of the light; lower energy (e.g. 0.99)"
            )
        nip = radius + 1
        corner = math.sqrt(2) * (nip + 0.5) * m.mla_pitch + m.mla_pitch
        if corner > profile.radius[-1] - profile.step:
            profile = radial_profiles(m, np.array([depth]), 1.5 * corner, apodization)[0]
        img = _chunked_sensor_images(m, profile, points, nip, oversampling, device)
        worst = _window_fractions(img, m.nnum).min(axis=0)  # (nip + 1,)
        if support_radius is not None:
            break
        hits = np.nonzero(worst[:nip] >= energy)[0]
        if hits.size:
            radius = int(hits[0])
            break
        radius += 1
    size = m.nnum * (2 * radius + 1)  # both sizes are nnum × odd: centred exactly
    start = (img.shape[-1] - size) // 2
    kern = img[:, start : start + size, start : start + size]
    kern = kern / kern.sum(dim=(1, 2), keepdim=True)
    return kern.cpu().numpy().astype(np.float32), radius, float(worst[radius])


def _chunked_sensor_images(m, profile, points, nip, oversampling, device):
    """:func:`sensor_images` over chunks of points, so one complex64 FFT grid
    batch stays within _CHUNK_BYTES (peak memory is a few times that)."""
    _, n_fft = grid_sizes(m, nip, oversampling)
    step = max(1, _CHUNK_BYTES // (8 * n_fft**2))
    return torch.cat(
        [
            sensor_images(
                m,
                profile,
                points[i : i + step],
                nip_radius=nip,
                oversampling=oversampling,
                device=device,
            )
            for i in range(0, len(points), step)
        ]
    )


def _window_fractions(img: torch.Tensor, nnum: int) -> np.ndarray:
    """Light inside (2R+1)² lenslets around the centre, for R = 0…(S/nnum−1)/2."""
    n_lens = img.shape[-1] // nnum
    lens = img.reshape(img.shape[0], n_lens, nnum, n_lens, nnum).sum(dim=(2, 4))
    c = n_lens // 2
    return np.stack(
        [
            lens[:, c - r : c + r + 1, c - r : c + r + 1].sum(dim=(1, 2)).cpu().numpy()
            for r in range(c + 1)
        ],
        axis=1,
    )


def _subpositions(s: int, use_symmetry: bool) -> list[tuple[int, int]]:
    if not use_symmetry:
        return [(a, b) for a in range(s) for b in range(s)]
    half = (s - 1) // 2
    return [(a, b) for a in range(half + 1) for b in range(a, half + 1)]


def _unfold(computed: np.ndarray, subpos, s: int) -> np.ndarray:
    """Fill (D, s, s, K, K) from the canonical positions by flips/transposes."""
    index = {ab: i for i, ab in enumerate(subpos)}
    d, _, k, _ = computed.shape
    out = np.empty((d, s, s, k, k), dtype=computed.dtype)
    for a in range(s):
        for b in range(s):
            ca, cb = min(a, s - 1 - a), min(b, s - 1 - b)
            kern = computed[:, index[(min(ca, cb), max(ca, cb))]]
            if ca > cb:
                kern = kern.transpose(0, 2, 1)
            if ca != a:
                kern = kern[:, ::-1, :]
            if cb != b:
                kern = kern[:, :, ::-1]
            out[:, a, b] = kern
    return out


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LFMError(f"device {device!r} is not a torch device (use cpu or cuda)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LFMError("device cuda was asked for but CUDA is not available; use device cpu")
    return device


def _check_inputs(m, depths, s, oversampling, energy, support_radius, apodization):
    if not isinstance(m, Microscope):
        raise LFMError(f"microscope must be a Microscope, got {type(m).__name__}")
    try:
        depths = np.atleast_1d(np.asarray(depths, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise LFMError(f"depths must be numbers in µm: {exc}") from exc
    if depths.ndim != 1 or depths.size == 0:
        raise LFMError(
            f"depths must be a non-empty 1-D list of µm, got shape {depths.shape};"
            " e.g. np.linspace(-50, 50, 11)"
        )
    if not np.all(np.isfinite(depths)):
        raise LFMError("depths contain NaN or infinity")
    if depths.size > 1 and np.any(np.diff(depths) <= 0):
        raise LFMError(
            "depths must be strictly increasing (sorted, no repeats), got"
            f" {np.array2string(depths, precision=3, threshold=8)}"
        )
    worst = float(np.abs(depths).max())
    if geometric_blur_radius(m, worst) > _MAX_RADIUS * m.mla_pitch:
        raise LFMError(
            f"depth {worst:g} µm blurs over more than {_MAX_RADIUS} lenslets with these"
            " optics; depths are in µm from the native focal plane (e.g. -50:50:11)"
        )
    if not _is_int(s) or not 1 <= s <= m.nnum:
        raise LFMError(
            f"voxels_per_lenslet must be an integer from 1 to nnum = {m.nnum}, got {s!r}"
        )
    if oversampling is not None and (not _is_int(oversampling) or oversampling < 1):
        raise LFMError(f"oversampling must be a positive integer, got {oversampling!r}")
    if not isinstance(energy, numbers.Real) or not 0 < energy < 1:
        raise LFMError(f"energy must be a fraction in (0, 1), e.g. 0.99; got {energy!r}")
    if support_radius is not None and (
        not _is_int(support_radius) or not 0 <= support_radius <= _MAX_RADIUS
    ):
        raise LFMError(
            f"support_radius must be an integer from 0 to {_MAX_RADIUS} (lenslets),"
            f" got {support_radius!r}"
        )
    if apodization not in APODIZATIONS:
        raise LFMError(f"apodization must be one of {APODIZATIONS}, got {apodization!r}")
    return depths


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
