"""Classical reconstruction: Richardson–Lucy, ISRA, FISTA and ADMM.

Notation: H is a :class:`~lfm_recon.operator.LightFieldOperator`, y the
measured light fields (B, 1, Y, X) in camera counts (photons), b a background
in counts per pixel, x the volume (B, D, Yv, Xv). H x is the expected count a
volume produces, so every solver returns x in photons per voxel (kernels sum
to 1: a voxel's value is the light it sends to the sensor).

    solver            minimises (x ≥ 0)                       per iteration
    richardson_lucy   Poisson deviance Σ y log(y/μ) − y + μ    1 H + 1 Hᵀ
    isra              ½‖μ − y‖²                               1 H + 1 Hᵀ
    fista             ½‖μ − y‖² + Σ λ|x|                      1 H + 1 Hᵀ
    admm              ½‖μ − y‖² + λ R(x), R = ‖x‖₁ or TV       (cg_steps) H + Hᵀ

with μ = H x + b. RL and ISRA decrease their objective at every iteration
(both are majorise–minimise schemes); FISTA is the monotone variant of Beck
and Teboulle (2009), which keeps the best of its candidate and its previous
iterate, so its objective never rises either. All take one calling
convention: batched light fields in, batched volumes out, with an optional
callback, a :class:`History` and a progress bar. Each solver is also a class
with ``step()`` for callers that drive the iterations themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .antialias import FILTERS, as_filter
from .errors import LFMError
from .operator import LightFieldOperator

Callback = Callable[[int, torch.Tensor], "bool | None"]
PRIORS = ("l1", "tv")


@dataclass
class History:
    """Per-iteration record of a solver run, filled by ``run(history=...)``.

    Entry 0 is the starting point, entry k the state after k iterations.
    ``residual`` is ‖H x + b − y‖ / ‖y‖ and ``objective`` the solver's own
    objective (module docstring), each a (B,) array per entry.
    """

    iteration: list[int] = field(default_factory=list)
    residual: list[np.ndarray] = field(default_factory=list)
    objective: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def record(self, k: int, solver: Solver, seconds: float) -> None:
        self.iteration.append(k)
        self.residual.append(solver.residual().cpu().numpy())
        self.objective.append(solver.objective().cpu().numpy())
        self.seconds.append(seconds)


class Solver:
    """Common set-up, checks and the run loop of the solvers.

    Subclasses set ``x`` (and track ``hx`` = H x where it comes free) in
    ``__init__`` and implement ``step`` and ``objective``.
    """

    name = "solver"

    def __init__(self, op: LightFieldOperator, y, background=0.0) -> None:
        if not isinstance(op, LightFieldOperator):
            raise LFMError(f"op must be a LightFieldOperator, got {type(op).__name__}")
        self.op = op
        self.y = as_lightfield(op, y)
        self.b = as_background(op, background, self.y)
        signal = (self.y - self.b).clamp_min(0).sum(dim=(1, 2, 3))
        empty = torch.nonzero(signal <= 0).flatten().tolist()
        if empty:
            raise LFMError(
                f"light field {empty[0]} of the batch has no signal above the background"
                " (all values ≤ background): nothing to reconstruct; check the input"
                " frame and --background"
            )
        self._ynorm = self.y.flatten(1).norm(dim=1).clamp_min(torch.finfo(self.y.dtype).tiny)
        self.hx: torch.Tensor | None = None
        self.x: torch.Tensor

    # H and Hᵀ without the per-call input checks: y was checked once above and
    # the iterates are finite by construction.
    def _h(self, x: torch.Tensor) -> torch.Tensor:
        return self.op._h(x)

    def _ht(self, y: torch.Tensor) -> torch.Tensor:
        return self.op._ht(y)

    def step(self) -> None:
        raise NotImplementedError

    def objective(self) -> torch.Tensor:
        """(B,) objective of the current estimate."""
        raise NotImplementedError

    def _forward_of_x(self) -> torch.Tensor:
        return self.hx if self.hx is not None else self._h(self.x)

    def residual(self) -> torch.Tensor:
        """(B,) relative data residual ‖H x + b − y‖ / ‖y‖."""
        r = self._forward_of_x() + self.b - self.y
        return r.flatten(1).norm(dim=1) / self._ynorm

    def _least_squares(self, hx: torch.Tensor) -> torch.Tensor:
        return 0.5 * (hx + self.b - self.y).flatten(1).pow(2).sum(dim=1)

    def run(
        self,
        n_iter: int,
        *,
        callback: Callback | None = None,
        history: History | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Iterate ``n_iter`` times; returns the estimate (B, D, Yv, Xv).

        ``callback(k, x)`` runs after iteration k (1-based); returning True
        stops early. ``history`` (a :class:`History`) is filled with the
        starting point and every iteration, at the cost of a few reductions
        per iteration (and one extra H for ADMM).
        """
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise LFMError(f"n_iter must be a non-negative integer, got {n_iter!r}")
        start = time.perf_counter()
        with torch.no_grad():
            if history is not None:
                history.record(0, self, 0.0)
            for k in tqdm(range(1, n_iter + 1), desc=self.name, disable=not progress):
                self.step()
                if history is not None:
                    history.record(k, self, time.perf_counter() - start)
                if callback is not None and callback(k, self.x):
                    break
        return self.x


