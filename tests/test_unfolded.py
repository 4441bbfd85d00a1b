"""The unfolded ISTA network and its model file.

Independent references: ISTA iterated with ``solvers.ista_step`` (the
untrained network must equal it), autograd of an explicit Poisson
likelihood (the Poisson data term), finite differences (gradcheck) and
exact scaling laws.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from banks import Config, random_bank

from lfm_recon import LFMError, LightFieldOperator, UnfoldedISTA
from lfm_recon.antialias import AntiAliasFilter
from lfm_recon.data import simulate_dataset
from lfm_recon.modelfile import load_model, save_model
from lfm_recon.solvers import ista_step
from lfm_recon.unfolded import UnfoldedConfig


@pytest.fixture(scope="module")
def op(small_bank):
    return LightFieldOperator(small_bank)


@pytest.fixture(scope="module")
def lightfields(small_bank):
    data = simulate_dataset(small_bank, 3, 0, lenslets=(7, 8), background=5.0, seed=3)
    return torch.from_numpy(data.lightfields)


def _randomise(net: UnfoldedISTA, seed: int = 0) -> None:
    """Move every learned parameter away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param({"per_depth_step": True}, id="per-depth-step"),
        pytest.param({"prior": "cnn"}, id="cnn-prior"),
        pytest.param({"start": "adjoint"}, id="adjoint-start"),
        pytest.param({"start": "uniform", "lam_fraction": 0.0}, id="uniform-start"),
    ],
)
def test_untrained_network_is_ista(op, lightfields, options):
    net = UnfoldedISTA(op, 6, **options)
    b = 5.0
    with torch.no_grad():
        x = net(lightfields, b)
    # ISTA in counts: the network's λ is in normalised units, λ·c in counts,
    # with c the frame's mean signal per pixel.
    c = (lightfields - b).mean(dim=(1, 2, 3), keepdim=True)
    mu = 1.0 / op.norm() ** 2
    lam = net.thresholds()[0].detach().reshape(1, -1, 1, 1) * c
    assert torch.allclose(net.steps().detach(), torch.tensor(mu, dtype=torch.float32))
    expected = torch.zeros_like(x)
    if options.get("start") == "uniform":
        # The mean signal spread evenly: a uniform volume u whose light field
        # has mean c, u·s²·D = c·nnum² (kernels sum to 1).
        expected += c * op.nnum**2 / (op.voxels_per_lenslet**2 * op.n_depths)
    with torch.no_grad():
        for _ in range(6):
            expected = ista_step(op, expected, lightfields, mu, lam, b)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    assert x.shape == (3, *op.volume_shape((7, 8))) and x.min() >= 0 and x.max() > 0


@pytest.mark.parametrize("data_term", ["gaussian", "poisson"])
def test_scale_equivariance(op, lightfields, data_term):
    """net(α y, α b) = α net(y, b): brightness maps to the trained range and back."""
    net = UnfoldedISTA(op, 4, data_term=data_term, prior="cnn", per_depth_step=True)
    _randomise(net)
    with torch.no_grad():
        x = net(lightfields, 5.0)
        x_bright = net(37.0 * lightfields, 37.0 * 5.0)
    torch.testing.assert_close(x_bright, 37.0 * x, rtol=1e-4, atol=1e-4 * float(x.max()) * 37)


def _uniform_start(op, y, b):
    """RL's start, computed here independently: the frame's mean signal
    spread evenly over the voxels, (B, 1, 1, 1)."""
    c = (y - b).mean(dim=(1, 2, 3), keepdim=True)
    return c * op.nnum**2 / (op.voxels_per_lenslet**2 * op.n_depths)


def test_untrained_poisson_network_is_richardson_lucy(op, lightfields):
    """μ = 1, λ = 0, ε = 0 and the same uniform start: the EM-scaled Poisson
    step is Richardson–Lucy, compared with the solver's own implementation."""
    from lfm_recon.solvers import richardson_lucy

    net = UnfoldedISTA(op, 5, data_term="poisson", em_floor=0.0)
    with torch.no_grad():
        net.threshold_raw.fill_(-60.0)  # λ = softplus(−60)·λ₀ ≈ 1e-26·λ₀
        x = net(lightfields, 5.0)
    x0 = _uniform_start(op, lightfields, 5.0).expand_as(x)
    expected = richardson_lucy(op, lightfields, 5, background=5.0, x0=x0)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    assert torch.allclose(net.steps().detach(), torch.ones(5, 1))


