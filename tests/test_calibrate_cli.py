"""`lfm-recon calibrate`, `reconstruct --calibration`, `info` on calibrations
and reading camera frames.

Raw frames are synthetic (``lf_frames.py``: rendered independently of the fit)
or the real samples, skipped when absent.
"""

import re

import h5py
import numpy as np
import pytest
import tifffile
import torch
from lf_frames import raw_from_rectified, sample_path, white_frame

from lfm_recon import LFMError, LightFieldOperator, PSFBank
from lfm_recon.calibration import Calibration, check_bank
from lfm_recon.cli import main
from lfm_recon.io import read_frames, read_volume_tiff
from lfm_recon.solvers import richardson_lucy

SHAPE = (330, 350)
PITCH, ROTATION, ORIGIN = (15.38, 15.38), 0.4, (161.3, 170.8)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """White (vignetted, Poisson) and dark frames as uint16 TIFFs, the true
    lattice vectors, and a few bad inputs."""
    root = tmp_path_factory.mktemp("frames")
    white, a, b = white_frame(SHAPE, PITCH, ROTATION, ORIGIN)
    tifffile.imwrite(root / "white.tif", white.astype(np.uint16))
    rng = np.random.default_rng(1)
    tifffile.imwrite(root / "dark.tif", rng.normal(100, 2, SHAPE).astype(np.uint16))
    tifffile.imwrite(root / "dark_small.tif", np.full((330, 340), 100, np.uint16))
    tifffile.imwrite(root / "noise.tif", rng.poisson(500.0, SHAPE).astype(np.uint16))
    tifffile.imwrite(root / "rgb.tif", np.zeros((*SHAPE, 3), np.uint8), photometric="rgb")
    return root, a, b


def calibrate_argv(root, out, *extra):
    return [
        "calibrate",
        "--white",
        str(root / "white.tif"),
        "--dark",
        str(root / "dark.tif"),
        "--microscope",
        "guv-60x-1.2na",
        "-o",
        str(out),
        *extra,
    ]


def predicted_error(grid, point) -> float:
    """Distance (px) from a true spot centre to the fitted grid's nearest centre."""
    i, j = grid.raw_to_lenslet(*point)
    y, x = grid.lenslet_to_raw(np.rint(i), np.rint(j))
    return float(np.hypot(y - point[0], x - point[1]))


# --- lfm-recon calibrate -----------------------------------------------------------
def test_calibrate_writes_the_fitted_grid_and_a_figure(frames, tmp_path, capsys):
    root, a, b = frames
    out, png = tmp_path / "calib.h5", tmp_path / "grid.png"
    argv = calibrate_argv(root, out, "--raw-pixel-size", "6.5", "--figure", str(png))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # 15.38 vs 100/6.5 = 15.385 px: within 1 %, no warning
    assert re.search(r"lenslet grid 15\.3\d+ × 15\.3\d+ px", captured.out)
    assert "effective" in captured.out and "rectified" in captured.out
    cal = Calibration.load(out)
    assert (cal.grid.pitch_y, cal.grid.pitch_x) == pytest.approx(PITCH, rel=5e-4)
    assert cal.grid.rotation == pytest.approx(ROTATION, abs=0.02)
    corner = np.asarray(ORIGIN) - 8 * a - 9 * b
    assert predicted_error(cal.grid, ORIGIN) < 0.1 and predicted_error(cal.grid, corner) < 0.1
    assert cal.nnum == 15 and cal.dark is not None and cal.flat is not None
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000


def test_calibrate_options_reach_the_calibration(frames, tmp_path):
    root, *_ = frames
    out = tmp_path / "c.hdf5"
    argv = calibrate_argv(root, out, "--nnum", "8", "--lenslets", "10,12", "--no-flat", "-q")
    assert main(argv) == 0
    cal = Calibration.load(out)
    assert cal.nnum == 8 and cal.microscope.pixel_size == pytest.approx(100 / 8)
    assert cal.lenslets == (10, 12) and cal.flat is None


