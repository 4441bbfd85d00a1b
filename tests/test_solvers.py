"""Solvers: properties from theory, agreement with independent optimisers on a
tiny dense problem (scipy NNLS, L-BFGS-B), recovery of a sparse phantom, and
input errors."""

import numpy as np
import pytest
import torch
from banks import Config, random_bank
from scipy.optimize import minimize, nnls

from lfm_recon import LFMError
from lfm_recon import solvers as S
from lfm_recon.operator import LightFieldOperator

# --- a tiny problem with its dense matrix ---------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """2 depths × 3×3 lenslets (s 1) → 18 unknowns, 144 pixels: well posed."""
    cfg = Config(4, 1, (0, 1), (3, 3), torch.float64)
    op = LightFieldOperator(random_bank(cfg, seed=3), dtype=torch.float64)
    shape = (1, *op.volume_shape(cfg.lenslets))
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    a = op(eye).reshape(n, -1).T.numpy()  # (pixels, voxels), column j = H e_j
    rng = np.random.default_rng(0)
    x_true = rng.uniform(0, 100, n)
    x_true[rng.random(n) < 0.3] = 0  # some zeros: the bounds matter
    background = 2.0
    y = rng.poisson(a @ x_true + background).astype(float)
    return op, a, shape, y, background


def _y(op, a, y):
    side = int(np.sqrt(a.shape[0]))
    return torch.from_numpy(y.reshape(1, 1, side, side))


def _lbfgs(fun, n):
    res = minimize(
        fun,
        np.ones(n),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * n,
        options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12},
    )
    return res.x


def test_dense_matrix_is_the_operator(tiny):
    op, a, shape, _, _ = tiny
    x = torch.rand(shape, dtype=torch.float64)
    np.testing.assert_allclose(op(x).numpy().ravel(), a @ x.numpy().ravel(), rtol=1e-12)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(lambda op, y, b: S.isra(op, y, 20000, background=b), id="isra"),
        pytest.param(lambda op, y, b: S.fista(op, y, 0.0, 3000, background=b), id="fista"),
        pytest.param(
            lambda op, y, b: S.admm(op, y, 0.0, None, 400, background=b, cg_steps=5), id="admm"
        ),
    ],
)
def test_nonnegative_least_squares_matches_scipy_nnls(tiny, method):
    op, a, _shape, y, b = tiny
    reference, _ = nnls(a, y - b)
    x = method(op, _y(op, a, y), b).numpy().ravel()
    np.testing.assert_allclose(x, reference, atol=1e-3 * reference.max())


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(lambda op, y, lam, b: S.fista(op, y, lam, 3000, background=b), id="fista"),
        pytest.param(
            lambda op, y, lam, b: S.admm(op, y, lam, None, 400, background=b, cg_steps=5),
            id="admm",
        ),
    ],
)
def test_l1_solution_matches_lbfgsb(tiny, method):
    op, a, _shape, y, b = tiny
    lam = 0.05 * float(S.lambda_max(op, _y(op, a, y), b))

    def fun(x):
        r = a @ x + b - y
        return 0.5 * r @ r + lam * x.sum(), a.T @ r + lam

    reference = _lbfgs(fun, a.shape[1])
    assert (reference == 0).sum() > 0  # the prior zeroes some voxels
    x = method(op, _y(op, a, y), lam, b).numpy().ravel()
    np.testing.assert_allclose(x, reference, atol=1e-3 * reference.max())


def test_richardson_lucy_converges_to_poisson_maximum_likelihood(tiny):
    op, a, _shape, y, b = tiny

    def fun(x):
        mu = a @ x + b
        return mu.sum() - y @ np.log(mu), a.T @ (1 - y / mu)

    reference = _lbfgs(fun, a.shape[1])
    x = S.richardson_lucy(op, _y(op, a, y), 20000, background=b).numpy().ravel()
    np.testing.assert_allclose(x, reference, atol=2e-3 * reference.max())


def test_lambda_max_gives_the_zero_solution(tiny):
    op, a, _shape, y, b = tiny
    yt = _y(op, a, y)
    lam = float(S.lambda_max(op, yt, b))
    assert lam == pytest.approx((a.T @ (y - b)).max())
    assert S.fista(op, yt, 1.001 * lam, 50, background=b).abs().max() == 0
    assert S.fista(op, yt, 0.9 * lam, 50, background=b).max() > 0


