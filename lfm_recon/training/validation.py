"""Validation during training: the current network on the validation set's
whole frames, scored against its ground truth (``lfm_recon.evaluate``)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch

from ..evaluate import score
from ..unfolded import UnfoldedISTA
from .data import TrainingData


class Validator:
    """Scores a network on ``data.validation`` (the samples
    ``data.validation_indices``), in batches of ``batch`` frames."""

    def __init__(self, data: TrainingData, device: torch.device, batch: int = 4) -> None:
        self.data, self.device, self.batch = data, device, batch
        self.last_volumes: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, net: UnfoldedISTA, precision: AbstractContextManager) -> dict:
        """Mean PSNR, SSIM, Pearson, residual and pooled F1 (a dict)."""
        data, idx = self.data.validation, self.data.validation_indices
        background = self.data.validation_background  # (n,) photons per pixel
        parts = []
        was_training = net.training
        net.eval()
        try:
            for start in range(0, len(idx), self.batch):
                y = torch.from_numpy(data.lightfields[idx[start : start + self.batch]])
                b = torch.from_numpy(background[start : start + self.batch].astype(np.float32))
                with precision:
                    parts.append(net(y.to(self.device), b.to(self.device)).float().cpu())
        finally:
            net.train(was_training)
        self.last_volumes = torch.cat(parts)
        return score(self.last_volumes, data, idx, net.op, background).summary()
