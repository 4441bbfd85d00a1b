"""H and Hᵀ: adjointness, a brute-force projection, physics, autograd, errors.

Every operator configuration is listed once in CONFIGS and every generic
property runs over all of them (odd/even nnum and lenslet counts, several s,
depth groups of different radii, float32/float64), by direct convolution and
by FFT (``PATHS``: every group with R ≥ 1 on the FFT path).
"""

import re

import numpy as np
import pytest
import torch
from banks import Config, brute_force, random_bank

from lfm_recon import LFMError
from lfm_recon.operator import LightFieldOperator

CONFIGS = [
    pytest.param(Config(5, 1, (1,), (3, 4), torch.float64), id="nnum5-s1-one-depth-f64"),
    pytest.param(Config(5, 3, (2, 1, 1, 2), (4, 3), torch.float64), id="nnum5-s3-groups-f64"),
    pytest.param(Config(4, 2, (0, 1, 2), (5, 5), torch.float64), id="nnum4-s2-even-f64"),
    pytest.param(Config(6, 3, (1, 1), (2, 3), torch.float32), id="nnum6-s3-f32"),
    pytest.param(Config(7, 7, (1, 2, 1), (3, 3), torch.float32), id="nnum7-s7-f32"),
    pytest.param(Config(3, 2, (1,), (1, 1), torch.float64), id="single-lenslet-f64"),
]


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


PATHS = [pytest.param(None, id="direct"), pytest.param(1, id="fft")]  # fft_radius


def _op(cfg, device="cpu", fft_radius=None):
    bank = random_bank(cfg)
    return LightFieldOperator(bank, dtype=cfg.dtype, device=device, fft_radius=fft_radius)


def _rand(shape, dtype, seed, device="cpu"):
    t = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.to(device)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_dot_product(cfg, device, path):
    op = _op(cfg, device, path)
    x = _rand((2, *op.volume_shape(cfg.lenslets)), cfg.dtype, 1, device)
    y = _rand((2, *op.lightfield_shape(cfg.lenslets)), cfg.dtype, 2, device)
    lhs = (op(x) * y).sum().item()
    rhs = (x * op.adjoint(y)).sum().item()
    tol = 1e-12 if cfg.dtype == torch.float64 else 1e-5
    assert abs(lhs - rhs) <= tol * abs(lhs), f"<Hx,y> = {lhs!r}, <x,Hᵀy> = {rhs!r}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_equals_brute_force_projection(cfg, path):
    bank = random_bank(cfg)
    op = LightFieldOperator(bank, dtype=cfg.dtype, fft_radius=path)
    volume = np.random.default_rng(3).random(op.volume_shape(cfg.lenslets))
    got = op(torch.as_tensor(volume, dtype=cfg.dtype)[None])[0, 0].numpy()
    want = brute_force(bank, volume)
    tol = 1e-12 if cfg.dtype == torch.float64 else 1e-5
    assert np.abs(got - want).max() <= tol * np.abs(want).max()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_norm_bounds_power_iteration_and_is_tight(cfg):
    op = _op(cfg)
    x = _rand((1, *op.volume_shape((12, 12))), cfg.dtype, 4)
    for _ in range(200):
        x = op.adjoint(op(x / x.norm()))
    estimate = x.norm().item() ** 0.5
    assert estimate <= op.norm() * (1 + 1e-5)
    assert estimate >= 0.85 * op.norm()  # 12×12 lenslets with zero padding


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_autograd_gives_the_adjoint(cfg, device, path):
    op = _op(cfg, device, path)
    x = _rand((1, *op.volume_shape(cfg.lenslets)), cfg.dtype, 5, device).requires_grad_()
    y = _rand((1, *op.lightfield_shape(cfg.lenslets)), cfg.dtype, 6, device).requires_grad_()
    (op(x) * y.detach()).sum().backward()
    (x.detach() * op.adjoint(y)).sum().backward()
    tol = 1e-12 if cfg.dtype == torch.float64 else 1e-5
    with torch.no_grad():
        assert (x.grad - op.adjoint(y)).abs().max() <= tol * op.adjoint(y).abs().max()
        assert (y.grad - op(x)).abs().max() <= tol * op(x).abs().max()
    assert all(not b.requires_grad for b in op.buffers())