# --- properties on a real PSF bank ------------------------------------------------------


@pytest.fixture(scope="module")
def problem(small_bank):
    """Poisson light fields of two sparse volumes through a wave-optics bank."""
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    rng = np.random.default_rng(1)
    x = np.zeros((2, *op.volume_shape((4, 4))))
    for frame in x:
        idx = rng.choice(frame.size, 6, replace=False)
        frame.flat[idx] = rng.uniform(0.5, 1.0, 6)
    x = torch.from_numpy(x)
    y = op.simulate(x, photons=500, background=3.0, seed=4)
    return op, x, y


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(
            lambda op, y, h: S.richardson_lucy(op, y, 40, background=3.0, history=h),
            id="rl-deviance",
        ),
        pytest.param(
            lambda op, y, h: S.isra(op, y, 40, background=3.0, history=h), id="isra-least-squares"
        ),
        pytest.param(
            lambda op, y, h: S.fista(
                op, y, 0.02 * S.lambda_max(op, y, 3.0), 60, background=3.0, history=h
            ),
            id="fista-monotone-objective",
        ),
    ],
)
def test_objective_never_increases(problem, method):
    op, _, y = problem
    h = S.History()
    x = method(op, y, h)
    obj = np.array(h.objective)  # (iterations + 1, B)
    assert obj.shape == (len(h.iteration), 2) and h.iteration[-1] == len(obj) - 1
    assert (np.diff(obj, axis=0) <= 1e-12 * np.abs(obj[:-1])).all()
    assert (obj[-1] < 0.5 * obj[0]).all()  # and it actually made progress
    assert x.min() >= 0


def test_richardson_lucy_keeps_flux_and_non_negativity(problem):
    op, _, y = problem

    def check(k, x):
        assert x.min() >= 0
        np.testing.assert_allclose(
            op(x).sum(dim=(1, 2, 3)).numpy(),
            y.clamp_min(0).sum(dim=(1, 2, 3)).numpy(),
            rtol=1e-10,
        )

    S.richardson_lucy(op, y, 15, callback=check)


def test_richardson_lucy_handles_zero_pixels(problem):
    """Pixels with y = 0 and H x = 0 (ratio 0/0) must not create NaN."""
    op, x, _ = problem
    y = op(x)
    y[..., : op.nnum, :] = 0  # a dark band of the sensor
    out = S.richardson_lucy(op, y, 30)
    assert torch.isfinite(out).all() and out.min() >= 0


def test_fista_restart_free_variant_ends_within_tolerance(problem):
    op, _, y = problem
    lam = 0.02 * S.lambda_max(op, y, 3.0)
    h_mono, h_plain = S.History(), S.History()
    S.fista(op, y, lam, 200, background=3.0, history=h_mono)
    S.fista(op, y, lam, 200, background=3.0, monotone=False, history=h_plain)
    np.testing.assert_allclose(h_plain.objective[-1], h_mono.objective[-1], rtol=1e-3)


def test_admm_l1_reaches_the_fista_minimum(problem):
    op, _, y = problem
    lam = 0.02 * S.lambda_max(op, y, 3.0)
    h_admm, h_fista = S.History(), S.History()
    S.fista(op, y, lam, 400, background=3.0, history=h_fista)
    S.admm(op, y, lam, None, 400, background=3.0, history=h_admm)
    np.testing.assert_allclose(h_admm.objective[-1], h_fista.objective[-1], rtol=1e-3)


def test_fista_recovers_the_bright_voxels_of_a_sparse_phantom(problem):
    op, x, _ = problem
    y = op(x)  # noiseless
    out = S.fista(op, y, 1e-3 * S.lambda_max(op, y), 2000)
    for truth, est in zip(x, out, strict=True):
        support = set(torch.nonzero(truth.flatten()).flatten().tolist())
        top = set(torch.topk(est.flatten(), len(support)).indices.tolist())
        assert top == support
        np.testing.assert_allclose(
            est.flatten()[list(support)], truth.flatten()[list(support)], rtol=0.02
        )


