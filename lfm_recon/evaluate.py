"""Score reconstructions of a simulated data set against its ground truth.

Normalisation, stated once: a light field was simulated as
Poisson(g·H v + b), so a reconstruction x (photons per voxel) estimates g·v.

- PSNR: x scaled to v by least squares, peak = max(v) (scale-free).
- SSIM (3-D, Gaussian σ 1.5 voxels): x / g against v, not refitted, since
  least-squares scaling shrinks noisy reconstructions toward zero and so
  raises their SSIM on sparse volumes.
- Pearson correlation: scale-free.
- Reprojection residual ‖H x + b − y‖ / ‖y‖.
- Detection: local maxima of x matched to the somata (metrics.detection_scores,
  default tolerances), pooled over volumes into one precision/recall/F1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics
from .data import SimulatedData
from .errors import LFMError
from .operator import LightFieldOperator
from .solvers import solve


@dataclass(frozen=True)
class Scores:
    """Per-volume metrics (B,) and the pooled detection score."""

    psnr: np.ndarray
    ssim: np.ndarray
    pearson: np.ndarray
    residual: np.ndarray
    detection: metrics.DetectionScore

    def summary(self) -> dict[str, float]:
        """Means over the volumes, and the pooled F1."""
        return {
            "psnr": float(np.mean(self.psnr)),
            "ssim": float(np.mean(self.ssim)),
            "pearson": float(np.mean(self.pearson)),
            "residual": float(np.mean(self.residual)),
            "f1": self.detection.f1,
        }


def check_compatible(op: LightFieldOperator, data: SimulatedData) -> None:
    """A data set must come from the operator's PSF bank."""
    if data.psf_sha256 != op.bank_sha256:
        raise LFMError(
            f"the data set was simulated with PSF bank {data.psf_sha256[:12]}… but the"
            f" operator uses {op.bank_sha256[:12]}…; evaluate with the bank it was made"
            " with (lfm-recon simulate --psf)"
        )


def score(x, data: SimulatedData, indices, op: LightFieldOperator, background=0.0) -> Scores:
    """Metrics of reconstructions ``x`` (B, D, Yv, Xv) of the paired samples
    ``indices`` (B,) of ``data`` (see the module docstring); ``background``
    in photons per pixel, a number or (B,)."""
    indices = np.asarray(indices)
    background = np.asarray(background, dtype=np.float64)
    if background.ndim == 1:
        background = background.reshape(-1, 1, 1, 1)
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    gt = data.volumes[indices]
    gains = data.gains[indices].reshape(-1, 1, 1, 1)
    y = torch.from_numpy(data.lightfields[indices])
    centres = [data.somata[data.somata[:, 0] == i, 1:4] for i in indices]
    return Scores(
        psnr=np.atleast_1d(metrics.psnr(x, gt)),
        ssim=np.atleast_1d(metrics.ssim(x / gains, gt, scale=False)),
        pearson=np.atleast_1d(metrics.pearson(x, gt)),
        residual=np.atleast_1d(metrics.reprojection_residual(op, x, y, background)),
        detection=metrics.DetectionScore.combine(
            metrics.detection_scores(x, centres, data.depths, data.voxel_size)
        ),
    )


def evaluate(
    op: LightFieldOperator,
    data: SimulatedData,
    method: str,
    n_iter: int | None = None,
    *,
    frames: int | None = None,
    batch: int = 8,
    progress: bool = False,
    **options,
) -> tuple[Scores, float]:
    """Reconstruct the paired light fields of ``data`` with ``method`` (see
    :func:`lfm_recon.solvers.solve`, which takes ``options``) and score them.

    The data set's background is the solvers' background. Returns the scores
    and the seconds per volume (reconstruction only, in batches of ``batch``).
    """
    check_compatible(op, data)
    n = len(data.volumes) if frames is None else min(frames, len(data.volumes))
    if n == 0:
        raise LFMError("the data set has no paired samples (volume + light field) to score")
    background = float(data.simulation.get("background", 0.0))
    parts, seconds = [], 0.0
    for start in range(0, n, batch):
        y = torch.from_numpy(data.lightfields[start : start + batch])
        t0 = time.perf_counter()
        parts.append(solve(op, y, method, n_iter, background=background, **options).cpu())
        seconds += time.perf_counter() - t0
    x = torch.cat(parts)
    return score(x, data, np.arange(n), op, background), seconds / n
