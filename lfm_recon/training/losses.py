"""Training losses, all on normalised quantities (light fields divided by
their mean signal c, volumes by the same c; see ``lfm_recon.unfolded``).

Each takes the operator H where it needs it, as the network does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..operator import LightFieldOperator


def supervised(
    x: torch.Tensor, target: torch.Tensor, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Relative squared error ‖x − t‖² / ‖t‖² of (L, D, Yv, Xv) volumes, the
    batch pooled, so the loss weights compare terms of similar size.
    ``denominator`` replaces ‖t‖² (the trainer passes the mean over
    processes of their ‖t‖², so that data-parallel training equals one
    process with the whole batch)."""
    if denominator is None:
        denominator = target.pow(2).sum()
    return (x - target).pow(2).sum() / denominator.clamp_min(1e-12)


def resynthesis(
    op: LightFieldOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    background: torch.Tensor,
    highpass_lenslets: float = 0.0,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative residual ‖H x + b − y‖² / ‖y‖² (the batch pooled): how well
    each reconstruction explains its own light field. With
    ``highpass_lenslets`` > 0 a Gaussian low-pass of that σ (in lenslets) is
    removed from the residual first, so a slowly varying background the model
    does not describe is not fitted. ``denominator`` replaces ‖y‖² (see
    :func:`supervised`)."""
    r = op.project(x) + background - y
    if highpass_lenslets > 0:
        r = r - gaussian_blur2d(r, highpass_lenslets * op.nnum)
    if denominator is None:
        denominator = y.pow(2).sum()
    return r.pow(2).sum() / denominator.clamp_min(1e-12)


def gaussian_blur2d(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, Y, X), σ in pixels, zero-padded and
    renormalised at the borders (so a constant stays constant)."""
    radius = max(1, math.ceil(3 * sigma))
    u = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    g = torch.exp(-0.5 * (u / sigma) ** 2)
    g = g / g.sum()
    c = t.shape[1]
    ky = g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
    kx = g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(a):
        a = F.conv2d(a, ky, padding=(radius, 0), groups=c)
        return F.conv2d(a, kx, padding=(0, radius), groups=c)

    return blur(t) / blur(torch.ones_like(t[:1]))


def ssim3d(x: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Mean 3-D SSIM of (L, D, Yv, Xv) volumes (Gaussian window σ voxels,
    C1 = (0.01 L)², C2 = (0.03 L)², L the target's range per volume), the
    definition of :func:`lfm_recon.metrics.ssim` in differentiable form (zero
    padding here instead of reflection: a border detail)."""
    radius = max(1, math.ceil(3.5 * sigma))
    u = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (u / sigma) ** 2)
    g = g / g.sum()

    def blur(a):
        a = a.unsqueeze(1)
        pad = [(radius, 0, 0), (0, radius, 0), (0, 0, radius)]
        for axis, p in enumerate(pad):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = -1
            a = F.conv3d(a, g.reshape(shape), padding=p)
        return a.squeeze(1)

    span = (target.amax(dim=(1, 2, 3)) - target.amin(dim=(1, 2, 3))).clamp_min(1e-12)
    span = span.reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    mx, mt = blur(x), blur(target)
    vx = blur(x * x) - mx * mx
    vt = blur(target * target) - mt * mt
    cov = blur(x * target) - mx * mt
    s = ((2 * mx * mt + c1) * (2 * cov + c2)) / ((mx**2 + mt**2 + c1) * (vx + vt + c2))
    return s.mean()


# --- adversarial -----------------------------------------------------------------
def generator_loss(score_fake: torch.Tensor, gan: str) -> torch.Tensor:
    """The generator's side: LSGAN (D(x̂) − 1)², WGAN −D(x̂)."""
    if gan == "lsgan":
        return (score_fake - 1).pow(2).mean()
    return -score_fake.mean()


def discriminator_loss(
    disc, real: torch.Tensor, fake: torch.Tensor, gan: str, penalty: float, generator=None
) -> torch.Tensor:
    """The discriminator's loss on real and fake volumes (fake detached).

    LSGAN: (D(real) − 1)² + D(fake)². WGAN-GP: D(fake) − D(real) +
    penalty · (‖∇D(x̃)‖ − 1)² at random points x̃ between real and fake
    (drawn from ``generator``, so runs are reproducible).
    """
    fake = fake.detach()
    s_real, s_fake = disc(real), disc(fake)
    if gan == "lsgan":
        return 0.5 * ((s_real - 1).pow(2).mean() + s_fake.pow(2).mean())
    n = min(len(real), len(fake))
    eps = torch.rand(
        (n, 1, 1, 1), generator=generator, device=real.device if generator is None else "cpu"
    ).to(device=real.device, dtype=real.dtype)
    mix = (eps * real[:n] + (1 - eps) * fake[:n]).requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(mix).sum(), mix, create_graph=True)
    gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return s_fake.mean() - s_real.mean() + penalty * gp