def test_tv_with_a_huge_weight_gives_the_best_constant(problem):
    """λ → ∞ forces ∇x = 0: x = c·1 with c the least-squares constant."""
    op, _, y = problem
    ones = torch.ones((1, *op.volume_shape((4, 4))), dtype=torch.float64)
    h1 = op(ones)
    c = ((h1 * (y - 3.0)).sum(dim=(1, 2, 3)) / h1.pow(2).sum()).clamp_min(0)
    # a large ρ enforces the split ∇x = v quickly; the fixed point does not depend on it
    out = S.admm(op, y, 1e6, op.norm() ** 2, 300, prior="tv", background=3.0, cg_steps=5)
    expected = c.reshape(-1, 1, 1, 1).expand_as(out)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=2e-3)


def test_tv_gradient_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 4, 5, 6), generator=g, dtype=torch.float64)
    v = torch.rand((2, 3, 4, 5, 6), generator=g, dtype=torch.float64)
    lhs = (S.gradient3d(x, 0.3) * v).sum()
    rhs = (x * S.divergence3d_adjoint(v, 0.3)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_conjugate_gradient_solves_spd_systems_per_frame():
    rng = np.random.default_rng(0)
    mats = [m @ m.T + 5 * np.eye(6) for m in rng.normal(size=(2, 6, 6))]
    rhs = rng.normal(size=(2, 6))

    def apply(x):
        return torch.stack([torch.from_numpy(m) @ xi for m, xi in zip(mats, x, strict=True)])

    x = S.conjugate_gradient(
        apply, torch.from_numpy(rhs), torch.zeros(2, 6, dtype=torch.float64), 6
    )
    for m, r, xi in zip(mats, rhs, x, strict=True):
        np.testing.assert_allclose(xi.numpy(), np.linalg.solve(m, r), rtol=1e-8)


def test_ista_step_is_differentiable_and_matches_fista_first_step(problem):
    op, _, y = problem
    lam = 0.02 * S.lambda_max(op, y)
    x0 = torch.zeros((2, *op.volume_shape((4, 4))), dtype=torch.float64)
    step = torch.tensor(1 / op.norm() ** 2, dtype=torch.float64, requires_grad=True)
    out = S.ista_step(op, x0, y, step, lam.reshape(-1, 1, 1, 1))
    out.sum().backward()
    assert step.grad is not None and torch.isfinite(step.grad)
    first = S.fista(op, y, lam, 1, monotone=False)
    np.testing.assert_allclose(out.detach().numpy(), first.numpy(), rtol=1e-12)


def test_callback_stops_early_and_history_has_every_iteration(problem):
    op, _, y = problem
    seen = []
    h = S.History()
    S.richardson_lucy(op, y, 50, history=h, callback=lambda k, x: seen.append(k) or k == 7)
    assert seen == list(range(1, 8)) and h.iteration == list(range(8))
    assert all(r.shape == (2,) for r in h.residual)


def test_numpy_input_and_float32_operator(small_bank):
    op = LightFieldOperator(small_bank)
    y = np.random.default_rng(0).poisson(5.0, (1, 1, 45, 45)).astype(np.uint16)
    x = S.richardson_lucy(op, y, 3)
    assert x.dtype == torch.float32 and x.shape == (1, *op.volume_shape((3, 3)))


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(
            lambda op, y: S.richardson_lucy(op, y[..., :44, :], 1),
            r"44×45 px.*multiples of nnum = 15.*30×45 or 45×45",
            id="size",
        ),
        pytest.param(lambda op, y: S.richardson_lucy(op, y[0], 1), r"\(B, 1, Y, X\)", id="ndim"),
        pytest.param(
            lambda op, y: S.richardson_lucy(op, torch.zeros_like(y), 1),
            "no signal above the background",
            id="all-zero",
        ),
        pytest.param(
            lambda op, y: S.richardson_lucy(op, y, 1, background=1e9),
            "no signal above the background",
            id="all-background",
        ),
        pytest.param(lambda op, y: S.richardson_lucy(op, y * float("nan"), 1), "NaN", id="nan"),
        pytest.param(
            lambda op, y: S.fista(op, y, -1.0, 1), "λ must be finite and ≥ 0", id="negative-lambda"
        ),
        pytest.param(
            lambda op, y: S.admm(op, y, 0.1, -2.0, 1), "rho must be a positive", id="negative-rho"
        ),
        pytest.param(
            lambda op, y: S.admm(op, y, 0.1, None, 1, prior="l2"), "prior must be", id="prior"
        ),
        pytest.param(lambda op, y: S.richardson_lucy(op, y, -1), "n_iter", id="n_iter"),
        pytest.param(
            lambda op, y: S.richardson_lucy(op, y, 1, background=-1.0),
            "background must be finite and ≥ 0",
            id="background",
        ),
        pytest.param(
            lambda op, y: S.richardson_lucy(op, y, 1, x0=torch.zeros(1, 3, 9, 8)),
            "x0 has shape",
            id="x0",
        ),
    ],
)
def test_bad_input(small_bank, call, match):
    op = LightFieldOperator(small_bank)
    y = torch.ones((1, 1, 45, 45))
    with pytest.raises(LFMError, match=match):
        call(op, y)