def test_rl_start_then_untrained_layers_is_richardson_lucy(op, lightfields):
    """rl_start = 4 plain RL iterations, then 3 untrained Poisson layers
    (μ = 1, λ ≈ 0, ε = 0): 7 RL iterations of the solver, from the same
    uniform start."""
    from lfm_recon.solvers import richardson_lucy

    net = UnfoldedISTA(op, 3, data_term="poisson", em_floor=0.0, rl_start=4)
    with torch.no_grad():
        net.threshold_raw.fill_(-60.0)
        x = net(lightfields, 5.0)
    x0 = _uniform_start(op, lightfields, 5.0).expand_as(x)
    expected = richardson_lucy(op, lightfields, 7, background=5.0, x0=x0)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    # Too few iterations is a different answer (the test can fail).
    fewer = richardson_lucy(op, lightfields, 6, background=5.0, x0=x0)
    assert (x - fewer).abs().max() > 1e-3 * float(expected.max())


def test_accelerated_rl_start_is_the_solvers_accelerated_richardson_lucy(op, lightfields):
    """rl_accelerate: the start is the solver's Biggs–Andrews RL (5
    iterations), then 2 untrained layers are 2 plain RL iterations from it;
    and it is not the plain start."""
    from lfm_recon.solvers import richardson_lucy

    net = UnfoldedISTA(op, 2, data_term="poisson", em_floor=0.0, rl_start=5, rl_accelerate=True)
    with torch.no_grad():
        net.threshold_raw.fill_(-60.0)
        x = net(lightfields, 5.0)
    x0 = _uniform_start(op, lightfields, 5.0).expand_as(x)
    start = richardson_lucy(op, lightfields, 5, background=5.0, x0=x0, accelerate=True)
    expected = richardson_lucy(op, lightfields, 2, background=5.0, x0=start)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    plain = richardson_lucy(op, lightfields, 7, background=5.0, x0=x0)
    assert (x - plain).abs().max() > 1e-3 * float(expected.max())


def test_filtered_rl_start_is_the_solvers_anti_aliased_richardson_lucy(op, lightfields):
    """rl_filter = "antialias": the start is the solver's RL with
    filter="antialias" (accelerated, 6 iterations); not the unfiltered one."""
    from lfm_recon.solvers import richardson_lucy

    kw = dict(data_term="poisson", rl_start=6, rl_accelerate=True)
    net = UnfoldedISTA(op, 2, rl_filter="antialias", **kw)
    c = UnfoldedISTA.signal_scale(lightfields, torch.tensor(5.0))
    start = net.initial(lightfields, 5.0) * c
    x0 = _uniform_start(op, lightfields, 5.0).expand_as(start)
    expected = richardson_lucy(
        op, lightfields, 6, background=5.0, x0=x0, accelerate=True, filter="antialias"
    )
    torch.testing.assert_close(start, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    plain = UnfoldedISTA(op, 2, **kw).initial(lightfields, 5.0) * c
    assert (plain - expected).abs().max() > 1e-2 * float(expected.max())
    with pytest.raises(LFMError, match="rl_filter must be one of"):
        UnfoldedConfig(rl_start=6, rl_filter="lanczos")
    with pytest.raises(LFMError, match="give rl_start > 0"):
        UnfoldedConfig(rl_filter="antialias")


def _identity_layer(net: UnfoldedISTA) -> None:
    """μ ≈ 0 and λ ≈ 0: the one Poisson layer returns its input (the RL start)."""
    with torch.no_grad():
        net.step_raw.fill_(-60.0)
        net.threshold_raw.fill_(-60.0)


def _nll(op, x, y, b, mask) -> np.ndarray:
    """(B,) Poisson negative log-likelihood of y on the masked pixels, up to
    a constant: Σ μ − y log μ, μ = H x + b (written out, float64)."""
    mu = (op.project(x) + b).double().clamp_min(1e-300)
    return ((mu - y.double().clamp_min(0) * mu.log()) * mask).flatten(1).sum(1).numpy()


def test_holdout_stop_keeps_the_rl_iterate_of_least_held_out_likelihood(small_bank, op):
    """rl_stop = "holdout" (plain RL): each frame gets the RL iterate, RL run
    on the pixels not held out, at which the held-out pixels' Poisson
    likelihood is highest (brute force over every iteration) up to the
    first iteration HOLDOUT_PATIENCE past it."""
    from lfm_recon.solvers import HOLDOUT_PATIENCE

    n, b = 150, 5.0
    data = simulate_dataset(small_bank, 3, 0, lenslets=(7, 8), photons=30.0, background=b, seed=3)
    lightfields = torch.from_numpy(data.lightfields)  # dim: RL fits noise early
    net = UnfoldedISTA(op, 1, data_term="poisson", em_floor=0.0, rl_start=n, rl_stop="holdout")
    _identity_layer(net)
    with torch.no_grad():
        x = net(lightfields, b)
    mask = net.holdout_mask(lightfields)
    w = 1 - mask
    iterates, nll = [], []
    xj = _uniform_start(op, lightfields, b).expand_as(x).clone()
    for _ in range(n):  # RL on the pixels not held out, written out
        iterates.append(xj)
        nll.append(_nll(op, xj, lightfields, b, mask))
        ratio = w * lightfields.clamp_min(0) / (op.project(xj) + b)
        xj = xj * op.backproject(ratio) / op.backproject(w.expand_as(lightfields))
    nll = np.array(nll)  # (n, B)
    best = []
    for frame in nll.T:
        for j in range(n):  # the frame is done at the first j this far past its best
            if j - frame[: j + 1].argmin() >= HOLDOUT_PATIENCE:
                break
        best.append(int(frame[: j + 1].argmin()))
    best = np.array(best)
    assert (best < n - HOLDOUT_PATIENCE).all()  # interior optima: the stop did something
    assert net.rl_iterations.tolist() == best.tolist()
    expected = torch.stack([iterates[k][i] for i, k in enumerate(best)])
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))


