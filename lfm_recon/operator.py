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

Depths are grouped by kernel radius (wherever they sit in z), each group with
its own weight, so focal depths with small kernels do not pay for defocused
ones. H and Hᵀ are autograd Functions whose backward passes are Hᵀ and H, so
gradients are exact and run in the same precision as the forward pass.

Groups whose radius is at least ``fft_radius`` (7 lenslets by default: high-NA
optics) convolve by FFT instead: the frame zero-padded by R on each side (to
a 5-smooth size), one rfft2 per input channel, a complex matmul per frequency
bin against the weight's spectrum (computed once per frame size and kept),
one irfft2 per output channel. Padding by R leaves no circular wrap-around
in the kept outputs, so it is the same convolution; Hᵀ multiplies by the
conjugate spectrum and crops, its exact adjoint. Measured on a 2-core CPU
(``benchmarks/bench_operator_fft.py``): R = 13 in 0.37× the direct time,
R = 7 in 0.71×, while R ≤ 6 is faster direct.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import LFMError
from .psf.bank import PSFBank
from .psf.lightfield import _fast_size

COMPUTE_MODES = ("exact", "tf32", "bf16")
FFT_RADIUS = 7  # groups with R ≥ this convolve by FFT (bench_operator_fft.py)
FFT_MAX_BYTES = 1 << 30  # a group's spectrum above this (a very large frame): direct


@dataclass(frozen=True)
class _Group:
    """Depths sharing one kernel radius. ``channels`` is their slice of the
    unshuffled volume when contiguous, else None and ``index`` names a buffer
    of channel indices."""

    radius: int
    weight: str
    channels: slice | None
    index: str | None
    fft: bool = False  # convolve by FFT (see the module doc)


