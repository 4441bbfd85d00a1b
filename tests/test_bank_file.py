"""PSF bank HDF5 file: round trip, content hash, and refusal of bad files."""

import json

import h5py
import numpy as np
import pytest

from lfm_recon import LFMError, PSFBank


def test_round_trip_preserves_everything(small_bank, tmp_path):
    path = small_bank.save(tmp_path / "bank.h5")
    loaded = PSFBank.load(path)
    np.testing.assert_array_equal(loaded.kernels, small_bank.kernels)
    np.testing.assert_array_equal(loaded.depths, small_bank.depths)
    np.testing.assert_array_equal(loaded.radii, small_bank.radii)
    np.testing.assert_array_equal(loaded.captured_energy, small_bank.captured_energy)
    assert loaded.microscope == small_bank.microscope
    assert loaded.generation == small_bank.generation
    assert loaded.sha256 == small_bank.sha256
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    with h5py.File(path) as f:  # the documented layout (psf/README.md)
        assert f["kernels"].dtype == np.float32
        assert f["kernels"].chunks[0] == 1
        assert f.attrs["format"] == "lfm_recon.psf_bank"
        assert json.loads(f.attrs["microscope"])["mla_pitch"] == 150.0


def test_hash_depends_on_content(small_bank):
    other = PSFBank(
        kernels=small_bank.kernels.copy(),
        depths=small_bank.depths + 1e-3,
        microscope=small_bank.microscope,
        radii=small_bank.radii,
        captured_energy=small_bank.captured_energy,
    )
    assert other.sha256 != small_bank.sha256
    assert len(small_bank.sha256) == 64


def test_corrupted_kernels_are_detected(small_bank, tmp_path):
    path = small_bank.save(tmp_path / "bank.h5")
    with h5py.File(path, "r+") as f:
        f["kernels"][0, 0, 0, 10, 10] += 0.1
    with pytest.raises(LFMError, match="corrupt"):
        PSFBank.load(path)


def test_foreign_and_unreadable_files_are_refused(tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(LFMError, match="not a PSF bank"):
        PSFBank.load(foreign)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(LFMError, match="not a readable HDF5"):
        PSFBank.load(text)
    with pytest.raises(LFMError, match="does not exist"):
        PSFBank.load(tmp_path / "missing.h5")


def test_damaged_and_newer_files_are_refused(small_bank, tmp_path):
    path = small_bank.save(tmp_path / "bank.h5")
    with h5py.File(path, "r+") as f:
        del f["radii"]
    with pytest.raises(LFMError, match="damaged"):
        PSFBank.load(path)
    path = small_bank.save(tmp_path / "bank2.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(LFMError, match="upgrade"):
        PSFBank.load(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["format_version"]
    with pytest.raises(LFMError, match="damaged"):
        PSFBank.load(path)


def test_bank_arrays_are_read_only_so_the_hash_stays_true(small_bank):
    with pytest.raises(ValueError, match="read-only"):
        small_bank.kernels[0, 0, 0, 0, 0] = 1.0
    assert small_bank.kernels.dtype == np.float32


def test_failed_save_keeps_the_existing_file(small_bank, tmp_path, monkeypatch):
    path = small_bank.save(tmp_path / "bank.h5")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with pytest.raises(OSError, match="disk full"):
        small_bank.save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_summary_names_the_essentials(small_bank):
    text = small_bank.summary()
    for needle in ("nnum = 15", "3 per lenslet", "-20", "radius", small_bank.sha256[:16]):
        assert needle in text


def test_inconsistent_arrays_are_rejected(small_bank):
    with pytest.raises(LFMError, match="shape"):
        PSFBank(
            kernels=small_bank.kernels[0],
            depths=small_bank.depths,
            microscope=small_bank.microscope,
            radii=small_bank.radii,
            captured_energy=small_bank.captured_energy,
        )
    negative = small_bank.kernels.copy()
    negative[0, 0, 0, 0, 0] = -1e-3
    with pytest.raises(LFMError, match="non-negative"):
        PSFBank(
            kernels=negative,
            depths=small_bank.depths,
            microscope=small_bank.microscope,
            radii=small_bank.radii,
            captured_energy=small_bank.captured_energy,
        )
    with pytest.raises(LFMError, match="strictly increasing"):
        PSFBank(
            kernels=small_bank.kernels,
            depths=small_bank.depths[::-1],
            microscope=small_bank.microscope,
            radii=small_bank.radii,
            captured_energy=small_bank.captured_energy,
        )
    with pytest.raises(LFMError, match="depths"):
        PSFBank(
            kernels=small_bank.kernels,
            depths=small_bank.depths[:2],
            microscope=small_bank.microscope,
            radii=small_bank.radii,
            captured_energy=small_bank.captured_energy,
        )
