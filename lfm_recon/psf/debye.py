"""Scalar Debye field of a point source at the native image plane (NIP).

Notation (all lengths in µm, wavelength in vacuum):

    k  = 2π/λ            vacuum wavenumber
    α  = asin(NA/n)      half-angle of the collected cone in the sample
    κ  = k·n/M           radial frequency scale at the NIP (image space)

For a point at depth z (z > 0 farther from the objective) the field at image
radius ρ from the point's image is

    U(ρ, z) = C ∫₀^α A(θ) J₀(κ ρ sin θ) exp(i k n z cos θ) sin θ dθ

with A(θ) = sqrt(cos θ) for an aplanatic objective (Abbe sine condition).
The constant C makes ∫|U|² dA = 1 over the whole plane (Hankel–Parseval:
∫|U|² 2πρ dρ = 2π C²/κ² ∫ A²/cos θ · sin θ dθ), so a window's enclosed
energy is directly its captured fraction of the light.

With exp(-iωt) time dependence, a point farther than the focal plane (z > 0)
images in front of the NIP: the field arriving at the NIP diverges. The
integral is real-symmetric in z: U(ρ, -z) = conj(U(ρ, z)).
"""

from __future__ import annotations

import numpy as np
from scipy.special import j0, roots_legendre

APODIZATIONS = ("sine", "uniform")
"""``"sine"``: A = sqrt(cos θ), aplanatic (default, physical).
``"uniform"``: A = cos θ, a pupil uniform in sin θ, as in Gibson–Lanni scalar
models (used to compare against such libraries)."""


def _apodization(theta: np.ndarray, kind: str) -> np.ndarray:
    if kind == "sine":
        return np.sqrt(np.cos(theta))
    if kind == "uniform":
        return np.cos(theta)
    raise ValueError(f"apodization must be one of {APODIZATIONS}, got {kind!r}")


def _energy_integral(alpha: float, kind: str) -> float:
    """∫₀^α A(θ)²/cos θ · sin θ dθ in closed form."""
    if kind == "sine":
        return 1.0 - np.cos(alpha)
    return 0.5 * np.sin(alpha) ** 2


def debye_radial_profile(
    radius: np.ndarray,
    depths: np.ndarray,
    *,
    numerical_aperture: float,
    medium_index: float,
    wavelength: float,
    magnification: float,
    apodization: str = "sine",
    n_theta: int | None = None,
) -> np.ndarray:
    """Debye field at the NIP versus image-space radius, for several depths.

    Args:
        radius: (R,) radii at the NIP from the point's image, µm (image space).
        depths: (D,) depths z of the point, µm (z > 0 farther from objective).
        numerical_aperture, medium_index, wavelength (µm, vacuum),
        magnification: the objective's optics.
        apodization: ``"sine"`` (default) or ``"uniform"``; see
            :data:`APODIZATIONS`.
        n_theta: Gauss–Legendre nodes; default resolves every oscillation of
            the integrand (checked by a test that doubles it).

    Returns:
        complex128 (D, R) field, normalised so that ∫|U|² dA = 1 µm⁻²·µm².
    """
    radius = np.asarray(radius, dtype=np.float64)
    depths = np.atleast_1d(np.asarray(depths, dtype=np.float64))
    k = 2 * np.pi / wavelength
    n = medium_index
    alpha = np.arcsin(numerical_aperture / n)
    kappa = k * n / magnification
    if n_theta is None:
        # Phase swept by the Bessel argument and the defocus term over [0, α];
        # ~1 node per radian plus a floor is ample for Gauss–Legendre.
        swept = kappa * radius.max(initial=0.0) * np.sin(alpha)
        swept += k * n * np.abs(depths).max(initial=0.0) * (1 - np.cos(alpha))
        n_theta = int(np.ceil(swept)) + 64
    x, w = roots_legendre(n_theta)
    theta = 0.5 * alpha * (x + 1)
    w = 0.5 * alpha * w
    weight = w * _apodization(theta, apodization) * np.sin(theta)  # (T,)
    norm = kappa / np.sqrt(2 * np.pi * _energy_integral(alpha, apodization))
    # U(-z) = conj(U(z)): evaluate each |z| once.
    abs_z, inverse = np.unique(np.abs(depths), return_inverse=True)
    phase = np.exp(1j * k * n * np.outer(np.cos(theta), abs_z))  # (T, Z)
    bessel = j0(kappa * np.outer(radius, np.sin(theta)))  # (R, T)
    field = norm * (bessel @ (weight[:, None] * phase))  # (R, Z)
    field = field.T[inverse]  # (D, R)
    field[depths < 0] = np.conj(field[depths < 0])
    return field


def enclosed_energy(radius: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Fraction of the (unit) energy inside each radius, from a radial profile.

    Args:
        radius: (R,) increasing radii from 0, µm, fine enough to resolve the
            field.
        field: (..., R) field from :func:`debye_radial_profile`.

    Returns:
        (..., R) cumulative ∫₀^ρ |U|² 2πρ' dρ' (trapezoidal), in [0, 1].
    """
    integrand = np.abs(field) ** 2 * (2 * np.pi * radius)
    steps = 0.5 * (integrand[..., 1:] + integrand[..., :-1]) * np.diff(radius)
    return np.concatenate([np.zeros((*field.shape[:-1], 1)), np.cumsum(steps, axis=-1)], axis=-1)
