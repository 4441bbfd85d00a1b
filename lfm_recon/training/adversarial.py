"""The adversarial part of training: a volume discriminator, its optimiser
and its step, and the generator's loss against it."""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch

from . import losses
from .config import LossConfig, OptimConfig
from .discriminator import VolumeDiscriminator
from .distributed import Processes


class Adversary:
    """Discriminator D and its Adam optimiser (lr from ``optim``).

    Its gradients are averaged over processes by an all-reduce (WGAN-GP's
    double backward does not go through DDP's hooks), so every process
    keeps the same D.
    """

    def __init__(self, loss: LossConfig, optim: OptimConfig, processes: Processes) -> None:
        self.loss, self.optim, self.processes = loss, optim, processes
        self.disc = VolumeDiscriminator().to(processes.device)
        self.opt = torch.optim.Adam(
            self.disc.parameters(), lr=optim.discriminator_lr, betas=(0.5, 0.999)
        )

    def set_learning_rate(self, factor: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.optim.discriminator_lr * factor

    def step(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        seed: int,
        step: int,
        precision: AbstractContextManager,
    ) -> tuple[torch.Tensor, bool]:
        """One discriminator update on (B, D, Yv, Xv) real and (detached)
        fake volumes; returns its loss and whether it was finite everywhere
        (the caller stops the run if not; D is not updated then)."""
        gen_seed = np.random.SeedSequence([seed, step, 1]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(gen_seed))
        with precision:
            loss = losses.discriminator_loss(
                self.disc, real, fake, self.loss.gan, self.loss.gradient_penalty, gen
            ).float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.processes.average_gradients(self.disc.parameters())
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 10 * self.optim.grad_clip)
        finite = self.processes.all_min(bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)))
        if finite:
            self.opt.step()
        return loss.detach(), finite

    def generator_loss(self, fake: torch.Tensor, precision: AbstractContextManager):
        """The generator's adversarial loss of reconstructions (gradients flow
        to them, not to D)."""
        self.disc.requires_grad_(False)
        try:
            with precision:
                score = self.disc(fake).float()
        finally:
            self.disc.requires_grad_(True)
        return losses.generator_loss(score, self.loss.gan)

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
