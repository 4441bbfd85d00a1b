"""The depth-adaptive anti-aliasing filter: widths from the optics, the
Lanczos low-pass against an independent convolution, and RL with it."""

import json

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from lfm_recon import LFMError, LightFieldOperator, Microscope
from lfm_recon.antialias import (
    AntiAliasFilter,
    filter_widths,
    lanczos_kernel,
    lanczos_matrix,
    lenslet_magnification,
    microlens_blur,
)
from lfm_recon.cli import main
from lfm_recon.io import read_volume_tiff
from lfm_recon.metrics import lenslet_grid_index
from lfm_recon.solvers import DEFAULT_FILTER, richardson_lucy, solve


# --- widths ----------------------------------------------------------------------
def test_widths_of_a_matched_sensor_follow_the_closed_form(reference):
    """With the sensor in the lenslets' focal plane (v = f) the blur is
    b = (p/2)·λ, so W = (s/2)·min(λ, 1) with λ = f·n / (M²·|z|)."""
    z = np.array([-50.0, -20.0, -10.0, -3.0, 0.0, 3.0, 10.0, 20.0, 50.0])
    m = reference  # 20x, n 1.33, f 3000 µm
    lam = 3000.0 * 1.33 / (20.0**2 * np.abs(np.where(z == 0, 1, z)))
    expected = np.where(z == 0, 2.5, 2.5 * np.minimum(lam, 1.0))
    np.testing.assert_allclose(filter_widths(m, z, 5), expected, rtol=1e-12)
    np.testing.assert_allclose(microlens_blur(m, z[z != 0]), 75.0 * lam[z != 0], rtol=1e-12)


def test_widths_with_a_moved_sensor():
    """The sea urchin's sensor sits 2433 µm behind f = 2500 µm lenslets: the
    thin-lens blur b = (p/2)|1 − v/z3|, z3 from 1/z3 = 1/f − 1/a."""
    m = Microscope.preset("seaurchin-20x-0.5na")
    z = np.array([-12.0, -4.0, 4.0, 12.0])
    a = 20.0**2 * z / 1.33
    z3 = 1.0 / (1.0 / 2500.0 - 1.0 / a)
    blur = 62.5 * np.abs(1.0 - 2433.0 / z3)
    np.testing.assert_allclose(microlens_blur(m, z), blur, rtol=1e-12)
    lam = 2433.0 / np.abs(a)
    np.testing.assert_allclose(lenslet_magnification(m, z), lam, rtol=1e-12)
    half = np.minimum(np.abs(lam * 125.0 - blur), 62.5)
    np.testing.assert_allclose(filter_widths(m, z, 3), 3 * half / 125.0, rtol=1e-12)
    assert filter_widths(m, [0.0], 3)[0] == 1.5  # half a lenslet at the native plane


def test_widths_reject_a_bad_voxel_count(reference):
    for s in (0, 2.5, True):
        with pytest.raises(LFMError, match="voxels_per_lenslet"):
            filter_widths(reference, [0.0], s)


# --- the kernel ------------------------------------------------------------------
@pytest.mark.parametrize("width", [pytest.param(w, id=f"W{w}") for w in (1.5, 2.0, 2.5, 5.0)])
def test_lanczos_kernel_is_a_low_pass_at_its_width(width):
    h = lanczos_kernel(width)
    t = np.arange(len(h)) - len(h) // 2
    assert len(h) % 2 == 1 and h.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(h, h[::-1])
    if width == int(width):  # the sinc's zeros at multiples of W
        assert np.all(np.abs(h[(t != 0) & (t % int(width) == 0)]) < 1e-15)
    f = np.linspace(0, 0.5, 1001)
    response = (h * np.cos(2 * np.pi * f[:, None] * t)).sum(axis=1)
    cut = 1 / (2 * width)
    assert np.all(np.abs(response[f < 0.6 * cut] - 1) < 0.02)  # pass band kept
    assert np.all(np.abs(response[f > 1.5 * cut]) < 0.02)  # stop band removed


