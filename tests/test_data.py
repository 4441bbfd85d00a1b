"""Simulated data sets, their file, the cached sample and `lfm-recon simulate`."""

import numpy as np
import pytest
import torch

from lfm_recon import LFMError, PSFBank
from lfm_recon.cli import main
from lfm_recon.data import SimulatedData, sample, simulate_dataset
from lfm_recon.operator import LightFieldOperator


@pytest.fixture(scope="module")
def dataset(small_bank):
    return simulate_dataset(
        small_bank, 3, 2, lenslets=(6, 7), photons=200.0, background=2.0, seed=11
    )


def test_shapes_and_provenance(dataset, small_bank):
    s, n, d = small_bank.voxels_per_lenslet, small_bank.nnum, small_bank.n_depths
    assert dataset.volumes.shape == (3, d, 6 * s, 7 * s)
    assert dataset.lightfields.shape == (3, 1, 6 * n, 7 * n)
    assert dataset.unlabeled.shape == (2, 1, 6 * n, 7 * n)
    assert dataset.psf_sha256 == small_bank.sha256
    n_neurons = dataset.simulation["n_neurons"]
    assert dataset.somata.shape == (3 * n_neurons, 8)
    assert set(dataset.somata[:, 0].astype(int)) == {0, 1, 2}


def test_light_fields_are_the_camera_model_of_their_volumes(dataset, small_bank):
    """Each paired light field is Poisson(g·Hx + b) of its own volume."""
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    for i, (vol, lf) in enumerate(zip(dataset.volumes, dataset.lightfields, strict=True)):
        clean = op(torch.as_tensor(vol, dtype=torch.float64)[None])[0].numpy()
        rate = clean * dataset.gains[i] + 2.0
        z = (lf - rate) / np.sqrt(rate)
        assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1


def test_gains_put_the_requested_photons_at_the_peak(dataset, small_bank):
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    clean = op(torch.as_tensor(dataset.volumes, dtype=torch.float64)).amax(dim=(1, 2, 3))
    np.testing.assert_allclose(clean.numpy() * dataset.gains[:3], 200.0, rtol=1e-6)
    assert dataset.gains.shape == (5,)


def test_different_seeds_share_no_sample(small_bank, dataset):
    other = simulate_dataset(small_bank, 3, 0, lenslets=(6, 7), photons=200.0, seed=12)
    for vol in other.volumes:
        assert not any(np.array_equal(vol, v) for v in dataset.volumes)


def test_reproducible_and_round_trip(dataset, small_bank, tmp_path):
    again = simulate_dataset(
        small_bank, 3, 2, lenslets=(6, 7), photons=200.0, background=2.0, seed=11
    )
    assert np.array_equal(again.lightfields, dataset.lightfields)
    path = dataset.save(tmp_path / "data.h5")
    loaded = SimulatedData.load(path)
    for name in ("volumes", "lightfields", "unlabeled", "gains", "somata", "depths"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(dataset, name))
    assert loaded.psf_sha256 == dataset.psf_sha256 and loaded.simulation == dataset.simulation


def test_bad_requests_and_files(small_bank, tmp_path):
    with pytest.raises(LFMError, match="at least one"):
        simulate_dataset(small_bank, 0, 0)
    with pytest.raises(LFMError, match="photons"):
        simulate_dataset(small_bank, 1, photons=-1.0)
    small_bank.save(tmp_path / "bank.h5")
    with pytest.raises(LFMError, match="not a data set"):
        SimulatedData.load(tmp_path / "bank.h5")


def test_sample_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LFM_RECON_CACHE", str(tmp_path))
    bank, data = sample()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    bank2, data2 = sample()
    assert [f.stat().st_mtime_ns for f in files] == stamps  # not rebuilt
    assert bank2.sha256 == bank.sha256 and np.array_equal(data2.volumes, data.volumes)
    assert data.volumes.shape == (16, 11, 105, 105) and data.unlabeled.shape == (16, 1, 315, 315)
    bank_file = next(f for f in files if f.name.endswith("psf.h5"))
    bank_file.write_bytes(b"damaged")  # a damaged cache is rebuilt, not trusted
    bank3, _ = sample()
    assert bank_file.stat().st_mtime_ns != stamps[files.index(bank_file)]
    assert PSFBank.load(bank_file).sha256 == bank.sha256 == bank3.sha256


def test_cli_simulate(small_bank, tmp_path, capsys):
    bank_path = small_bank.save(tmp_path / "bank.h5")
    out = tmp_path / "data.h5"
    code = main(
        [
            "simulate",
            "--psf",
            str(bank_path),
            "--n",
            "2",
            "--n-unlabeled",
            "1",
            "--lenslets",
            "5",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    data = SimulatedData.load(out)
    assert data.lightfields.shape == (2, 1, 75, 75) and data.unlabeled.shape == (1, 1, 75, 75)
    assert data.psf_sha256 == PSFBank.load(bank_path).sha256
    assert (
        main(
            [
                "simulate",
                "--psf",
                str(tmp_path / "none.h5"),
                "--n",
                "2",
                "-o",
                str(tmp_path / "d2.h5"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