# --- accelerated Richardson–Lucy -------------------------------------------------------


def test_accelerated_richardson_lucy_reaches_the_poisson_maximum_likelihood_sooner(tiny):
    """Biggs–Andrews extrapolation keeps RL's fixed point (the L-BFGS-B
    maximum-likelihood solution) and gets there in far fewer iterations:
    100 accelerated iterations land as close as the 20000 plain ones of the
    test above must, where 100 plain ones are still far off (6 % of the
    peak; 2·10⁻⁵ of the peak would need about 800)."""
    op, a, _shape, y, b = tiny

    def fun(x):
        mu = a @ x + b
        return mu.sum() - y @ np.log(mu), a.T @ (1 - y / mu)

    reference = _lbfgs(fun, a.shape[1])
    yt = _y(op, a, y)
    fast = S.richardson_lucy(op, yt, 100, background=b, accelerate=True).numpy().ravel()
    plain = S.richardson_lucy(op, yt, 100, background=b).numpy().ravel()
    tol = 2e-3 * reference.max()
    np.testing.assert_allclose(fast, reference, atol=tol)
    assert np.abs(plain - reference).max() > 10 * tol


def test_accelerated_richardson_lucy_does_not_stall_on_a_sparse_bright_problem():
    """432 unknowns, half of them 0, 2000 photons at the brightest pixel: many
    voxels head for 0 on the way, where an extrapolation clipped to 0 would
    freeze them for good (RL's update is multiplicative) and stall short of
    the maximum-likelihood point. 3000 accelerated iterations land within 1 %
    of the peak of the L-BFGS-B solution; plain RL is still 7 % off."""
    cfg = Config(4, 2, (0, 1, 1), (6, 6), torch.float64)
    op = LightFieldOperator(random_bank(cfg, seed=5), dtype=torch.float64)
    shape = (1, *op.volume_shape(cfg.lenslets))
    n = int(np.prod(shape))
    a = op(torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])).reshape(n, -1).T.numpy()
    rng = np.random.default_rng(1)
    x_true = rng.uniform(0, 1, n)
    x_true[rng.random(n) < 0.5] = 0
    x_true *= 2000 / (a @ x_true).max()
    b = 2.0
    y = rng.poisson(a @ x_true + b).astype(float)

    def fun(x):
        mu = a @ x + b
        return mu.sum() - y @ np.log(mu), a.T @ (1 - y / mu)

    reference = _lbfgs(fun, n)
    yt = _y(op, a, y)
    fast = S.richardson_lucy(op, yt, 3000, background=b, accelerate=True).numpy().ravel()
    plain = S.richardson_lucy(op, yt, 3000, background=b).numpy().ravel()
    peak = reference.max()
    np.testing.assert_allclose(fast, reference, atol=1e-2 * peak)
    assert np.abs(plain - reference).max() > 5e-2 * peak


