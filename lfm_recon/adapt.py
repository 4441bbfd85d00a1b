"""Test-time adaptation: fine-tune a trained network on a recording's own
light fields before reconstructing it.

No ground truth exists for a recording, but each frame says how well a
reconstruction explains it. A network is adapted by minimising the Poisson
deviance of its reconstructions (``training.losses.poisson_resynthesis``)
on pixels *hidden* from it: each step draws a random fraction of the pixels,
the network reconstructs from the rest, and is scored on how well it
predicts the hidden ones. Fitting the photon noise of the pixels it sees
does not help it predict the others, so the loss keeps pointing at the
reconstruction rather than at the noise (the self-supervised measurement
loss of test-time training, Darestani, Liu & Heckel 2022, with a pixel
split instead of a k-space split). A fixed split of a few frames is kept
aside and scored every ``check_every`` steps; the adapted network is the
one that predicted it best (early stopping), the original if none did better.

The PSF binding does not change (H is fixed); the model file of an adapted
network records what it was adapted on, and the pipeline's provenance does
too.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import LFMError
from .recording import spread
from .training import losses
from .training.data import frame_set
from .training.sampler import draw_patch, stack_patches
from .unfolded import UnfoldedISTA

PARAMETER_SETS = ("all", "scalars")


@dataclass(frozen=True)
class AdaptConfig:
    """How to adapt (``lfm-recon adapt`` / ``reconstruct --adapt``).

    Attributes:
        steps: optimiser steps (each one forward and backward pass).
        frames: at most this many frames of the recording are used (spread
            evenly over it).
        batch: light fields per step.
        patch_lenslets: side of random patches (0 = whole frames); losses
            are scored where a patch explains itself, as in training.
        holdout: fraction of pixels hidden from the network and scored.
        lr: Adam learning rate of the steps, thresholds and gains; the CNN
            prior's is ``lr / 10``.
        parameters: ``"all"`` or ``"scalars"`` (only the network's
            :meth:`~lfm_recon.unfolded.UnfoldedISTA.scalar_parameters`:
            steps, thresholds, and where the architecture has them the
            shared prior's gains, the adjoint start's scale and the SNR
            exponents; the prior's shape is kept).
        check_every: steps between checks on the kept-aside split.
        seed: the random draws (patches, pixel splits).
    """

    steps: int = 50
    frames: int = 32
    batch: int = 4
    patch_lenslets: int = 0
    holdout: float = 0.2
    lr: float = 0.005
    parameters: str = "all"
    check_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "frames", "batch", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LFMError(f"adapt {name} must be a positive integer, got {value!r}")
        if isinstance(self.patch_lenslets, bool) or self.patch_lenslets < 0:
            raise LFMError(f"adapt patch_lenslets must be ≥ 0, got {self.patch_lenslets!r}")
        if not 0 < self.holdout < 1:
            raise LFMError(f"adapt holdout is a fraction of pixels in (0, 1), got {self.holdout}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LFMError(f"adapt lr must be a positive number, got {self.lr}")
        if self.parameters not in PARAMETER_SETS:
            raise LFMError(
                f"adapt parameters must be one of {PARAMETER_SETS}, got {self.parameters!r}"
            )


def adapt(
    net: UnfoldedISTA,
    frames,
    background: float | np.ndarray = 0.0,
    config: AdaptConfig | None = None,
    *,
    progress: bool = False,
) -> tuple[UnfoldedISTA, dict]:
    """Adapt a copy of ``net`` to light fields ``frames``.

    Args:
        net: a trained network (not changed).
        frames: (T, Y, X) or (T, 1, Y, X) rectified light fields, counts.
        background: counts per pixel: one number, or one per frame (T,);
            the record keeps those of the frames used.
        config: :class:`AdaptConfig` (default: its defaults).
        progress: print one line per check.

    Returns:
        (the adapted network in eval mode, a record: the config, the frames
        used, the held-out deviance per photon before and after, the step
        kept, seconds).
    """
    cfg = config or AdaptConfig()
    if not isinstance(net, UnfoldedISTA):
        raise LFMError(f"adapt needs an UnfoldedISTA, got {type(net).__name__}")
    y = torch.as_tensor(np.asarray(frames, dtype=np.float32))
    if y.ndim == 3:
        y = y[:, None]
    if y.ndim != 4 or y.shape[1] != 1:
        raise LFMError(f"frames must be (T, Y, X) or (T, 1, Y, X), got {tuple(y.shape)}")
    b = np.asarray(background, dtype=np.float32).reshape(-1)
    if b.size not in (1, len(y)):
        raise LFMError(
            f"background must be one number or one per frame ({len(y)}), got {b.size} values"
        )
    one_background = b.size == 1
    b = np.broadcast_to(b, (len(y),))
    picked = spread(len(y), cfg.frames)
    # checks size, NaN and background with clear errors
    net.normalise(y[picked], torch.from_numpy(b[picked]).reshape(-1, 1, 1, 1))
    op = net.op
    device = op.device
    nnum, s = op.nnum, op.voxels_per_lenslet
    lenslets = min(y.shape[-2], y.shape[-1]) // nnum
    patch = cfg.patch_lenslets if 0 < cfg.patch_lenslets < lenslets else 0
    margin = int(np.max(op.bank.radii))
    if patch and patch <= 2 * margin:
        raise LFMError(
            f"adapt patch_lenslets = {patch} leaves no part of a patch that its light field"
            f" explains; use more than {2 * margin} lenslets, or 0 for whole frames"
        )
    frameset = frame_set("recording", y[picked].numpy(), b[picked])
    tuned = copy.deepcopy(net).train()
    params = tuned.scalar_parameters()
    prior = []
    if cfg.parameters == "all" and tuned.priors is not None:
        prior = list(tuned.priors.parameters())
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in params + prior:
        p.requires_grad_(True)
    groups = [{"params": params, "lr": cfg.lr}]
    if prior:
        groups.append({"params": prior, "lr": cfg.lr / 10})
    opt = torch.optim.Adam(groups)

    check = _check_split(frameset, cfg, device)
    start = time.perf_counter()
    best_loss = before = _held_out(tuned, check)
    best_state, best_step = copy.deepcopy(tuned.state_dict()), 0
    rng = np.random.default_rng([cfg.seed, 11])
    for step in range(1, cfg.steps + 1):
        items = [draw_patch(rng, [frameset], nnum, s, patch, margin, [0]) for _ in range(cfg.batch)]
        batch = stack_patches(items, labelled=False).to(device)
        hidden = torch.from_numpy(rng.random(batch.y.shape) < cfg.holdout).to(device, batch.y.dtype)
        loss = _loss(tuned, batch.y, batch.background, batch.scale, hidden, batch.lf_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params + prior, 1.0)
        if not torch.isfinite(loss):
            break
        opt.step()
        if step % cfg.check_every == 0 or step == cfg.steps:
            value = _held_out(tuned, check)
            if progress:
                print(f"adapt step {step}: held-out deviance per photon {value:.5f}")
            if value < best_loss:
                best_loss, best_step = value, step
                best_state = copy.deepcopy(tuned.state_dict())
    tuned.load_state_dict(best_state)
    for p in tuned.parameters():
        p.requires_grad_(True)
    record = {
        "config": asdict(cfg),
        "frames_used": [int(i) for i in picked],
        "background": float(b[0]) if one_background else b[picked].tolist(),  # as frames_used
        "held_out_deviance_before": before,
        "held_out_deviance_after": best_loss,
        "step_kept": best_step,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return tuned.eval(), record


def _loss(net, y, b, scale, hidden, weight) -> torch.Tensor:
    """Deviance per photon on the hidden pixels of normalised light fields."""
    c = scale
    xn = net(y, b, scale=c, weight=1 - hidden) / c
    return losses.poisson_resynthesis(net.op, xn, y / c, b / c, hidden * weight)


@torch.no_grad()
def _held_out(net, check) -> float:
    was = net.training
    net.eval()
    try:
        value = float(_loss(net, *check))
    finally:
        net.train(was)
    return value


def _check_split(frameset, cfg: AdaptConfig, device):
    """Up to 4 whole frames with a fixed pixel split, kept aside for early stopping."""
    n = min(4, len(frameset))
    rng = np.random.default_rng([cfg.seed, 12])
    y = torch.from_numpy(frameset.y[:n]).to(device)
    b = torch.from_numpy(frameset.background[:n]).reshape(-1, 1, 1, 1).to(device)
    c = torch.from_numpy(frameset.scale[:n]).reshape(-1, 1, 1, 1).to(device)
    hidden = torch.from_numpy(rng.random(y.shape) < cfg.holdout).to(device, y.dtype)
    return y, b, c, hidden, torch.ones_like(y)
