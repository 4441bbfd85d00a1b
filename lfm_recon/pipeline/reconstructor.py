"""The per-batch reconstructor and the array API.

* :class:`Reconstructor` — light fields (B, 1, Y, X) → volumes (B, D, Yv, Xv)
  by one method ("net" or a solver) with its options.
* :func:`load_reconstructor` — the one place where a model file or PSF bank
  is loaded and the :class:`Reconstructor` built (with the provenance that
  goes into every output).
* :func:`reconstruct` — frames held in memory → volumes (the per-frame API).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..background import AUTO, frames_background, split_level
from ..errors import LFMError
from ..operator import LightFieldOperator
from ..psf.bank import PSFBank
from ..recording import file_sha256
from ..solvers import (
    DEFAULT_LAMBDA_FRACTION,
    FILTERED_METHODS,
    METHODS,
    check_filter,
    default_iterations,
    rl_auto,
    solve,
)
from ..unfolded import UnfoldedISTA

ALL_METHODS = ("net", *METHODS)
PRECISIONS = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}


class Reconstructor:
    """Light fields (B, 1, Y, X) → volumes (B, D, Yv, Xv) by one method.

    Args:
        model_or_op: an :class:`~lfm_recon.unfolded.UnfoldedISTA` (any
            method; "net" needs it) or a :class:`LightFieldOperator`.
        method: "net" or a solver of :data:`lfm_recon.solvers.METHODS`.
        background: the frames' constant level c, counts per pixel: c ≥ 0
            is the model's background, c < 0 (a camera offset below the dark
            frame) is added back to the frames (:mod:`lfm_recon.background`);
            or ``"auto"``: estimated from the frames by
            :meth:`estimate_background` before the first call.
        n_iter, lam_fraction, rho, prior, filter, accelerate: the solvers'
            (see :func:`lfm_recon.solvers.solve`); "net" takes none of them
            (a filter or accelerate with "net" is an error).
        refit: "net" only: ``"none"``, ``"layers"`` or ``"all"`` overrides the
            model's ``holdout_refit`` (:class:`~lfm_recon.unfolded.UnfoldedConfig`:
            after the held-out guard's decisions, run again on every pixel;
            "none" takes about half the time of "all"); None keeps the
            model's. The model given is not changed.

    Calling it returns float32 volumes in photons per voxel on the
    operator's device, whatever the operator's dtype. Frames without signal
    (all ≤ background) give a zero volume (the solvers would refuse them;
    one dark frame must not stop a recording). After a call,
    ``frame_info`` holds per frame (lists, None where it does not apply)
    ``iterations``: the solver's iteration count (with ``"auto"`` the
    frame's held-out stop), or the network's RL start's; and ``blend``:
    the network's held-out guard α (1: the network unchanged, 0: its RL
    start; :class:`~lfm_recon.unfolded.UnfoldedConfig`); ``antialiased``:
    1 where the guard then anti-aliased the frame, 0 where it did not
    (``holdout_antialias``).
    """

    def __init__(
        self,
        model_or_op,
        method: str = "net",
        *,
        background: float = 0.0,
        n_iter: int | None = None,
        lam_fraction: float = DEFAULT_LAMBDA_FRACTION,
        rho: float | None = None,
        prior: str = "l1",
        filter: str | None = None,
        accelerate: bool = False,
        refit: str | None = None,
    ) -> None:
        if method not in ALL_METHODS:
            raise LFMError(f"method must be one of {', '.join(ALL_METHODS)}, got {method!r}")
        if isinstance(model_or_op, UnfoldedISTA):
            self.net, self.op = model_or_op, model_or_op.op
        elif isinstance(model_or_op, LightFieldOperator):
            self.net, self.op = None, model_or_op
        else:
            raise LFMError(
                "reconstruct needs a trained model (UnfoldedISTA) or a LightFieldOperator,"
                f" got {type(model_or_op).__name__}"
            )
        if method == "net" and self.net is None:
            raise LFMError("method 'net' needs a trained model (--model); the PSF alone is not one")
        self.method, self.background = method, None
        self.estimated = isinstance(background, str) and background == AUTO
        if not self.estimated:
            self.set_background(background)
        self.n_iter = None if method == "net" else _iterations(n_iter, method, accelerate is True)
        _check_solver_options(lam_fraction, rho, prior)
        if method == "net" and filter not in (None, "none"):
            raise LFMError("--filter is for the solvers rl and isra, not for the network")
        self.filter = "none" if method == "net" else check_filter(method, filter)
        self.options = {"lam_fraction": lam_fraction, "rho": rho, "prior": prior}
        self.options["filter"] = self.filter
        if accelerate not in (True, False):
            raise LFMError(f"accelerate must be True or False, got {accelerate!r}")
        if accelerate and method != "rl":
            raise LFMError(f"--accelerate is for rl (Richardson–Lucy) only, not for {method}")
        self.options["accelerate"] = bool(accelerate)
        self.refit = refit  # not a solver option
        if refit is not None:
            self.net = _with_refit(self.net, method, refit)

    def set_background(self, level) -> None:
        """Use the constant level ``level`` (counts per pixel, any sign)."""
        if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
            raise LFMError(f"background must be a number of counts or 'auto', got {level!r}")
        self.lift, self.solver_background = split_level(level)
        self.background = float(level)

    def estimate_background(self, lightfields) -> float:
        """Set the level from rectified light fields (Y, X) or (T, Y, X)
        (:func:`lfm_recon.background.estimate_background`); returns it."""
        self.set_background(frames_background(lightfields, self.op.nnum))
        return self.background

    def parameters(self) -> dict:
        """What determines the result (for provenance and resume checks)."""
        p = {"method": self.method, "background": self.background}
        if self.estimated:
            p["background_estimated"] = True
        if self.method != "net":
            p["iterations"] = self.n_iter
            if self.method in ("fista", "admm"):
                p["lam_fraction"] = self.options["lam_fraction"]
            if self.method == "admm":
                p["rho"], p["prior"] = self.options["rho"], self.options["prior"]
            if self.method in FILTERED_METHODS:
                p["filter"] = self.filter
            if self.options["accelerate"]:  # absent when off: older runs still resume
                p["accelerate"] = True
        elif self.refit is not None:  # absent unless given: older runs resume
            p["refit"] = self.refit
        return p

    @torch.no_grad()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, Y, X) counts → float32 (B, D, Yv, Xv) photons per voxel."""
        op = self.op
        if self.background is None:
            raise LFMError("background 'auto' is not estimated yet: call estimate_background")
        y = y.to(device=op.device, dtype=op.dtype)
        signal = (y - self.background).clamp_min(0).flatten(1).sum(dim=1) > 0
        # float32 always: the dtype must not depend on whether a batch holds a
        # dark frame (the zeros) or not (the method's own output dtype).
        out = torch.zeros(
            (len(y), *op.volume_shape(_lenslets(op, y))), device=op.device, dtype=torch.float32
        )
        self.frame_info = {k: [None] * len(y) for k in ("iterations", "blend", "antialiased")}
        if not bool(signal.any()):
            return out
        keep = torch.nonzero(signal).flatten()
        ys = y if bool(signal.all()) else y[keep]
        ys, b = ys + self.lift, self.solver_background  # c < 0 lifts the frames, c ≥ 0 is b
        iterations = blend = antialiased = None
        if self.method == "net":
            x = self.net(ys, b)
            cfg = self.net.config
            iterations = self.net.rl_iterations if cfg.rl_start else None
            blend = self.net.guard_blend if cfg.holdout_guard else None
            antialiased = self.net.guard_antialiased.float() if cfg.holdout_antialias else None
        elif self.n_iter == AUTO:
            acc = self.options["accelerate"]
            x, iterations = rl_auto(op, ys, background=b, filter=self.filter, accelerate=acc)
        else:
            x = solve(op, ys, self.method, self.n_iter, background=b, **self.options)
            iterations = torch.full((len(ys),), self.n_iter)
        info = {"iterations": iterations, "blend": blend, "antialiased": antialiased}
        for key, values in info.items():
            if values is not None:
                for i, v in zip(keep.tolist(), values.tolist(), strict=True):
                    self.frame_info[key][i] = v
        if bool(signal.all()):
            return x.to(torch.float32)
        out[keep] = x.to(torch.float32)
        return out


