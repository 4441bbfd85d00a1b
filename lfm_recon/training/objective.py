"""The training objective of one step, in normalised units (light fields
and volumes divided by their frame's signal scale c, see
``lfm_recon.unfolded``):

    loss = w_sup · Σ w (x̂ − x)² / Σ w x²           labelled patches
         + w_ssim · (1 − SSIM_w(x̂, x))             labelled patches
         + w_res · Σ w (H x̂ + b − y)² / Σ w y²     every patch (or the Poisson
                                                   deviance per photon)
         + w_adv · generator loss of D(x̂)          in the adversarial stage

each term scored under the patch's weights (the part of the patch that its
light field and volume explain, ``lfm_recon.training.sampler``).
Denominators are averaged over processes, so data-parallel training equals
one process with the whole batch.
"""

from __future__ import annotations

import torch

from ..operator import LightFieldOperator
from . import losses
from .config import LossConfig
from .distributed import Processes


class Objective:
    """The weighted loss terms of a batch.

    Args:
        weights: the run's loss section.
        op: the network's operator H.
        processes: for the pooled denominators.
        ssim_floor: floor of the SSIM's data range, normalised units (keeps
            SSIM well conditioned on empty patches).
    """

    def __init__(
        self, weights: LossConfig, op: LightFieldOperator, processes: Processes, ssim_floor: float
    ) -> None:
        self.w, self.op, self.processes, self.ssim_floor = weights, op, processes, ssim_floor

    def labelled_terms(self, x, target, weight) -> dict[str, torch.Tensor]:
        """Supervised and SSIM terms of (L, D, Yv, Xv) normalised volumes."""
        terms = {}
        if self.w.supervised:
            den = self.processes.mean((target.pow(2) * weight).sum())
            terms["supervised"] = losses.supervised(x, target, weight, den)
        if self.w.ssim:
            ssim = losses.ssim3d(x, target, weight=weight, min_range=self.ssim_floor)
            terms["ssim"] = 1 - ssim
        return terms

    def resynthesis_term(self, x, y, b, weight) -> dict[str, torch.Tensor]:
        """The re-synthesis term of (B, D, Yv, Xv) volumes and their (B, 1, Y, X)
        light fields, normalised."""
        if not self.w.resynthesis:
            return {}
        if self.w.resynthesis_kind == "poisson":
            den = self.processes.mean((y.clamp_min(0) * weight).sum())
            r = losses.poisson_resynthesis(self.op, x, y, b, weight, den)
        else:
            den = self.processes.mean((y.pow(2) * weight).sum())
            r = losses.resynthesis(self.op, x, y, b, weight, self.w.resynthesis_highpass, den)
        return {"resynthesis": r}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ weight · term (the discriminator's own loss is not part of it)."""
        weight = {
            "supervised": self.w.supervised,
            "ssim": self.w.ssim,
            "resynthesis": self.w.resynthesis,
            "adversarial": self.w.adversarial,
        }
        parts = [weight[k] * v for k, v in terms.items() if k in weight]
        return torch.stack(parts).sum()
