"""The unfolded network: a few proximal-gradient layers with learned step
sizes and thresholds around the fixed light-field operator.

Layer k (normalised units, below), H and Hᵀ the operator's fixed buffers:

    x_{k+1} = ReLU(v_k − μ_k λ_k),   v_k = x_k − μ_k · d(x_k) [+ P_k(v_k)]

    d(x) = Hᵀ(H x + b − y)                                  "gaussian" (ISTA)
    d(x) = (x + ε)/Hᵀ1 ⊙ Hᵀ(1 − y/(H x + b))                "poisson"

μ_k > 0 (per layer, or per layer and depth with ``per_depth_step``) and
λ_k ≥ 0 (per layer and depth) are learned.

* ``"gaussian"``: the least-squares gradient with μ_k = 1/‖H‖² initially:
  the untrained network *is* ``n_layers`` iterations of ISTA from x₀ = 0
  (tested against ``solvers.ista_step``).
* ``"poisson"``: the gradient of the Poisson likelihood, Hᵀ((H x + b − y)/
  (H x + b)), each residual weighted by its predicted variance, and scaled
  voxel by voxel by x/Hᵀ1, the step of the EM algorithm. With μ_k = 1, λ_k =
  0, ε = 0 and RL's uniform start this is exactly Richardson–Lucy (tested
  against ``solvers.richardson_lucy``); the network learns over-relaxed,
  per-depth steps and thresholds from there. A plain weighted gradient with
  a global step lost ~1.5 dB to ISTA in a side run: the variance weights
  span orders of magnitude, which one global step cannot serve. ε (a small
  fraction of the mean voxel) lets voxels that a threshold set to 0 return.

``prior="cnn"`` adds a learned proximal correction per layer, P_k a small
CNN on v_k (ISTA-Net style; depth planes as channels) whose last layer
starts at zero, so the untrained network is still ISTA / RL. It extends
DESIGN's pure μ/λ form and is off by default.

Normalisation (part of the model): each light field is divided by its
signal scale c = mean(y − b) over the whole frame (an unbiased estimate of
the mean signal per pixel whatever the noise: E[y − b] = H x), the volume is
multiplied by c after the layers, and the start x₀ and the thresholds are
fixed multiples of c. Nothing else in the layers depends on the frame's
content, so a patch given its frame's c (``scale=``) reconstructs its
interior as the whole frame does (tested), and the network is exactly
scale-equivariant: net(α y, α b) = α net(y, b) for α > 0 (tested). That is a
property of the map, not of the data: a brighter recording is not a scaled
dim one (Poisson noise grows as √signal), so how well the network serves
another photon level depends on the photon levels it was trained on. The
output is in the units of the solvers: photons per voxel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .antialias import AntiAliasFilter
from .errors import LFMError
from .operator import LightFieldOperator
from .solvers import (
    _rows,
    as_background,
    as_lightfield,
    holdout_mask,
    poisson_deviance,
    rl_iterations,
    threshold,
)

DATA_TERMS = ("gaussian", "poisson")
SNR_REFERENCE = 3.0  # a noise_aware network's gains are 1 at this snr (mid training range)
PRIORS = ("none", "cnn", "unet")
STARTS = ("auto", "zero", "adjoint", "uniform")
RL_STOPS = ("fixed", "holdout")
RL_FILTERS = ("none", "antialias")
REFITS = ("none", "layers", "all")
GUARD_STEPS = 16  # the guard's blends α = 0, 1/16, …, 1
# The measured recipe (README, "Training"; benchmarks/README.md): keyword
# arguments of UnfoldedConfig, shared by the benchmark, the demo and the examples.
RECIPE = {
    "n_layers": 8,
    "data_term": "poisson",
    "per_depth_step": True,
    "prior": "cnn",
    "prior_channels": 32,
    "rl_start": 100,
    "rl_accelerate": True,
    "rl_stop": "holdout",
    "holdout_guard": 1.15,
    "holdout_antialias": True,
    "holdout_refit": "all",
}


@dataclass(frozen=True)
class UnfoldedConfig:
    """The architecture of an :class:`UnfoldedISTA` (stored in model files).

    Attributes:
        n_layers: number of unfolded iterations (each one H and one Hᵀ).
        data_term: ``"gaussian"`` (least squares, = ISTA) or ``"poisson"``
            (variance-weighted residual, EM-scaled: = Richardson–Lucy).
        per_depth_step: learn μ per layer *and* depth instead of per layer.
        prior: ``"none"`` (DESIGN's μ/λ network), ``"cnn"`` (a learned
            proximal correction per layer, a 3-layer CNN) or ``"unet"`` (a
            two-scale CNN: a wider field of view for the same depth).
        prior_channels: feature channels of the prior.
        tied_prior: one prior shared by all layers, each layer with its own
            learned gain on it (fewer weights to fit, the same map at every
            iteration); else one prior per layer.
        rl_start: Richardson–Lucy iterations (no learned parameters) from
            the uniform start before the layers: the layers refine an
            estimate that already explains the light field.
        rl_accelerate: run the RL start with Biggs–Andrews extrapolation
            (:func:`lfm_recon.solvers.extrapolate`): as far as several times
            more plain iterations, for the same cost.
        rl_stop: ``"fixed"`` (``rl_start`` iterations) or ``"holdout"``: frame
            by frame, the RL start stops where its Poisson deviance on held-out
            pixels (1/8, a fixed random pattern, not used by the start) is
            lowest, at most ``rl_start`` iterations (a frame is done once
            :data:`~lfm_recon.solvers.HOLDOUT_PATIENCE` iterations pass without
            a better one; the rest of the batch does not change it; see
            :func:`lfm_recon.solvers.richardson_lucy_holdout`). How far RL
            should run depends on the frame (photons, sparsity); the held-out
            pixels measure it without knowing the noise level (read noise) or
            the object. The layers then use all pixels. The stop depends on
            the whole frame, so a patch is no longer reconstructed exactly as
            its frame's interior.
        rl_filter: ``"none"`` or ``"antialias"``: the RL start with the
            depth-adaptive anti-aliasing filter after every update, as
            ``richardson_lucy(filter="antialias")`` (:mod:`lfm_recon.antialias`),
            in its held-out stop and in ``holdout_refit = "all"`` alike.
            Unfiltered RL leaves lenslet-period stripes near the native
            plane, strongest at the frame's edges, and layers trained on it
            keep them.
        holdout_guard: 0 (off) or a tolerance T ≥ 1 (needs ``rl_stop =
            "holdout"``): a per-frame check that the network has not left the
            data behind. The layers then also leave the held-out pixels
            alone, and at inference (eval mode) each frame's volume is
            α·x_net + (1 − α)·x_start with the largest α in {0, 1/16, …, 1}
            whose Poisson deviance on the held-out pixels is at most T times
            the RL start's (α = 1: the network unchanged; α = 0: the start,
            RL stopped at its least held-out deviance). A network that meets
            data unlike its training data and removes or invents light shows
            it on pixels neither it nor the start has fitted; the blend pulls
            such a frame back toward RL, and only as far as needed. The
            recipe's 1.15 was chosen on the training distribution (the
            simulator's validation draws), not on any test family (see
            ``benchmarks/README.md``). After a call, ``guard_blend`` holds
            each frame's α (1 where the guard did not act).
        holdout_antialias: with the guard, at inference, each frame then
            takes the anti-aliased version of its (blended) volume, the
            depth-adaptive low-pass that RL applies with ``filter =
            "antialias"`` (:mod:`lfm_recon.antialias`), where that version's
            held-out deviance is at most ``holdout_guard`` times the
            unfiltered one's. The filter removes lenslet-grid detail near the
            native plane that the light field does not determine. It can also
            remove real detail, such as bright point-like sources, and the
            held-out pixels show when it does (there the deviance rises 30 %
            to 100 %; elsewhere it rises 0 % to 14 %). After a call,
            ``guard_antialiased`` (B,) bool holds which frames took it.
        holdout_refit: with the guard, at inference: ``"none"``, or once the
            held-out pixels have served the decisions (each frame's RL stop,
            blend α and filter), run again on every pixel with the same
            decisions: ``"layers"`` the layers from the same start
            (``n_layers`` more), ``"all"`` the RL start too, each frame for
            the iterations it stopped at (about twice the time; with
            ``rl_accelerate`` the plain iterate at that count, where the
            stop scored the point extrapolated from it; with a ``start``
            given to :meth:`forward`, only the layers). The held-out 1/8 of
            pixels is then not lost to the volume.
        noise_aware: the layers see the frame's signal-to-noise ratio
            (:meth:`UnfoldedISTA.snr`, photons): layer k scales its step,
            its thresholds and its prior's correction (if any) by
            (snr / 3)^γ, one learned γ each, starting at 0 (the plain
            network). This gives up
            exact scale-equivariance on purpose: a bright frame is not a
            scaled dim one, and how far to trust the data depends on it.
        start: x₀: ``"zero"``, ``"uniform"`` (RL's start: the frame's mean
            signal spread evenly over the voxels), ``"adjoint"`` (a learned
            scaling of Hᵀy, starting at 0) or ``"auto"`` (zero for gaussian,
            uniform for poisson). The poisson step is multiplicative, so it
            needs the uniform start (a zero start would stay zero).
        lam_fraction: initial threshold λ₀ as a fraction of the λ scale:
            λ_max = max Hᵀ(y − b) for gaussian (see
            :meth:`UnfoldedISTA.set_lambda_scale`), the uniform start's
            voxel value for poisson.
        em_floor: ε of the poisson step, as a fraction of the uniform
            start's voxel value.
    """

    n_layers: int = 8
    data_term: str = "gaussian"
    per_depth_step: bool = False
    prior: str = "none"
    prior_channels: int = 16
    tied_prior: bool = False
    rl_start: int = 0
    rl_accelerate: bool = False
    rl_stop: str = "fixed"
    rl_filter: str = "none"
    holdout_guard: float = 0.0
    holdout_antialias: bool = False
    holdout_refit: str = "none"
    noise_aware: bool = False
    start: str = "auto"
    lam_fraction: float = 0.01
    em_floor: float = 1e-3

    def __post_init__(self) -> None:
        _positive_int(self.n_layers, "n_layers")
        _positive_int(self.prior_channels, "prior_channels")
        for name, value, allowed in (
            ("data_term", self.data_term, DATA_TERMS),
            ("prior", self.prior, PRIORS),
            ("start", self.start, STARTS),
            ("rl_stop", self.rl_stop, RL_STOPS),
            ("rl_filter", self.rl_filter, RL_FILTERS),
            ("holdout_refit", self.holdout_refit, REFITS),
        ):
            if value not in allowed:
                raise LFMError(f"model {name} must be one of {allowed}, got {value!r}")
        flags = ("per_depth_step", "tied_prior", "rl_accelerate", "noise_aware")
        for name in (*flags, "holdout_antialias"):
            if not isinstance(getattr(self, name), bool):
                raise LFMError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.rl_start, bool) or not isinstance(self.rl_start, int):
            raise LFMError(f"rl_start must be a whole number of iterations, got {self.rl_start!r}")
        if self.rl_start < 0:
            raise LFMError(f"rl_start must be ≥ 0, got {self.rl_start}")
        if self.rl_accelerate and not self.rl_start:
            raise LFMError("rl_accelerate accelerates the RL start: give rl_start > 0 too")
        if self.rl_filter != "none" and not self.rl_start:
            raise LFMError("rl_filter filters the RL start: give rl_start > 0 too")
        if self.rl_stop != "fixed" and not self.rl_start:
            raise LFMError("rl_stop stops the RL start: give rl_start > 0 (its maximum) too")
        guard = self.holdout_guard
        if isinstance(guard, bool) or not isinstance(guard, (int, float)):
            raise LFMError(f"holdout_guard must be a number (0: off, else ≥ 1), got {guard!r}")
        if guard and not (math.isfinite(guard) and guard >= 1):
            raise LFMError(
                f"holdout_guard is a deviance ratio: 0 (off) or ≥ 1, got {guard!r}"
                " (1.15 lets the network explain held-out light 15 % worse than RL)"
            )
        if guard and self.rl_stop != "holdout":
            raise LFMError(
                "holdout_guard compares the network with its held-out-stopped RL start:"
                " set rl_stop = 'holdout' (and rl_start > 0) too"
            )
        if self.holdout_antialias and not guard:
            raise LFMError(
                "holdout_antialias is the held-out guard's second check: set holdout_guard"
                " (e.g. 1.15) too"
            )
        if self.holdout_refit != "none" and not guard:
            raise LFMError(
                "holdout_refit repeats the network on every pixel after the held-out guard's"
                " decisions: set holdout_guard (e.g. 1.15) too"
            )
        if self.rl_start and self.resolved_start != "uniform":
            raise LFMError(
                "rl_start needs the uniform start (start = 'uniform' or 'auto' with poisson)"
            )
        if not (isinstance(self.lam_fraction, (int, float)) and 0 <= self.lam_fraction < 1):
            raise LFMError(
                f"lam_fraction must be in [0, 1) (a fraction of λ_max), got {self.lam_fraction!r}"
            )
        if not (isinstance(self.em_floor, (int, float)) and 0 <= self.em_floor < 1):
            raise LFMError(f"em_floor must be in [0, 1), got {self.em_floor!r}")
        if self.data_term == "poisson" and self.resolved_start != "uniform":
            # The EM step multiplies the estimate: from x₀ = 0 (zero, or the
            # adjoint start's initial scale 0) every output and gradient is 0.
            raise LFMError(
                f"model start = {self.start!r} with data_term = 'poisson' starts dead: the"
                " Poisson (EM) step is multiplicative, so a zero start stays zero and nothing"
                " can be learned; use start = 'uniform' (or 'auto')"
            )

    @property
    def resolved_start(self) -> str:
        """The start x₀ actually used ("auto" resolved)."""
        if self.start != "auto":
            return self.start
        return "uniform" if self.data_term == "poisson" else "zero"

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
    photons per voxel, like the solvers. After a call, ``rl_iterations``
    (B,) holds the iterations of the RL start each frame kept (a
    diagnostic; ``rl_start`` for every frame unless ``rl_stop = "holdout"``).

    Learned parameters, each mapped through softplus (positive, smooth at 0):
    ``step_raw`` (n_layers, 1 or D) with μ_k = softplus(step_raw)·step_unit,
    and ``threshold_raw`` (n_layers, D) with λ_k = softplus(threshold_raw)·
    lam_scale; both start at softplus⁻¹(1), i.e. at the untrained values.
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
        # Steps relative to their untrained value (1/‖H‖² for ISTA, 1 for the
        # EM step) and thresholds relative to the λ scale, each through
        # softplus (positive, smooth at 0); softplus(θ₀) = 1 initially.
        one = math.log(math.expm1(1.0))
        like = {"device": op.device, "dtype": op.dtype}
        self.step_raw = nn.Parameter(
            torch.full((k, d if config.per_depth_step else 1), one, **like)
        )
        self.threshold_raw = nn.Parameter(torch.full((k, d), one, **like))
        poisson = config.data_term == "poisson"
        unit = 1.0 if poisson else 1.0 / op.norm() ** 2
        self.register_buffer("step_unit", torch.tensor(unit, **like))
        # The uniform start's voxel value for a light field of mean signal 1
        # (the normalised units): a constant of H, so the start does not
        # depend on the patch or frame it is computed on.
        self.register_buffer("uniform_level", torch.tensor(_uniform_level(op), **like))
        # λ scale in normalised units. Gaussian: λ_max of a uniform light field
        # of mean 1 (max Hᵀ1) until set_lambda_scale() sees data. Poisson: the
        # uniform start's voxel value.
        scale = float(self.uniform_level) if poisson else _ht1_max(op)
        self.register_buffer("lam_scale", torch.tensor(config.lam_fraction * scale, **like))
        if config.resolved_start == "adjoint":
            self.start_scale = nn.Parameter(torch.zeros((), **like))
        self.priors = None
        if config.prior != "none":
            kind = _ProxCNN if config.prior == "cnn" else _ProxUNet
            count = 1 if config.tied_prior else k
            self.priors = nn.ModuleList(kind(d, config.prior_channels) for _ in range(count))
            self.priors.to(**like)
            if config.tied_prior:  # per-layer gains on the shared prior, starting at 1
                self.prior_gain = nn.Parameter(torch.ones(k, **like))
        if config.noise_aware:  # γ of (step, threshold, prior) per layer
            self.snr_gamma = nn.Parameter(torch.zeros(k, 3, **like))
        # Not self.to(): that would also cast the operator's bf16 weights.

    # --- parameters in physical form -----------------------------------------
    def steps(self) -> torch.Tensor:
        """μ_k, (n_layers, 1) or (n_layers, D): normalised units for gaussian,
        a dimensionless relaxation of the EM step for poisson."""
        return F.softplus(self.step_raw) * self.step_unit

    def thresholds(self) -> torch.Tensor:
        """λ_k per layer and depth, (n_layers, D), normalised units."""
        return F.softplus(self.threshold_raw) * self.lam_scale

    def scalar_parameters(self) -> list[nn.Parameter]:
        """The learned scalars (steps, thresholds and, where the architecture
        has them, the start's scale, the shared prior's gains and the SNR
        exponents): everything but the prior's convolutions."""
        names = ("step_raw", "threshold_raw", "start_scale", "prior_gain", "snr_gamma")
        return [getattr(self, n) for n in names if isinstance(getattr(self, n, None), nn.Parameter)]

    @staticmethod
    def snr(c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, 1) signal-to-noise ratio of a frame's mean pixel under
        Poisson noise: c / √(c + b̄), c (B, 1, 1, 1) the mean signal and b̄ the
        mean of b (anything broadcastable to (B, 1, Y, X): a level per frame or
        per pixel) per pixel, both in photons."""
        tiny = torch.finfo(c.dtype).tiny
        mean_b = b.mean(dim=(1, 2, 3), keepdim=True).clamp_min(0)
        return (c / (c + mean_b).sqrt().clamp_min(tiny)).clamp_min(tiny)

    @torch.no_grad()
    def set_lambda_scale(self, y, background=0.0) -> float:
        """Gaussian: set λ₀ = lam_fraction · median over frames of
        λ_max(normalised y), the scale-free threshold of
        :func:`lfm_recon.solvers.solve`. Poisson: λ₀ does not depend on the
        data (see :class:`UnfoldedConfig`). Keeps the learned relative
        thresholds; returns λ₀."""
        if self.config.data_term == "poisson":
            return float(self.lam_scale)
        y, b = self._inputs(y, background)
        c = self.signal_scale(y, b)
        lam_max = self.op.backproject((y - b) / c).flatten(1).amax(dim=1)
        self.lam_scale.fill_(self.config.lam_fraction * float(lam_max.median()))
        return float(self.lam_scale)

    # --- forward ---------------------------------------------------------------
    @staticmethod
    def signal_scale(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """c, (B, 1, 1, 1): the mean signal per pixel of each whole frame,
        mean(y − b): unbiased under any zero-mean noise, unlike a mean of
        max(y − b, 0). Frames at or below the background (no signal, or the
        background overestimated) fall back to 1 % of mean |y − b|, which keeps
        y / c finite and the map scale-equivariant."""
        r = y - b
        mean = r.mean(dim=(1, 2, 3), keepdim=True)
        spread = r.abs().mean(dim=(1, 2, 3), keepdim=True)
        return torch.maximum(mean, 0.01 * spread).clamp_min(torch.finfo(y.dtype).tiny)

    def _inputs(self, y, background) -> tuple[torch.Tensor, torch.Tensor]:
        y = as_lightfield(self.op, y)
        return y, as_background(self.op, background, y)

    def normalise(self, y, background=0.0, scale=None):
        """Checked inputs in normalised units: (y / c, b / c, c), c (B, 1, 1, 1).

        ``scale``: c per frame (a number or (B,)); None computes it from y
        (:meth:`signal_scale`). Training passes the c of the whole frame a
        patch was cut from, so a patch is normalised as its frame is.
        """
        y, b = self._inputs(y, background)
        if scale is None:
            c = self.signal_scale(y, b)
        else:
            c = torch.as_tensor(scale, dtype=y.dtype, device=y.device).reshape(-1, 1, 1, 1)
            if not (torch.isfinite(c).all() and (c > 0).all()):
                raise LFMError("scale (the frames' mean signal per pixel) must be finite and > 0")
        return y / c, b / c, c

    def forward(self, y, background=0.0, *, scale=None, weight=None, start=None) -> torch.Tensor:
        """(B, 1, Y, X) counts → (B, D, Yv, Xv) photons per voxel.

        ``scale``: see :meth:`normalise` (default: each frame's own).
        ``weight``: (B, 1, Y, X) in [0, 1], how much each pixel counts in the
        data term (0 hides it; None = all count), e.g. to hold pixels out.
        ``start``: (B, D, Yv, Xv) the layers' start x₀ in normalised units, as
        :meth:`initial` gives it for these inputs (training reuses a
        simulated sample's start over several steps); None computes it.
        """
        yn, bn, c = self.normalise(y, background, scale)
        snr = self.snr(c, bn * c) if self.config.noise_aware else None
        return self.layers(yn, bn, weight, snr, start) * c

    @torch.no_grad()
    def initial(self, y, background=0.0, *, scale=None, weight=None) -> torch.Tensor | None:
        """The layers' start x₀ (B, D, Yv, Xv) in normalised units (divided by
        the frame scale c): the configured start, then the RL start if any;
        None for the zero start. It has no learned parameters, so it can be
        computed once and passed to :meth:`forward` as ``start``."""
        if self.config.resolved_start == "adjoint":
            raise LFMError("the adjoint start has a learned scale: it cannot be computed apart")
        yn, bn, _ = self.normalise(y, background, scale)
        return self._initial(yn, bn, weight)

    def _initial(self, y, b, weight) -> torch.Tensor | None:
        """x₀ of :meth:`layers` (normalised inputs); sets ``rl_iterations``."""
        x = self._start(y, b)
        self.rl_iterations = torch.zeros(len(y), dtype=torch.long, device=y.device)
        if self.config.rl_start:
            with torch.no_grad():  # no parameters before the layers
                x = self._richardson_lucy(
                    x, y, b, weight, self.config.rl_start, self.config.rl_accelerate
                )
        return x

    def layers(
        self, y: torch.Tensor, b: torch.Tensor, weight=None, snr=None, start=None
    ) -> torch.Tensor:
        """The unfolded iterations on normalised, checked inputs (y / c, b / c)
        → the volume in normalised units (multiply by c for photons).
        ``weight``, ``start``: see :meth:`forward`; ``snr``: (B, 1, 1, 1),
        needed by a ``noise_aware`` network (:meth:`snr`)."""
        cfg = self.config
        gains = None
        if cfg.noise_aware:
            if snr is None:
                raise LFMError("a noise_aware network needs the frames' snr (call the network)")
            # (B, n_layers, 3): (snr / 3)^γ for step, threshold and prior.
            gains = torch.exp(self.snr_gamma * (snr.reshape(-1, 1, 1) / SNR_REFERENCE).log())
        self.guard_blend = torch.ones(len(y), dtype=y.dtype, device=y.device)
        self.guard_antialiased = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        given = start is not None
        x = self._given_start(start, y) if given else self._initial(y, b, weight)
        # The guard acts at inference only: training sees the plain network.
        if not (cfg.holdout_guard and not self.training):
            return self._iterate(x, y, b, weight, gains)
        # The layers leave the held-out pixels to the guard too.
        mask, sens = self.holdout_mask(y), None
        if weight is None:
            held, kept = mask, 1 - mask
            if cfg.data_term == "poisson":
                sens = self._sensitivity(y, holdout=True)
        else:
            held, kept = mask * weight, (1 - mask) * weight
        x_start, refit = x, cfg.holdout_refit != "none"
        # With a refit, this pass only makes decisions: no graph for it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not refit):
            x = self._guard(self._iterate(x, y, b, kept, gains, sens), x_start, y, b, held)
        if not refit:
            return x
        # The decisions are made; the second pass uses every pixel.
        if cfg.holdout_refit == "all" and not given:
            x_start = self._rl_every_pixel(y, b, weight, self.rl_iterations)
        return self._apply_guard(self._iterate(x_start, y, b, weight, gains), x_start)

    def _iterate(self, x, y, b, weight, gains, sens=None) -> torch.Tensor:
        """The unfolded layers from x (None: zero) on normalised inputs,
        pixels weighted by ``weight`` (None: all count); ``sens`` = Hᵀweight
        if known (poisson); ``gains``: the noise-aware gains or None."""
        op, cfg = self.op, self.config
        steps, lams = self.steps(), self.thresholds()
        poisson = cfg.data_term == "poisson"
        tiny = torch.finfo(y.dtype).tiny
        if poisson:
            # Hᵀw: the sensitivity of each voxel to the pixels that count.
            if sens is None:
                sens = self._sensitivity(y) if weight is None else op.backproject(weight)
            y_counts = y.clamp_min(0)  # the Poisson model needs y ≥ 0 (as RL)
            if weight is not None:
                y_counts = y_counts * weight
            floor = cfg.em_floor * self.uniform_level
            inv_sens = torch.where(sens > 0, 1 / sens.clamp_min(tiny), 0)
        for k in range(cfg.n_layers):
            mu = steps[k].reshape(1, -1, 1, 1)
            lam = lams[k].reshape(1, -1, 1, 1)
            prior_gain = 1.0
            if gains is not None:
                g = gains[:, k].reshape(-1, 3, 1, 1)
                mu, lam, prior_gain = mu * g[:, :1], lam * g[:, 1:2], g[:, 2:3]
            predicted = b if x is None else op.project(x) + b
            if poisson:
                ratio = torch.where(predicted > 0, y_counts / predicted.clamp_min(tiny), 0)
                v = x - mu * (x + floor) * inv_sens * (sens - op.backproject(ratio))
            else:
                residual = predicted - y
                if weight is not None:
                    residual = residual * weight
                v = -mu * op.backproject(residual)
                if x is not None:
                    v = x + v
            if self.priors is not None:
                if cfg.tied_prior:
                    v = v + prior_gain * self.prior_gain[k] * self.priors[0](v)
                else:
                    v = v + prior_gain * self.priors[k](v)
            x = threshold(v, mu * lam)
        return x

    def _guard(self, x, x_start, y, b, held) -> torch.Tensor:
        """Each frame's α·x + (1 − α)·x_start with the largest α on the grid
        whose held-out Poisson deviance is ≤ ``holdout_guard`` × the start's,
        then anti-aliased where ``holdout_antialias`` allows (see
        :class:`UnfoldedConfig`); sets ``guard_blend`` and
        ``guard_antialiased`` (B,)."""
        yc = y.clamp_min(0)

        def held_deviance(projection):  # (B,): of H x given as its projection
            return (held * poisson_deviance(yc, projection + b)).flatten(1).sum(dim=1)

        with torch.no_grad():
            # H is linear: the blend's prediction is the blend of two projections.
            p_net, p_start = self.op.project(x), self.op.project(x_start)
            alphas = torch.linspace(0, 1, GUARD_STEPS + 1, device=y.device, dtype=y.dtype)
            dev = torch.stack(
                [held_deviance(a * p_net + (1 - a) * p_start) for a in alphas], dim=1
            )  # (B, steps + 1); α = 0 (the start) always passes
            ok = dev <= self.config.holdout_guard * dev[:, :1]
            index = torch.arange(len(alphas), device=y.device)
            chosen = torch.where(ok, index, 0).amax(dim=1)
            self.guard_blend = alphas[chosen]
        a = self.guard_blend.reshape(-1, 1, 1, 1)
        x = a * x + (1 - a) * x_start
        if not self.config.holdout_antialias:
            return x
        filtered = self.antialias_filter(x)
        with torch.no_grad():
            dev_f = held_deviance(self.op.project(filtered))
            dev_x = dev.gather(1, chosen.reshape(-1, 1)).reshape(-1)
            self.guard_antialiased = dev_f <= self.config.holdout_guard * dev_x
        return torch.where(self.guard_antialiased.reshape(-1, 1, 1, 1), filtered, x)

    def _apply_guard(self, x, x_start) -> torch.Tensor:
        """The guard's decisions made (``guard_blend``, ``guard_antialiased``)
        applied to another pass's layers x and start."""
        a = self.guard_blend.reshape(-1, 1, 1, 1)
        x = a * x + (1 - a) * x_start
        if not self.guard_antialiased.any():
            return x
        return torch.where(self.guard_antialiased.reshape(-1, 1, 1, 1), self.antialias_filter(x), x)

    @torch.no_grad()
    def _rl_every_pixel(self, y, b, weight, counts) -> torch.Tensor:
        """The RL start again on every pixel (``weight``), each frame for the
        iterations its held-out stop chose (``counts`` (B,))."""
        op, x0 = self.op, self._start(y, b)
        sens = self._sensitivity(y) if weight is None else op.backproject(weight)
        out, frames = torch.empty_like(x0), len(y)
        for n in counts.unique().tolist():
            rows = torch.nonzero(counts == n).flatten()
            out[rows], _ = rl_iterations(
                op.project, op.backproject, x0[rows], y[rows], _rows(b, rows, frames), int(n),
                sensitivity=_rows(sens, rows, frames), accelerate=self.config.rl_accelerate,
                weight=_rows(weight, rows, frames), post=self._rl_post(),
            )  # fmt: skip
        return out

    def _rl_post(self):
        """What the RL start applies after every update (``rl_filter``)."""
        if self.config.rl_filter == "none":
            return None
        aa = self.antialias_filter
        return lambda v: aa(v, inplace=True)

    @property
    def antialias_filter(self) -> AntiAliasFilter:
        """The depth-adaptive anti-aliasing filter of the operator's optics
        (built once)."""
        cache = self.__dict__.setdefault("_sens_cache", {})
        if "antialias" not in cache:
            cache["antialias"] = AntiAliasFilter.for_operator(self.op)
        return cache["antialias"]

    def _richardson_lucy(self, x, y, b, weight, n: int, accelerate: bool) -> torch.Tensor:
        """n RL iterations from x (normalised units; pixels weighted), with
        Biggs–Andrews extrapolation if ``accelerate`` (as
        :class:`~lfm_recon.solvers.RichardsonLucy`); with ``rl_stop =
        "holdout"`` at most n, each frame's estimate of lowest held-out
        deviance (see :class:`UnfoldedConfig`)."""
        op, held, w = self.op, None, weight
        if self.config.rl_stop == "holdout":
            mask = self.holdout_mask(y)
            held = mask if weight is None else mask * weight
            w = 1 - mask if weight is None else (1 - mask) * weight
            sens = self._sensitivity(y, holdout=True) if weight is None else op.backproject(w)
        else:
            sens = self._sensitivity(y) if weight is None else op.backproject(w)
        x, self.rl_iterations = rl_iterations(
            op.project, op.backproject, x, y, b, n,
            sensitivity=sens, accelerate=accelerate, weight=w, held=held, post=self._rl_post(),
        )  # fmt: skip
        return x

    def holdout_mask(self, y: torch.Tensor) -> torch.Tensor:
        """(1, 1, Y, X), 1 at the pixels the held-out stop keeps back: a
        fixed pseudo-random pattern (seed 0) for each frame size, the same on
        every device, so a reconstruction does not change from run to run."""
        key = ("holdout", tuple(y.shape[-2:]), y.device, y.dtype)
        cache = self.__dict__.setdefault("_sens_cache", {})
        if key not in cache:
            cache[key] = holdout_mask(y.shape[-2:], y.device, y.dtype)
        return cache[key]

    def _sensitivity(self, y: torch.Tensor, holdout: bool = False) -> torch.Tensor:
        """Hᵀ1 (1, D, Yv, Xv) for light fields shaped like y (``holdout``:
        Hᵀ of the pixels not held out), computed once per frame size (H is
        fixed, so it never changes)."""
        key = (tuple(y.shape[-2:]), y.device, y.dtype, holdout)
        cache = self.__dict__.setdefault("_sens_cache", {})
        if key not in cache:
            ones = torch.ones_like(y[:1])
            with torch.no_grad():
                cache[key] = self.op.backproject(ones - self.holdout_mask(y) if holdout else ones)
        return cache[key]

    def _given_start(self, start, y) -> torch.Tensor:
        """A start passed to :meth:`forward`, checked against y."""
        if self.config.resolved_start == "adjoint":
            raise LFMError("the adjoint start has a learned scale: it cannot be given as start")
        shape = (len(y), *self.op.volume_shape(_lenslets(self.op, y)))
        if tuple(start.shape) != shape:
            raise LFMError(f"start has shape {tuple(start.shape)}, the light fields need {shape}")
        return start.to(device=y.device, dtype=y.dtype)

    def _start(self, y, b) -> torch.Tensor | None:
        """x₀ in normalised units (None for zero: H x₀ = 0 needs no projection)."""
        start = self.config.resolved_start
        if start == "adjoint":
            return self.start_scale * self.op.backproject(y - b)
        if start == "uniform":  # RL's start: the mean signal spread evenly
            shape = (len(y), *self.op.volume_shape(_lenslets(self.op, y)))
            return self.uniform_level.expand(shape).clone()
        return None

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"n_layers={c.n_layers}, data_term={c.data_term}, per_depth_step={c.per_depth_step},"
            f" prior={c.prior}, tied_prior={c.tied_prior}, rl_start={c.rl_start},"
            f" rl_accelerate={c.rl_accelerate}, rl_stop={c.rl_stop}, rl_filter={c.rl_filter},"
            f" noise_aware={c.noise_aware},"
            f" start={c.resolved_start}"
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


class _ProxUNet(nn.Module):
    """A two-scale CNN correction (B, D, Yv, Xv) → (B, D, Yv, Xv): two 3×3
    convolutions at full resolution, two at half resolution (2×2 mean
    pooling), the coarse features brought back up and joined with the fine
    ones, then two more convolutions. It sees about 3× as far as
    :class:`_ProxCNN` for 4× its cost per voxel. Bias-free (positively
    homogeneous, so the network stays scale-equivariant); the last layer
    starts at zero, so the correction starts at zero."""

    def __init__(self, depths: int, channels: int) -> None:
        super().__init__()
        c = channels

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.ReLU(),
            )

        self.fine = block(depths, c)
        self.coarse = block(c, 2 * c)
        self.join = nn.Sequential(
            nn.Conv2d(3 * c, c, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c, depths, 3, padding=1, bias=False),
        )
        nn.init.zeros_(self.join[-1].weight)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        fine = self.fine(v)
        coarse = self.coarse(F.avg_pool2d(fine, 2, ceil_mode=True))
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")
        return self.join(torch.cat([fine, up], dim=1))