def _with_refit(net: UnfoldedISTA | None, method: str, refit) -> UnfoldedISTA:
    """A shallow copy of ``net`` (the same weights) with ``holdout_refit = refit``."""
    if method != "net":
        raise LFMError(f"--refit is for the network (--method net), not for {method}")
    if not net.config.holdout_guard:
        raise LFMError(
            "--refit re-runs the network after its held-out guard's decisions, and this model"
            " has no guard (holdout_guard = 0): leave --refit out"
        )
    out = copy.copy(net)  # shares parameters and buffers; only the config differs
    out.config = dataclasses.replace(net.config, holdout_refit=refit)  # checks the value
    return out


def _iterations(n_iter, method: str, accelerate: bool) -> int | str:
    if n_iter is None:
        return default_iterations(method, accelerate)
    if n_iter == AUTO:
        if method != "rl":
            raise LFMError(f"iterations 'auto' (the held-out stop) is for rl only, not {method}")
        return n_iter
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise LFMError(
            f"iterations (n_iter) must be a positive integer or 'auto' (rl), got {n_iter!r}"
        )
    return n_iter


def _check_solver_options(lam_fraction, rho, prior) -> None:
    """The solvers' options, checked before any file is touched."""
    from ..solvers import PRIORS

    if not (isinstance(lam_fraction, (int, float)) and math.isfinite(lam_fraction)):
        raise LFMError(f"λ fraction must be finite and ≥ 0, got {lam_fraction}")
    if lam_fraction < 0:
        raise LFMError(f"λ fraction must be finite and ≥ 0, got {lam_fraction}")
    if rho is not None and not (math.isfinite(rho) and rho > 0):
        raise LFMError(f"rho must be a positive number, got {rho}")
    if prior not in PRIORS:
        raise LFMError(f"prior must be one of {PRIORS}, got {prior!r}")


