"""The light-field forward operator H (volume → light field) and its adjoint.

Polyphase form (one concept, two layouts):

    x (B, D, Yv, Xv) ──pixel_unshuffle(s)──▶ (B, D·s², ny, nx)
        ──conv2d(W, padding R)──▶ (B, nnum², ny, nx) ──pixel_shuffle(nnum)──▶ y (B, 1, Y, X)

Channel c = (d, a, b) holds the voxels at sub-lenslet position (a, b) of depth
d; output channel (u, v) the sensor pixel (u, v) of every lenslet. The weight
W[(u, v), (d, a, b), m, n] = kernels[d, a, b, (2R−m)·nnum + u, (2R−n)·nnum + v]:
kernel block m' = ky // nnum lands m' − R lenslets away, and conv2d
(a cross-correlation) reads the input at offset m − R, so m = 2R − m'.
The adjoint is conv_transpose2d with the same weight, exactly.

Depths are grouped by kernel radius, each group with its own (smaller) weight,
so focal depths with small kernels do not pay for the defocused ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import LFMError
from .psf.bank import PSFBank


@dataclass(frozen=True)
class _Group:
    """Depths sharing one kernel radius: channels [start, stop) of the
    unshuffled volume and the name of their weight buffer."""

    start: int
    stop: int
    radius: int
    buffer: str


COMPUTE_MODES = ("exact", "tf32", "bf16")


class LightFieldOperator(nn.Module):
    """H and Hᵀ of a PSF bank as fixed convolutions.

    Args:
        bank: the PSF bank (kernels (D, s, s, K, K)).
        dtype: float32 (default) or float64 for the weights, inputs and outputs.
        device: where the weights live.
        compute: ``"exact"`` (default: full precision in ``dtype``; on CUDA
            TF32 is switched off, so the adjoint stays exact), ``"tf32"``
            (CUDA tensor cores with TF32, ~1e-3 relative) or ``"bf16"``
            (convolutions in bfloat16, ~1e-2 relative; inputs and outputs stay
            ``dtype``). Both fast modes are meant for CUDA.

    Shapes: volumes (B, D, Yv, Xv) with Yv = ny·s, Xv = nx·s; light fields
    (B, 1, Y, X) with Y = ny·nnum, X = nx·nnum; ny, nx ≥ 1 lenslets. Light
    that a kernel sends beyond the sensor's edge is lost (zero padding).

    The weights are buffers: never trained, moved by ``.to()``, saved in
    ``state_dict``. Applying the operator never changes it (``norm()`` caches
    its value).
    """

    def __init__(
        self,
        bank: PSFBank,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        compute: str = "exact",
    ) -> None:
        super().__init__()
        if not isinstance(bank, PSFBank):
            raise LFMError(f"LightFieldOperator needs a PSFBank, got {type(bank).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise LFMError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if compute not in COMPUTE_MODES:
            raise LFMError(f"compute must be one of {COMPUTE_MODES}, got {compute!r}")
        if compute != "exact" and dtype != torch.float32:
            raise LFMError(f"compute={compute!r} needs dtype=torch.float32")
        self.compute = compute
        self.n_depths = bank.n_depths
        self.voxels_per_lenslet = bank.voxels_per_lenslet
        self.nnum = bank.nnum
        self.bank_sha256 = bank.sha256
        self.depths = tuple(float(z) for z in bank.depths)
        self._norm: float | None = None
        s2 = self.voxels_per_lenslet**2
        groups = []
        for i, (start, stop, radius) in enumerate(_radius_runs(bank.radii)):
            weight = _polyphase_weight(bank, start, stop, radius)
            name = f"weight_{i}"
            self.register_buffer(name, torch.as_tensor(weight, dtype=dtype, device=device))
            groups.append(_Group(start * s2, stop * s2, radius, name))
        self._groups = tuple(groups)

    # --- shapes ------------------------------------------------------------
    def volume_shape(self, n_lenslets: tuple[int, int]) -> tuple[int, int, int]:
        """(D, Yv, Xv) of a volume for (ny, nx) lenslets."""
        ny, nx = n_lenslets
        s = self.voxels_per_lenslet
        return self.n_depths, ny * s, nx * s

    def lightfield_shape(self, n_lenslets: tuple[int, int]) -> tuple[int, int, int]:
        """(1, Y, X) of a light field for (ny, nx) lenslets."""
        ny, nx = n_lenslets
        return 1, ny * self.nnum, nx * self.nnum

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._groups[0].buffer).dtype

    @property
    def device(self) -> torch.device:
        return getattr(self, self._groups[0].buffer).device

    # --- H and Hᵀ ------------------------------------------------------------
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """H: (B, D, Yv, Xv) volume → (B, 1, Y, X) light field (differentiable
        in the volume)."""
        self._check_volume(volume)
        x = self._to_compute(F.pixel_unshuffle(volume, self.voxels_per_lenslet))
        out = None
        with _tf32(self.compute == "tf32"):
            for g in self._groups:
                part = F.conv2d(x[:, g.start : g.stop], self._weight(g), padding=g.radius)
                out = part if out is None else out + part
        return F.pixel_shuffle(out.to(volume.dtype), self.nnum)

    def adjoint(self, lightfield: torch.Tensor) -> torch.Tensor:
        """Hᵀ: (B, 1, Y, X) light field → (B, D, Yv, Xv) volume (differentiable
        in the light field)."""
        self._check_lightfield(lightfield)
        y = self._to_compute(F.pixel_unshuffle(lightfield, self.nnum))
        with _tf32(self.compute == "tf32"):
            parts = [F.conv_transpose2d(y, self._weight(g), padding=g.radius) for g in self._groups]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return F.pixel_shuffle(x.to(lightfield.dtype), self.voxels_per_lenslet)

    def _weight(self, g: _Group) -> torch.Tensor:
        w = getattr(self, g.buffer)
        return w.to(torch.bfloat16) if self.compute == "bf16" else w

    def _to_compute(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16) if self.compute == "bf16" else t

    @property
    def weight_bytes(self) -> int:
        """Memory of the weights (all depth groups), bytes."""
        return sum(getattr(self, g.buffer).nbytes for g in self._groups)

    def flops(self, n_lenslets: tuple[int, int], batch: int = 1) -> int:
        """Floating-point operations (2 per multiply-add) of one H or Hᵀ."""
        ny, nx = n_lenslets
        return sum(2 * batch * getattr(self, g.buffer).numel() * ny * nx for g in self._groups)

    # --- camera simulation ---------------------------------------------------
    def simulate(
        self,
        volume: torch.Tensor,
        *,
        photons: float | None = 300.0,
        background: float = 0.0,
        read_noise: float = 0.0,
        offset: float = 0.0,
        seed: int | None = None,
    ) -> torch.Tensor:
        """A noisy camera light field of a volume.

        y = Poisson(g·Hx + background) + Normal(0, read_noise²) + offset, with
        the gain g per frame chosen so the brightest noiseless pixel of H x
        receives ``photons`` photons. ``photons=None`` returns Hx +
        background + offset without noise (g = 1).

        Args:
            volume: (B, D, Yv, Xv), non-negative.
            photons: expected photons at the brightest pixel of each frame.
            background: uniform background, photons per pixel (≥ 0).
            read_noise: camera read noise, standard deviation in photons (≥ 0).
            offset: camera baseline added last, counts.
            seed: seed of a private generator (reproducible on one device).

        Returns:
            (B, 1, Y, X) light field in photon counts, the operator's dtype.
        """
        check_camera(photons, background, read_noise, offset)
        self._check_volume(volume)
        if volume.min() < 0:
            raise LFMError("volume has negative values; fluorescence volumes are non-negative")
        with torch.no_grad():
            clean = self(volume)
        if photons is None:
            return clean + background + offset
        peak = clean.amax(dim=(1, 2, 3), keepdim=True)
        gain = torch.where(peak > 0, photons / peak.clamp_min(1e-30), torch.zeros_like(peak))
        rate = clean * gain + background  # an empty frame gets background only
        generator = torch.Generator(device=clean.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        counts = torch.poisson(rate, generator=generator)
        if read_noise > 0:
            noise = torch.randn(
                counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
            )
            counts = counts + read_noise * noise
        return counts + offset

    def norm(self) -> float:
        """‖H‖₂, the largest singular value, on an unbounded sensor (cached).

        H is a multi-channel convolution with non-negative weights, so its
        transfer matrix obeys |Ŵ(ω)| ≤ Ŵ(0) entrywise and, for non-negative
        matrices, the spectral norm grows with the entries: the supremum over
        frequencies is σ_max(Ŵ(0)), the SVD of the (nnum², D·s²) matrix of
        summed taps. Zero padding only lowers it, so this bounds H on any
        finite field and is tight for large ones (tested against power
        iteration). 1/‖H‖² is thus a safe gradient step everywhere.
        """
        if self._norm is None:
            dc = torch.cat(
                [getattr(self, g.buffer).double().sum(dim=(2, 3)) for g in self._groups], dim=1
            )
            self._norm = float(torch.linalg.matrix_norm(dc.cpu(), ord=2))
        return self._norm

    # --- checks --------------------------------------------------------------
    def _check_volume(self, v: torch.Tensor) -> None:
        s, d = self.voxels_per_lenslet, self.n_depths
        if not isinstance(v, torch.Tensor) or v.ndim != 4:
            raise LFMError(
                f"volume must be a (B, D, Yv, Xv) tensor, got"
                f" {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
            )
        if v.shape[1] != d:
            raise LFMError(
                f"volume has {v.shape[1]} depths but the PSF bank has {d}; use a volume"
                f" of shape (B, {d}, ny·{s}, nx·{s})"
            )
        if v.shape[2] % s or v.shape[3] % s or v.shape[2] == 0 or v.shape[3] == 0:
            raise LFMError(
                f"volume is {v.shape[2]}×{v.shape[3]} voxels laterally; it must be a"
                f" multiple of s = {s} voxels per lenslet (e.g."
                f" {max(1, round(v.shape[2] / s)) * s}×{max(1, round(v.shape[3] / s)) * s})"
            )
        self._check_tensor(v, "volume")

    def _check_lightfield(self, y: torch.Tensor) -> None:
        n = self.nnum
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[1] != 1:
            raise LFMError(
                f"light field must be a (B, 1, Y, X) tensor, got"
                f" {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
            )
        if y.shape[2] % n or y.shape[3] % n or y.shape[2] == 0 or y.shape[3] == 0:
            raise LFMError(
                f"light field is {y.shape[2]}×{y.shape[3]} px but the PSF bank expects"
                f" multiples of nnum = {n} in both axes (e.g."
                f" {max(1, y.shape[2] // n) * n}×{max(1, y.shape[3] // n) * n}); rectify the"
                " raw image first"
            )
        self._check_tensor(y, "light field")

    def _check_tensor(self, t: torch.Tensor, what: str) -> None:
        if t.dtype != self.dtype:
            raise LFMError(
                f"{what} is {t.dtype} but the operator is {self.dtype}; convert with"
                f" .to({self.dtype}) or build the operator with dtype={t.dtype}"
            )
        if t.device != self.device:
            raise LFMError(f"{what} is on {t.device} but the operator on {self.device}")
        if not torch.isfinite(t).all():
            raise LFMError(f"{what} contains NaN or infinity")


def check_camera(photons, background=0.0, read_noise=0.0, offset=0.0) -> None:
    """Validate the camera model of :meth:`LightFieldOperator.simulate`."""
    for name, value in (("background", background), ("read_noise", read_noise)):
        if not math.isfinite(value) or value < 0:
            raise LFMError(f"{name} must be a non-negative number of photons, got {value}")
    if photons is not None and (not math.isfinite(photons) or photons <= 0):
        raise LFMError(f"photons must be a positive number (or None for no noise), got {photons}")
    if not math.isfinite(offset):
        raise LFMError(f"offset must be finite, got {offset}")


def _tf32(enabled: bool):
    """cuDNN TF32 switched on or off for a block (PyTorch enables it by default
    for convolutions, which would make "exact" only ~1e-3 accurate on GPUs)."""
    return torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=torch.backends.cudnn.benchmark,
        deterministic=torch.backends.cudnn.deterministic,
        allow_tf32=enabled,
    )


def _radius_runs(radii: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs of depths with equal radius: (start, stop, radius)."""
    runs = []
    start = 0
    for d in range(1, len(radii) + 1):
        if d == len(radii) or radii[d] != radii[start]:
            runs.append((start, d, int(radii[start])))
            start = d
    return runs


def _polyphase_weight(bank: PSFBank, start: int, stop: int, radius: int) -> np.ndarray:
    """(nnum², (stop−start)·s², 2R+1, 2R+1) conv weight of depths [start, stop)."""
    n, s = bank.nnum, bank.voxels_per_lenslet
    size = n * (2 * radius + 1)
    o = (bank.kernel_size - size) // 2
    k = bank.kernels[start:stop, :, :, o : o + size, o : o + size]
    k = k.reshape(stop - start, s, s, 2 * radius + 1, n, 2 * radius + 1, n)
    k = k[:, :, :, ::-1, :, ::-1, :]  # m = 2R − m'
    # (d, a, b, m, u, n, v) → (u, v, d, a, b, m, n)
    k = k.transpose(4, 6, 0, 1, 2, 3, 5)
    return np.ascontiguousarray(
        k.reshape(n * n, (stop - start) * s * s, 2 * radius + 1, 2 * radius + 1)
    )