@pytest.mark.parametrize("path", PATHS)
def test_gradients_match_finite_differences_twice(path):
    """torch's numerical gradcheck and gradgradcheck, through H and Hᵀ."""
    op = _op(Config(3, 2, (1, 0), (2, 2), torch.float64), fft_radius=path)
    x = _rand((1, *op.volume_shape((2, 2))), torch.float64, 13).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: op.adjoint(op(v) ** 2), (x,))
    assert torch.autograd.gradgradcheck(lambda v: op.adjoint(op(v) ** 2), (x,))


def test_physical_bank_matches_brute_force_at_the_borders(small_bank):
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    volume = np.zeros(op.volume_shape((4, 5)))
    volume[:, 0, 0] = 1.0  # corner voxels: most of their light leaves the sensor
    volume[1, -1, 7] = 2.0
    volume[2, 5, -1] = 0.5
    got = op(torch.as_tensor(volume)[None])[0, 0].numpy()
    assert np.abs(got - brute_force(small_bank, volume)).max() < 1e-12


def test_shifting_the_volume_by_one_lenslet_shifts_the_light_field(small_bank):
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    s, n = small_bank.voxels_per_lenslet, small_bank.nnum
    x = torch.zeros(1, *op.volume_shape((9, 9)), dtype=torch.float64)
    x[0, :, 3 * s : 4 * s, 3 * s : 5 * s] = torch.rand(3, s, 2 * s, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(s, -s), dims=(2, 3))
    y, y_shift = op(x), op(shifted)
    assert torch.allclose(torch.roll(y, shifts=(n, -n), dims=(2, 3)), y_shift, atol=1e-12)


def test_linearity_and_flux(small_bank):
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    a = _rand((1, *op.volume_shape((7, 7))), torch.float64, 7)
    b = _rand((1, *op.volume_shape((7, 7))), torch.float64, 8)
    assert torch.allclose(op(2.5 * a - 0.5 * b), 2.5 * op(a) - 0.5 * op(b), atol=1e-12)
    # A voxel far from the borders sends exactly its value to the sensor, up
    # to the rounding of its kernel (normalised to sum 1, stored in float32:
    # a few float32 epsilons; 6e-9 on one numpy/scipy build, < 1e-9 on another).
    x = torch.zeros(1, *op.volume_shape((9, 9)), dtype=torch.float64)
    s = small_bank.voxels_per_lenslet
    x[0, :, 4 * s + 1, 4 * s + 2] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert abs(op(x).sum().item() - 6.0) < 6.0 * 4 * np.finfo(np.float32).eps


@pytest.mark.parametrize(
    ("compute", "device"),
    [
        pytest.param("bf16", "cpu", id="bf16-cpu"),
        pytest.param(
            "bf16",
            "cuda",
            id="bf16-cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
        pytest.param(
            "tf32",
            "cuda",
            id="tf32-cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="TF32 exists on CUDA only"
            ),
        ),
    ],
)
def test_fast_compute_modes_stay_close(small_bank, compute, device):
    exact = LightFieldOperator(small_bank, device=device)
    fast = LightFieldOperator(small_bank, compute=compute, device=device)
    x = _rand((1, *exact.volume_shape((5, 5))), torch.float32, 9, device)
    tol = 2e-2 if compute == "bf16" else 1e-3
    assert (fast(x) - exact(x)).abs().max() <= tol * exact(x).abs().max()
    y = exact(x)
    assert (fast.adjoint(y) - exact.adjoint(y)).abs().max() <= tol * exact.adjoint(y).abs().max()
    assert fast(x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(small_bank):
    cpu = LightFieldOperator(small_bank)
    gpu = LightFieldOperator(small_bank, device="cuda")
    x = _rand((2, *cpu.volume_shape((6, 6))), torch.float32, 10)
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-6)
    y = cpu(x)
    assert torch.allclose(gpu.adjoint(y.cuda()).cpu(), cpu.adjoint(y), rtol=1e-4, atol=1e-6)


