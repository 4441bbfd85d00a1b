"""The lfm-recon command line: happy paths and one-line errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm_recon import LFMError, PSFBank
from lfm_recon.cli import main, parse_depths
from lfm_recon.modelfile import load_model


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("-50:50:11", np.linspace(-50, 50, 11), id="range"),
        pytest.param("-10,0,10", [-10.0, 0.0, 10.0], id="list"),
        pytest.param("5", [5.0], id="single"),
    ],
)
def test_depth_specs(spec, expected):
    np.testing.assert_allclose(parse_depths(spec), expected)


def test_psf_then_info(tmp_path, capsys):
    out = tmp_path / "bank.h5"
    png = tmp_path / "bank.png"
    code = main(
        [
            "psf",
            "reference",
            "--depths",
            "-10:10:3",
            "--voxels-per-lenslet",
            "3",
            "-o",
            str(out),
            "--figure",
            str(png),
        ]
    )
    assert code == 0
    bank = PSFBank.load(out)
    np.testing.assert_allclose(bank.depths, [-10, 0, 10])
    assert bank.voxels_per_lenslet == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert bank.sha256[:16] in capsys.readouterr().out


def test_psf_from_a_toml_file(tmp_path, reference):
    toml = tmp_path / "scope.toml"
    reference.save(toml)
    out = tmp_path / "bank.h5"
    assert main(["psf", str(toml), "--depths", "0", "-s", "1", "-o", str(out), "-q"]) == 0
    assert PSFBank.load(out).microscope == reference


def test_info_lists_presets_and_describes_one(capsys):
    assert main(["info"]) == 0
    assert "water-40x-0.8na" in capsys.readouterr().out
    assert main(["info", "guv-60x-1.2na"]) == 0
    assert "nnum = 15" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["psf", "nope", "--depths", "0", "-s", "1"], "no microscope preset", id="unknown-preset"
        ),
        pytest.param(
            ["psf", "reference", "--depths", "1:x", "-s", "1"], "START:STOP:COUNT", id="bad-depths"
        ),
        pytest.param(
            ["psf", "reference", "--depths", "5,0", "-s", "1"],
            "strictly increasing",
            id="unsorted-depths",
        ),
        pytest.param(["psf", "reference", "--depths", "0", "-s", "40"], "1 to nnum", id="s>nnum"),
        pytest.param(["info", "missing.h5"], "does not exist", id="missing-bank"),
        pytest.param(
            ["psf", "reference", "--depths", "-50000:50000:3", "-s", "1"],
            "depths are in µm",
            id="depths-in-nm",
        ),
        pytest.param(
            ["psf", "reference", "--depths", "0", "-s", "1", "--figure", "/no/dir/f.png"],
            "figure folder",
            id="figure-folder",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    if argv[0] == "psf":
        argv = [*argv, "-o", str(tmp_path / "b.h5")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "bank.h5"
    out.write_bytes(b"precious")
    assert main(["psf", "reference", "--depths", "0", "-s", "1", "-o", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert (
        main(["psf", "reference", "--depths", "0", "-s", "1", "-o", str(out), "-q", "--overwrite"])
        == 0
    )
    PSFBank.load(out)


def test_console_script_runs_in_a_subprocess(tmp_path):
    """The installed entry point, as a user calls it: error text, no traceback."""
    script = Path(sys.executable).with_name("lfm-recon")
    if not script.exists():
        pytest.skip("lfm_recon is not installed in this environment (no lfm-recon script)")
    result = subprocess.run(
        [
            str(script),
            "psf",
            "reference",
            "--depths",
            "0",
            "-s",
            "1",
            "-o",
            str(tmp_path / "x.h5"),
            "--energy",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("lfm-recon: error: energy must be a fraction")
    assert "Traceback" not in result.stderr


def test_demo_runs_the_pipeline_and_caches_its_network(tmp_path, monkeypatch, capsys):
    import tifffile

    from lfm_recon.reconstruct import read_volumes

    monkeypatch.setenv("LFM_RECON_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--budget", "8", "-q"]) == 0
    for name in ("psf.h5", "psf.png", "lightfields.tif", "rl.tif", "net.h5", "mip_net.png"):
        assert (out / name).stat().st_size > 0, name
    assert PSFBank.load(out / "psf.h5").voxels_per_lenslet == 5
    printed = capsys.readouterr().out
    assert "RL, 100 it., anti-aliased" in printed and "unfolded network" in printed
    net, info = read_volumes(out / "net.h5")
    assert net.shape == (4, 11, 105, 105)
    assert info["element_size_um"] == pytest.approx((10.0, 1.5, 1.5))  # z, y, x µm
    rl = tifffile.imread(out / "rl.tif")
    assert rl.shape == net.shape and np.isfinite(rl).all() and np.isfinite(net).all()
    (model,) = (tmp_path / "cache").glob("*model*.pt")
    stamp = model.stat().st_mtime_ns
    assert main(["demo", "-o", str(out), "--budget", "8", "-q"]) == 0  # reuses the cache
    assert model.stat().st_mtime_ns == stamp
    # Another budget is another network: trained anew, the first one kept.
    assert main(["demo", "-o", str(out), "--budget", "6", "-q"]) == 0
    assert len(list((tmp_path / "cache").glob("*model*.pt"))) == 2


def test_demo_default_is_the_pretrained_network_and_it_beats_rl(tmp_path, monkeypatch, capsys):
    """The shipped network (trained on simulation only, never on the sample)
    bound to the sample's bank: above RL (100 it., anti-aliased) in PSNR on
    the demo's four unseen frames (+0.3 dB when it was shipped)."""
    from lfm_recon.demo import run_demo

    monkeypatch.setenv("LFM_RECON_CACHE", str(tmp_path / "cache"))
    rows = {r["method"]: r for r in run_demo(tmp_path / "demo", progress=False)}
    assert rows["net"]["psnr"] > rows["rl"]["psnr"], rows
    assert rows["net"]["f1"] > 0.9
    (model,) = (tmp_path / "cache").glob("*pretrained*.pt")
    assert "pretrained" in load_model(model).training_info


def test_pretrained_network_refuses_another_bank_and_a_damaged_file(tmp_path, small_bank):
    from lfm_recon.demo import demo_model, pretrained_model

    for budget in (-5.0, float("nan")):
        with pytest.raises(LFMError, match="--budget"):
            demo_model(budget)
    with pytest.raises(LFMError, match="another PSF bank"):
        pretrained_model(small_bank)
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(LFMError, match="cannot read"):
        pretrained_model(small_bank, bad)
