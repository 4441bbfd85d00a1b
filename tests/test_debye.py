"""The Debye field against analytic results, direct quadrature and psfmodels."""

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import j0, j1

from lfm_recon.psf.debye import debye_radial_profile, enclosed_energy

OPTICS = dict(numerical_aperture=0.5, medium_index=1.33, wavelength=0.525, magnification=20.0)


def test_uniform_pupil_in_focus_is_the_airy_pattern():
    # With A = cos θ the z = 0 integral is ∫ J0(κρ s) s ds over s = sin θ:
    # exactly the Airy amplitude 2 J1(v)/v, v = (2π/λ)·NA·ρ/M.
    r = np.linspace(0.0, 400.0, 801)
    u = debye_radial_profile(r, [0.0], apodization="uniform", **OPTICS)[0]
    v = 2 * np.pi / 0.525 * 0.5 * r / 20.0
    airy = np.where(v > 0, 2 * j1(v) / np.where(v > 0, v, 1), 1.0)
    np.testing.assert_allclose(u.real / u.real[0], airy, atol=1e-9)
    assert np.abs(u.imag).max() < 1e-12 * np.abs(u).max()


def test_encircled_energy_matches_rayleigh_formula():
    # Uniform pupil in focus: EE(v) = 1 − J0(v)² − J1(v)² (Lord Rayleigh).
    r = np.linspace(0.0, 300.0, 6001)
    u = debye_radial_profile(r, [0.0], apodization="uniform", **OPTICS)
    ee = enclosed_energy(r, u)[0]
    v = 2 * np.pi / 0.525 * 0.5 * r / 20.0
    np.testing.assert_allclose(ee, 1 - j0(v) ** 2 - j1(v) ** 2, atol=2e-5)


@pytest.mark.parametrize("z", [-12.0, -3.0, 0.0, 4.0, 25.0])
def test_matches_direct_adaptive_quadrature(z):
    # Independent evaluation of the defining integral (scipy.quad) with the
    # same normalisation constant.
    k, n, na, m = 2 * np.pi / 0.525, 1.33, 0.5, 20.0
    alpha, kappa = np.arcsin(na / n), k * n / m
    c = kappa / np.sqrt(2 * np.pi * (1 - np.cos(alpha)))
    radii = np.array([0.0, 7.3, 31.0, 120.0, 400.0])
    u = debye_radial_profile(radii, [z], **OPTICS)[0]
    for rho, value in zip(radii, u, strict=True):

        def integrand(t, part, rho=rho):
            w = np.sqrt(np.cos(t)) * j0(kappa * rho * np.sin(t)) * np.sin(t)
            return w * (np.cos if part == 0 else np.sin)(k * n * z * np.cos(t))

        re = quad(integrand, 0, alpha, args=(0,), limit=400, epsabs=1e-13)[0]
        im = quad(integrand, 0, alpha, args=(1,), limit=400, epsabs=1e-13)[0]
        assert abs(value - c * (re + 1j * im)) < 1e-7 * abs(u[0])


def test_default_quadrature_is_converged():
    r = np.linspace(0, 1500, 301)
    z = np.array([-50.0, 50.0])
    u = debye_radial_profile(r, z, **OPTICS)
    u2 = debye_radial_profile(r, z, n_theta=4000, **OPTICS)
    assert np.abs(u - u2).max() < 1e-9 * np.abs(u).max()


def test_total_energy_is_one_for_every_depth():
    r = np.linspace(0, 4000, 20001)
    ee = enclosed_energy(r, debye_radial_profile(r, [0.0, 10.0, -30.0], **OPTICS))
    # The hard pupil leaves a 1/ρ tail: ~1.6e-3 lies beyond 4 mm here.
    np.testing.assert_allclose(ee[:, -1], 1.0, atol=3e-3)
    assert np.all(np.diff(ee, axis=1) >= 0)


@pytest.mark.parametrize(("na", "n"), [(0.5, 1.33), (1.0, 1.33), (1.2, 1.35)])
@pytest.mark.parametrize("z", [0.0, 1.0, 3.0, 6.0])
def test_widefield_intensity_matches_psfmodels(na, n, z):
    """Native-image-plane intensity vs the Gibson–Lanni scalar model of
    psfmodels with matched indices. psfmodels uses a pupil uniform in sin θ
    (our "uniform" apodisation) and integrates 3×3 sub-samples per pixel; we
    do the same and compare in object-space coordinates (ρ_obj = ρ/M)."""
    psfmodels = pytest.importorskip("psfmodels")
    nx, dxy, sub, wl = 65, 0.1, 3, 0.525
    ref = psfmodels.make_psf(
        [z],
        nx=nx,
        dxy=dxy,
        NA=na,
        wvl=wl,
        ns=n,
        ni=n,
        ni0=n,
        ng=n,
        ng0=n,
        model="scalar",
        normalize=False,
        oversample_factor=sub,
    )[0]
    fine = (np.arange(nx * sub) - (nx * sub - 1) / 2) * dxy / sub
    rho = np.hypot(*np.meshgrid(fine, fine, indexing="ij")).ravel()
    u = debye_radial_profile(
        rho,
        [z],
        numerical_aperture=na,
        medium_index=n,
        wavelength=wl,
        magnification=1.0,
        apodization="uniform",
    )[0]
    ours = (np.abs(u) ** 2).reshape(nx, sub, nx, sub).mean(axis=(1, 3))
    scale = (ours * ref).sum() / (ours * ours).sum()
    assert np.abs(scale * ours - ref).max() < 0.01 * ref.max()
