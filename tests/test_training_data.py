"""Training data: patches consistent with y = H x, frame-level normalisation,
validation that cannot leak, and the SSIM loss against the SSIM metric.

Independent references: the forward model itself (a noise-free patch must
satisfy its re-synthesis loss at zero), scipy's reflected Gaussian filter
through ``metrics.ssim``, and file hashes of the data sets."""

import numpy as np
import pytest
import tifffile
import torch

from lfm_recon import LFMError, LightFieldOperator, UnfoldedISTA, metrics
from lfm_recon.cli import main
from lfm_recon.data import SimulatedData, simulate_dataset
from lfm_recon.training import DataConfig, losses
from lfm_recon.training.data import TrainingData
from lfm_recon.training.sampler import PatchSampler


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory, small_bank):
    """Noise-free paired light fields (photons=None: y = H x exactly), 13×13 lenslets."""
    root = tmp_path_factory.mktemp("patches")
    data = simulate_dataset(small_bank, 4, 2, lenslets=(13, 13), photons=None, seed=21)
    data.save(root / "clean.h5")
    simulate_dataset(small_bank, 2, 0, lenslets=(13, 13), photons=None, seed=22).save(
        root / "val.h5"
    )
    return root


def _data(root, bank, **options) -> TrainingData:
    cfg = {"train": str(root / "clean.h5"), "validation": str(root / "val.h5"), **options}
    return TrainingData(DataConfig(**cfg), bank)


# --- patches ------------------------------------------------------------------------------
def test_noise_free_patch_satisfies_its_resynthesis_loss_at_zero(clean_set, small_bank):
    """Patches cut from inside larger frames: the ground truth explains its
    light field exactly on the weighted pixels (loss 0), and not on the
    whole patch (light crosses the cut edges: the old, unweighted loss)."""
    data = _data(clean_set, small_bank, patch_lenslets=7, batch_size=8)
    sampler = PatchSampler.for_bank(data, small_bank)
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    for step in range(3):
        batch = sampler.batch(seed=0, step=step)
        x, n_l = batch.target.double(), batch.n_labelled
        y, b = batch.y[:n_l].double(), batch.background[:n_l].double()
        zero = losses.resynthesis(op, x, y, b, batch.lf_weight[:n_l].double())
        whole = losses.resynthesis(op, x, y, b, None)
        assert float(zero) < 1e-10
        assert float(whole) > 1e-3
        assert float(losses.supervised(x, x, batch.volume_weight.double())) == 0


def test_weights_score_only_what_the_patch_explains(clean_set, small_bank):
    """Margins of R = the largest kernel radius on cut edges only: a patch
    at the frame's corner is scored up to the frame's own edges."""
    data = _data(clean_set, small_bank, patch_lenslets=7, batch_size=64, augment=False)
    sampler = PatchSampler.for_bank(data, small_bank)
    r, n, s = int(small_bank.radii.max()), small_bank.nnum, small_bank.voxels_per_lenslet
    assert sampler.margin == r == 2
    batch = sampler.batch(seed=1, step=0)
    rows = batch.lf_weight[: batch.n_labelled, 0].amax(dim=2)  # (B, Y): 1 where a row is scored
    scored = rows.sum(dim=1) / n  # lenslet rows scored per patch
    # Interior patches score 7 − 2R = 3 rows, corner patches 7 − R = 5, never all 7.
    assert set(scored.tolist()) <= {3.0, 5.0} and {3.0, 5.0} <= set(scored.tolist())
    vrows = batch.volume_weight[:, 0].amax(dim=2).sum(dim=1) / s
    torch.testing.assert_close(vrows, scored)


def test_whole_frames_are_scored_everywhere(clean_set, small_bank):
    data = _data(clean_set, small_bank, patch_lenslets=0, batch_size=2)
    batch = PatchSampler.for_bank(data, small_bank).batch(seed=0, step=0)
    assert bool((batch.lf_weight == 1).all()) and bool((batch.volume_weight == 1).all())


def test_a_patch_too_small_for_the_psf_is_refused(clean_set, small_bank):
    data = _data(clean_set, small_bank, patch_lenslets=4)
    with pytest.raises(LFMError, match=r"patch_lenslets = 4 leaves no part.*more than 4"):
        PatchSampler.for_bank(data, small_bank)


