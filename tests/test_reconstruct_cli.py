"""`lfm-recon reconstruct` and `evaluate`, and the TIFF files they use."""

import json

import numpy as np
import pytest
import tifffile
import torch

from lfm_recon import LightFieldOperator
from lfm_recon.cli import main
from lfm_recon.data import simulate_dataset
from lfm_recon.io import read_frames, read_volume_tiff, write_volume_tiff
from lfm_recon.solvers import richardson_lucy


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_bank):
    """A bank, a 4-sample data set and one light-field TIFF (uint16 counts)."""
    root = tmp_path_factory.mktemp("recon")
    small_bank.save(root / "bank.h5")
    data = simulate_dataset(small_bank, 3, 0, lenslets=(6, 6), background=5.0, seed=1)
    data.save(root / "data.h5")
    tifffile.imwrite(root / "lf.tif", data.lightfields[0, 0].astype(np.uint16))
    return root, data


def test_reconstruct_writes_the_api_result_with_its_voxel_size(files, small_bank, capsys):
    root, data = files
    out = root / "vol.tif"
    argv = ["reconstruct", str(root / "lf.tif"), "--psf", str(root / "bank.h5")]
    assert main([*argv, "--iterations", "7", "--background", "5", "-o", str(out), "-q"]) == 0
    volume, (lateral, axial) = read_volume_tiff(out)
    assert lateral == pytest.approx(small_bank.voxel_size[0], rel=1e-6)
    assert axial == pytest.approx(20.0)
    op = LightFieldOperator(small_bank)
    y = torch.from_numpy(data.lightfields[:1].astype(np.uint16).astype(np.float32))
    # The CLI's default for rl: the anti-aliasing filter (solvers.DEFAULT_FILTER).
    expected = richardson_lucy(op, y, 7, background=5.0, filter="antialias")[0].numpy()
    np.testing.assert_allclose(volume, expected, rtol=1e-5, atol=1e-6 * expected.max())
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["Labels"][0] == "z = -20 µm"


def test_reconstruct_accelerated_rl_is_the_solvers_and_recorded(files, small_bank):
    """--accelerate: the volume is the solver's accelerated (and anti-aliased)
    RL, not the plain one, and the provenance says so."""
    root, data = files
    out = root / "fast.h5"
    argv = ["reconstruct", str(root / "lf.tif"), "--psf", str(root / "bank.h5"), "-o", str(out)]
    assert main([*argv, "--iterations", "6", "--background", "5", "--accelerate", "-q"]) == 0
    from lfm_recon.reconstruct import read_volumes

    volumes, info = read_volumes(out)
    volume = volumes[0]
    op = LightFieldOperator(small_bank)
    y = torch.from_numpy(data.lightfields[:1].astype(np.uint16).astype(np.float32))
    kw = dict(background=5.0, filter="antialias")
    expected = richardson_lucy(op, y, 6, accelerate=True, **kw)[0].numpy()
    plain = richardson_lucy(op, y, 6, **kw)[0].numpy()
    np.testing.assert_allclose(volume, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert np.abs(volume - plain).max() > 1e-3 * expected.max()
    assert info["provenance"]["accelerate"] is True


def test_reconstruct_rl_iterations_auto_is_the_held_out_stop(files, small_bank, capsys):
    """--iterations auto: the solvers' held-out-stop RL (accelerated and
    anti-aliased here), recorded in the provenance; refused for other
    methods; nonsense iteration counts are one readable line."""
    from lfm_recon.reconstruct import read_volumes
    from lfm_recon.solvers import AUTO_MAX_ITERATIONS, richardson_lucy_holdout

    root, data = files
    out = root / "auto.h5"
    argv = ["reconstruct", str(root / "lf.tif"), "--psf", str(root / "bank.h5"), "-o", str(out)]
    assert main([*argv, "--iterations", "auto", "--background", "5", "--accelerate"]) == 0
    assert "rl, iterations chosen per frame (held-out stop)" in capsys.readouterr().out
    volumes, info = read_volumes(out)
    op = LightFieldOperator(small_bank)
    y = torch.from_numpy(data.lightfields[:1].astype(np.uint16).astype(np.float32))
    expected, stops = richardson_lucy_holdout(
        op, y, AUTO_MAX_ITERATIONS[True], background=5.0, filter="antialias"
    )
    assert 0 < int(stops[0]) < AUTO_MAX_ITERATIONS[True]
    np.testing.assert_allclose(
        volumes[0], expected[0].numpy(), rtol=1e-5, atol=1e-6 * float(expected.max())
    )
    assert info["provenance"]["iterations"] == "auto"
    assert info["qc"]["iterations"].tolist() == [float(stops[0])]  # the frame's own stop
    assert main([*argv, "--overwrite", "--iterations", "auto", "--method", "fista"]) == 2
    assert "'auto' (the held-out stop) is for rl only" in capsys.readouterr().err
    for bad in ("0", "many"):
        assert main([*argv, "--overwrite", "--iterations", bad]) == 2
        err = capsys.readouterr().err
        assert "positive integer or 'auto' (rl)" in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["isra", "fista", "admm"])