def _interior_ht1(op: LightFieldOperator) -> tuple[torch.Tensor, int]:
    """(Hᵀ1, pixel count) for a light field of ones on a field large enough
    to hold interior voxels (whose light all stays on the sensor)."""
    r = max(g.radius for g in op._groups)
    ones = torch.ones((1, *op.lightfield_shape((2 * r + 1,) * 2)), dtype=op.dtype, device=op.device)
    with torch.no_grad():
        return op.backproject(ones), ones.numel()


def _ht1_max(op: LightFieldOperator) -> float:
    """max Hᵀ1: λ_max of a uniform light field of mean 1 (≈ 1, kernels sum to 1)."""
    return float(_interior_ht1(op)[0].max())


def _uniform_level(op: LightFieldOperator) -> float:
    """The voxel value u of a uniform volume whose light field has mean 1 away
    from the borders: every kernel sums to 1, so a lenslet's nnum² pixels
    receive the light of its s²·D voxels, u·s²·D = nnum²."""
    return op.nnum**2 / (op.voxels_per_lenslet**2 * op.n_depths)


def _lenslets(op: LightFieldOperator, y: torch.Tensor) -> tuple[int, int]:
    return y.shape[-2] // op.nnum, y.shape[-1] // op.nnum


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LFMError(f"{name} must be a positive integer, got {value!r}")