@pytest.mark.parametrize(
    "raw_pixel_size",
    [pytest.param(100 / 15.6, id="1.4%-off"), pytest.param(100 / 16.0, id="3.9%-off")],
)
def test_small_pitch_disagreement_is_one_warning_line(frames, tmp_path, capsys, raw_pixel_size):
    root, *_ = frames
    out = tmp_path / "calib.h5"
    assert main(calibrate_argv(root, out, "--raw-pixel-size", str(raw_pixel_size), "-q")) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lfm-recon: warning: the white frame shows")
    assert "15.3" in err and f"{100 / raw_pixel_size:.3f} px" in err  # both numbers
    assert "CalibrationWarning" not in err and "warnings.warn" not in err
    assert Calibration.load(out).grid.pitch_y == pytest.approx(15.38, rel=1e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"--raw-pixel-size": str(100 / 16.5)}, "beyond the 5% limit", id="pitch-7%"),
        pytest.param({"--white": "noise.tif"}, "shows no lenslet grid", id="no-grid"),
        pytest.param(
            {"--dark": "dark_small.tif"},
            "dark frame is 330×340 px but the white frame is 330×350 px",
            id="dark-size",
        ),
        pytest.param({"-o": "calib.json"}, "must end in .h5 or .hdf5", id="json-output"),
        pytest.param({"--white": "missing.tif"}, "white frame file", id="missing-white"),
        pytest.param({"--white": "rgb.tif"}, "colour", id="colour-white"),
        pytest.param({"--lenslets": "8x8"}, "is not NY,NX", id="bad-lenslets"),
        pytest.param({"--lenslets": "40,40"}, "largest whole block is", id="crop-too-big"),
        pytest.param({"--microscope": "nope"}, "no microscope preset", id="unknown-preset"),
    ],
)
def test_bad_input_is_one_error_line(frames, tmp_path, capsys, change, message):
    root, *_ = frames
    out = tmp_path / "calib.h5"
    argv = calibrate_argv(root, out)
    for option, value in change.items():
        path_like = value.endswith((".tif", ".json"))
        value = str((tmp_path if option == "-o" else root) / value) if path_like else value
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lfm-recon: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_existing_outputs_need_overwrite(frames, tmp_path, capsys):
    root, *_ = frames
    out, png = tmp_path / "calib.h5", tmp_path / "grid.png"
    for path in (out, png):
        path.write_bytes(b"precious")
        other = png if path == out else out
        assert main(calibrate_argv(root, out, "--figure", str(png), "-q")) == 2
        assert f"{path} exists; pass --overwrite" in capsys.readouterr().err
        assert path.read_bytes() == b"precious" and not other.exists()
        path.unlink()
    out.write_bytes(b"precious")
    png.write_bytes(b"precious")
    assert main(calibrate_argv(root, out, "--figure", str(png), "-q", "--overwrite")) == 0
    assert Calibration.load(out).nnum == 15 and png.read_bytes()[:8] == PNG


