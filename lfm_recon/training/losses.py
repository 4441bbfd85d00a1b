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
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative squared error Σ w (x − t)² / Σ w t² of (L, D, Yv, Xv) volumes,
    the batch pooled, so the loss weights compare terms of similar size.
    ``weight`` (L, 1, Yv, Xv): where the target is scored (the voxels a
    patch's light field explains; None = everywhere). ``denominator``
    replaces Σ w t² (the trainer passes the mean over processes, so that
    data-parallel training equals one process with the whole batch)."""
    err = (x - target).pow(2)
    if weight is not None:
        err = err * weight
    if denominator is None:
        denominator = (target.pow(2) if weight is None else target.pow(2) * weight).sum()
    return err.sum() / denominator.clamp_min(1e-12)


def resynthesis(
    op: LightFieldOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    background: torch.Tensor,
    weight: torch.Tensor | None = None,
    highpass_lenslets: float = 0.0,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative residual Σ w (H x + b − y)² / Σ w y² (the batch pooled): how
    well each reconstruction explains its own light field. ``weight``
    (B, 1, Y, X): the pixels that the patch's volume fully explains (None =
    all). With ``highpass_lenslets`` > 0 a Gaussian low-pass of that σ (in
    lenslets, taken over the weighted pixels only) is removed from the
    residual first, so a slowly varying background the model does not
    describe is not fitted. ``denominator`` replaces Σ w y² (see
    :func:`supervised`)."""
    r = op.project(x) + background - y
    if weight is None:
        weight = torch.ones_like(r[:1])
    r = r * weight
    if highpass_lenslets > 0:
        sigma = highpass_lenslets * op.nnum
        low = gaussian_blur2d(r, sigma) / gaussian_blur2d(weight, sigma).clamp_min(1e-6)
        r = (r - low) * weight
    if denominator is None:
        denominator = (y.pow(2) * weight).sum()
    return r.pow(2).sum() / denominator.clamp_min(1e-12)


def poisson_resynthesis(
    op: LightFieldOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    background: torch.Tensor,
    weight: torch.Tensor | None = None,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson deviance of the light fields under the reconstructions, per
    photon: Σ w [μ − y + y log(y/μ)] / Σ w y, μ = H x + b (y clipped at 0,
    0·log 0 = 0; μ floored at 1e-6 of the mean). Half the deviance, the
    negative log-likelihood of photon noise up to a constant, divided by the
    light, so that it is scale-free like the other terms: the same value for
    counts and for normalised light fields. ``weight`` and ``denominator``
    as :func:`resynthesis` (Σ w y replaced)."""
    mu = op.project(x) + background
    yc = y.clamp_min(0)
    mu = torch.maximum(mu, 1e-6 * yc.mean().clamp_min(1e-30))
    log_term = torch.where(yc > 0, yc * torch.log(yc.clamp_min(1e-30) / mu), 0.0)
    d = mu - yc + log_term
    if weight is None:
        weight = torch.ones_like(d[:1])
    if denominator is None:
        denominator = (yc * weight).sum()
    return (d * weight).sum() / denominator.clamp_min(1e-12)


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


def ssim3d(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    sigma: float = 1.5,
    weight: torch.Tensor | None = None,
    min_range: float = 0.0,
) -> torch.Tensor:
    """Mean 3-D SSIM of (L, D, Yv, Xv) volumes, differentiable: the definition
    of :func:`lfm_recon.metrics.ssim` (Gaussian window σ voxels truncated at
    3.5σ and reflected at the borders as scipy's ``mode="reflect"``; C1 =
    (0.01 L)², C2 = (0.03 L)², L the target's range per volume; tested equal).

    ``weight`` (L, 1, Yv, Xv): average the local SSIM under it (None = plain
    mean). ``min_range``: floor of L, so that an empty target patch keeps
    constants of a sensible size instead of ~1e-28 (its SSIM then rewards
    an empty reconstruction and penalises spurious light on the scale of
    ``min_range``).
    """
    radius = int(3.5 * sigma + 0.5)  # scipy's truncation
    u = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (u / sigma) ** 2)
    g = g / g.sum()

    def blur(a):
        for axis in (1, 2, 3):
            a = _reflect_pad(a, axis, radius)
            a = a.movedim(axis, -1)
            shape = a.shape
            a = F.conv1d(a.reshape(-1, 1, shape[-1]), g.reshape(1, 1, -1))
            a = a.reshape(*shape[:-1], -1).movedim(-1, axis)
        return a

    flat = target.flatten(1)
    span = flat.amax(dim=1) - flat.amin(dim=1)
    # metrics.ssim: max |t| for a constant target, else 1; then the floor.
    span = torch.where(span > 0, span, flat.abs().amax(dim=1))
    span = torch.where(span > 0, span, torch.ones_like(span)).clamp_min(min_range)
    span = span.reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    mx, mt = blur(x), blur(target)
    vx = blur(x * x) - mx * mx
    vt = blur(target * target) - mt * mt
    cov = blur(x * target) - mx * mt
    s = ((2 * mx * mt + c1) * (2 * cov + c2)) / ((mx**2 + mt**2 + c1) * (vx + vt + c2))
    if weight is None:
        return s.mean()
    w = weight.expand_as(s)
    return (s * w).sum() / w.sum().clamp_min(1e-12)


def _reflect_pad(a: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Pad ``axis`` by ``radius`` on both sides, half-sample symmetric
    (d c b a | a b c d | d c b a), for any radius, even one longer than the axis."""
    n = a.shape[axis]
    j = torch.arange(-radius, n + radius, device=a.device) % (2 * n)
    j = torch.where(j < n, j, 2 * n - 1 - j)
    return a.index_select(axis, j)


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
