"""Microlens array transmission.

Each square lenslet of pitch p and focal length f multiplies the field by
exp(-i k0 ρ²/(2f)), ρ measured from that lenslet's centre and k0 = 2π/λ the
*vacuum* wavenumber: the array sits in air behind the tube lens, so the
immersion index has no place here (some tools use n·k0, which is wrong).
Lenslet centres sit at integer multiples of the pitch; the phase is separable
in y and x.
"""

from __future__ import annotations

import math

import torch


def microlens_phase_1d(
    coords: torch.Tensor, pitch: float, focal_length: float, wavelength: float
) -> torch.Tensor:
    """One axis' factor of the MLA transmission.

    Args:
        coords: (N,) sample positions at the MLA, µm; lenslet centres at
            multiples of ``pitch``. Samples must not fall on lenslet borders.
        pitch, focal_length: lenslet pitch and focal length, µm.
        wavelength: vacuum wavelength, µm.

    Returns:
        complex (N,) factor t with transmission T(y, x) = t(y)·t(x).
    """
    local = coords - pitch * torch.round(coords / pitch)
    k0 = 2 * math.pi / wavelength
    return torch.polar(torch.ones_like(local), -k0 * local**2 / (2 * focal_length))