class LightFieldOperator(nn.Module):
    """H and Hᵀ of a PSF bank as fixed convolutions.

    Args:
        bank: the PSF bank (kernels (D, s, s, K, K)).
        dtype: float32 (default) or float64 for inputs, outputs and weights.
        device: where the weights live.
        compute: ``"exact"`` (default: full precision in ``dtype``; on CUDA
            TF32 is switched off, so the adjoint stays exact), ``"tf32"``
            (CUDA tensor cores with TF32, ~1e-3 relative) or ``"bf16"``
            (convolutions in bfloat16, ~1e-2 relative, results summed in
            ``dtype``). Both fast modes are meant for CUDA.
        check_inputs: check every input for NaN/Inf (a device sync on CUDA).
            Solvers that check their data once may switch it off for speed.
        fft_radius: depth groups with a kernel radius ≥ this many lenslets
            convolve by FFT (module doc; the same H to rounding, ~1e-6
            relative in float32); None: all direct. Only with ``compute =
            "exact"``. Each frame size's weight spectra are kept (about
            nnum² · D_R · s² · (ny + 2R) · (nx/2 + R + 1) · 8 bytes per group
            in float32; a group whose spectrum would exceed 1 GiB stays direct).

    Shapes: volumes (B, D, Yv, Xv) with Yv = ny·s, Xv = nx·s; light fields
    (B, 1, Y, X) with Y = ny·nnum, X = nx·nnum; ny, nx ≥ 1 lenslets. Light
    that a kernel sends beyond the sensor's edge is lost (zero padding).

    The weights are non-persistent buffers (derived from the bank, moved by
    ``.to()``); a ``state_dict`` holds only the bank's hash, and loading one
    saved with another bank is an error. Applying the operator never changes
    it.
    """

    def __init__(
        self,
        bank: PSFBank,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        compute: str = "exact",
        check_inputs: bool = True,
        fft_radius: int | None = FFT_RADIUS,
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
        if fft_radius is not None and (
            isinstance(fft_radius, bool) or not isinstance(fft_radius, int) or fft_radius < 1
        ):
            raise LFMError(
                f"fft_radius must be a kernel radius in lenslets ≥ 1 (or None: no FFT),"
                f" got {fft_radius!r}"
            )
        self.fft_radius = fft_radius
        self._spectra: dict = {}  # (group, ny, nx, device, dtype) → (Py, Px, spectrum) or None
        self.compute = compute
        self.check_inputs = check_inputs
        self.dtype = dtype
        self.n_depths = bank.n_depths
        self.voxels_per_lenslet = bank.voxels_per_lenslet
        self.nnum = bank.nnum
        self.bank = bank  # the source of the weights (numpy, stays on the host)
        self.bank_sha256 = bank.sha256
        self.depths = tuple(float(z) for z in bank.depths)
        self.voxel_size = bank.voxel_size  # (lateral, axial) µm
        s2 = self.voxels_per_lenslet**2
        store = torch.bfloat16 if compute == "bf16" else dtype
        groups, summed = [], []
        for i, radius in enumerate(sorted(set(bank.radii.tolist()))):
            depths = np.flatnonzero(bank.radii == radius)
            weight = _polyphase_weight(bank, depths, radius)
            summed.append(weight.astype(np.float64).sum(axis=(2, 3)))
            channels = (depths[:, None] * s2 + np.arange(s2)).ravel()
            contiguous = np.array_equal(channels, np.arange(channels[0], channels[-1] + 1))
            name = f"weight_{i}"
            self.register_buffer(
                name, torch.as_tensor(weight, device=device).to(store), persistent=False
            )
            index = None
            if not contiguous:
                index = f"channels_{i}"
                self.register_buffer(
                    index, torch.as_tensor(channels, device=device), persistent=False
                )
            span = slice(int(channels[0]), int(channels[-1]) + 1) if contiguous else None
            fft = compute == "exact" and fft_radius is not None and radius >= fft_radius
            groups.append(_Group(int(radius), name, span, index, bool(fft)))
        self._groups = tuple(groups)
        # ‖H‖₂: H is a multi-channel convolution with non-negative weights, so
        # |Ŵ(ω)| ≤ Ŵ(0) entrywise and, the spectral norm being monotone on
        # non-negative matrices, sup_ω σ_max(Ŵ(ω)) = σ_max(Ŵ(0)).
        self._norm = float(np.linalg.norm(np.concatenate(summed, axis=1), ord=2))

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.double() move the weights: kept spectra of the old ones go.
        self._spectra = {}
        return super()._apply(fn, *args, **kwargs)

    # --- shapes and sizes ------------------------------------------------------
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
    def device(self) -> torch.device:
        return getattr(self, self._groups[0].weight).device

    @property
    def weight_bytes(self) -> int:
        """Memory of the weights (all depth groups), bytes; the FFT path's
        spectra come on top, per frame size (see ``fft_radius``)."""
        return sum(getattr(self, g.weight).nbytes for g in self._groups)

    def flops(self, n_lenslets: tuple[int, int], batch: int = 1) -> int:
        """Floating-point operations (2 per multiply-add) of one H or Hᵀ as
        direct convolutions (groups on the FFT path do fewer)."""
        ny, nx = n_lenslets
        return sum(2 * batch * getattr(self, g.weight).numel() * ny * nx for g in self._groups)

    def norm(self) -> float:
        """‖H‖₂, the largest singular value, on an unbounded sensor.

        Exact for the non-negative kernels of a PSF bank: σ_max of the
        (nnum², D·s²) matrix of summed taps. Zero padding only lowers it, so
        it bounds H on any finite field and is tight for large ones (tested
        against power iteration): 1/‖H‖² is a safe gradient step everywhere.
        """
        return self._norm

    # --- H and Hᵀ --------------------------------------------------------------
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """H: (B, D, Yv, Xv) volume → (B, 1, Y, X) light field (differentiable)."""
        self._check_volume(volume)
        return _Forward.apply(volume, self)

    def adjoint(self, lightfield: torch.Tensor) -> torch.Tensor:
        """Hᵀ: (B, 1, Y, X) light field → (B, D, Yv, Xv) volume (differentiable)."""
        self._check_lightfield(lightfield)
        return _Adjoint.apply(lightfield, self)

    def project(self, volume: torch.Tensor) -> torch.Tensor:
        """H without the input checks, differentiable: for inner loops (the
        unfolded network) whose input was checked once. (B, D, Yv, Xv) →
        (B, 1, Y, X), in the operator's dtype and device."""
        return _Forward.apply(volume, self)

    def backproject(self, lightfield: torch.Tensor) -> torch.Tensor:
        """Hᵀ without the input checks, differentiable (see :meth:`project`)."""
        return _Adjoint.apply(lightfield, self)

    def _h(self, volume: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(volume, self.voxels_per_lenslet)
        out = None
        with self._precision():
            for i, g in enumerate(self._groups):
                spectrum = self._spectrum(i, x.shape[-2:]) if g.fft else None
                if spectrum is not None:
                    part = _fft_correlate(self._take(x, g), spectrum, g.radius)
                else:
                    part = F.conv2d(
                        self._compute(self._take(x, g)), getattr(self, g.weight), padding=g.radius
                    ).to(volume.dtype)
                out = part if out is None else out + part
        return F.pixel_shuffle(out, self.nnum)

    def _ht(self, lightfield: torch.Tensor) -> torch.Tensor:
        y = self._compute(F.pixel_unshuffle(lightfield, self.nnum))
        b, _, ny, nx = y.shape
        full = self.n_depths * self.voxels_per_lenslet**2
        out = None
        with self._precision():
            for i, g in enumerate(self._groups):
                spectrum = self._spectrum(i, (ny, nx)) if g.fft else None
                if spectrum is not None:
                    part = _fft_correlate_adjoint(y, spectrum, g.radius)
                else:
                    part = F.conv_transpose2d(y, getattr(self, g.weight), padding=g.radius)
                part = part.to(lightfield.dtype)
                if g.channels == slice(0, full):
                    out = part
                    continue
                if out is None:
                    out = lightfield.new_zeros((b, full, ny, nx))
                if g.channels is not None:
                    out[:, g.channels] = part
                else:
                    out = out.index_copy(1, getattr(self, g.index), part)
        return F.pixel_shuffle(out, self.voxels_per_lenslet)

    def _spectrum(self, i: int, lenslets) -> tuple | None:
        """Group i's weight spectrum for frames of (ny, nx) lenslets:
        (Py, Px, (bins, nnum², C) complex), the conjugate rfft2 of the
        weight zero-padded to Py × Px; None if it would be too large.
        Computed on first use and kept (the weights never change)."""
        g = self._groups[i]
        w = getattr(self, g.weight)
        ny, nx = (int(n) for n in lenslets)
        key = (i, ny, nx, w.device, w.dtype)
        if key not in self._spectra:
            r, (o, c) = g.radius, w.shape[:2]
            py, px = _fast_size(ny + 2 * r, 1), _fast_size(nx + 2 * r, 1)
            bins = py * (px // 2 + 1)
            entry = None
            if o * c * bins * 2 * w.element_size() <= FFT_MAX_BYTES:
                padded = w.new_zeros((o, c, py, px))
                padded[..., : 2 * r + 1, : 2 * r + 1] = w
                # conv2d is a cross-correlation: it multiplies by the conjugate spectrum.
                spectrum = torch.fft.rfft2(padded).conj().permute(2, 3, 0, 1)
                entry = (py, px, spectrum.reshape(bins, o, c).contiguous())
                del padded
            if len(self._spectra) >= 4 * len(self._groups):  # a few frame sizes at most
                self._spectra.pop(next(iter(self._spectra)))
            self._spectra[key] = entry
        return self._spectra[key]

    def _take(self, x: torch.Tensor, g: _Group) -> torch.Tensor:
        if g.channels is not None:
            return x[:, g.channels]
        return x.index_select(1, getattr(self, g.index))

    def _compute(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16) if self.compute == "bf16" else t

    def _precision(self):
        if self.device.type != "cuda":
            return nullcontext()
        return _cudnn_tf32(self.compute == "tf32")

    # --- camera simulation -----------------------------------------------------
    def peak_gain(self, volume: torch.Tensor, photons: float) -> torch.Tensor:
        """(B,) gains g that put ``photons`` at the brightest pixel of g·H x
        (0 for an empty frame)."""
        with torch.no_grad():
            peak = self(volume).amax(dim=(1, 2, 3))
        return torch.where(peak > 0, photons / peak.clamp_min(1e-30), torch.zeros_like(peak))

    def simulate(
        self,
        volume: torch.Tensor,
        *,
        photons: float | None = 300.0,
        gain: torch.Tensor | float | None = None,
        background: float = 0.0,
        read_noise: float = 0.0,
        offset: float = 0.0,
        seed: int | None = None,
    ) -> torch.Tensor:
        """A noisy camera light field of a volume.

        y = Poisson(g·Hx + background) + Normal(0, read_noise²) + offset.
        The gain g (photons per unit of H x) is ``gain`` if given, else
        :meth:`peak_gain` with ``photons`` per frame. With ``photons=None``
        and no gain the result is noise-free: H x + background + offset.

        Args:
            volume: (B, D, Yv, Xv), non-negative.
            photons: expected photons at the brightest pixel of each frame.
            gain: fixed gain, a number or (B,) tensor (overrides ``photons``).
            background: uniform background, photons per pixel (≥ 0).
            read_noise: camera read noise, standard deviation in photons (≥ 0).
            offset: camera baseline added last, counts.
            seed: seed of a private generator (reproducible on one device).

        Returns:
            (B, 1, Y, X) in the operator's dtype: photon counts plus read
            noise and offset.
        """
        check_camera(photons, background, read_noise, offset)
        self._check_volume(volume)
        if volume.min() < 0:
            raise LFMError("volume has negative values; fluorescence volumes are non-negative")
        with torch.no_grad():
            clean = self(volume)
        if gain is None and photons is None:
            return clean + background + offset
        if gain is None:
            gain = self.peak_gain(volume, photons)
        gain = torch.as_tensor(gain, dtype=clean.dtype, device=clean.device)
        if not torch.isfinite(gain).all() or gain.min() < 0:
            raise LFMError("gain must be finite and non-negative")
        rate = clean * gain.reshape(-1, 1, 1, 1) + background
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

    # --- state -----------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"bank_sha256": self.bank_sha256}

    def set_extra_state(self, state: dict) -> None:
        saved = state.get("bank_sha256") if isinstance(state, dict) else None
        if saved != self.bank_sha256:
            raise LFMError(
                f"this state was saved with PSF bank {str(saved)[:12]}… but the operator"
                f" uses PSF bank {self.bank_sha256[:12]}…; load it with the PSF bank it"
                " was made for"
            )

    # --- checks ----------------------------------------------------------------
    def _check_volume(self, v: torch.Tensor) -> None:
        s, d = self.voxels_per_lenslet, self.n_depths
        if not isinstance(v, torch.Tensor) or v.ndim != 4:
            raise LFMError(
                "volume must be a (B, D, Yv, Xv) tensor, got"
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
                "light field must be a (B, 1, Y, X) tensor, got"
                f" {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
            )
        if y.shape[2] % n or y.shape[3] % n or y.shape[2] == 0 or y.shape[3] == 0:
            down = f"{max(1, y.shape[2] // n) * n}×{max(1, y.shape[3] // n) * n}"
            up = f"{-(-y.shape[2] // n) * n}×{-(-y.shape[3] // n) * n}"
            raise LFMError(
                f"light field is {y.shape[2]}×{y.shape[3]} px but the PSF bank expects"
                f" multiples of nnum = {n} in both axes (e.g. {down} or {up}); rectify the"
                " raw image to whole lenslets first"
            )
        self._check_tensor(y, "light field")

    def _check_tensor(self, t: torch.Tensor, what: str) -> None:
        if t.shape[0] == 0:
            raise LFMError(f"{what} batch is empty (B = 0)")
        if t.dtype != self.dtype:
            raise LFMError(
                f"{what} is {t.dtype} but the operator is {self.dtype}; convert with"
                f" .to({self.dtype}) or build the operator with dtype={t.dtype}"
            )
        if t.device != self.device:
            raise LFMError(f"{what} is on {t.device} but the operator on {self.device}")
        if self.check_inputs and not torch.isfinite(t).all():
            raise LFMError(f"{what} contains NaN or infinity")


class _Forward(torch.autograd.Function):
    """y = H x; its backward is Hᵀ (and Hᵀ's is H, so double backward works)."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return op._h(x)

    @staticmethod
    def backward(ctx, grad):
        return _Adjoint.apply(grad.contiguous(), ctx.op), None


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, op):
        ctx.op = op
        return op._ht(y)

    @staticmethod
    def backward(ctx, grad):
        return _Forward.apply(grad.contiguous(), ctx.op), None


def check_camera(photons, background=0.0, read_noise=0.0, offset=0.0) -> None:
    """Validate the camera model of :meth:`LightFieldOperator.simulate`."""
    for name, value in (("background", background), ("read_noise", read_noise)):
        if not math.isfinite(value) or value < 0:
            raise LFMError(f"{name} must be a non-negative number of photons, got {value}")
    if photons is not None and (not math.isfinite(photons) or photons <= 0):
        raise LFMError(f"photons must be a positive number (or None for no noise), got {photons}")
    if not math.isfinite(offset):
        raise LFMError(f"offset must be finite, got {offset}")


@contextmanager
def _cudnn_tf32(enabled: bool):
    """cuDNN TF32 on or off for a block (PyTorch enables it by default for
    convolutions, which would make "exact" only ~1e-3 accurate on GPUs), and
    cuDNN's autotuner on: H's few large convolutions repeat with the same
    shapes, and the default heuristic picked a forward algorithm 2.6× slower
    than the adjoint's for the 53-depth configuration."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = previous


def _fft_correlate(x: torch.Tensor, spectrum: tuple, radius: int) -> torch.Tensor:
    """conv2d(x, w, padding=radius) by FFT: x (B, C, ny, nx) → (B, O, ny, nx),
    with spectrum = :meth:`LightFieldOperator._spectrum`'s entry for w."""
    py, px, s = spectrum
    b, c, ny, nx = x.shape
    r, bins, o = radius, s.shape[0], s.shape[1]
    xf = torch.fft.rfft2(F.pad(x, (r, px - nx - r, r, py - ny - r)))
    xf = xf.permute(2, 3, 1, 0).reshape(bins, c, b)
    yf = torch.bmm(s, xf).reshape(py, px // 2 + 1, o, b).permute(3, 2, 0, 1)
    return torch.fft.irfft2(yf, s=(py, px))[..., :ny, :nx]


def _fft_correlate_adjoint(y: torch.Tensor, spectrum: tuple, radius: int) -> torch.Tensor:
    """The adjoint of :func:`_fft_correlate` (= conv_transpose2d(y, w,
    padding=radius)): y (B, O, ny, nx) → (B, C, ny, nx). A circular
    correlation's adjoint is the circular convolution (the conjugate of the
    kept spectrum); cropping the zero-padded border is zero padding's adjoint."""
    py, px, s = spectrum
    b, o, ny, nx = y.shape
    r, bins, c = radius, s.shape[0], s.shape[2]
    yf = torch.fft.rfft2(F.pad(y, (0, px - nx, 0, py - ny)))
    yf = yf.permute(2, 3, 0, 1).reshape(bins, b, o)
    # Σ_o conj(s[o, c]) y[o] = conj(Σ_o conj(y[o]) s[o, c]): only the small side is conjugated.
    xf = torch.bmm(yf.conj(), s).conj().reshape(py, px // 2 + 1, b, c).permute(2, 3, 0, 1)
    return torch.fft.irfft2(xf, s=(py, px))[..., r : r + ny, r : r + nx]


def _polyphase_weight(bank: PSFBank, depths: np.ndarray, radius: int) -> np.ndarray:
    """(nnum², len(depths)·s², 2R+1, 2R+1) conv weight of the given depths."""
    n, s = bank.nnum, bank.voxels_per_lenslet
    size = n * (2 * radius + 1)
    o = (bank.kernel_size - size) // 2
    k = bank.kernels[depths][:, :, :, o : o + size, o : o + size]
    k = k.reshape(len(depths), s, s, 2 * radius + 1, n, 2 * radius + 1, n)
    k = k[:, :, :, ::-1, :, ::-1, :]  # m = 2R − m'
    # (d, a, b, m, u, n, v) → (u, v, d, a, b, m, n)
    k = k.transpose(4, 6, 0, 1, 2, 3, 5)
    return np.ascontiguousarray(
        k.reshape(n * n, len(depths) * s * s, 2 * radius + 1, 2 * radius + 1)
    )
