"""Random PSF banks and a brute-force projector shared by the operator and
solver tests (independent of the operator's polyphase code)."""

from dataclasses import dataclass

import numpy as np
import torch

from lfm_recon import Microscope, PSFBank


@dataclass(frozen=True)
class Config:
    nnum: int
    s: int
    radii: tuple[int, ...]  # per depth, lenslets
    lenslets: tuple[int, int]
    dtype: torch.dtype


def random_bank(cfg: Config, seed: int = 0) -> PSFBank:
    """A bank with random non-negative kernels, zero beyond each depth's radius."""
    rng = np.random.default_rng(seed)
    m = Microscope(
        magnification=20,
        numerical_aperture=0.5,
        medium_index=1.33,
        wavelength=0.525,
        mla_pitch=10.0 * cfg.nnum,
        mla_focal_length=3000.0,
        pixel_size=10.0,
    )
    r_max = max(cfg.radii)
    k = cfg.nnum * (2 * r_max + 1)
    kernels = np.zeros((len(cfg.radii), cfg.s, cfg.s, k, k), np.float32)
    for d, r in enumerate(cfg.radii):
        size = cfg.nnum * (2 * r + 1)
        o = (k - size) // 2
        block = rng.random((cfg.s, cfg.s, size, size)).astype(np.float32)
        kernels[d, :, :, o : o + size, o : o + size] = block / block.sum((-1, -2), keepdims=True)
    return PSFBank(
        kernels=kernels,
        depths=np.arange(len(cfg.radii), dtype=float),
        microscope=m,
        radii=np.array(cfg.radii),
        captured_energy=np.ones(len(cfg.radii)),
    )


def brute_force(bank: PSFBank, volume: np.ndarray) -> np.ndarray:
    """Each voxel adds its kernel, centred on its own lenslet, into the image."""
    d_, yv, xv = volume.shape
    s, n, k = bank.voxels_per_lenslet, bank.nnum, bank.kernel_size
    r = (k // n - 1) // 2
    ny, nx = yv // s, xv // s
    canvas = np.zeros((ny * n + 2 * r * n, nx * n + 2 * r * n))
    for d in range(d_):
        for p in range(yv):
            for q in range(xv):
                i, j = p // s, q // s
                canvas[i * n : i * n + k, j * n : j * n + k] += (
                    volume[d, p, q] * bank.kernels[d, p % s, q % s]
                )
    return canvas[r * n : r * n + ny * n, r * n : r * n + nx * n]