def test_reconstruct_other_methods(files, method, capsys):
    root, _ = files
    out = root / f"{method}.tif"
    argv = ["reconstruct", str(root / "lf.tif"), "--psf", str(root / "bank.h5"), "-o", str(out)]
    assert main([*argv, "--method", method, "--iterations", "3"]) == 0
    assert f"{method}, 3 iterations" in capsys.readouterr().out
    volume, _ = read_volume_tiff(out)
    assert volume.shape == (3, 18, 18) and volume.min() >= 0


def test_evaluate_accelerated_rl_is_labelled_and_refused_without_rl(files, capsys):
    root, _ = files
    table = root / "fast.json"
    argv = ["evaluate", str(root / "data.h5"), "--psf", str(root / "bank.h5")]
    assert main([*argv, "--method", "rl", "--accelerate", "--json", str(table)]) == 0
    (row,) = json.loads(table.read_text())
    assert row["method"] == "rl-acc" and row["iterations"] == 30  # its own default
    assert main([*argv, "--method", "fista", "--accelerate"]) == 2
    assert "--accelerate is for rl" in capsys.readouterr().err


def test_evaluate_prints_a_table_and_writes_json(files, capsys):
    root, _ = files
    table = root / "table.json"
    argv = ["evaluate", str(root / "data.h5"), "--psf", str(root / "bank.h5")]
    assert main([*argv, "--method", "rl", "fista", "--iterations", "5", "--json", str(table)]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "rl" in out and "fista" in out
    rows = json.loads(table.read_text())
    assert [r["method"] for r in rows] == ["rl", "fista"]
    assert all(10 < r["psnr"] < 80 and 0 <= r["f1"] <= 1 for r in rows)


def test_reconstruct_refit_overrides_the_models_and_is_recorded(
    files, small_bank, tmp_path, capsys
):
    """--refit: the volume is the network's with that holdout_refit (the
    same weights), the provenance records it, and without it the model's
    own setting holds (absent from the provenance); a model without the
    guard is refused in one line."""
    import dataclasses

    from lfm_recon import UnfoldedISTA
    from lfm_recon.modelfile import save_model
    from lfm_recon.reconstruct import read_volumes

    root, data = files
    op = LightFieldOperator(small_bank)
    net = UnfoldedISTA(
        op, 2, data_term="poisson", prior="cnn", rl_start=40, rl_accelerate=True,
        rl_stop="holdout", holdout_guard=1.5,
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_model(net, tmp_path / "m.pt")
    argv = ["reconstruct", str(root / "lf.tif"), "--model", str(tmp_path / "m.pt"), "-q"]
    argv += ["--background", "5"]
    assert main([*argv, "-o", str(tmp_path / "own.h5")]) == 0
    assert main([*argv, "--refit", "all", "-o", str(tmp_path / "all.h5")]) == 0
    y = torch.from_numpy(data.lightfields[:1].astype(np.uint16).astype(np.float32))
    refit = UnfoldedISTA(op, config=dataclasses.replace(net.config, holdout_refit="all"))
    refit.load_state_dict(net.state_dict())
    with torch.no_grad():
        expected = {"own": net(y, 5.0)[0].numpy(), "all": refit.eval()(y, 5.0)[0].numpy()}
    for name in ("own", "all"):
        volumes, info = read_volumes(tmp_path / f"{name}.h5")
        tol = dict(rtol=1e-5, atol=1e-5 * expected[name].max())
        np.testing.assert_allclose(volumes[0], expected[name], **tol)
        assert info["provenance"].get("refit") == (None if name == "own" else "all")
    assert np.abs(expected["all"] - expected["own"]).max() > 1e-3 * expected["own"].max()
    from lfm_recon.reconstruct import Reconstructor

    assert Reconstructor(net, "net", refit="all").net.config.holdout_refit == "all"
    assert net.config.holdout_refit == "none"  # the model given is not changed
    bare = UnfoldedISTA(op, 2, data_term="poisson", rl_start=5, rl_stop="holdout")
    save_model(bare, tmp_path / "bare.pt")
    argv[3] = str(tmp_path / "bare.pt")
    capsys.readouterr()
    assert main([*argv, "--refit", "none", "-o", str(tmp_path / "bare.h5")]) == 2
    err = capsys.readouterr().err
    assert "has no guard" in err and err.count("\n") == 1
    assert not (tmp_path / "bare.h5").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        pytest.param(["--lam", "-1", "--method", "fista"], "λ fraction must be", id="negative-lam"),
        pytest.param(["--iterations", "-3"], "must be a positive integer", id="iterations"),
        pytest.param(["--device", "cuda:7x"], "not a torch device", id="device"),
        pytest.param(
            ["--method", "fista", "--accelerate"], "accelerate is for rl", id="accelerate-fista"
        ),
        pytest.param(["--refit", "all"], "--refit is for the network", id="refit-rl"),
    ],
)
def test_reconstruct_bad_options(files, extra, message, capsys):
    root, _ = files
    argv = ["reconstruct", str(root / "lf.tif"), "--psf", str(root / "bank.h5")]
    assert main([*argv, "-o", str(root / "x.tif"), "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (root / "x.tif").exists()
    assert not (root / "x.tif.partial").exists()


def test_reconstruct_bad_files(files, tmp_path, capsys):
    root, data = files
    bank = str(root / "bank.h5")
    cases = {
        "wrong-size": (data.lightfields[0, 0, :50, :], "50×90 px but the PSF has nnum = 15"),
        "all-zero": (np.zeros((90, 90), np.uint16), "no frame of the 1 has signal above"),
        "nan": (np.full((90, 90), np.nan, np.float32), "NaN"),
        "4-d": (np.ones((2, 2, 90, 90), np.uint16), "expected one frame (Y, X) or a time"),
    }
    for name, (image, message) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", image)
        argv = ["reconstruct", str(tmp_path / f"{name}.tif"), "--psf", bank]
        assert main([*argv, "-o", str(tmp_path / "o.tif"), "-q"]) == 2, name
        assert message in capsys.readouterr().err, name
        assert not (tmp_path / "o.tif.partial").exists(), name  # nothing left behind
    (tmp_path / "junk.tif").write_text("not a tiff")
    argv = ["reconstruct", str(tmp_path / "junk.tif"), "--psf", bank, "-o", str(tmp_path / "o.tif")]
    assert main(argv) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_evaluate_refuses_a_data_set_of_another_bank(files, tmp_path, reference, capsys):
    from lfm_recon import generate_psf

    root, _ = files
    other = generate_psf(reference, np.array([0.0]), 1)
    other.save(tmp_path / "other.h5")
    assert main(["evaluate", str(root / "data.h5"), "--psf", str(tmp_path / "other.h5")]) == 2
    assert "simulated with PSF bank" in capsys.readouterr().err


def test_volume_tiff_round_trip_and_atomic_failure(tmp_path):
    vol = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    write_volume_tiff(tmp_path / "t.tif", vol, (0.75, 4.0), depths=[-4, 0, 4])
    back, size = read_volume_tiff(tmp_path / "t.tif")
    np.testing.assert_array_equal(back, vol)
    assert size == pytest.approx((0.75, 4.0))
    with pytest.raises(Exception, match="must be"):
        write_volume_tiff(tmp_path / "t.tif", vol[0, 0], (1, 1))
    np.testing.assert_array_equal(read_volume_tiff(tmp_path / "t.tif")[0], vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tif"]


def test_one_page_stack_is_one_frame(tmp_path):
    from lfm_recon.recording import Recording

    tifffile.imwrite(tmp_path / "a.tif", np.ones((1, 30, 45), np.uint16))
    image = read_frames(tmp_path / "a.tif")
    assert image.shape == (30, 45) and image.dtype == np.float32
    recording = Recording([tmp_path / "a.tif"])
    assert len(recording) == 1 and recording.read(0, 1).shape == (1, 30, 45)