def test_patches_carry_their_frames_scale(clean_set, small_bank):
    """Each patch is normalised by the mean signal of the whole frame it was
    cut from, as that frame is at inference (not by its own content)."""
    data = _data(clean_set, small_bank, patch_lenslets=7, batch_size=4, augment=False)
    frames = torch.from_numpy(data.labelled.y)
    scales = UnfoldedISTA.signal_scale(frames, torch.tensor(0.0)).flatten()
    batch = PatchSampler.for_bank(data, small_bank).batch(seed=3, step=0)
    n_l = batch.n_labelled
    own = UnfoldedISTA.signal_scale(batch.y[:n_l], batch.background[:n_l]).flatten()
    for c, c_own in zip(batch.scale[:n_l].flatten(), own, strict=True):
        assert torch.isclose(scales, c, rtol=1e-6, atol=0).any()
        assert not torch.isclose(c, c_own, rtol=1e-3, atol=0)  # a patch's own mean differs


# --- validation that cannot leak ------------------------------------------------------------
def test_validation_file_equal_to_training_file_is_refused(clean_set, small_bank):
    cfg = DataConfig(train=str(clean_set / "clean.h5"), validation=str(clean_set / "clean.h5"))
    with pytest.raises(LFMError, match="are the same file"):
        TrainingData(cfg, small_bank)


def test_validation_simulated_with_the_training_seed_is_refused(clean_set, small_bank):
    simulate_dataset(small_bank, 2, 0, lenslets=(13, 13), photons=50.0, seed=21).save(
        clean_set / "same-seed.h5"
    )
    cfg = DataConfig(train=str(clean_set / "clean.h5"), validation=str(clean_set / "same-seed.h5"))
    with pytest.raises(LFMError, match=r"same seed \(21\)"):
        TrainingData(cfg, small_bank)


def test_validation_frames_among_unlabeled_inputs_are_refused(clean_set, small_bank):
    val = SimulatedData.load(clean_set / "val.h5")
    tifffile.imwrite(clean_set / "leak.tif", val.lightfields[:, 0], photometric="minisblack")
    cfg = DataConfig(
        train=str(clean_set / "clean.h5"),
        validation=str(clean_set / "val.h5"),
        unlabeled=(str(clean_set / "leak.tif"),),
    )
    with pytest.raises(LFMError, match=r"2 validation light field\(s\).*leak\.tif"):
        TrainingData(cfg, small_bank)


def test_simulate_defaults_give_disjoint_sets(tmp_path, small_bank):
    """Two `lfm-recon simulate` runs with the default seed share no sample."""
    small_bank.save(tmp_path / "bank.h5")
    for name in ("a.h5", "b.h5"):
        args = ["simulate", "--psf", str(tmp_path / "bank.h5"), "--n", "2", "--lenslets", "5"]
        assert main([*args, "-o", str(tmp_path / name), "-q"]) == 0
    a, b = SimulatedData.load(tmp_path / "a.h5"), SimulatedData.load(tmp_path / "b.h5")
    assert a.simulation["seed"] != b.simulation["seed"]
    for v in a.volumes:
        assert not any(np.array_equal(v, w) for w in b.volumes)
    # … and the recorded seed makes a set again.
    again = simulate_dataset(small_bank, 2, 2, lenslets=(5, 5), seed=a.simulation["seed"])
    np.testing.assert_array_equal(again.volumes, a.volumes)


# --- SSIM loss ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((11, 20, 24), id="11-planes"),
        pytest.param((3, 9, 9), id="window-longer-than-axis"),
    ],
)
def test_ssim_loss_equals_the_ssim_metric(shape):
    """Same window, constants and reflected borders as metrics.ssim (scipy)."""
    rng = np.random.default_rng(4)
    t = rng.random((2, *shape))
    x = t + 0.3 * rng.standard_normal(t.shape)
    got = losses.ssim3d(torch.from_numpy(x), torch.from_numpy(t))
    expected = np.mean(metrics.ssim(x, t, scale=False))
    assert float(got) == pytest.approx(float(expected), abs=1e-12)


def test_ssim_loss_is_well_conditioned_on_empty_patches():
    """An all-zero target: with a range floor the loss is finite, its
    gradient bounded, 1 for an empty reconstruction, lower with light."""
    t = torch.zeros(1, 5, 12, 12, dtype=torch.float64)
    x = torch.zeros_like(t).requires_grad_(True)
    assert float(losses.ssim3d(x, t, min_range=1.0).detach()) == pytest.approx(1.0)
    spurious = torch.zeros_like(t)
    spurious[0, 2, 6, 6] = 0.5
    value = losses.ssim3d(spurious.requires_grad_(True), t, min_range=1.0)
    value.backward()
    assert 0 < float(value) < 1
    assert torch.isfinite(spurious.grad).all() and float(spurious.grad.abs().max()) < 10
