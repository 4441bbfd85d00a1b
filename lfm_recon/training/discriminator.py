"""A small 3-D CNN that tells ground-truth volumes from reconstructions."""

from __future__ import annotations

import torch
from torch import nn


class VolumeDiscriminator(nn.Module):
    """Patch discriminator on volumes (B, D, Yv, Xv) → scores (B,).

    Three strided 3-D convolutions (lateral stride 2, axial stride 1: volumes
    have few depth planes) with LeakyReLU, then a 1-channel convolution whose
    map is averaged: each score is the mean of local real/fake judgements
    over patches about 15 voxels wide, so it works on any patch size. Inputs
    are normalised volumes, compressed by log1p so bright somata do not
    dominate the judgement of shape.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv3d(1, c, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)),
            nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)),
            nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 2 * c, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 1, 3, padding=1),
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        v = torch.log1p(volume.clamp_min(0)).unsqueeze(1)
        return self.body(v).mean(dim=(1, 2, 3, 4))
