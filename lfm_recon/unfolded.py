"""The unfolded ISTA network: a few proximal-gradient layers with learned
step sizes and thresholds around the fixed light-field operator.

Layer k (normalised units, below):

    x_{k+1} = ReLU(v_k − μ_k λ_k),   v_k = x_k − μ_k · g(x_k) [+ P_k(·)]

    g(x) = Hᵀ(H x + b − y)                          data_term "gaussian"
    g(x) = Hᵀ((H x + b − y) / (H x + b + κ))        data_term "poisson"

μ_k > 0 (one per layer, or per layer and depth with ``per_depth_step``) and
λ_k ≥ 0 (per layer and depth) are learned; H and Hᵀ are the operator's
fixed buffers. Untrained, μ_k = 1/‖H‖² and λ_k = λ₀, so the network *is*
``n_layers`` iterations of ISTA (tested). The Poisson term weights each
pixel's residual by its predicted variance (H x + b in photons; κ keeps dark
pixels from dominating), the gradient of the Poisson likelihood up to κ.

``prior="cnn"`` adds a learned proximal correction per layer, P_k a small
CNN on v_k (ISTA-Net style; depth planes as channels) whose last layer starts at zero, so the
untrained network still equals ISTA. It is an extension of DESIGN's pure
μ/λ form, off by default.

Normalisation (part of the model): each light field is divided by
c = mean(max(y − b, 0)) before the layers and the volume multiplied by c
after, so light fields of any brightness map to the range the network was
trained on and the network is scale-equivariant: net(α y, α b) = α net(y, b)
(tested). The output is in the units of the solvers: photons per voxel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LFMError
from .operator import LightFieldOperator
from .solvers import as_background, as_lightfield, threshold

DATA_TERMS = ("gaussian", "poisson")
PRIORS = ("none", "cnn")
STARTS = ("zero", "adjoint")


@dataclass(frozen=True)
class UnfoldedConfig:
    """The architecture of an :class:`UnfoldedISTA` (stored in model files).

    Attributes:
        n_layers: number of unfolded iterations (each one H and one Hᵀ).
        data_term: ``"gaussian"`` (least squares, = ISTA) or ``"poisson"``
            (variance-weighted residual).
        per_depth_step: learn μ per layer *and* depth instead of per layer.
        prior: ``"none"`` (DESIGN's μ/λ network) or ``"cnn"`` (a learned
            proximal correction per layer, a 3-layer CNN).
        prior_channels: feature channels of the CNN prior.
        start: x₀ = 0 (``"zero"``) or a learned scaling of Hᵀy (``"adjoint"``,
            the scale starts at 0).
        lam_fraction: initial threshold λ₀ as a fraction of the λ scale
            (:meth:`UnfoldedISTA.set_lambda_scale`).
        variance_floor: κ of the Poisson term, in units of the mean signal
            per pixel (the normalised light field's mean is 1).
    """

    n_layers: int = 8
    data_term: str = "gaussian"
    per_depth_step: bool = False
    prior: str = "none"
    prior_channels: int = 16
    start: str = "zero"
    lam_fraction: float = 0.01
    variance_floor: float = 0.05

    def __post_init__(self) -> None:
        _positive_int(self.n_layers, "n_layers")
        _positive_int(self.prior_channels, "prior_channels")
        for name, value, allowed in (
            ("data_term", self.data_term, DATA_TERMS),
            ("prior", self.prior, PRIORS),
            ("start", self.start, STARTS),
        ):
            if value not in allowed:
                raise LFMError(f"model {name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.per_depth_step, bool):
            raise LFMError(f"per_depth_step must be true or false, got {self.per_depth_step!r}")
        if not (isinstance(self.lam_fraction, (int, float)) and 0 <= self.lam_fraction < 1):
            raise LFMError(
                f"lam_fraction must be in [0, 1) (a fraction of λ_max), got {self.lam_fraction!r}"
            )
        if not (isinstance(self.variance_floor, (int, float)) and self.variance_floor > 0):
            raise LFMError(f"variance_floor must be > 0, got {self.variance_floor!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class UnfoldedISTA(nn.Module):
    """Unfolded ISTA: light fields (B, 1, Y, X) → volumes (B, D, Yv, Xv).

    Args:
        op: the fixed :class:`~lfm_recon.LightFieldOperator` (not trained).
        n_layers: layers; further architecture keywords as
            :class:`UnfoldedConfig` (or pass ``config=``).

    Call ``net(y, background)``: y in camera counts, background in counts per
    pixel (a number, (B,) or broadcastable to y). Returns the volume in
    photons per voxel, like the solvers.
    """

    def __init__(
        self,
        op: LightFieldOperator,
        n_layers: int = 8,
        *,
        config: UnfoldedConfig | None = None,
        **options,
    ) -> None:
        super().__init__()
        if not isinstance(op, LightFieldOperator):
            raise LFMError(f"UnfoldedISTA needs a LightFieldOperator, got {type(op).__name__}")
        if config is None:
            config = UnfoldedConfig(n_layers=n_layers, **options)
        elif options:
            raise LFMError("give either config= or architecture keywords, not both")
        self.config = config
        self.op = op
        k, d = config.n_layers, op.n_depths
        # Steps relative to 1/‖H‖² and thresholds relative to the λ scale, each
        # through softplus (positive, smooth at 0); softplus(θ₀) = 1 initially.
        one = math.log(math.expm1(1.0))
        self.step_logits = nn.Parameter(torch.full((k, d if config.per_depth_step else 1), one))
        self.lam_logits = nn.Parameter(torch.full((k, d), one))
        self.register_buffer("inv_lipschitz", torch.tensor(1.0 / op.norm() ** 2))
        # λ scale in normalised units; default: λ_max of a uniform light field
        # of mean 1, i.e. max Hᵀ1. Data set it with set_lambda_scale().
        self.register_buffer("lam_scale", torch.tensor(config.lam_fraction * _ht1_max(op)))
        if config.start == "adjoint":
            self.start_scale = nn.Parameter(torch.zeros(()))
        self.priors = (
            nn.ModuleList(_ProxCNN(d, config.prior_channels) for _ in range(k))
            if config.prior == "cnn"
            else None
        )
        self.to(device=op.device, dtype=op.dtype)

    # --- parameters in physical form -----------------------------------------
    def steps(self) -> torch.Tensor:
        """μ_k, (n_layers, 1) or (n_layers, D), normalised units."""
        return F.softplus(self.step_logits) * self.inv_lipschitz

    def thresholds(self) -> torch.Tensor:
        """λ_k per layer and depth, (n_layers, D), normalised units."""
        return F.softplus(self.lam_logits) * self.lam_scale

    @torch.no_grad()
    def set_lambda_scale(self, y, background=0.0) -> float:
        """Set λ₀ = lam_fraction · median over frames of λ_max(normalised y),
        the scale-free threshold of :func:`lfm_recon.solvers.solve` (keeps
        the learned relative thresholds). Returns the new λ₀."""
        y, b = self._inputs(y, background)
        c = self.normalisation(y, b)
        lam_max = self.op.backproject((y - b) / c).flatten(1).amax(dim=1)
        self.lam_scale.fill_(self.config.lam_fraction * float(lam_max.median()))
        return float(self.lam_scale)

    # --- forward ---------------------------------------------------------------
    @staticmethod
    def normalisation(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """c, (B, 1, 1, 1): the mean signal per pixel, max(y − b, 0) averaged."""
        c = (y - b).clamp_min(0).mean(dim=(1, 2, 3), keepdim=True)
        return c.clamp_min(torch.finfo(y.dtype).tiny)

    def _inputs(self, y, background) -> tuple[torch.Tensor, torch.Tensor]:
        y = as_lightfield(self.op, y)
        return y, as_background(self.op, background, y)

    def forward(self, y, background=0.0, *, normalised: bool = False) -> torch.Tensor:
        """(B, 1, Y, X) counts → (B, D, Yv, Xv) photons per voxel.

        ``normalised=True`` returns the volume in normalised units (divided
        by :meth:`normalisation`), the space the training losses work in.
        """
        y, b = self._inputs(y, background)
        c = self.normalisation(y, b)
        x = self.layers(y / c, b / c)
        return x if normalised else x * c

    def layers(self, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The unfolded iterations on normalised, already checked inputs."""
        op, cfg = self.op, self.config
        steps, lams = self.steps(), self.thresholds()
        if cfg.start == "adjoint":
            x = self.start_scale * op.backproject(y - b)
        else:
            x = None  # zero: H x₀ = 0 needs no projection
        for k in range(cfg.n_layers):
            mu = steps[k].reshape(1, -1, 1, 1)
            predicted = b if x is None else op.project(x) + b
            residual = predicted - y
            if cfg.data_term == "poisson":
                residual = residual / (predicted.clamp_min(0) + cfg.variance_floor)
            v = -mu * op.backproject(residual)
            if x is not None:
                v = x + v
            if self.priors is not None:
                v = v + self.priors[k](v)
            x = threshold(v, mu * lams[k].reshape(1, -1, 1, 1))
        return x

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"n_layers={c.n_layers}, data_term={c.data_term}, per_depth_step={c.per_depth_step},"
            f" prior={c.prior}, start={c.start}"
        )


class _ProxCNN(nn.Module):
    """A small CNN correction (B, D, Yv, Xv) → (B, D, Yv, Xv): 2-D 3×3
    convolutions with the depths as channels (each depth plane has its own
    artefacts, and 2-D convolutions are several times cheaper than 3-D ones
    here). Bias-free, so positively homogeneous; the last layer starts at
    zero, so the correction starts at zero."""

    def __init__(self, depths: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(depths, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, depths, 3, padding=1, bias=False),
        )
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.body(v)


def _ht1_max(op: LightFieldOperator) -> float:
    """max Hᵀ1 on a field large enough for interior voxels (kernels sum to 1,
    so it is ≈ 1 for voxels whose light stays on the sensor)."""
    r = max(g.radius for g in op._groups)
    n = 2 * r + 1
    ones = torch.ones((1, *op.lightfield_shape((n, n))), dtype=op.dtype, device=op.device)
    with torch.no_grad():
        return float(op.backproject(ones).max())


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LFMError(f"{name} must be a positive integer, got {value!r}")
