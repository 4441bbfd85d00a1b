"""Unpaired volumes (files, resampling that keeps physical size, crops), the
Poisson re-synthesis loss against scipy's Poisson likelihood, training with
no paired sample, and test-time adaptation."""

import math

import h5py
import numpy as np
import pytest
import tifffile
import torch
from scipy import stats

from lfm_recon import LFMError, LightFieldOperator, UnfoldedISTA
from lfm_recon.cli import main
from lfm_recon.data import simulate_dataset
from lfm_recon.modelfile import load_model, read_model_file, save_model
from lfm_recon.training import TrainConfig, losses, train
from lfm_recon.training.unpaired import UnpairedVolumes, read_volume_file, resample


def _sphere(shape, voxel, centre, radius) -> np.ndarray:
    """A solid sphere (1 inside), sampled at voxel centres (z, y, x), µm."""
    axes = [(np.arange(n) + 0.5) * v for n, v in zip(shape, voxel, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return (r2 <= radius**2).astype(np.float32)


# --- unpaired volumes ------------------------------------------------------------------------
def test_resampling_keeps_a_spheres_size_and_place():
    """A 6 µm sphere drawn at 0.4 µm voxels, resampled to 2.5 µm lateral and
    5 µm axial voxels: its volume (4/3 π r³) and its centre in µm are kept."""
    voxel = (0.4, 0.4, 0.4)
    centre, radius = (16.2, 14.6, 15.4), 6.0
    fine = _sphere((80, 75, 78), voxel, centre, radius)
    out = resample(fine, voxel, lateral=2.5, dz=5.0)
    assert out.shape == (round(80 * 0.4 / 5), round(75 * 0.4 / 2.5), round(78 * 0.4 / 2.5))
    assert out.sum() * 2.5 * 2.5 * 5.0 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.04)
    for axis, step in enumerate((5.0, 2.5, 2.5)):
        profile = out.sum(axis=tuple(a for a in range(3) if a != axis))
        where = (np.arange(out.shape[axis]) + 0.5) * step
        assert (profile @ where) / profile.sum() == pytest.approx(centre[axis], abs=0.15 * step)


def test_crops_are_slab_means_on_the_banks_grid(tmp_path, small_bank):
    """An HDF5 stack with element_size_um: crops are (D, n, n), each plane
    the mean of the stack over its slab; a uniform stack stays uniform."""
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("stack", data=np.full((70, 40, 40), 3.0, np.float32))
        d.attrs["element_size_um"] = (1.0, 1.25, 1.25)
    vols = UnpairedVolumes([str(path)], small_bank)
    crop = vols.crop(np.random.default_rng(0), 12)
    assert crop.shape == (small_bank.n_depths, 12, 12)
    np.testing.assert_allclose(crop, 3.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param("tiff-no-spacing", "does not state its voxel size", id="tiff-no-voxel-size"),
        pytest.param("h5-no-size", "no element_size_um attribute", id="h5-no-voxel-size"),
        pytest.param("h5-2d", "an unpaired volume is 3-D", id="wrong-dimensionality"),
        pytest.param("h5-nan", "NaN", id="nan"),
        pytest.param("h5-shallow", "spans 10.0 µm in z", id="too-shallow"),
        pytest.param("missing", "does not exist", id="missing-file"),
    ],
)
def test_bad_unpaired_volumes_are_named(tmp_path, small_bank, kind, message):
    path = tmp_path / ("v.tif" if kind.startswith("tiff") else "v.h5")
    data = np.ones((60, 30, 30), np.float32)
    if kind == "tiff-no-spacing":
        tifffile.imwrite(path, data)
    elif kind != "missing":
        if kind == "h5-2d":
            data = data[0]
        if kind == "h5-nan":
            data[3, 3, 3] = np.nan
        if kind == "h5-shallow":
            data = data[:10]
        with h5py.File(path, "w") as f:
            d = f.create_dataset("v", data=data)
            if kind != "h5-no-size":
                d.attrs["element_size_um"] = (1.0, 1.0, 1.0)
    spec = f"{path}:v" if kind.startswith("h5") else str(path)
    with pytest.raises(LFMError, match=message):
        UnpairedVolumes([spec], small_bank)


def test_an_imagej_tiff_gives_its_voxel_size(tmp_path):
    path = tmp_path / "stack.tif"
    data = np.ones((5, 8, 9), np.float32)
    tifffile.imwrite(
        path, data, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 3.0, "unit": "um"}
    )
    volume, voxel = read_volume_file(str(path))
    assert volume.shape == (1, 5, 8, 9)
    assert voxel == pytest.approx((3.0, 0.5, 0.5))


