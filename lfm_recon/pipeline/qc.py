"""Per-frame quality control: the relative reprojection residual
‖H x + b − y‖/‖y‖, the volume's max and mean, the iterations the frame
took and the network's held-out guard blend (where they apply), and flags.

A frame is flagged when its residual exceeds the median by more than 5
robust standard deviations (1.4826 · MAD, at least 1 % of the median), or is
not finite, or when it holds no signal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .reconstructor import Reconstructor

FLAG_SIGMAS = 5.0


def frame_qc(fn: Reconstructor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """QC of volumes x (B, D, Yv, Xv) reconstructed from light fields y
    (B, 1, Y, X) by the last call of ``fn``: lists of B values each for
    residual, max, mean, empty, iterations, blend and antialiased (None where
    they do not apply; see :class:`Reconstructor`)."""
    op = fn.op
    y = y.to(device=op.device, dtype=op.dtype)
    with torch.no_grad():
        r = op.project(x.to(op.dtype)) + fn.background - y
        num = r.flatten(1).double().norm(dim=1)
        den = y.flatten(1).double().norm(dim=1)
    residual = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.inf))
    empty = (y - fn.background).clamp_min(0).flatten(1).sum(dim=1) <= 0
    return {
        "residual": residual.cpu().numpy().tolist(),
        "max": x.flatten(1).amax(dim=1).double().cpu().numpy().tolist(),
        "mean": x.flatten(1).mean(dim=1).double().cpu().numpy().tolist(),
        "empty": empty.cpu().numpy().tolist(),
        **{k: list(v) for k, v in fn.frame_info.items()},
    }


def flag(residual: np.ndarray) -> np.ndarray:
    """Frames whose residual is far above the rest (robust z > 5), or not
    finite, or empty (zero volume gives residual 1 exactly: flagged as well
    when the others fit better)."""
    finite = np.isfinite(residual)
    flagged = ~finite
    if finite.sum() >= 3:
        med = float(np.median(residual[finite]))
        mad = 1.4826 * float(np.median(np.abs(residual[finite] - med)))
        flagged |= finite & (residual - med > FLAG_SIGMAS * max(mad, 0.01 * med))
    return flagged