class RichardsonLucy(Solver):
    """Richardson–Lucy (EM for Poisson data): x ← x · Hᵀ(y / (H x + b)) / Hᵀ1.

    Negative counts (read noise around a subtracted offset) are clipped to 0,
    as the Poisson model needs y ≥ 0. Where H x + b = 0 the ratio is taken
    as 0, so the estimate stays finite and non-negative. With b = 0 every
    iterate reproduces the measured flux: Σ H x = Σ y.

    ``filter`` (:func:`lfm_recon.antialias.as_filter`): ``"antialias"``
    low-passes the estimate after every update with the depth-adaptive
    anti-aliasing filter (:mod:`lfm_recon.antialias`), which removes the
    lenslet-grid artifacts near the native plane; None (the default here)
    is plain RL.

    ``accelerate``: Biggs–Andrews vector extrapolation (:func:`extrapolate`):
    from the third iteration on, each RL update starts from x_k + α_k (x_k −
    x_{k−1}) instead of x_k, α_k ∈ [0, 0.95] estimated per frame from the last
    two updates. The same cost per iteration (one H, one Hᵀ) and the same
    fixed point; on the benchmark's phantoms it reaches RL's best PSNR in
    3–9× fewer iterations, so its best iteration count is that much smaller
    too (benchmarks/README.md). The deviance is no longer monotone.
    """

    name = "richardson_lucy"

    def __init__(self, op, y, background=0.0, x0=None, filter=None, accelerate=False) -> None:
        super().__init__(op, y, background)
        if not isinstance(accelerate, bool):
            raise LFMError(f"accelerate must be True or False, got {accelerate!r}")
        self.y = self.y.clamp_min(0)
        self.filter = as_filter(op, filter)
        self.accelerate = accelerate
        self.sensitivity = self._ht(torch.ones_like(self.y[:1]))  # Hᵀ1, (1, D, Yv, Xv)
        self.x = _start(self, x0)
        self.hx = self._h(self.x)
        # x_{k−1} and the last two updates g_{k−1}, g_{k−2} (accelerate only).
        self._previous: torch.Tensor | None = None
        self._updates: list[torch.Tensor] = []

    def step(self) -> None:
        point, h_point = self.x, self.hx
        if len(self._updates) == 2:
            point = extrapolate(self.x, self._previous, *self._updates)
            h_point = None
        if h_point is None:
            h_point = self._h(point)
        ratio = _safe_divide(self.y, h_point + self.b)
        x = _safe_divide(point * self._ht(ratio), self.sensitivity)
        if self.filter is not None:
            x = self.filter(x, inplace=True)  # x is this step's own tensor
        x = _flush_subnormal(x)
        if self.accelerate:
            # H x is not needed for the next update (it starts from the
            # extrapolated point): computed only if asked for (objective).
            self._previous, self._updates = self.x, [x - point, *self._updates[:1]]
            self.x, self.hx = x, None
        else:
            self.x, self.hx = x, self._h(x)

    def _forward_of_x(self) -> torch.Tensor:
        if self.hx is None:  # accelerated: H x is computed only when asked for
            self.hx = self._h(self.x)
        return self.hx

    def objective(self) -> torch.Tensor:
        """(B,) Poisson deviance Σ y log(y/μ) − y + μ (0 for a perfect fit)."""
        return poisson_deviance(self.y, self._forward_of_x() + self.b).flatten(1).sum(dim=1)


class ISRA(Solver):
    """ISRA, non-negative least squares: x ← x · Hᵀy / Hᵀ(H x + b).

    The Gaussian-noise counterpart of Richardson–Lucy (same cost per
    iteration, y clipped to ≥ 0); it decreases ½‖H x + b − y‖² monotonically
    (without ``filter``, which works as in :class:`RichardsonLucy`).
    """

    name = "isra"

    def __init__(self, op, y, background=0.0, x0=None, filter=None) -> None:
        super().__init__(op, y, background)
        self.y = self.y.clamp_min(0)
        self.filter = as_filter(op, filter)
        self.hty = self._ht(self.y)
        self.sensitivity = self._ht(torch.ones_like(self.y[:1]))
        self.x = _start(self, x0)
        self.hx = self._h(self.x)

    def step(self) -> None:
        self.x = _safe_divide(self.x * self.hty, self._ht(self.hx + self.b))
        if self.filter is not None:
            self.x = self.filter(self.x, inplace=True)  # x is this step's own tensor
        self.hx = self._h(self.x)

    def objective(self) -> torch.Tensor:
        """(B,) ½‖H x + b − y‖²."""
        return self._least_squares(self.hx)