def test_narrow_widths_are_the_identity():
    assert np.array_equal(lanczos_kernel(1.0), [1.0]) and np.array_equal(lanczos_kernel(0.3), [1])
    np.testing.assert_array_equal(lanczos_matrix(0.8, 7), np.eye(7))


# --- the filter on volumes -----------------------------------------------------------
WIDTHS = [0.5, 1.5, 2.5, 3.7, 1.0]


def reference_filter(volume: np.ndarray, widths) -> np.ndarray:
    """Each plane convolved along y then x with scipy (edges replicated), ≥ 0."""
    out = volume.copy()
    for d, w in enumerate(widths):
        if w <= 1:
            continue
        h = lanczos_kernel(w)
        plane = ndimage.convolve1d(volume[:, d], h, axis=-2, mode="nearest")
        out[:, d] = np.clip(ndimage.convolve1d(plane, h, axis=-1, mode="nearest"), 0, None)
    return out


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
)
def test_filter_matches_a_separable_convolution(dtype):
    rng = np.random.default_rng(0)
    x = rng.random((3, len(WIDTHS), 24, 18)) ** 4  # sparse, so the clamp at 0 matters
    xt = torch.tensor(x, dtype=dtype)
    out = AntiAliasFilter(WIDTHS)(xt)
    assert out.dtype == dtype and out.shape == xt.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(out.numpy(), reference_filter(x, WIDTHS), atol=tol)
    assert torch.equal(xt, torch.tensor(x, dtype=dtype))  # the input is kept
    assert (out.numpy() < reference_filter(x, [0] * len(WIDTHS))).any()  # it did filter