def test_accelerated_richardson_lucy_starts_as_plain_and_keeps_flux(problem):
    """The first two iterations have no update history to extrapolate: they
    are plain RL; from the third on the path differs. Every iterate is an RL
    update of a non-negative point, so it keeps the measured flux (b = 0)
    and stays non-negative."""
    op, _, y = problem
    for n in (1, 2):
        torch.testing.assert_close(
            S.richardson_lucy(op, y, n, accelerate=True), S.richardson_lucy(op, y, n)
        )
    assert not torch.allclose(
        S.richardson_lucy(op, y, 3, accelerate=True), S.richardson_lucy(op, y, 3)
    )
    flux = y.clamp_min(0).sum(dim=(1, 2, 3)).numpy()

    def check(k, x):
        assert x.min() >= 0
        np.testing.assert_allclose(op(x).sum(dim=(1, 2, 3)).numpy(), flux, rtol=1e-10)

    S.richardson_lucy(op, y, 15, accelerate=True, callback=check)


def test_accelerated_richardson_lucy_lowers_the_deviance_faster(problem):
    op, _, y = problem
    deviance = {}
    for accelerate in (False, True):
        h = S.History()
        S.richardson_lucy(op, y, 20, background=3.0, accelerate=accelerate, history=h)
        deviance[accelerate] = np.array(h.objective)[-1]
    assert (deviance[True] < deviance[False]).all()


def test_extrapolation_is_clipped_to_non_negative_and_bounded_alpha():
    x = torch.tensor([[1.0, 2.0, 0.5]])
    previous = torch.tensor([[2.0, 1.0, 0.5]])
    same = torch.tensor([[1.0, 1.0, 1.0]])
    # Updates that agree fully: α = 1 clipped to the limit; voxel 0 goes
    # 1 − 0.95 = 0.05, voxel 1 goes to 2.95; opposite updates: α = 0 → x.
    p = S.extrapolate(x, previous, same, same)
    torch.testing.assert_close(p, x + S.ACCELERATION_LIMIT * (x - previous))
    torch.testing.assert_close(S.extrapolate(x, previous, same, -same), x)
    # A voxel the extrapolation would take to 0 or below keeps its value
    # (not 0, where RL could never bring it back); the others extrapolate.
    far = S.extrapolate(x, torch.tensor([[9.0, 1.0, 0.5]]), same, same)
    torch.testing.assert_close(far, torch.tensor([[1.0, 2.95, 0.5]]))


def test_accelerate_must_be_a_boolean(problem):
    op, _, y = problem
    with pytest.raises(LFMError, match="accelerate"):
        S.richardson_lucy(op, y, 1, accelerate="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accelerated_richardson_lucy_on_cuda_matches_cpu(problem, small_bank):
    op, _, y = problem
    gpu = LightFieldOperator(small_bank, device="cuda", dtype=torch.float64)
    expected = S.richardson_lucy(op, y, 12, background=3.0, accelerate=True)
    got = S.richardson_lucy(gpu, y.cuda(), 12, background=3.0, accelerate=True).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10 * float(expected.max()))


# --- Richardson–Lucy with the held-out stop ----------------------------------------------


def _dim_lightfields(small_bank, photons: float, seed: int = 3) -> torch.Tensor:
    from lfm_recon.data import simulate_dataset

    data = simulate_dataset(
        small_bank, 3, 0, lenslets=(7, 8), photons=photons, background=5.0, seed=seed
    )
    return torch.from_numpy(data.lightfields)


def test_holdout_stop_keeps_each_frames_iterate_of_least_held_out_deviance(small_bank):
    """Brute force: plain RL written out on the pixels not held out, every
    iterate's held-out Poisson deviance computed here (float64); each frame
    gets its argmin up to the first iteration HOLDOUT_PATIENCE past it."""
    op, b, n = LightFieldOperator(small_bank), 5.0, 150
    y = _dim_lightfields(small_bank, 30.0)  # dim: RL starts fitting noise early
    shape = (3, *op.volume_shape((7, 8)))
    x0 = torch.full(shape, float((y - b).clamp_min(0).mean()) / 10)
    x, stopped = S.richardson_lucy_holdout(op, y, n, background=b, x0=x0, accelerate=False)

    held = S.holdout_mask(y.shape[-2:])
    keep = 1 - held
    sensitivity = op.backproject(keep.expand_as(y))
    iterates, deviance = [], []
    xj = x0.clone()
    yd = y.double().clamp_min(0)
    for _ in range(n):
        mu = (op.project(xj) + b).double()
        iterates.append(xj)
        d = torch.where(yd > 0, yd * torch.log(yd / mu), 0.0) - yd + mu
        deviance.append((held.double() * d).flatten(1).sum(1).numpy())
        xj = xj * op.backproject(keep * y.clamp_min(0) / (op.project(xj) + b)) / sensitivity
    deviance = np.array(deviance)  # (n, B)
    best = []
    for frame in deviance.T:
        for j in range(n):  # the frame is done at the first j this far past its best
            if j - frame[: j + 1].argmin() >= S.HOLDOUT_PATIENCE:
                break
        best.append(int(frame[: j + 1].argmin()))
    best = np.array(best)
    assert (best > 0).all() and (best < n - S.HOLDOUT_PATIENCE).all()  # interior optima
    assert stopped.tolist() == best.tolist()
    expected = torch.stack([iterates[k][i] for i, k in enumerate(best)])
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))