# --- Poisson re-synthesis -------------------------------------------------------------------------
def test_poisson_resynthesis_is_the_poisson_likelihood(small_bank):
    """loss · Σy = Σ [−log p(y | μ) + log p(y | y)] with p the Poisson pmf
    (scipy), μ = H x + b: the negative log-likelihood ratio to a perfect fit."""
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = 50 * torch.rand(2, *op.volume_shape((4, 5)), dtype=torch.float64, generator=g)
    b = torch.tensor(2.0, dtype=torch.float64)
    mu = op(x) + b
    y = torch.poisson(mu, generator=g)
    loss = losses.poisson_resynthesis(op, x, y, b)
    yn, mn = y.numpy().ravel(), mu.numpy().ravel()
    nll = -stats.poisson.logpmf(yn, mn) + stats.poisson.logpmf(yn, yn)
    assert float(loss) * yn.sum() == pytest.approx(nll.sum(), rel=1e-9)
    # Scale-free: the same value for normalised light fields and volumes.
    c = 37.0
    assert float(losses.poisson_resynthesis(op, x / c, y / c, b / c)) == pytest.approx(
        float(loss), rel=1e-9
    )


# --- training without paired samples -----------------------------------------------------
def test_training_with_no_paired_sample(tmp_path, small_bank):
    """Unlabeled light fields + unpaired volumes + simulation, no data.train:
    the run trains, validates on its simulated set and writes a model."""
    small_bank.save(tmp_path / "bank.h5")
    data = simulate_dataset(small_bank, 2, 4, lenslets=(6, 6), background=3.0, seed=4)
    tifffile.imwrite(tmp_path / "lf.tif", data.unlabeled[:, 0], photometric="minisblack")
    with h5py.File(tmp_path / "vols.h5", "w") as f:
        d = f.create_dataset("v", data=np.repeat(data.volumes, 2, axis=1))
        d.attrs["element_size_um"] = (10.0, *small_bank.voxel_size[:1], small_bank.voxel_size[0])
    cfg = TrainConfig.from_dict(
        {
            "psf": str(tmp_path / "bank.h5"),
            "output": str(tmp_path / "run"),
            "steps_per_epoch": 2,
            "model": {"n_layers": 2, "data_term": "poisson", "prior": "cnn"},
            "data": {
                "unlabeled": [str(tmp_path / "lf.tif")],
                "frames_background": 3.0,
                "patch_lenslets": 0,
                "unlabeled_batch_size": 2,
                "unpaired_volumes": [str(tmp_path / "vols.h5")],
                "unpaired_batch_size": 2,
                "simulate": {"batch_size": 2, "validation": 2},
            },
            "loss": {"resynthesis": 1.0, "resynthesis_kind": "poisson", "adversarial": 0.1},
            "optim": {"steps": 4, "warmup_steps": 1},
        }
    )
    result = train(cfg, progress=False)
    assert result.step == 4 and np.isfinite(result.best["psnr"])
    last = result.history[-1]
    assert {"loss_adversarial", "loss_discriminator", "loss_resynthesis"} <= set(last)


# --- test-time adaptation ----------------------------------------------------------------
@pytest.fixture(scope="module")
def frames(small_bank):
    data = simulate_dataset(
        small_bank, 0, 6, lenslets=(6, 6), photons=400.0, background=2.0, neuropil=0.2, seed=9
    )
    return data.unlabeled[:, 0]


def test_adaptation_improves_the_held_out_fit(small_bank, frames):
    """A network whose thresholds are far too high (it zeroes the faint
    neuropil) adapts to the recording: the held-out deviance falls."""
    from lfm_recon.adapt import AdaptConfig, adapt

    net = UnfoldedISTA(LightFieldOperator(small_bank), 3, data_term="poisson", lam_fraction=0.5)
    with torch.no_grad():
        net.threshold_raw.fill_(3.0)
    tuned, record = adapt(net, frames, 2.0, AdaptConfig(steps=20, check_every=5, lr=0.05))
    assert record["held_out_deviance_after"] < 0.9 * record["held_out_deviance_before"]
    assert record["step_kept"] > 0 and record["frames_used"] == list(range(6))
    assert not torch.equal(tuned.threshold_raw, net.threshold_raw)  # a copy was adapted
    assert float(net.threshold_raw[0, 0]) == 3.0


def test_adapt_takes_one_background_per_frame(small_bank, frames):
    """Per-frame backgrounds that are all equal adapt exactly as the one
    number does; a count that does not match the frames is named."""
    from lfm_recon.adapt import AdaptConfig, adapt

    net = UnfoldedISTA(LightFieldOperator(small_bank), 2, data_term="poisson")
    cfg = AdaptConfig(steps=3, check_every=1, lr=0.05)
    one, rec_one = adapt(net, frames, 2.0, cfg)
    each, rec_each = adapt(net, frames, np.full(len(frames), 2.0), cfg)
    assert rec_each["background"] == [2.0] * len(frames)
    assert rec_each["held_out_deviance_after"] == rec_one["held_out_deviance_after"]
    for a, b in zip(one.parameters(), each.parameters(), strict=True):
        assert torch.equal(a, b)
    varied = np.linspace(0.0, 4.0, len(frames))  # and the per-frame values are used
    other = adapt(net, frames, varied, cfg)[1]
    assert other["held_out_deviance_before"] != rec_each["held_out_deviance_before"]
    same = adapt(net, frames, np.array([2.0]), cfg)[1]  # one value in an array: the number
    assert same["background"] == 2.0
    assert same["held_out_deviance_after"] == rec_one["held_out_deviance_after"]
    with pytest.raises(LFMError, match="one per frame"):
        adapt(net, frames, [2.0, 2.0], cfg)
    with pytest.raises(LFMError, match="background"):
        adapt(net, frames, np.full(len(frames), np.nan), cfg)