def test_info_describes_a_calibration_by_content(frames, tmp_path, capsys):
    root, *_ = frames
    out = tmp_path / "calib.h5"
    assert main(calibrate_argv(root, out, "-q")) == 0
    renamed = out.rename(tmp_path / "calibration.data")  # found by its format, not its suffix
    assert main(["info", str(renamed)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"lenslet grid 15\.3\d+ × 15\.3\d+ px", text)
    assert "nnum = 15" in text and "60x / NA 1.2" in text
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something.else"
    assert main(["info", str(foreign)]) == 2
    assert "neither a PSF bank nor a calibration" in capsys.readouterr().err


# --- reconstruct --calibration -------------------------------------------------------
@pytest.fixture(scope="module")
def raw_case(frames, small_bank, tmp_path_factory):
    """A calibration (reference optics, the bank's), a known rectified light
    field y = H x of a few points and a raw frame (+ dark) showing it on the
    true lattice, as float32 TIFF."""
    root, a, b = frames
    work = tmp_path_factory.mktemp("raw")
    calib = work / "calib.h5"
    argv = ["calibrate", "--white", str(root / "white.tif"), "--microscope", "reference"]
    assert main([*argv, "--lenslets", "8,8", "--no-flat", "-o", str(calib), "-q"]) == 0
    cal = Calibration.load(calib)
    op = LightFieldOperator(small_bank)
    x = torch.zeros(1, *op.volume_shape(cal.lenslets))
    x[0, 0, 6, 7], x[0, 1, 12, 14], x[0, 2, 17, 9] = 3e4, 5e4, 4e4
    y = op(x)[0, 0].numpy()
    # The crop's first lenslet as an index of the true lattice.
    fy, fx = cal.grid.lenslet_to_raw(*cal.first_lenslet)
    first = np.rint(np.linalg.solve(np.column_stack([a, b]), [fy - ORIGIN[0], fx - ORIGIN[1]]))
    raw = raw_from_rectified(y, 15, a, b, ORIGIN, first, SHAPE) + 100.0
    tifffile.imwrite(work / "raw.tif", raw.astype(np.float32))
    small_bank.save(work / "bank.h5")
    return work, cal, op, y


def relative_error(v, ref) -> float:
    return float(np.linalg.norm(v - ref) / np.linalg.norm(ref))


def test_reconstruct_raw_frame_matches_the_rectified_one(raw_case, tmp_path, capsys):
    work, cal, op, y = raw_case
    # A constant "dark frame" in a copy of the calibration: the raw carries +100.
    with_dark = Calibration(
        cal.grid,
        cal.microscope,
        cal.raw_shape,
        cal.first_lenslet,
        cal.lenslets,
        dark=np.full(cal.raw_shape, 100.0),
    )
    calib = with_dark.save(tmp_path / "calib.h5")
    out = tmp_path / "vol.tif"
    argv = ["reconstruct", str(work / "raw.tif"), "--psf", str(work / "bank.h5")]
    assert main([*argv, "--calibration", str(calib), "--iterations", "10", "-o", str(out)]) == 0
    assert "rectified" in capsys.readouterr().out
    volume, _ = read_volume_tiff(out)
    expected = richardson_lucy(op, y[None, None], 10, filter="antialias")[0].numpy()  # the CLI's
    error = relative_error(volume, expected)
    # The raw frame is the light field interpolated onto the raw grid and
    # rectified back (cubic there, linear here): a blur of ~1 px. A light field
    # off by one rectified pixel, the size of a grid error, gives a far worse match.
    shifted = np.roll(y, 1, axis=1)[None, None]
    shifted = richardson_lucy(op, shifted, 10, filter="antialias")[0].numpy()
    assert error < 0.1 and error < 0.25 * relative_error(shifted, expected)  # 0.06 vs 0.42
    assert np.unravel_index(volume.argmax(), volume.shape) == np.unravel_index(
        expected.argmax(), expected.shape
    )


def test_calibration_and_bank_must_match(raw_case, frames, small_bank, tmp_path, capsys):
    work, cal, *_ = raw_case
    root, *_ = frames
    other = tmp_path / "guv.h5"  # 60x optics, also nnum 15
    assert main(calibrate_argv(root, other, "--lenslets", "8,8", "-q")) == 0
    coarse = tmp_path / "nnum10.h5"  # reference optics rectified to nnum 10
    argv = ["calibrate", "--white", str(root / "white.tif"), "--microscope", "reference"]
    assert main([*argv, "--nnum", "10", "-o", str(coarse), "-q"]) == 0
    with pytest.raises(LFMError, match=r"magnification 60 vs 20.*lfm-recon psf"):
        check_bank(Calibration.load(other), small_bank)
    with pytest.raises(LFMError, match=r"nnum = 10 .* nnum = 15"):
        check_bank(Calibration.load(coarse), small_bank)
    check_bank(cal, small_bank)  # the matching pair passes
    for calib, message in ((other, "numerical_aperture 1.2 vs 0.5"), (coarse, "nnum = 10")):
        argv = ["reconstruct", str(work / "raw.tif"), "--psf", str(work / "bank.h5")]
        out = tmp_path / "vol.tif"
        assert main([*argv, "--calibration", str(calib), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not out.exists()


def test_psf_from_a_calibration_uses_its_optics(raw_case, tmp_path):
    _, cal, *_ = raw_case
    calib = cal.save(tmp_path / "calib.h5")
    out = tmp_path / "bank.h5"
    assert main(["psf", str(calib), "--depths", "0", "-s", "1", "-o", str(out), "-q"]) == 0
    bank = PSFBank.load(out)
    assert bank.microscope == cal.microscope
    check_bank(cal, bank)


def test_reconstruct_rejects_a_raw_frame_of_another_size(raw_case, tmp_path, capsys):
    work, *_ = raw_case
    tifffile.imwrite(tmp_path / "small.tif", np.ones((300, 350), np.uint16))
    argv = ["reconstruct", str(tmp_path / "small.tif"), "--psf", str(work / "bank.h5")]
    out = tmp_path / "vol.tif"
    assert main([*argv, "--calibration", str(work / "calib.h5"), "-o", str(out)]) == 2
    assert "frames are 300×350 px but the calibration" in capsys.readouterr().err
    assert not out.exists()


# --- camera frames --------------------------------------------------------------------
def test_read_frames(tmp_path):
    tifffile.imwrite(
        tmp_path / "stack.tif", np.ones((4, 20, 30), np.uint16), photometric="minisblack"
    )
    tifffile.imwrite(tmp_path / "one.tif", np.ones((1, 20, 30), np.uint8))
    stack = read_frames(tmp_path / "stack.tif")
    assert stack.shape == (4, 20, 30) and stack.dtype == np.float32
    assert read_frames(tmp_path / "one.tif").shape == (20, 30)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    with pytest.raises(LFMError, match="colour"):
        read_frames(tmp_path / "rgb.tif")
    with pytest.raises(LFMError, match=r"dark frame file .* does not exist"):
        read_frames(tmp_path / "nope.tif", "dark frame")
    (tmp_path / "junk.tif").write_text("not a tiff")
    with pytest.raises(LFMError, match="cannot read"):
        read_frames(tmp_path / "junk.tif")


# --- real sample -------------------------------------------------------------------
def test_cli_calibrates_the_real_guv_sample(tmp_path, capsys):
    white = sample_path("GUVExperim1", "Radiometry_GUVExperim1.tif")
    dark = sample_path("GUVExperim1", "DarkFrame_GUVExperim1.tif")
    out, png = tmp_path / "guv.h5", tmp_path / "guv.png"
    argv = ["calibrate", "--white", str(white), "--dark", str(dark), "--microscope"]
    argv += ["guv-60x-1.2na", "--raw-pixel-size", "6.5", "-o", str(out), "--figure", str(png)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # within 1 % of the nominal 100 / 6.5 = 15.38 px
    cal = Calibration.load(out)
    assert cal.grid.pitch_y == pytest.approx(15.38, rel=0.01)
    assert cal.grid.pitch_x == pytest.approx(15.38, rel=0.01)
    assert cal.lenslets == (28, 28) and "effective" in captured.out
    assert png.stat().st_size > 10_000
    raw = read_frames(sample_path("GUVExperim1", "Lightfield_GUVExperim1.tif"))
    assert cal.apply(raw).shape == (420, 420)