def test_filter_keeps_uniform_planes_and_batches_independently():
    f = AntiAliasFilter(WIDTHS)
    uniform = torch.full((1, len(WIDTHS), 15, 20), 3.0, dtype=torch.float64)
    torch.testing.assert_close(f(uniform), uniform)
    x = torch.rand(4, len(WIDTHS), 15, 20, dtype=torch.float64)
    one_by_one = torch.cat([f(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(f(x), one_by_one)


def test_filter_rejects_another_depth_count():
    with pytest.raises(LFMError, match=r"5 depths.*\(B, 5, Yv, Xv\)"):
        AntiAliasFilter(WIDTHS)(torch.zeros(1, 3, 6, 6))
    with pytest.raises(LFMError, match="voxels ≥ 0"):
        AntiAliasFilter([1.0, float("nan")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_filter_on_cuda_matches_cpu():
    x = torch.rand(2, len(WIDTHS), 30, 21)
    f = AntiAliasFilter(WIDTHS)
    torch.testing.assert_close(f(x.cuda()).cpu(), f(x), rtol=1e-5, atol=1e-6)


# --- the grid index ---------------------------------------------------------------
def test_lenslet_grid_index_of_known_planes():
    s = 3
    ramp = np.add.outer(np.arange(12.0), np.arange(9.0))[None]  # all differences 1
    assert lenslet_grid_index(ramp, s)[0] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    blocks = np.kron(rng.random((4, 3)), np.ones((s, s)))[None]  # constant per lenslet
    assert lenslet_grid_index(blocks, s)[0] == np.inf
    # Steps of 3 across lenslet edges and of 1 inside, along both axes.
    profile = np.cumsum([0, 1, 1, 3, 1, 1, 3, 1, 1])
    steps = np.add.outer(profile, profile)[None]
    assert lenslet_grid_index(steps, s)[0] == pytest.approx(9.0)
    # A dot at each lenslet's centre on a ramp: steps 1+4, 1−4 and 1.
    dots = np.arange(9.0) + 4.0 * (np.arange(9) % s == 1)
    assert lenslet_grid_index(np.add.outer(dots, dots)[None], s)[0] == pytest.approx(25.0)
    with pytest.raises(LFMError, match="multiples of s"):
        lenslet_grid_index(np.zeros((1, 7, 9)), s)


# --- inside the solvers -------------------------------------------------------------
@pytest.fixture(scope="module")
def blob_case(small_bank):
    """A smooth blob in the native plane (z = 0) and its noiseless light field."""
    op = LightFieldOperator(small_bank)
    _, yv, xv = op.volume_shape((8, 8))
    p, q = np.mgrid[:yv, :xv]
    x = np.zeros((1, 3, yv, xv), np.float32)
    x[0, 1] = 1e3 * np.exp(-((p - 11.3) ** 2 + (q - 12.6) ** 2) / (2 * 2.5**2))
    return op, x, op(torch.from_numpy(x))


def test_rl_with_the_filter_removes_the_grid_pattern(blob_case):
    """Plain RL renders the blob lenslet by lenslet (a grid index far above the
    truth's); with the filter the index is back near the truth's."""
    op, x, y = blob_case
    truth = lenslet_grid_index(x[0], 3)[1]
    plain = richardson_lucy(op, y, 30)[0].numpy()
    filtered = richardson_lucy(op, y, 30, filter="antialias")[0].numpy()
    plain_index = lenslet_grid_index(plain, 3)[1]
    filtered_index = lenslet_grid_index(filtered, 3)[1]
    assert plain_index > 3 * truth
    assert filtered_index < 0.5 * plain_index and filtered_index < 2 * truth
    assert filtered.min() >= 0
    # Only the native plane is filtered here: W = 1.5, and (3/2)·λ < 1 at ±20 µm.
    lam = 3000 * 1.33 / (400 * 20)
    widths = filter_widths(op.bank.microscope, op.bank.depths, 3)
    np.testing.assert_allclose(widths, [1.5 * lam, 1.5, 1.5 * lam], rtol=1e-12)


def test_solve_applies_the_method_default(blob_case):
    op, _, y = blob_case
    assert DEFAULT_FILTER["rl"] == "antialias" and DEFAULT_FILTER["fista"] == "none"
    torch.testing.assert_close(solve(op, y, "rl", 5), richardson_lucy(op, y, 5, filter="antialias"))
    torch.testing.assert_close(solve(op, y, "rl", 5, filter="none"), richardson_lucy(op, y, 5))
    with pytest.raises(LFMError, match="works inside rl and isra, not fista"):
        solve(op, y, "fista", 5, filter="antialias")
    with pytest.raises(LFMError, match="filter must be one of none, antialias"):
        solve(op, y, "rl", 5, filter="gauss")


def test_cli_filter_option(blob_case, tmp_path, capsys):
    op, _, y = blob_case
    op.bank.save(tmp_path / "bank.h5")
    tifffile.imwrite(tmp_path / "lf.tif", y[0, 0].numpy())
    argv = ["reconstruct", str(tmp_path / "lf.tif"), "--psf", str(tmp_path / "bank.h5")]
    argv += ["--iterations", "4", "-q"]
    for choice in ("none", "antialias"):
        out = tmp_path / f"{choice}.tif"
        assert main([*argv, "--filter", choice, "-o", str(out)]) == 0
        volume, _ = read_volume_tiff(out)
        expected = richardson_lucy(op, y, 4, filter=choice)[0].numpy()
        np.testing.assert_allclose(volume, expected, rtol=1e-5, atol=1e-6 * expected.max())
        provenance = json.loads((tmp_path / f"{choice}.provenance.json").read_text())
        assert provenance["filter"] == choice
    out = tmp_path / "fista.tif"
    assert main([*argv, "--method", "fista", "--filter", "antialias", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "works inside rl and isra, not fista" in err
    assert not out.exists()


def test_inplace_writes_the_same_planes():
    x = torch.rand(2, len(WIDTHS), 12, 15, dtype=torch.float64)
    expected = AntiAliasFilter(WIDTHS)(x)
    out = AntiAliasFilter(WIDTHS)(x, inplace=True)
    assert out is x
    torch.testing.assert_close(x, expected)