def test_holdout_stop_runs_rl_longer_on_brighter_frames(small_bank, op):
    """The same volumes at 100× the photons: RL should (and does) run longer
    before it fits noise."""
    net = UnfoldedISTA(
        op, 1, data_term="poisson", rl_start=300, rl_accelerate=True, rl_stop="holdout"
    )
    counts = []
    for photons in (10.0, 1000.0):
        data = simulate_dataset(
            small_bank, 3, 0, lenslets=(7, 8), photons=photons, background=5.0, seed=4
        )
        with torch.no_grad():
            net(torch.from_numpy(data.lightfields), 5.0)
        counts.append(net.rl_iterations.double().mean().item())
    assert counts[1] > 2 * counts[0], counts


def test_holdout_mask_is_fixed_and_one_pixel_in_eight(op):
    from lfm_recon.solvers import HOLDOUT_FRACTION

    net = UnfoldedISTA(op, 1, data_term="poisson", rl_start=3, rl_stop="holdout")
    y = torch.zeros(2, 1, 150, 165)
    mask = net.holdout_mask(y)
    assert mask.shape == (1, 1, 150, 165)
    other = UnfoldedISTA(op, 1, data_term="poisson", rl_start=3, rl_stop="holdout")
    assert torch.equal(mask, other.holdout_mask(y))  # the same in any process
    n = mask.numel()
    sigma = math.sqrt(n * HOLDOUT_FRACTION * (1 - HOLDOUT_FRACTION))
    assert abs(float(mask.sum()) - n * HOLDOUT_FRACTION) < 5 * sigma
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def _held_deviance(op, x, y, b, mask) -> np.ndarray:
    """(B,) Poisson deviance (half) of y on the masked pixels under μ = H x + b,
    Σ y log(y/μ) − y + μ, written out in float64."""
    mu = (op.project(x).double() + b).clamp_min(1e-300)
    yd = y.double().clamp_min(0)
    term = torch.where(yd > 0, yd * torch.log(yd.clamp_min(1e-300) / mu), 0.0) - yd + mu
    return (term * mask.double()).flatten(1).sum(1).numpy()


def _guarded(
    op,
    tolerance: float,
    like: UnfoldedISTA | None = None,
    antialias: bool = False,
    refit: str = "none",
) -> UnfoldedISTA:
    """A network whose (randomised) layers move its RL start a long way, or
    ``like``'s network with another tolerance (0: no guard)."""
    if like is not None:
        config = dataclasses.replace(
            like.config, holdout_guard=tolerance, holdout_antialias=antialias, holdout_refit=refit
        )
        net = UnfoldedISTA(op, config=config)
        net.load_state_dict(like.state_dict())
        return net.eval()
    net = UnfoldedISTA(
        op, 2, data_term="poisson", prior="cnn", rl_start=40, rl_accelerate=True,
        rl_stop="holdout", holdout_guard=tolerance,
    )  # fmt: skip
    _randomise(net, 1)
    return net.eval()