def _lenslets(op: LightFieldOperator, y: torch.Tensor) -> tuple[int, int]:
    return y.shape[-2] // op.nnum, y.shape[-1] // op.nnum


def check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LFMError(f"batch must be a positive integer, got {batch!r}")


def load_reconstructor(
    model: str | Path | None,
    psf: str | Path | None,
    method: str,
    background: float,
    device: torch.device,
    precision: str = "fp32",
    options: dict | None = None,
) -> tuple[Reconstructor, dict]:
    """Load the network (``model``) or the PSF bank (``psf``) and build the
    :class:`Reconstructor`: the one place where that happens for files.

    Args:
        model: a model file (``lfm-recon train``) or None.
        psf: a PSF bank file or None; with ``model`` it must be the model's.
        method: "net" or a solver name.
        background: counts per pixel.
        device: where the operator (and network) run.
        precision: "fp32", or "tf32"/"bf16" on CUDA.
        options: n_iter, lam_fraction, rho, prior, filter, accelerate for the
            solvers; refit for "net" (see :class:`Reconstructor`).

    Returns:
        The reconstructor and the provenance it determines (method and
        parameters, PSF/model hashes, voxel size (lateral, axial) µm and
        depths µm).
    """
    from ..modelfile import load_model

    compute = PRECISIONS.get(precision)
    if compute is None:
        raise LFMError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    if compute != "exact" and device.type != "cuda":
        raise LFMError(f"precision {precision} needs a CUDA device; use fp32 on the CPU")
    if model is None and psf is None:
        raise LFMError("give --model (a trained network) or --psf (a PSF bank for the solvers)")
    bank = None if psf is None else PSFBank.load(psf)
    provenance: dict = {"psf_sha256": None, "model_sha256": None}
    if model is not None:
        net = load_model(model, bank=bank, device=device, compute=compute)
        target = net
        provenance["model_sha256"] = file_sha256(model)
        provenance["psf_sha256"] = net.op.bank_sha256
    else:
        target = LightFieldOperator(bank, device=device, compute=compute)
        provenance["psf_sha256"] = bank.sha256
    fn = Reconstructor(target, method, background=background, **(options or {}))
    provenance.update(fn.parameters())
    provenance["voxel_size_um"] = list(fn.op.voxel_size)
    provenance["depths_um"] = list(fn.op.depths)
    return fn, provenance


def reconstruct(
    frames,
    model_or_op,
    method: str = "net",
    *,
    background: float | str = 0.0,
    batch: int = 8,
    calibration=None,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """Reconstruct light-field frames held in memory.

    Args:
        frames: (Y, X), (T, Y, X) or (T, 1, Y, X) counts (array or tensor):
            rectified light fields, or raw camera frames with ``calibration``.
        model_or_op: a trained :class:`~lfm_recon.unfolded.UnfoldedISTA` or a
            :class:`~lfm_recon.LightFieldOperator`.
        method: "net" or a solver name (see :class:`Reconstructor`).
        background: the constant level, counts per pixel (any sign, see
            :class:`Reconstructor`), or ``"auto"``: estimated from up to 8
            of the (rectified) frames (:func:`lfm_recon.background.frames_background`).
        batch: frames per batch.
        calibration: a :class:`~lfm_recon.calibration.Calibration` for raw frames.
        options: n_iter, lam_fraction, rho, prior, filter, accelerate for the
            solvers; refit for "net" (see :class:`Reconstructor`).

    Returns:
        float32 (T, D, Yv, Xv) volumes in photons per voxel ((D, Yv, Xv) for
        one 2-D frame).
    """
    fn = Reconstructor(model_or_op, method, background=background, **options)
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    single = a.ndim == 2
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if single:
        a = a[None]
    if a.ndim != 3:
        raise LFMError(f"frames must be (Y, X), (T, Y, X) or (T, 1, Y, X), got {a.shape}")
    check_batch(batch)
    if calibration is not None:
        from ..calibration import check_bank

        check_bank(calibration, fn.op.bank)
    if fn.background is None:
        fn.set_background(frames_background(a, fn.op.nnum, calibration))
    out = []
    for start in tqdm(range(0, len(a), batch), disable=not progress, desc="reconstruct"):
        y = a[start : start + batch].astype(np.float32)
        if calibration is not None:
            y = calibration.apply(y)
        y = torch.from_numpy(np.ascontiguousarray(y))[:, None]
        out.append(fn(y).cpu().numpy())
    volumes = np.concatenate(out)
    return volumes[0] if single else volumes
