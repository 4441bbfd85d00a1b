"""Free-space propagation by the angular spectrum method.

U(z + d) = F⁻¹[ F[U] · H ],  H(fx, fy) = exp(i 2π d sqrt((n/λ)² − fx² − fy²)),
evanescent components dropped. H is band-limited as in Matsushima & Shimobaba
(2009): frequencies whose transfer-function chirp would be under-sampled by
the FFT grid are zeroed, so long distances on small grids do not alias. The
caller zero-pads the field so light does not wrap around the periodic grid.
"""

from __future__ import annotations

import math

import torch


def angular_spectrum_transfer(
    n_samples: int,
    spacing: float,
    distance: float,
    wavelength: float,
    medium_index: float = 1.0,
    *,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Transfer function H on an (N, N) FFT grid (unshifted order).

    Args:
        n_samples: grid size N along each axis.
        spacing: sample spacing Δ, µm.
        distance: propagation distance d, µm (may be negative).
        wavelength: vacuum wavelength, µm; ``medium_index`` of the gap.

    Returns:
        complex (N, N) tensor, to multiply with ``torch.fft.fft2(field)``.
    """
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    f = torch.fft.fftfreq(n_samples, d=spacing, dtype=real, device=device)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    k2 = (medium_index / wavelength) ** 2
    kz = torch.sqrt(torch.clamp(k2 - f2, min=0.0))
    # Band limit: |f| ≤ 1/(λ' sqrt((2 Δf d)² + 1)) per axis (λ' = λ/n).
    df = 1.0 / (n_samples * spacing)
    f_limit = medium_index / (wavelength * math.sqrt((2 * df * distance) ** 2 + 1))
    keep = (f2 < k2) & (f[:, None].abs() <= f_limit) & (f[None, :].abs() <= f_limit)
    h = torch.polar(keep.to(real), 2 * math.pi * distance * kz)
    return h.to(dtype)


def propagate(field: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Propagate (..., N, N) fields with a transfer function from
    :func:`angular_spectrum_transfer`; returns the same shape."""
    return torch.fft.ifft2(torch.fft.fft2(field) * transfer)