def test_guard_blends_each_frame_toward_rl_only_as_far_as_held_out_light_requires(small_bank, op):
    """holdout_guard = T: each frame's output is α·x_net + (1 − α)·x_start with
    the largest α on the 1/16 grid whose held-out deviance is ≤ T × the
    start's. References: the start from the solver's held-out-stop RL, the
    layers' volume from the same network with the guard never binding, and
    every blend's deviance computed from its own projection in float64."""
    from lfm_recon.solvers import richardson_lucy_holdout

    b = 5.0
    data = simulate_dataset(small_bank, 4, 0, lenslets=(7, 8), photons=300.0, background=b, seed=5)
    y = torch.from_numpy(data.lightfields)
    free = _guarded(op, 1e30)
    with torch.no_grad():
        x_net = free(y, b)
        assert free.guard_blend.tolist() == [1.0] * len(y)
        x_start, stops = richardson_lucy_holdout(op, y, 40, background=b, accelerate=True)
    assert free.rl_iterations.tolist() == stops.tolist()
    mask = free.holdout_mask(y)
    alphas = np.linspace(0, 1, 17)
    dev = np.stack(
        [_held_deviance(op, a * x_net + (1 - a) * x_start, y, b, mask) for a in alphas], axis=1
    )
    ratio = dev / dev[:, :1]  # (B, 17)
    assert (ratio[:, -1] > 1.5).all()  # the layers alone explain held-out light far worse
    # A tolerance that puts frame 0 at α = 1/2 (between two grid points' ratios).
    tolerance = float(ratio[0, 8] + ratio[0, 9]) / 2
    expected = np.array([alphas[np.flatnonzero(r <= tolerance).max()] for r in ratio])
    net = _guarded(op, tolerance, like=free)
    with torch.no_grad():
        x = net(y, b)
    np.testing.assert_allclose(net.guard_blend.numpy(), expected)
    assert expected[0] == 0.5 and len(set(expected.tolist())) > 1
    a = torch.from_numpy(expected).float().reshape(-1, 1, 1, 1)
    # The network's own start (one identity layer, no prior) is the solver's up
    # to float32 rounding, which accelerated RL amplifies at a few voxels.
    start = UnfoldedISTA(
        op, 1, data_term="poisson", rl_start=40, rl_accelerate=True, rl_stop="holdout"
    )
    _identity_layer(start)
    with torch.no_grad():
        own_start = start(y, b)
    assert float((own_start - x_start).norm() / x_start.norm()) < 2e-3
    blend = a * x_net + (1 - a) * own_start
    torch.testing.assert_close(x, blend, rtol=1e-4, atol=1e-4 * float(x.max()))
    # The contract: held-out light explained at most T × as badly as by RL.
    assert (_held_deviance(op, x, y, b, mask) <= tolerance * dev[:, 0] * (1 + 1e-4)).all()


def test_guard_anti_aliases_the_frames_whose_held_out_light_allows_it(small_bank, op):
    """holdout_antialias: each frame takes the anti-aliased version of its
    guarded volume where that version's held-out deviance (float64, from its
    own projection) is ≤ T × the unfiltered one's, and keeps it otherwise."""
    b = 5.0
    data = simulate_dataset(small_bank, 4, 0, lenslets=(7, 8), photons=300.0, background=b, seed=5)
    y = torch.from_numpy(data.lightfields)
    tolerance = 1.2
    free = _guarded(op, 1e30)
    plain = _guarded(op, tolerance, like=free)
    net = _guarded(op, tolerance, like=free, antialias=True)
    with torch.no_grad():
        x_plain, x = plain(y, b), net(y, b)
    assert net.guard_blend.tolist() == plain.guard_blend.tolist()
    mask = net.holdout_mask(y)
    filtered = AntiAliasFilter.for_operator(op)(x_plain)
    ratio = _held_deviance(op, filtered, y, b, mask) / _held_deviance(op, x_plain, y, b, mask)
    expected = ratio <= tolerance
    assert expected.any() and not expected.all()  # the case splits the frames
    assert net.guard_antialiased.tolist() == expected.tolist()
    keep = torch.from_numpy(expected).reshape(-1, 1, 1, 1)
    # float32 convolutions may sum in another order from run to run (threads)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, torch.where(keep, filtered, x_plain), **tol)
    # the filter acts on this optics, far beyond that tolerance
    allowed = tol["atol"] + tol["rtol"] * x_plain.abs().max()
    assert (filtered - x_plain).abs().max() > 1e3 * allowed


