"""Angular-spectrum propagation and the microlens phase against analytic optics."""

import math

import numpy as np
import torch

from lfm_recon.psf.mla import microlens_phase_1d
from lfm_recon.psf.propagation import angular_spectrum_transfer, propagate

WL = 0.525


def _grid(n, spacing):
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing


def test_gaussian_beam_matches_analytic_solution():
    n, dx, w0, d = 512, 2.0, 20.0, 3000.0
    x = _grid(n, dx)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    u0 = torch.exp(-r2 / w0**2).to(torch.complex128)
    u = propagate(u0, angular_spectrum_transfer(n, dx, d, WL))
    k, zr = 2 * math.pi / WL, math.pi * w0**2 / WL
    w = w0 * math.sqrt(1 + (d / zr) ** 2)
    curvature = d * (1 + (zr / d) ** 2)
    gouy = math.atan(d / zr)
    phase = k * d + k * r2 / (2 * curvature) - gouy
    exact = (w0 / w) * torch.exp(-r2 / w**2) * torch.polar(torch.ones_like(r2), phase)
    assert (u - exact).abs().max() < 1e-4


def test_propagation_conserves_energy():
    n, dx = 256, 1.0
    g = torch.Generator().manual_seed(0)
    u0 = torch.zeros((n, n), dtype=torch.complex128)
    u0[96:160, 96:160] = torch.randn((64, 64), generator=g, dtype=torch.complex128)
    keep = torch.fft.fftfreq(n, dx).abs() < 0.1  # inside the band limit
    u0 = torch.fft.ifft2(torch.fft.fft2(u0) * (keep[:, None] & keep[None, :]))
    u1 = propagate(u0, angular_spectrum_transfer(n, dx, 500.0, WL))
    assert abs(u1.abs().pow(2).sum() / u0.abs().pow(2).sum() - 1) < 1e-12


def test_band_limit_reduces_aliasing_on_small_grids():
    """A tight Gaussian propagated far on a small grid, against the same on a
    16× larger grid: the band-limited transfer function (Matsushima &
    Shimobaba) must beat the plain one, whose chirp is under-sampled."""
    wl, dx, d, w0 = 0.5, 0.5, 2000.0, 2.0

    def source(n):
        x = _grid(n, dx)
        return torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / w0**2).to(torch.complex128)

    small, big = 256, 4096
    reference = propagate(source(big), angular_spectrum_transfer(big, dx, d, wl))
    crop = slice(big // 2 - small // 2, big // 2 + small // 2)
    reference = reference[crop, crop]
    limited = propagate(source(small), angular_spectrum_transfer(small, dx, d, wl))
    f = torch.fft.fftfreq(small, d=dx, dtype=torch.float64)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    kz = torch.sqrt(torch.clamp(1 / wl**2 - f2, min=0))
    plain = propagate(source(small), torch.polar((f2 < 1 / wl**2).double(), 2 * math.pi * d * kz))
    centre = slice(small // 2 - 32, small // 2 + 32)
    err_limited = (limited - reference)[centre, centre].abs().max()
    err_plain = (plain - reference)[centre, centre].abs().max()
    assert err_limited < 0.5 * err_plain


def test_square_lenslet_focuses_to_its_fraunhofer_pattern():
    """A plane wave through one square lenslet (pitch p, focal length f, in
    air) focuses at f to sinc²(p·x/(λf))·sinc²(p·y/(λf)). This pins
    k0 = 2π/λ in the lenslet phase: with n·k0 the focus would sit at f/n."""
    p, f, n, dx = 150.0, 3000.0, 600, 1.0
    x = _grid(n, dx)
    t = microlens_phase_1d(x, p, f, WL)
    aperture = (x.abs() < p / 2).to(torch.complex128)
    u0 = (aperture * t)[:, None] * (aperture * t)[None, :]
    intensity = propagate(u0, angular_spectrum_transfer(n, dx, f, WL)).abs() ** 2
    line = intensity[n // 2 - 1 : n // 2 + 1].mean(0)  # x-profile through the focus
    xs = (x[:-1] + x[1:]) / 2  # the grid is symmetric: the focus lies between samples
    line = (line[:-1] + line[1:]) / 2  # centre-aligned profile
    expected = np.sinc(p * xs.numpy() / (WL * f)) ** 2 * np.sinc(p * 0.5 / (WL * f)) ** 2
    centre = slice(n // 2 - 40, n // 2 + 40)
    got = line.numpy()[centre] / line.numpy()[centre].max()
    want = expected[centre] / expected[centre].max()
    assert np.abs(got - want).max() < 0.03


def test_lenslet_phase_is_periodic_with_the_pitch():
    x = _grid(300, 1.0)
    t = microlens_phase_1d(x, 150.0, 3000.0, WL)
    np.testing.assert_allclose(t[:150].numpy(), t[150:].numpy(), atol=1e-12)
