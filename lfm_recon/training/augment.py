"""Flips and transposes that keep y = H x: the dihedral elements under which
the PSF bank is symmetric (checked numerically, so an asymmetric bank gets
none)."""

from __future__ import annotations

import numpy as np
import torch

from ..psf.bank import PSFBank


def bank_symmetries(bank: PSFBank, rtol: float = 1e-4) -> dict[str, bool]:
    """Which lateral symmetries the kernels have (so H commutes with them).

    ``flip_y``: kernels[:, s−1−a, b, K−1−u, v] = kernels[:, a, b, u, v];
    ``flip_x`` likewise along x; ``transpose``: kernels[:, b, a, v, u] =
    kernels[:, a, b, u, v]. True within ``rtol`` of the largest tap.
    """
    k = bank.kernels
    tol = rtol * float(k.max())
    return {
        "flip_y": bool(np.abs(k[:, ::-1, :, ::-1, :] - k).max() <= tol),
        "flip_x": bool(np.abs(k[:, :, ::-1, :, ::-1] - k).max() <= tol),
        "transpose": bool(np.abs(k.transpose(0, 2, 1, 4, 3) - k).max() <= tol),
    }


def allowed_codes(symmetries: dict[str, bool]) -> list[int]:
    """The dihedral elements (codes for :func:`augment`) a bank allows."""
    codes = [0]
    for bit, name in ((1, "flip_y"), (2, "flip_x"), (4, "transpose")):
        if symmetries[name]:
            codes = codes + [c | bit for c in codes]
    return codes


def augment(t: torch.Tensor, code: int) -> torch.Tensor:
    """Apply dihedral element ``code`` (bits: 1 flip y, 2 flip x, 4 transpose)
    to the last two axes of (…, Y, X); volumes, light fields and masks alike."""
    if code & 1:
        t = t.flip(-2)
    if code & 2:
        t = t.flip(-1)
    if code & 4:
        t = t.transpose(-1, -2)
    return t