@pytest.mark.parametrize("refit", ["layers", "all"])
@pytest.mark.parametrize("rl_filter", ["none", "antialias"])
def test_refit_is_richardson_lucy_on_every_pixel_after_the_held_out_stop(op, refit, rl_filter):
    """Untrained Poisson layers are RL iterations (μ = 1, λ ≈ 0, ε = 0), so
    with the guard never binding the refit's volume is the solver's RL on
    every pixel: 'layers' — 3 iterations from the network's held-out-stopped
    start; 'all' — each frame's held-out stop count plus 3, from the uniform
    start (with ``rl_filter``, the stop count filtered, as the solver's
    filter="antialias", then 3 plain). Without a refit the layers skip the
    held-out pixels: a different answer (the test can fail)."""
    from lfm_recon.solvers import richardson_lucy

    b = 5.0  # at 10 photons plain RL's held-out stops come apart within 60 iterations
    data = simulate_dataset(op.bank, 3, 0, lenslets=(7, 8), photons=10.0, background=b, seed=5)
    y = torch.from_numpy(data.lightfields)
    nets = {}
    for kind in ("none", refit):
        nets[kind] = UnfoldedISTA(
            op, 3, data_term="poisson", em_floor=0.0, rl_start=60, rl_stop="holdout",
            holdout_guard=1e30, holdout_refit=kind, rl_filter=rl_filter,
        ).eval()  # fmt: skip
        with torch.no_grad():
            nets[kind].threshold_raw.fill_(-60.0)
    with torch.no_grad():
        x, x_none = nets[refit](y, b), nets["none"](y, b)
        # The stop itself is tested against the solver's above; at 10 photons
        # the held-out curve is flat enough that rounding moves its minimum.
        stops = nets[refit].rl_iterations
        assert len(set(stops.tolist())) > 1  # frames stop apart: the refit groups them
        c = UnfoldedISTA.signal_scale(y, torch.tensor(b))
        start = nets[refit].initial(y, b) * c
        if refit == "layers":
            expected = richardson_lucy(op, y, 3, background=b, x0=start)
        else:
            x0 = _uniform_start(op, y, b).expand_as(start)
            starts = [
                richardson_lucy(op, y[i : i + 1], int(n), background=b, x0=x0[i : i + 1],
                                filter=rl_filter)
                for i, n in enumerate(stops)
            ]  # fmt: skip
            expected = torch.cat([
                richardson_lucy(op, y[i : i + 1], 3, background=b, x0=s)
                for i, s in enumerate(starts)
            ])  # fmt: skip
    assert nets[refit].guard_blend.tolist() == [1.0] * len(y)
    tol = dict(rtol=1e-4, atol=1e-5 * float(expected.max()))
    torch.testing.assert_close(x, expected, **tol)
    assert (x_none - expected).abs().max() > 1e2 * tol["atol"]


def test_refit_keeps_the_guards_decisions(small_bank, op):
    """holdout_refit = 'layers': the same blends α and filter choices as
    without it, applied to the layers run again on every pixel from the
    same start (the plain network given that start)."""
    b = 5.0
    data = simulate_dataset(small_bank, 4, 0, lenslets=(7, 8), photons=300.0, background=b, seed=5)
    y = torch.from_numpy(data.lightfields)
    free = _guarded(op, 1e30)
    with torch.no_grad():
        x_free, start = free(y, b), free.initial(y, b)
        c = UnfoldedISTA.signal_scale(y, torch.tensor(b))
    mask = free.holdout_mask(y)
    ratio = _held_deviance(op, 0.5 * (x_free + start * c), y, b, mask) / _held_deviance(
        op, start * c, y, b, mask
    )
    tolerance = float(np.median(ratio))  # some frames blend half way or more, some less
    guarded = _guarded(op, tolerance, like=free, antialias=True)
    refit = _guarded(op, tolerance, like=free, antialias=True, refit="layers")
    plain = _guarded(op, 0.0, like=free)
    with torch.no_grad():
        x_guarded, x = guarded(y, b), refit(y, b)
        layers = plain(y, b, start=start)
    alpha = guarded.guard_blend
    assert refit.guard_blend.tolist() == alpha.tolist()
    assert refit.guard_antialiased.tolist() == guarded.guard_antialiased.tolist()
    assert float(alpha.max()) > 0 and len(set(alpha.tolist())) > 1
    a = alpha.reshape(-1, 1, 1, 1)
    blend = a * layers + (1 - a) * start * c
    filtered = AntiAliasFilter.for_operator(op)(blend)
    expected = torch.where(refit.guard_antialiased.reshape(-1, 1, 1, 1), filtered, blend)
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5 * float(x.max()))
    assert (x - x_guarded).abs().max() > 1e-3 * float(x.max())
    # The filter choice is per frame (here every frame took it): a mixed one.
    refit.guard_antialiased = torch.tensor([True, False, True, False])
    mixed = refit._apply_guard(layers, start * c)
    expected = torch.where(refit.guard_antialiased.reshape(-1, 1, 1, 1), filtered, blend)
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5 * float(x.max()))