def test_adapt_cli_writes_a_model_that_records_it(tmp_path, small_bank, frames):
    net = UnfoldedISTA(LightFieldOperator(small_bank), 2, data_term="poisson")
    save_model(net, tmp_path / "model.pt", training={"note": "trained"})
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    args = ["adapt", str(tmp_path / "model.pt"), str(tmp_path / "rec.tif"), "-q"]
    assert (
        main([*args, "-o", str(tmp_path / "adapted.pt"), "--steps", "4", "--background", "2"]) == 0
    )
    info = read_model_file(tmp_path / "adapted.pt")["training"]
    assert info["note"] == "trained" and info["adaptation"]["config"]["steps"] == 4
    assert load_model(tmp_path / "adapted.pt", bank=small_bank).op.bank.sha256 == small_bank.sha256
    tifffile.imwrite(tmp_path / "odd.tif", frames[:, :-1], photometric="minisblack")
    odd = ["adapt", str(tmp_path / "model.pt"), str(tmp_path / "odd.tif"), "-o"]
    assert main([*odd, str(tmp_path / "odd.pt"), "-q"]) == 2
    assert not (tmp_path / "odd.pt").exists()


# --- the pipeline: --adapt and the guard -------------------------------------------------
def test_reconstruct_adapt_equals_adapting_then_reconstructing(tmp_path, small_bank, frames):
    """reconstruct_files(adapt=N) = adapt() on the same frames, then the
    network: the adaptation is recorded in the provenance, and is repeated
    identically on resume (deterministic on the CPU)."""
    from lfm_recon.adapt import AdaptConfig, adapt
    from lfm_recon.reconstruct import read_volumes, reconstruct, reconstruct_files

    net = UnfoldedISTA(LightFieldOperator(small_bank), 2, data_term="poisson", prior="cnn")
    save_model(net, tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    args = dict(model=tmp_path / "model.pt", background=2.0, adapt=3, guard="off", progress=False)
    reconstruct_files([tmp_path / "rec.tif"], tmp_path / "out.h5", **args)
    volumes, info = read_volumes(tmp_path / "out.h5")
    tuned, _ = adapt(net, frames, 2.0, AdaptConfig(steps=3))
    expected = reconstruct(frames, tuned, "net", background=2.0)
    np.testing.assert_allclose(volumes, expected, rtol=1e-5, atol=1e-6 * expected.max())
    prov = info["provenance"]
    assert prov["adaptation"]["config"]["steps"] == 3
    assert prov["adaptation"]["frames"] == list(range(len(frames)))
    assert "held_out_deviance_after" in prov["adaptation_result"]
    with pytest.raises(LFMError, match="--adapt adapts a network"):
        reconstruct_files([tmp_path / "rec.tif"], tmp_path / "rl.h5", psf=None, method="rl", **args)


def test_guard_warns_and_falls_back_to_rl(tmp_path, small_bank, frames, capsys):
    """A network that throws the light away (thresholds far too high) is
    reported against RL; with guard="fallback" the recording is
    reconstructed with RL (equal to method "rl")."""
    from lfm_recon.reconstruct import read_volumes, reconstruct, reconstruct_files

    op = LightFieldOperator(small_bank)
    net = UnfoldedISTA(op, 2, data_term="poisson", lam_fraction=0.9)
    with torch.no_grad():
        net.threshold_raw.fill_(8.0)
    save_model(net, tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    common = dict(model=tmp_path / "model.pt", background=2.0, progress=False)
    reconstruct_files([tmp_path / "rec.tif"], tmp_path / "warn.h5", **common)
    assert "guard: deviance per photon, network / RL" in capsys.readouterr().err
    _, info = read_volumes(tmp_path / "warn.h5")
    assert info["provenance"]["guard"]["suspect"] and info["provenance"]["method"] == "net"
    reconstruct_files([tmp_path / "rec.tif"], tmp_path / "fb.h5", guard="fallback", **common)
    volumes, info = read_volumes(tmp_path / "fb.h5")
    assert info["provenance"]["method"] == "rl" and info["provenance"]["guard_fallback"] == "rl"
    expected = reconstruct(frames, op, "rl", background=2.0)
    np.testing.assert_allclose(volumes, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_guard_accepts_a_network_that_fits_as_rl_does(small_bank, frames):
    """The untrained Poisson network is RL with fewer iterations: no alarm."""
    from lfm_recon.guard import check_network

    net = UnfoldedISTA(LightFieldOperator(small_bank), 8, data_term="poisson", lam_fraction=0.0)
    report = check_network(net, frames[:3], 2.0, rl_iterations=8)
    assert report.ratio == pytest.approx(1.0, abs=0.02) and not report.suspect