def test_state_holds_the_bank_hash_and_refuses_another_bank(small_bank):
    op = LightFieldOperator(small_bank)
    assert list(op.parameters()) == []
    state = op.state_dict()
    assert set(state) == {"_extra_state"}  # weights derive from the bank
    LightFieldOperator(small_bank).load_state_dict(state)
    other = LightFieldOperator(random_bank(Config(15, 3, (1, 1, 1), (2, 2), torch.float32)))
    with pytest.raises(LFMError, match="saved with PSF bank"):
        other.load_state_dict(state)
    weights = [b for name, b in op.named_buffers() if name.startswith("weight")]
    assert op.weight_bytes == sum(w.nbytes for w in weights)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda op: op(torch.rand(1, 2, 6, 6)),
            "2 depths but the PSF bank has 3",
            id="wrong-depth-count",
        ),
        pytest.param(
            lambda op: op(torch.rand(1, 3, 7, 6)),
            "multiple of s = 3",
            id="volume-not-multiple-of-s",
        ),
        pytest.param(lambda op: op(torch.rand(3, 6, 6)), "(B, D, Yv, Xv)", id="volume-3d"),
        pytest.param(lambda op: op(torch.full((1, 3, 6, 6), float("nan"))), "NaN", id="volume-nan"),
        pytest.param(
            lambda op: op(torch.rand(1, 3, 6, 6, dtype=torch.float64)), "float64", id="volume-dtype"
        ),
        pytest.param(
            lambda op: op.adjoint(torch.rand(1, 1, 30, 31)),
            "multiples of nnum = 15",
            id="lightfield-not-multiple-of-nnum",
        ),
        pytest.param(
            lambda op: op.adjoint(torch.rand(1, 2, 30, 30)),
            "(B, 1, Y, X)",
            id="lightfield-2-channels",
        ),
        pytest.param(
            lambda op: op.adjoint(torch.full((1, 1, 30, 30), float("inf"))),
            "infinity",
            id="lightfield-inf",
        ),
        pytest.param(
            lambda op: op.simulate(torch.rand(1, 3, 6, 6), photons=-5),
            "photons",
            id="negative-photons",
        ),
        pytest.param(
            lambda op: op.simulate(-torch.rand(1, 3, 6, 6)), "negative values", id="negative-volume"
        ),
        pytest.param(
            lambda op: op.simulate(torch.rand(1, 3, 6, 6), read_noise=-1),
            "read_noise",
            id="negative-read-noise",
        ),
    ],
)
def test_bad_input_is_a_clear_error(small_bank, make, message):
    op = LightFieldOperator(small_bank)
    with pytest.raises(LFMError, match=re.escape(message)):
        make(op)


def test_large_kernels_take_the_fft_path_by_default_and_match_brute_force(monkeypatch):
    """Radii ≥ FFT_RADIUS (7) convolve by FFT, smaller ones directly, in one
    operator: both equal the brute-force projection and are adjoint. A
    spectrum over FFT_MAX_BYTES stays direct (same result). Frame sizes
    have their own spectra (a second size right after the first)."""
    from lfm_recon import operator as operator_module

    cfg = Config(3, 2, (7, 2, 8), (4, 3), torch.float64)
    bank = random_bank(cfg)
    op = LightFieldOperator(bank, dtype=cfg.dtype)
    assert [(g.radius, g.fft) for g in op._groups] == [(2, False), (7, True), (8, True)]
    rng = np.random.default_rng(8)
    for lenslets in (cfg.lenslets, (2, 5)):
        volume = rng.random(op.volume_shape(lenslets))
        got = op(torch.as_tensor(volume)[None])[0, 0].numpy()
        want = brute_force(bank, volume)
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
        y = torch.as_tensor(rng.random(op.lightfield_shape(lenslets)))[None]
        x = torch.as_tensor(volume)[None]
        lhs, rhs = (op(x) * y).sum().item(), (x * op.adjoint(y)).sum().item()
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    assert len(op._spectra) == 4  # two groups × two frame sizes
    op.to("cpu")  # moving the module drops the spectra of the weights it had
    assert not op._spectra
    monkeypatch.setattr(operator_module, "FFT_MAX_BYTES", 1)
    capped = LightFieldOperator(bank, dtype=cfg.dtype)
    x = torch.as_tensor(rng.random(op.volume_shape(cfg.lenslets)))[None]
    torch.testing.assert_close(capped(x), op(x), rtol=1e-12, atol=0)
    assert capped._spectra and all(v is None for v in capped._spectra.values())
    fast = LightFieldOperator(bank, compute="tf32")  # the fast modes stay direct
    assert not any(g.fft for g in fast._groups)