def test_holdout_stop_runs_longer_on_brighter_frames(small_bank):
    """The same volumes at 300× the photons: RL may go further before it fits
    noise, and does; the anti-aliasing filter is accepted on the way."""
    op = LightFieldOperator(small_bank)
    counts = []
    for photons in (10.0, 3000.0):
        y = _dim_lightfields(small_bank, photons, seed=4)
        x, stopped = S.richardson_lucy_holdout(op, y, 300, background=5.0, filter="antialias")
        assert x.shape == (3, *op.volume_shape((7, 8))) and x.min() >= 0
        assert torch.isfinite(x).all() and (stopped < 300).all()
        counts.append(stopped.double().mean().item())
    assert counts[1] > 2 * counts[0], counts


def test_holdout_stop_of_a_frame_does_not_depend_on_its_batch(small_bank):
    """Frames reconstructed one at a time or together (and with a brighter
    frame that runs longer beside them): the same volumes, the same stops."""
    op = LightFieldOperator(small_bank)
    y = torch.cat([_dim_lightfields(small_bank, 30.0), _dim_lightfields(small_bank, 3000.0)])
    together, stops = S.richardson_lucy_holdout(op, y, 200, background=5.0)
    assert stops[3:].min() > stops[:3].max()  # the bright frames ran on past the dim ones
    for i in range(len(y)):
        alone, stop = S.richardson_lucy_holdout(op, y[i : i + 1], 200, background=5.0)
        assert int(stop) == int(stops[i])
        torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-6 * float(alone.max()))
    # Done frames leave the batch: interleaved, with a background per frame
    # and the filter, each frame still gets what it gets alone.
    order = torch.tensor([3, 0, 4, 1, 5, 2])
    b = torch.tensor([5.0, 4.0, 6.0, 5.5, 4.5, 5.0]).reshape(-1, 1, 1, 1)
    mixed, stops = S.richardson_lucy_holdout(
        op, y[order], 200, background=b, filter="antialias", accelerate=False
    )
    assert len(set(stops.tolist())) > 2
    for i in range(len(y)):
        alone, stop = S.richardson_lucy_holdout(
            op, y[order][i : i + 1], 200, background=b[i : i + 1], filter="antialias",
            accelerate=False,
        )  # fmt: skip
        assert int(stop) == int(stops[i])
        torch.testing.assert_close(alone[0], mixed[i], rtol=1e-4, atol=1e-6 * float(alone.max()))


def test_holdout_mask_is_fixed_and_one_pixel_in_eight():
    mask = S.holdout_mask((150, 165))
    assert mask.shape == (1, 1, 150, 165) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask, S.holdout_mask((150, 165), dtype=torch.float64).float())
    n, f = mask.numel(), S.HOLDOUT_FRACTION
    assert abs(float(mask.sum()) - n * f) < 5 * np.sqrt(n * f * (1 - f))


def test_holdout_stop_bad_input(problem):
    op, _, y = problem
    for bad in (0, -3, 2.5, True):
        with pytest.raises(LFMError, match="max_iter"):
            S.richardson_lucy_holdout(op, y, bad)
    with pytest.raises(LFMError, match=r"NaN|finite"):
        S.richardson_lucy_holdout(op, y * float("nan"), 10)