def test_guard_acts_at_inference_only(small_bank, op, lightfields):
    """In training mode the guarded network is the plain one (the same
    weights, no guard, no filter): the guard never shapes what the layers
    learn."""
    guarded = _guarded(op, 1.15)
    guarded = _guarded(op, 1.15, like=guarded, antialias=True)
    plain = _guarded(op, 0.0, like=guarded)
    guarded.train(), plain.train()
    torch.testing.assert_close(guarded(lightfields, 5.0), plain(lightfields, 5.0))
    assert guarded.guard_blend.tolist() == [1.0] * len(lightfields)
    assert not guarded.guard_antialiased.any()


def test_gradients_reach_steps_and_thresholds_only():
    """gradcheck in float64 through the unfolded layers (both data terms);
    H's weights are buffers and get no gradient."""
    bank = random_bank(Config(nnum=3, s=2, radii=(1, 0), lenslets=(3, 3), dtype=torch.float64))
    op64 = LightFieldOperator(bank, dtype=torch.float64)
    y = torch.rand(2, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for data_term in ("gaussian", "poisson"):
        net = UnfoldedISTA(op64, 3, data_term=data_term, per_depth_step=True)
        _randomise(net, seed=2)

        def run(step_raw, threshold_raw, net=net):
            params = {"step_raw": step_raw, "threshold_raw": threshold_raw}
            return torch.func.functional_call(net, params, (y, 0.1))

        params = (net.step_raw.detach().clone(), net.threshold_raw.detach().clone())
        params = tuple(p.requires_grad_(True) for p in params)
        assert torch.autograd.gradcheck(run, params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    assert not any(b.requires_grad for b in op64.buffers())
    assert {n for n, _ in net.named_parameters()} == {"step_raw", "threshold_raw"}


def test_bad_inputs(op, lightfields):
    net = UnfoldedISTA(op, 2)
    with pytest.raises(LFMError, match="multiples of nnum = 15"):
        net(torch.ones(1, 1, 100, 105), 0.0)
    bad = lightfields.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(LFMError, match="NaN"):
        net(bad, 5.0)
    with pytest.raises(LFMError, match="background"):
        net(lightfields, -1.0)
    with pytest.raises(LFMError, match="data_term must be one of"):
        UnfoldedISTA(op, 2, data_term="laplace")
    with pytest.raises(LFMError, match="n_layers must be a positive integer"):
        UnfoldedISTA(op, 0)
    with pytest.raises(LFMError, match="lam_fraction"):
        UnfoldedConfig(lam_fraction=-0.1)
    with pytest.raises(LFMError, match="rl_accelerate must be true or false"):
        UnfoldedConfig(data_term="poisson", rl_start=5, rl_accelerate="yes")
    with pytest.raises(LFMError, match="give rl_start > 0"):
        UnfoldedConfig(data_term="poisson", rl_accelerate=True)
    with pytest.raises(LFMError, match="rl_stop must be one of"):
        UnfoldedConfig(data_term="poisson", rl_start=5, rl_stop="never")
    with pytest.raises(LFMError, match="give rl_start > 0"):
        UnfoldedConfig(data_term="poisson", rl_stop="holdout")
    holdout = dict(data_term="poisson", rl_start=5, rl_stop="holdout")
    for bad in (0.5, -1.0, float("inf"), float("nan"), True, "1.15"):
        with pytest.raises(LFMError, match="holdout_guard"):
            UnfoldedConfig(**holdout, holdout_guard=bad)
    with pytest.raises(LFMError, match="set rl_stop = 'holdout'"):
        UnfoldedConfig(data_term="poisson", rl_start=5, holdout_guard=1.15)
    with pytest.raises(LFMError, match="set holdout_guard"):
        UnfoldedConfig(**holdout, holdout_antialias=True)
    with pytest.raises(LFMError, match="set holdout_guard"):
        UnfoldedConfig(**holdout, holdout_refit="all")
    with pytest.raises(LFMError, match="holdout_refit must be one of"):
        UnfoldedConfig(**holdout, holdout_guard=1.15, holdout_refit="twice")
    with pytest.raises(LFMError, match="holdout_antialias must be true or false"):
        UnfoldedConfig(**holdout, holdout_guard=1.15, holdout_antialias="yes")


def test_set_lambda_scale_matches_the_solvers_scale(op, lightfields):
    """λ₀ = f · median λ_max of the normalised light fields (solvers.lambda_max)."""
    from lfm_recon.solvers import lambda_max

    net = UnfoldedISTA(op, 2, lam_fraction=0.02)
    got = net.set_lambda_scale(lightfields, 5.0)
    c = (lightfields - 5.0).mean(dim=(1, 2, 3))
    expected = 0.02 * float((lambda_max(op, lightfields, 5.0) / c).median())
    assert got == pytest.approx(expected, rel=1e-5)


# --- model file -----------------------------------------------------------------------
def test_model_file_round_trip(tmp_path, op, lightfields, small_bank):
    net = UnfoldedISTA(op, 3, prior="cnn", data_term="poisson")
    _randomise(net, seed=4)
    path = save_model(net, tmp_path / "model.pt", training={"note": "test"})
    back = load_model(path, bank=small_bank)
    assert back.config == net.config and back.training_info == {"note": "test"}
    with torch.no_grad():
        torch.testing.assert_close(back(lightfields, 5.0), net(lightfields, 5.0))
    assert not back.training


def test_model_with_another_psf_is_an_error(tmp_path, op, reference):
    from lfm_recon import generate_psf

    path = save_model(UnfoldedISTA(op, 2), tmp_path / "model.pt")
    other = generate_psf(reference, np.array([-20.0, 0.0, 20.0]), 1)
    with pytest.raises(LFMError, match=r"trained with PSF bank .* only works with its own PSF"):
        load_model(path, bank=other)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"not a torch file", "not a readable lfm_recon model file", id="garbage"),
        pytest.param(None, "not an lfm_recon model file", id="foreign-dict"),
    ],
)
def test_unreadable_model_files(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(LFMError, match=message):
        load_model(path)
    with pytest.raises(LFMError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_step_and_threshold_parametrisation(op):
    """μ_k = softplus(θ)/‖H‖² > 0 and λ_k = softplus(φ)·λ₀ ≥ 0 for any θ, φ."""
    net = UnfoldedISTA(op, 2, per_depth_step=True)
    with torch.no_grad():
        net.step_raw.fill_(-50.0)
        net.threshold_raw.fill_(50.0)
    assert (net.steps() > 0).all()
    lam0 = float(net.lam_scale)
    assert float(net.thresholds().detach().max()) == pytest.approx(50 * lam0, rel=1e-6)
    assert net.steps().shape == (2, op.n_depths) and net.thresholds().shape == (2, op.n_depths)
    assert math.isfinite(lam0) and lam0 > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("compute", "tolerance"),
    [
        pytest.param("exact", 1e-4, id="fp32"),
        pytest.param("tf32", 2e-2, id="tf32"),
        pytest.param("bf16", 5e-2, id="bf16"),
    ],
)
def test_cuda_network_matches_cpu(small_bank, lightfields, compute, tolerance):
    cpu = UnfoldedISTA(LightFieldOperator(small_bank), 4, prior="cnn", data_term="poisson")
    _randomise(cpu, seed=7)
    gpu = UnfoldedISTA(
        LightFieldOperator(small_bank, device="cuda", compute=compute), config=cpu.config
    )
    gpu.load_state_dict(cpu.state_dict())
    with torch.no_grad():
        expected = cpu(lightfields, 5.0)
        got = gpu(lightfields.cuda(), 5.0).cpu()
    error = float((got - expected).norm() / expected.norm())
    assert error < tolerance, error


# --- normalisation and start (issue 11) ------------------------------------------------
@pytest.mark.parametrize(
    "start", [pytest.param("zero", id="zero"), pytest.param("adjoint", id="adjoint")]
)
def test_a_poisson_network_that_would_start_dead_is_refused(start):
    """The EM step multiplies the estimate: from x₀ = 0 it stays 0 (output and
    gradients), so the configuration is refused, naming the option."""
    message = rf"start = '{start}' with data_term = 'poisson' starts dead"
    with pytest.raises(LFMError, match=message):
        UnfoldedConfig(data_term="poisson", start=start)


def test_untrained_poisson_network_learns_with_zero_background(op, lightfields):
    """Background 0 (the API's default) and the uniform start: the output and
    the gradients of steps and thresholds are non-zero."""
    net = UnfoldedISTA(op, 3, data_term="poisson")
    x = net(lightfields, 0.0)
    x.sum().backward()
    assert float(x.detach().max()) > 0
    assert float(net.step_raw.grad.abs().max()) > 0
    assert float(net.threshold_raw.grad.abs().max()) > 0


def test_signal_scale_is_unbiased_under_noise(op):
    """c = mean(y − b) estimates the mean signal whatever the noise; the old
    mean(max(y − b, 0)) is biased upwards (by ~25 % at 2 photons per pixel)."""
    g = torch.Generator().manual_seed(5)
    signal = torch.full((64, 1, 45, 45), 2.0)
    b = 10.0
    y = torch.poisson(signal + b, generator=g)
    c = UnfoldedISTA.signal_scale(y, torch.tensor(b)).flatten()
    std_error = math.sqrt(12.0 / (45 * 45))  # Poisson variance 12 per pixel
    assert float((c - 2.0).abs().max()) < 4 * std_error
    clamped = (y - b).clamp_min(0).mean(dim=(1, 2, 3))
    assert float(clamped.mean()) > 2.3  # the bias the unbiased scale removes


def test_patch_given_its_frame_scale_reconstructs_like_the_whole_frame(small_bank):
    """A structure in a large, otherwise dark frame; a patch of the frame that
    holds all its light, given the frame's scale c, reconstructs the
    structure as the whole frame does (trained-like random weights, CNN
    prior). With each input's own scale (the old per-patch normalisation)
    the patch result differs."""
    op = LightFieldOperator(small_bank)
    net = UnfoldedISTA(op, 4, data_term="poisson", prior="cnn", per_depth_step=True)
    _randomise(net, seed=9)
    s, n = small_bank.voxels_per_lenslet, small_bank.nnum
    x = torch.zeros(1, *op.volume_shape((21, 21)))
    x[:, 1, 10 * s : 10 * s + 3, 10 * s : 10 * s + 4] = 50.0  # in focus, at the centre
    x[:, 0, 9 * s, 11 * s] = 30.0
    y = op(x) + 0.0  # noise-free, background 0
    c = net.signal_scale(y, torch.tensor(0.0))
    with torch.no_grad():
        whole = net(y, 0.0)
        # Lenslets 4…16 hold all the light (kernel radius 2 around lenslets 9–11).
        patch_y = y[:, :, 4 * n : 17 * n, 4 * n : 17 * n]
        patch = net(patch_y, 0.0, scale=c)
        own = net(patch_y, 0.0)
    centre = (slice(None), slice(None), slice(4 * s, 9 * s), slice(4 * s, 9 * s))
    inner = whole[:, :, 8 * s : 13 * s, 8 * s : 13 * s]
    error = float((patch[centre] - inner).norm() / inner.norm())
    assert error < 1e-3, error
    assert float((own[centre] - inner).norm() / inner.norm()) > 1e-3


def test_scale_argument_is_checked(op, lightfields):
    net = UnfoldedISTA(op, 2)
    with pytest.raises(LFMError, match="scale"):
        net(lightfields, 5.0, scale=torch.tensor([1.0, 0.0, 1.0]))


def test_model_files_of_the_old_normalisation_are_refused(tmp_path, op):
    path = save_model(UnfoldedISTA(op, 2), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    torch.save(payload, path)
    with pytest.raises(LFMError, match=r"normalised light fields differently.*retrain"):
        load_model(path)


# --- noise-aware layers -----------------------------------------------------------------
def test_noise_aware_network_starts_as_the_plain_one_and_learns_its_exponents(op, lightfields):
    """γ = 0: the same map as the plain network (same weights); the SNR
    exponents get gradients; with γ ≠ 0 the map is no longer
    scale-equivariant, by the amount (snr ratio)^γ predicts for the step of
    a one-layer network without threshold (x₁ = x₀ − μ g · d(x₀), linear in μ g)."""
    plain = UnfoldedISTA(op, 3, data_term="poisson", prior="cnn")
    _randomise(plain, seed=5)
    aware = UnfoldedISTA(op, config=dataclasses.replace(plain.config, noise_aware=True))
    aware.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(aware(lightfields, 5.0), plain(lightfields, 5.0))
    aware(lightfields, 5.0).sum().backward()
    assert aware.snr_gamma.grad is not None and aware.snr_gamma.grad.abs().sum() > 0
    assert any(p is aware.snr_gamma for p in aware.scalar_parameters())

    # One layer, no threshold, ε = 0: x₁ = x₀ − μ g · d(x₀) in normalised
    # units, so its change from the uniform start is g times the plain one,
    # g = (snr / 3)^γ; a 4× brighter frame (background too) has 2× the snr.
    kw = dict(data_term="poisson", em_floor=0.0)
    one, ref = UnfoldedISTA(op, 1, noise_aware=True, **kw), UnfoldedISTA(op, 1, **kw)
    gains = []
    with torch.no_grad():
        for net in (one, ref):
            net.threshold_raw.fill_(-60.0)
        one.snr_gamma[0, 0] = 0.5
        for a in (1.0, 4.0):
            y, b = a * lightfields, a * 5.0
            c = one.normalise(y, b)[2]
            g = (one.snr(c, torch.full_like(y, b)) / 3.0) ** 0.5
            change = one(y, b) / c - one.uniform_level
            plain = ref(y, b) / c - ref.uniform_level
            tol = 1e-5 * float(plain.abs().max())
            torch.testing.assert_close(change, g * plain, rtol=1e-4, atol=tol)
            gains.append(g)
    torch.testing.assert_close(gains[1], gains[0] * 2**0.5, rtol=1e-4, atol=0)