def test_bad_construction_is_a_clear_error(small_bank):
    with pytest.raises(LFMError, match="PSFBank"):
        LightFieldOperator("bank.h5")
    with pytest.raises(LFMError, match="compute"):
        LightFieldOperator(small_bank, compute="fp8")
    with pytest.raises(LFMError, match=re.escape("needs dtype=torch.float32")):
        LightFieldOperator(small_bank, dtype=torch.float64, compute="bf16")
    for bad in (0, 2.5, True):
        with pytest.raises(LFMError, match="fft_radius must be a kernel radius"):
            LightFieldOperator(small_bank, fft_radius=bad)


class TestSimulate:
    def test_background_only_is_poisson_and_read_noise_adds_variance(self, small_bank):
        op = LightFieldOperator(small_bank, dtype=torch.float64)
        zero = torch.zeros(1, *op.volume_shape((20, 20)), dtype=torch.float64)
        y = op.simulate(zero, photons=100, background=40.0, seed=0)
        assert abs(y.mean().item() - 40.0) < 0.3 and abs(y.var().item() - 40.0) < 2.0
        assert torch.equal(y, y.round())  # photon counts
        y = op.simulate(zero, photons=100, background=40.0, read_noise=3.0, offset=100.0, seed=0)
        assert abs(y.mean().item() - 140.0) < 0.3 and abs(y.var().item() - 49.0) < 2.5

    def test_signal_scales_to_the_peak_photon_count(self, small_bank):
        op = LightFieldOperator(small_bank, dtype=torch.float64)
        x = _rand((2, *op.volume_shape((6, 6))), torch.float64, 11)
        clean = op(x)
        y = op.simulate(x, photons=1e4, seed=1)
        rate = clean * (1e4 / clean.amax(dim=(1, 2, 3), keepdim=True))
        assert y.amax(dim=(1, 2, 3)).sub(1e4).abs().max() < 5 * 1e4**0.5
        z = (y - rate) / rate.sqrt()  # Poisson: standardised residuals ~ N(0, 1)
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
        assert torch.equal(op.simulate(x, photons=None), clean)

    def test_fixed_gain_and_peak_gain(self, small_bank):
        op = LightFieldOperator(small_bank, dtype=torch.float64)
        x = _rand((2, *op.volume_shape((6, 6))), torch.float64, 14)
        gain = op.peak_gain(x, 500.0)
        assert torch.allclose(
            op(x).amax(dim=(1, 2, 3)) * gain, torch.full((2,), 500.0, dtype=torch.float64)
        )
        assert torch.equal(op.simulate(x, gain=gain, seed=3), op.simulate(x, photons=500, seed=3))
        assert op.peak_gain(torch.zeros_like(x), 500.0).abs().sum() == 0

    def test_seed_reproduces(self, small_bank):
        op = LightFieldOperator(small_bank)
        x = _rand((1, *op.volume_shape((4, 4))), torch.float32, 12)
        assert torch.equal(op.simulate(x, seed=5), op.simulate(x, seed=5))
        assert not torch.equal(op.simulate(x, seed=5), op.simulate(x, seed=6))