class FISTA(Solver):
    """FISTA on ½‖H x + b − y‖² + Σ λ|x| with step 1/‖H‖².

    ``lam`` is a number or a tensor broadcastable to the volume (e.g. (B, 1,
    1, 1) per frame or (1, D, 1, 1) per depth), ≥ 0, in the units of H x
    (see :func:`lambda_max` for its scale). ``nonneg`` adds x ≥ 0.
    ``monotone`` keeps, per frame, the better of the new candidate and the
    previous iterate (MFISTA), so the objective never increases. H x and the
    extrapolated H z are combined linearly from tracked forward projections,
    so an iteration costs one H and one Hᵀ.
    """

    name = "fista"

    def __init__(self, op, y, lam, background=0.0, x0=None, nonneg=True, monotone=True):
        super().__init__(op, y, background)
        self.lam = _lam(op, lam, self.y)
        self.nonneg = nonneg
        self.monotone = monotone
        self.step_size = 1.0 / op.norm() ** 2
        self.x = _start(self, x0, uniform=False)
        self.hx = self._h(self.x)
        self._f = self._objective(self.x, self.hx)
        self.z, self.hz = self.x, self.hx
        self.theta = 1.0

    def _objective(self, x: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
        return self._least_squares(hx) + (self.lam * x.abs()).flatten(1).sum(dim=1)

    def objective(self) -> torch.Tensor:
        """(B,) ½‖H x + b − y‖² + Σ λ|x|."""
        return self._f

    def step(self) -> None:
        t = self.step_size
        grad = self._ht(self.hz + self.b - self.y)
        u = threshold(self.z - t * grad, t * self.lam, self.nonneg)
        hu = self._h(u)
        f_u = self._objective(u, hu)
        if self.monotone:
            keep = (f_u > self._f).reshape(-1, 1, 1, 1)  # frames where u is worse
            x_new, hx_new = torch.where(keep, self.x, u), torch.where(keep, self.hx, hu)
            f_new = torch.minimum(f_u, self._f)
        else:
            x_new, hx_new, f_new = u, hu, f_u
        theta_new = (1 + math.sqrt(1 + 4 * self.theta**2)) / 2
        a, c = self.theta / theta_new, (self.theta - 1) / theta_new
        # z = x_new + a (u − x_new) + c (x_new − x): the same combination for H z.
        self.z = x_new + a * (u - x_new) + c * (x_new - self.x)
        self.hz = hx_new + a * (hu - hx_new) + c * (hx_new - self.hx)
        self.x, self.hx, self._f, self.theta = x_new, hx_new, f_new, theta_new


class ADMM(Solver):
    """ADMM on ½‖H x + b − y‖² + λ R(x) with x ≥ 0 (scaled form).

    ``prior="l1"``: R = ‖x‖₁, split x = z with z ≥ 0 carrying the prior.
    ``prior="tv"``: R = isotropic 3-D total variation Σ‖∇x‖ (differences along
    z weighted by lateral/axial voxel size, so R is isotropic in µm), split
    v = ∇x and z = x ≥ 0. The x-update solves (HᵀH + ρ(∇ᵀ∇ +) I) x = rhs with
    ``cg_steps`` conjugate-gradient steps warm-started at the previous x. The
    returned estimate is z, which is feasible (non-negative).

    ``rho`` (default 0.01‖H‖²) trades the speed of the data fit against that
    of the prior; the fixed point does not depend on it.
    """

    name = "admm"

    def __init__(
        self, op, y, lam, rho=None, background=0.0, x0=None, prior="l1", cg_steps=3
    ) -> None:
        super().__init__(op, y, background)
        if prior not in PRIORS:
            raise LFMError(f"prior must be one of {PRIORS}, got {prior!r}")
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
            raise LFMError(f"cg_steps must be a positive integer, got {cg_steps!r}")
        self.lam = _lam(op, lam, self.y)
        self.rho = 0.01 * op.norm() ** 2 if rho is None else float(rho)
        if not math.isfinite(self.rho) or self.rho <= 0:
            raise LFMError(f"rho must be a positive number, got {rho}")
        self.prior, self.cg_steps = prior, cg_steps
        lateral, axial = op.voxel_size
        self.z_weight = lateral / axial if axial > 0 else 0.0
        # self.x is the split variable z (non-negative, what run() returns);
        # self.primal the CG variable x of the data term.
        self.x = _start(self, x0, uniform=False)
        self.primal = self.x.clone()
        self.u = torch.zeros_like(self.x)
        self.rhs_data = self._ht(self.y - self.b)
        if prior == "tv":
            self.v = gradient3d(self.x, self.z_weight)
            self.w = torch.zeros_like(self.v)

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        out = self._ht(self._h(x)) + self.rho * x
        if self.prior == "tv":
            out = out + self.rho * divergence3d_adjoint(gradient3d(x, self.z_weight), self.z_weight)
        return out

    def step(self) -> None:
        rhs = self.rhs_data + self.rho * (self.x - self.u)
        if self.prior == "tv":
            rhs = rhs + self.rho * divergence3d_adjoint(self.v - self.w, self.z_weight)
        self.primal = conjugate_gradient(self._normal, rhs, self.primal, self.cg_steps)
        if self.prior == "l1":
            self.x = (self.primal + self.u - self.lam / self.rho).clamp_min(0)
        else:
            grad = gradient3d(self.primal, self.z_weight)
            self.v = shrink_groups(grad + self.w, self.lam / self.rho)
            self.w = self.w + grad - self.v
            self.x = (self.primal + self.u).clamp_min(0)
        self.u = self.u + self.primal - self.x

    def objective(self) -> torch.Tensor:
        """(B,) ½‖H z + b − y‖² + λ R(z) at the feasible iterate z."""
        if self.prior == "l1":
            reg = (self.lam * self.x.abs()).flatten(1).sum(dim=1)
        else:
            g = gradient3d(self.x, self.z_weight)
            reg = (self.lam * g.pow(2).sum(dim=1).sqrt()).flatten(1).sum(dim=1)
        return self._least_squares(self._h(self.x)) + reg


# --- the functional front ------------------------------------------------------


def richardson_lucy(
    op: LightFieldOperator,
    y,
    n_iter: int,
    *,
    background=0.0,
    x0=None,
    filter=None,
    accelerate: bool = False,
    callback: Callback | None = None,
    history: History | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Richardson–Lucy deconvolution (Poisson maximum likelihood).

    Args:
        op: the light-field operator.
        y: (B, 1, Y, X) light fields, counts (tensor or array).
        n_iter: iterations (each one H and one Hᵀ).
        background: counts per pixel added to H x: a number, (B,) per frame
            or a tensor broadcastable to (B, 1, Y, X); ≥ 0.
        x0: (B, D, Yv, Xv) non-negative start (default: uniform, at the
            measured flux).
        filter: None or ``"none"`` (plain RL, the default of this
            function), ``"antialias"`` (the depth-adaptive anti-aliasing
            filter after every update, :mod:`lfm_recon.antialias`) or an
            :class:`~lfm_recon.antialias.AntiAliasFilter`.
        accelerate: Biggs–Andrews extrapolation (see :class:`RichardsonLucy`):
            the same result in several times fewer iterations.
        callback, history, progress: see :meth:`Solver.run`.

    Returns:
        (B, D, Yv, Xv) volume in photons per voxel, non-negative.
    """
    solver = RichardsonLucy(op, y, background, x0, filter, accelerate)
    return solver.run(n_iter, callback=callback, history=history, progress=progress)


def richardson_lucy_holdout(
    op: LightFieldOperator,
    y,
    max_iter: int = 300,
    *,
    background=0.0,
    x0=None,
    filter=None,
    accelerate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Richardson–Lucy that chooses its own iteration count, frame by frame,
    without ground truth: RL runs on the pixels not held out (a fixed
    pseudo-random 1/8 of each frame, :func:`holdout_mask`) and each frame
    keeps the iterate at which the held-out pixels' Poisson deviance is
    lowest, i.e. the one that best predicts light it was not fitted to. Past
    that point RL fits noise. How many iterations that takes depends on the
    frame (photons, sparsity: 10 to several hundred on the benchmark's
    families); the rule needs neither the noise level nor the object. A
    frame is done once :data:`HOLDOUT_PATIENCE` iterations pass without a
    better one, so its result does not depend on the other frames of the
    batch; the run ends when every frame is done (or at ``max_iter``).

    Args:
        max_iter: the most iterations any frame runs.
        accelerate: Biggs–Andrews extrapolation (the default here: the stop
            is then reached in several times fewer iterations).
        y, background, x0, filter: as :func:`richardson_lucy`.

    Returns:
        (B, D, Yv, Xv) volumes in photons per voxel, and (B,) the iteration
        count each frame stopped at (0: the start).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise LFMError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not isinstance(accelerate, bool):
        raise LFMError(f"accelerate must be True or False, got {accelerate!r}")
    checked = Solver(op, y, background)  # the input checks; no H or Hᵀ yet
    y, b = checked.y, checked.b
    flt = as_filter(op, filter)
    post = None if flt is None else (lambda x: flt(x, inplace=True))
    held = holdout_mask(y.shape[-2:], y.device, y.dtype)
    keep = (1 - held).expand_as(y)
    with torch.no_grad():
        return rl_iterations(
            op._h,
            op._ht,
            _start(checked, x0),
            y,
            b,
            max_iter,
            sensitivity=op._ht(keep[:1]),
            accelerate=accelerate,
            weight=keep,
            held=held,
            post=post,
        )


def rl_auto(op: LightFieldOperator, y, *, background=0.0, filter=None, accelerate=False):
    """RL with ``n_iter = "auto"``: :func:`richardson_lucy_holdout` at
    most :data:`AUTO_MAX_ITERATIONS` iterations; returns (B, D, Yv, Xv)
    photons per voxel and (B,) each frame's stop."""
    most = AUTO_MAX_ITERATIONS[accelerate]
    return richardson_lucy_holdout(
        op, y, most, background=background, filter=filter, accelerate=accelerate
    )


def isra(
    op: LightFieldOperator,
    y,
    n_iter: int,
    *,
    background=0.0,
    x0=None,
    filter=None,
    callback: Callback | None = None,
    history: History | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """ISRA (non-negative least squares, Gaussian noise); arguments and
    result as :func:`richardson_lucy`."""
    solver = ISRA(op, y, background, x0, filter)
    return solver.run(n_iter, callback=callback, history=history, progress=progress)


def fista(
    op: LightFieldOperator,
    y,
    lam,
    n_iter: int,
    *,
    nonneg: bool = True,
    monotone: bool = True,
    background=0.0,
    x0=None,
    callback: Callback | None = None,
    history: History | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """FISTA for ℓ1-regularised least squares, step 1/‖H‖² (:class:`FISTA`).

    Args:
        lam: λ ≥ 0, a number or a tensor broadcastable to (B, D, Yv, Xv), in
            the units of H x; ``lam = f · lambda_max(op, y)`` with f in
            (0, 1) is scale-free (f ≥ 1 gives x = 0).
        nonneg: constrain x ≥ 0 (fluorescence).
        monotone: never accept a step that raises the objective (MFISTA).
        Others as :func:`richardson_lucy`; the default start is x = 0.

    Returns:
        (B, D, Yv, Xv) volume in photons per voxel.
    """
    solver = FISTA(op, y, lam, background, x0, nonneg, monotone)
    return solver.run(n_iter, callback=callback, history=history, progress=progress)


def admm(
    op: LightFieldOperator,
    y,
    lam,
    rho: float | None,
    n_iter: int,
    *,
    prior: str = "l1",
    cg_steps: int = 3,
    background=0.0,
    x0=None,
    callback: Callback | None = None,
    history: History | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """ADMM with a non-negative ℓ1 or total-variation prior (:class:`ADMM`).

    Args:
        lam: λ ≥ 0 (as in :func:`fista`; for TV it weighs Σ‖∇x‖).
        rho: penalty ρ > 0, or None for 0.01‖H‖².
        prior: ``"l1"`` or ``"tv"``.
        cg_steps: CG steps per x-update (each one H and one Hᵀ).
        Others as :func:`richardson_lucy`; the default start is x = 0.

    Returns:
        (B, D, Yv, Xv) non-negative volume in photons per voxel.
    """
    solver = ADMM(op, y, lam, rho, background, x0, prior, cg_steps)
    return solver.run(n_iter, callback=callback, history=history, progress=progress)


METHODS = ("rl", "isra", "fista", "admm")
# Moderate counts: on the simulated neurons of benchmarks/bench_solvers.py,
# RL at 100 iterations is 0.6 dB below its best (200–250 iterations, still
# rising slowly); noisier data peaks earlier. Pass n_iter for more.
DEFAULT_ITERATIONS = {"rl": 100, "isra": 100, "fista": 100, "admm": 50}
# Accelerated RL reaches plain RL's best in 3–9× fewer iterations and
# overfits the noise sooner past it: 30 is its best on the benchmarks'
# 300-photon neurons (benchmarks/README.md).
ACCELERATED_ITERATIONS = 30


AUTO = "auto"  # n_iter of solve(): RL's held-out stop (richardson_lucy_holdout)
# The most iterations "auto" runs (plain, accelerated): above the best counts
# of the benchmark's families (600 plain at 3000 photons, 72 accelerated).
AUTO_MAX_ITERATIONS = {False: 1000, True: 300}


def default_iterations(method: str, accelerate: bool = False) -> int:
    """The iteration count ``solve`` uses when none is given."""
    return ACCELERATED_ITERATIONS if accelerate and method == "rl" else DEFAULT_ITERATIONS[method]


DEFAULT_LAMBDA_FRACTION = 0.01
# The anti-aliasing filter (lfm_recon.antialias) is for the multiplicative
# solvers. On by default in solve() (the CLI's and the pipeline's entry): on
# the simulated neurons of benchmarks/bench_antialias.py it removes the
# lenslet-grid artifact at z = 0 and raises PSNR (benchmarks/README.md).
FILTERED_METHODS = ("rl", "isra")
DEFAULT_FILTER = {"rl": "antialias", "isra": "antialias", "fista": "none", "admm": "none"}


def solve(
    op: LightFieldOperator,
    y,
    method: str,
    n_iter: int | None = None,
    *,
    lam_fraction: float = DEFAULT_LAMBDA_FRACTION,
    rho: float | None = None,
    prior: str = "l1",
    background=0.0,
    filter=None,
    accelerate: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Run a solver by name, with scale-free defaults (the CLI's entry).

    Args:
        method: one of :data:`METHODS` (``"rl"`` Richardson–Lucy).
        n_iter: iterations, or ``"auto"`` for RL: each frame stops at its
            least held-out deviance (:func:`richardson_lucy_holdout`, at
            most :data:`AUTO_MAX_ITERATIONS`). Default :func:`default_iterations`, i.e.
            :data:`ACCELERATED_ITERATIONS` for accelerated RL, else
            :data:`DEFAULT_ITERATIONS` of the method:
            moderate counts, see its comment).
        lam_fraction: for FISTA and ADMM, λ = lam_fraction · λ_max(y) per
            frame (:func:`lambda_max`), so one value serves any brightness.
        rho, prior: ADMM's (see :func:`admm`).
        filter: for RL and ISRA, ``"antialias"`` or ``"none"`` (see
            :func:`richardson_lucy`); None takes :data:`DEFAULT_FILTER` of
            the method (``"antialias"`` for RL and ISRA, see its comment).
        accelerate: RL only: Biggs–Andrews extrapolation (see
            :class:`RichardsonLucy`; fewer iterations for the same result).
        y, background, progress: as :func:`richardson_lucy`.

    Returns:
        (B, D, Yv, Xv) volume in photons per voxel.
    """
    if method not in METHODS:
        raise LFMError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n_iter = default_iterations(method, accelerate) if n_iter is None else n_iter
    filter = check_filter(method, filter)
    if accelerate and method != "rl":
        raise LFMError(f"accelerate is for rl (Richardson–Lucy) only, not for {method}")
    if n_iter == AUTO:
        if method != "rl":
            raise LFMError(f"iterations 'auto' (the held-out stop) is for rl only, not {method}")
        return rl_auto(op, y, background=background, filter=filter, accelerate=accelerate)[0]
    kw = dict(background=background, progress=progress)
    if method == "rl":
        return richardson_lucy(op, y, n_iter, filter=filter, accelerate=accelerate, **kw)
    if method == "isra":
        return isra(op, y, n_iter, filter=filter, **kw)
    if not math.isfinite(lam_fraction) or lam_fraction < 0:
        raise LFMError(f"λ fraction must be finite and ≥ 0, got {lam_fraction}")
    lam = lam_fraction * lambda_max(op, y, background)
    if method == "fista":
        return fista(op, y, lam, n_iter, **kw)
    return admm(op, y, lam, rho, n_iter, prior=prior, **kw)


def check_filter(method: str, filter) -> str:
    """The filter ``solve`` uses for ``method``: None → :data:`DEFAULT_FILTER`;
    a name of :data:`~lfm_recon.antialias.FILTERS` otherwise, ``"antialias"``
    only for RL and ISRA."""
    if filter is None:
        return DEFAULT_FILTER[method]
    if filter not in FILTERS:
        raise LFMError(f"filter must be one of {', '.join(FILTERS)}, got {filter!r}")
    if filter != "none" and method not in FILTERED_METHODS:
        raise LFMError(
            f"the anti-aliasing filter works inside {' and '.join(FILTERED_METHODS)}, not"
            f" {method}; drop --filter (or use --filter none) with --method {method}"
        )
    return filter


def lambda_max(op: LightFieldOperator, y, background=0.0) -> torch.Tensor:
    """(B,) the smallest λ for which x = 0 solves non-negative ℓ1 least
    squares: max Hᵀ(y − b). A scale for λ: useful values are small fractions
    of it."""
    y = as_lightfield(op, y)
    b = as_background(op, background, y)
    with torch.no_grad():
        return op._ht(y - b).flatten(1).amax(dim=1).clamp_min(0)


def ista_step(op: LightFieldOperator, x, y, step, lam, background=0.0, nonneg=True):
    """One proximal-gradient (ISTA) step, differentiable in x, step and λ:
    threshold(x − step · Hᵀ(H x + b − y), step · λ). The unfolded network's
    layer; FISTA applies the same step at its extrapolated point."""
    return threshold(x - step * op.adjoint(op(x) + background - y), step * lam, nonneg)


def threshold(v: torch.Tensor, t, nonneg: bool = True) -> torch.Tensor:
    """Proximal map of t·‖·‖₁ (soft threshold), with x ≥ 0 if ``nonneg``."""
    if nonneg:
        return torch.relu(v - t)
    return torch.sign(v) * torch.relu(v.abs() - t)


# --- total variation ------------------------------------------------------------


def gradient3d(x: torch.Tensor, z_weight: float = 1.0) -> torch.Tensor:
    """Forward differences of (B, D, Yv, Xv) along z, y, x → (B, 3, D, Yv, Xv);
    zero across the far border (Neumann); z differences scaled by ``z_weight``."""
    g = x.new_zeros((x.shape[0], 3, *x.shape[1:]))
    g[:, 0, :-1] = z_weight * (x[:, 1:] - x[:, :-1])
    g[:, 1, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    g[:, 2, :, :, :-1] = x[:, :, :, 1:] - x[:, :, :, :-1]
    return g


def divergence3d_adjoint(g: torch.Tensor, z_weight: float = 1.0) -> torch.Tensor:
    """The exact adjoint of :func:`gradient3d` (minus the divergence):
    (B, 3, D, Yv, Xv) → (B, D, Yv, Xv)."""
    out = g.new_zeros((g.shape[0], *g.shape[2:]))
    for axis, w in ((0, z_weight), (1, 1.0), (2, 1.0)):
        d = g[:, axis] * w
        dim = axis + 1
        n = d.shape[dim]
        head = d.narrow(dim, 0, n - 1)
        out.narrow(dim, 0, n - 1).sub_(head)
        out.narrow(dim, 1, n - 1).add_(head)
    return out


def shrink_groups(g: torch.Tensor, t) -> torch.Tensor:
    """Group soft threshold of the 3-vectors g[:, :, d, p, q] (isotropic TV);
    ``t`` broadcastable to (B, D, Yv, Xv)."""
    norm = g.pow(2).sum(dim=1, keepdim=True).sqrt()
    t = torch.as_tensor(t, dtype=g.dtype, device=g.device)
    if t.ndim == 4:
        t = t.unsqueeze(1)
    return g * torch.relu(1 - t / norm.clamp_min(torch.finfo(g.dtype).tiny))


def conjugate_gradient(apply_a, rhs: torch.Tensor, x: torch.Tensor, n_steps: int):
    """``n_steps`` of CG on A x = rhs, A symmetric positive definite, one
    independent system per batch entry (per-frame step lengths)."""

    def dot(a, b):
        return (a * b).flatten(1).sum(dim=1).reshape(-1, *([1] * (a.ndim - 1)))

    r = rhs - apply_a(x)
    p = r
    rr = dot(r, r)
    tiny = torch.finfo(rhs.dtype).tiny
    for _ in range(n_steps):
        ap = apply_a(p)
        alpha = rr / dot(p, ap).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(tiny)) * p
        rr = rr_new
    return x


# --- input handling ---------------------------------------------------------------


def as_lightfield(op: LightFieldOperator, y) -> torch.Tensor:
    """Light fields (B, 1, Y, X) (tensor or array) on the operator's device and
    dtype, checked once: shape against the bank, real values, no NaN/Inf."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise LFMError(f"light field must be a tensor or array, got {type(y).__name__}")
    if y.ndim != 4 or y.shape[1] != 1:
        raise LFMError(
            f"light field must be (B, 1, Y, X), got {tuple(y.shape)}; for one 2-D image"
            " use y[None, None]"
        )
    if y.dtype == torch.bool or y.is_complex():
        raise LFMError(f"light field must hold real numbers (counts), got {y.dtype}")
    y = y.to(device=op.device, dtype=op.dtype)
    op._check_lightfield(y)
    if not op.check_inputs and not torch.isfinite(y).all():
        raise LFMError("light field contains NaN or infinity")
    return y


def as_background(op: LightFieldOperator, background, y: torch.Tensor) -> torch.Tensor:
    """A background (counts per pixel, ≥ 0) as a tensor broadcastable to y:
    a number, (B,) per frame, or an image broadcastable to (B, 1, Y, X)."""
    b = torch.as_tensor(background, dtype=op.dtype, device=op.device)
    if b.ndim == 1:
        b = b.reshape(-1, 1, 1, 1)
    try:
        torch.broadcast_shapes(b.shape, y.shape)
    except RuntimeError:
        raise LFMError(
            f"background of shape {tuple(b.shape)} does not fit light fields"
            f" {tuple(y.shape)}; give a number, (B,) values or a (B, 1, Y, X) image"
        ) from None
    if not torch.isfinite(b).all() or (b < 0).any():
        raise LFMError("background must be finite and ≥ 0 (counts per pixel)")
    return b


def _lam(op: LightFieldOperator, lam, y: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(lam, dtype=op.dtype, device=op.device)
    if t.ndim == 1:
        t = t.reshape(-1, 1, 1, 1)
    if not torch.isfinite(t).all() or (t < 0).any():
        raise LFMError(
            f"λ must be finite and ≥ 0, got {lam}; λ weighs the sparsity prior (0 = none)"
        )
    return t


def _start(solver: Solver, x0, uniform: bool = True) -> torch.Tensor:
    """The initial volume: x0 if given, else uniform at the measured flux
    (multiplicative solvers cannot leave 0) or zero."""
    op, y = solver.op, solver.y
    shape = (y.shape[0], *op.volume_shape((y.shape[2] // op.nnum, y.shape[3] // op.nnum)))
    if x0 is not None:
        if isinstance(x0, np.ndarray):
            x0 = torch.from_numpy(x0)
        x0 = torch.as_tensor(x0).to(device=op.device, dtype=op.dtype)
        if tuple(x0.shape) != shape:
            raise LFMError(f"x0 has shape {tuple(x0.shape)}, expected {shape}")
        if not torch.isfinite(x0).all() or (uniform and (x0 < 0).any()):
            raise LFMError("x0 must be finite (and ≥ 0 for multiplicative solvers)")
        return x0.clone()
    if not uniform:
        return y.new_zeros(shape)
    flux = (y - solver.b).clamp_min(0).sum(dim=(1, 2, 3))
    total = solver._ht(torch.ones_like(y[:1])).sum()
    return (flux / total).reshape(-1, 1, 1, 1).expand(shape).clone()


ACCELERATION_LIMIT = 0.95  # α < 1 keeps the extrapolation from running away


def poisson_deviance(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Elementwise y log(y/μ) − y + μ (half the Poisson deviance; 0·log 0 = 0),
    y ≥ 0 counts and μ > 0 their predicted means, same units."""
    tiny = torch.finfo(mu.dtype).tiny
    log_term = torch.where(y > 0, y * torch.log(y.clamp_min(tiny) / mu.clamp_min(tiny)), 0.0)
    return log_term - y + mu


HOLDOUT_FRACTION = 1 / 8  # pixels the held-out stop keeps back
HOLDOUT_PATIENCE = 5  # iterations past a frame's best before it is done


def holdout_mask(shape: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, Y, X): 1 at the pixels the held-out stop keeps back, a fixed
    pseudo-random pattern (seed 0, drawn on the CPU) of :data:`HOLDOUT_FRACTION`
    of the pixels, so that a reconstruction is the same in every run and on
    every device."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand((1, 1, *shape), generator=g) < HOLDOUT_FRACTION
    return mask.to(device=device, dtype=dtype)


def rl_iterations(
    project,
    backproject,
    x: torch.Tensor,
    y: torch.Tensor,
    b,
    n: int,
    *,
    sensitivity: torch.Tensor,
    accelerate: bool = False,
    weight: torch.Tensor | None = None,
    held: torch.Tensor | None = None,
    post=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Richardson–Lucy loop shared by :func:`richardson_lucy_holdout`
    and the network's RL start: n iterations from x, pixels weighted.

    Args:
        project, backproject: H and Hᵀ.
        x: (B, D, Yv, Xv) start; y: (B, 1, Y, X) counts (clipped at 0); b:
            background, broadcastable to y.
        sensitivity: Hᵀw (1 or B, D, Yv, Xv) for the pixel weights w.
        weight: (broadcastable to y) how much each pixel counts (None: all).
        held: (broadcastable to y) held-out pixels, disjoint from those
            weighted; with it each frame's result is its iterate of lowest
            held-out Poisson deviance up to the first iteration that is
            :data:`HOLDOUT_PATIENCE` past that frame's best (the frame is
            then done, whatever the rest of the batch does, and leaves the
            batch: the frames still iterating cost what they alone would),
            and the loop ends once every frame is done.
        accelerate: Biggs–Andrews extrapolation (:func:`extrapolate`).
        post: applied to every update (e.g. the anti-aliasing filter).

    Returns:
        The estimate, and (B,) long: the iterations each frame ran to
        (its best with ``held``; n otherwise).
    """
    yc = y.clamp_min(0)
    yw = yc if weight is None else yc * weight
    iterations = torch.full((len(y),), n if held is None else 0, device=y.device)
    if held is not None:
        best, since = x, torch.zeros(len(y), dtype=torch.long, device=y.device)
        best_dev = torch.full((len(y),), math.inf, dtype=y.dtype, device=y.device)
        # Rows of the working tensors are the frames still iterating
        # (``frames``: their places in the batch); done frames go to ``out``.
        frames = torch.arange(len(y), device=y.device)
        out, out_iterations = x.expand(len(y), *x.shape[1:]).clone(), iterations.clone()
    previous, updates, leaving = None, [], False
    for k in range(n):
        point = extrapolate(x, previous, *updates) if len(updates) == 2 else x
        predicted = project(point) + b
        if held is not None:
            # point is the estimate after k iterations (extrapolated)
            dev = (held * poisson_deviance(yc, predicted)).flatten(1).sum(dim=1)
            # A frame is done once HOLDOUT_PATIENCE iterations pass without a
            # better one: what it gets does not depend on the rest of the batch.
            better = (dev < best_dev) & (since < HOLDOUT_PATIENCE)
            best = torch.where(better.reshape(-1, 1, 1, 1), point, best)
            best_dev = torch.where(better, dev, best_dev)
            since = torch.where(better, 0, since + 1)
            iterations = torch.where(better, k, iterations)
            done = since >= HOLDOUT_PATIENCE
            leaving = bool(done.any())  # one host sync per iteration
            if leaving:
                out[frames[done]], out_iterations[frames[done]] = best[done], iterations[done]
                if bool(done.all()):
                    return out, out_iterations
        new = _safe_divide(point * backproject(_safe_divide(yw, predicted)), sensitivity)
        if post is not None:
            new = post(new)
        new = _flush_subnormal(new)
        if accelerate:
            previous, updates = x, [new - point, *updates[:1]]
        x = new
        if leaving:  # the done frames leave the batch
            rows = torch.nonzero(~done).flatten()
            n_rows = len(done)
            state = (x, previous, best, best_dev, since, iterations, frames)
            x, previous, best, best_dev, since, iterations, frames = (
                _rows(t, rows, n_rows) for t in state
            )
            yc, yw, b, held, sensitivity = (
                _rows(t, rows, n_rows) for t in (yc, yw, b, held, sensitivity)
            )
            updates = [_rows(u, rows, n_rows) for u in updates]
    if held is None:
        return x, iterations
    out[frames], out_iterations[frames] = best, iterations
    return out, out_iterations


def _rows(t, rows: torch.Tensor, n: int):
    """t's rows ``rows`` if t is a per-frame tensor of a batch of n > 1
    frames (leading dimension n); t itself if it broadcasts over the batch
    (leading dimension 1, a number, None)."""
    if torch.is_tensor(t) and t.ndim and n > 1 and t.shape[0] == n:
        return t[rows]
    return t


def extrapolate(x, previous, update, earlier_update) -> torch.Tensor:
    """Biggs–Andrews vector extrapolation (Appl. Opt. 36, 1766, 1997) of an
    iterative method x_{k+1} = ψ(p_k) with updates g_k = ψ(p_k) − p_k.

    Args:
        x, previous: x_k and x_{k−1}, (B, ...).
        update, earlier_update: g_{k−1} and g_{k−2}, (B, ...).

    Returns:
        p_k = x_k + α_k (x_k − x_{k−1}), α_k = Σ g_{k−1} g_{k−2} / Σ g_{k−2}²,
        clipped to [0, :data:`ACCELERATION_LIMIT`], per frame: how far the
        last two updates agree in direction is how far the method's path is
        trusted to continue. Where p_k would not be positive, p_k = x_k: a
        voxel set to 0 would stay 0 under RL's multiplicative update (and
        its extrapolation), which stalls the iteration short of RL's fixed
        point.
    """
    dims = tuple(range(1, x.ndim))
    # The sums in float32 at least: in half precision they can overflow.
    wide = torch.promote_types(x.dtype, torch.float32)
    u, e = update.to(wide), earlier_update.to(wide)
    num = (u * e).sum(dim=dims, keepdim=True)
    den = e.square().sum(dim=dims, keepdim=True)
    alpha = _safe_divide(num, den).clamp(0.0, ACCELERATION_LIMIT).to(x.dtype)
    point = x + alpha * (x - previous)
    return torch.where(point > 0, point, x)


def _flush_subnormal(x: torch.Tensor) -> torch.Tensor:
    """x (≥ 0) with its subnormal values set to 0. Dark
    voxels of RL decay geometrically into subnormal floats, which CPUs
    compute many times slower: 2.5× the time of held-out-stop RL on
    background-free sparse frames (benchmarks/README.md). Below the
    smallest normal float a voxel could never recover anyway."""
    return torch.where(x < torch.finfo(x.dtype).tiny, 0, x)


def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b where b > 0, else 0 (RL's 0/0 cases: no light predicted and
    none measured, or voxels that no pixel sees)."""
    return torch.where(b > 0, a / torch.where(b > 0, b, 1), 0)
