"""Lenslet-grid calibration and rectification.

Synthetic frames come from the independent renderer in ``lf_frames.py``; real
samples are read from ``$LFM_SAMPLES`` (default ``../shared/data/lf-samples``
next to the project) and skipped when absent.
"""

import warnings

import h5py
import numpy as np
import pytest
from lf_frames import expected_rectified, lattice, raw_from_lightfield, read_sample, white_frame

from lfm_recon import LFMError, Microscope
from lfm_recon.calibration import (
    Calibration,
    CalibrationWarning,
    LensletGrid,
    calibrate,
    fit_lenslet_grid,
    whole_lenslets,
)

# --- grid fit ------------------------------------------------------------------
GRID_CASES = [
    pytest.param(
        (436, 436), (15.38, 15.38), 0.7, (211.3, 205.8), "discs", 2000, id="15.38px-+0.7deg"
    ),
    pytest.param(
        (480, 512), (17.2, 17.2), -1.9, (250.45, 260.2), "discs", 2000, id="17.2px--1.9deg"
    ),
    pytest.param(
        (500, 512), (15.38, 17.2), 2.0, (240.1, 230.9), "gauss", 2000, id="15.38x17.2px-+2deg-gauss"
    ),
    pytest.param((300, 320), (7.3, 7.3), -2.0, (150.7, 160.2), "discs", 200, id="7.3px--2deg-dim"),
]


@pytest.mark.parametrize(("shape", "pitch", "rotation", "origin", "spots", "photons"), GRID_CASES)
def test_grid_fit_accuracy(shape, pitch, rotation, origin, spots, photons):
    frame, a, b = white_frame(shape, pitch, rotation, origin, spots, photons)
    grid = fit_lenslet_grid(frame, np.full(shape, 100.0))
    assert grid.pitch_y == pytest.approx(pitch[0], rel=5e-4)
    assert grid.pitch_x == pytest.approx(pitch[1], rel=5e-4)
    assert grid.rotation == pytest.approx(rotation, abs=0.02)
    # The true centre at `origin` must be predicted within 0.1 px.
    i, j = grid.raw_to_lenslet(*origin)
    y, x = grid.lenslet_to_raw(np.rint(i), np.rint(j))
    assert np.hypot(y - origin[0], x - origin[1]) < 0.1
    # ... and so must a true centre near the frame's corner (pitch and rotation).
    corner = np.asarray(origin) - 12 * a - 12 * b
    i, j = grid.raw_to_lenslet(*corner)
    y, x = grid.lenslet_to_raw(np.rint(i), np.rint(j))
    assert np.hypot(y - corner[0], x - corner[1]) < 0.1
    assert grid.rms_residual < 0.15
    assert grid.n_spots > 0.7 * np.prod(shape) / (pitch[0] * pitch[1])


def test_grid_maps_both_ways_and_rotation_sign():
    grid = LensletGrid.from_pitch(15.38, 17.2, rotation=1.5, origin=(100.2, 90.7))
    assert (grid.pitch_y, grid.pitch_x) == pytest.approx((15.38, 17.2))
    assert grid.rotation == pytest.approx(1.5)
    assert grid.skew == pytest.approx(0.0, abs=1e-12)
    # Counter-clockwise as displayed: the +x lattice axis tilts up (toward row 0).
    assert grid.vector_j[0] < 0 < grid.vector_i[1]
    i, j = np.meshgrid(np.linspace(-3, 4, 7), np.linspace(-2, 5, 9), indexing="ij")
    back = grid.raw_to_lenslet(*grid.lenslet_to_raw(i, j))
    np.testing.assert_allclose(back, (i, j), atol=1e-12)
    assert LensletGrid.from_dict(grid.to_dict()) == grid


# --- rectification ---------------------------------------------------------------
@pytest.fixture(scope="module")
def guv_optics():
    return Microscope.preset("guv-60x-1.2na")  # nnum 15


def test_rectify_recovers_known_lightfield(guv_optics):
    shape, origin = (330, 350), (161.3, 170.8)
    a, b = lattice(15.38, 15.38, 1.3)
    grid = LensletGrid(origin=origin, vector_i=a, vector_j=b)
    first, lenslets = whole_lenslets(grid, shape)
    cal = Calibration(grid, guv_optics, shape, first, lenslets)
    area = abs(a[0] * b[1] - a[1] * b[0])
    raw = raw_from_lightfield(shape, a, b, origin) * 15**2 / area
    out = cal.apply(raw)
    assert out.dtype == np.float32 and out.shape == (lenslets[0] * 15, lenslets[1] * 15)
    truth = expected_rectified(15, first, lenslets)
    err = np.abs(out - truth)[15:-15, 15:-15]  # one lenslet away from the borders
    # Linear interpolation error ≤ h²·max|f''|/8 ≈ 0.19 % of the range here (h = 1 raw px).
    assert err.max() < 0.003 * np.ptp(truth)
    # Stacks rectify frame by frame.
    stack = cal.apply(np.stack([raw, 2 * raw]))
    np.testing.assert_allclose(stack[1], 2 * out, rtol=1e-6)


def test_rectify_preserves_flux():
    shape = (200, 210)
    grid = LensletGrid.from_pitch(16.3, 16.3, rotation=-0.8, origin=(100.4, 99.1))
    first, lenslets = whole_lenslets(grid, shape)
    microscope = Microscope.preset("guv-60x-1.2na")
    cal = Calibration(grid, microscope, shape, first, lenslets)
    out = cal.apply(np.ones(shape))
    # A uniform frame: each lenslet block holds the raw pixels of one cell.
    blocks = out.reshape(lenslets[0], 15, lenslets[1], 15).sum((1, 3))
    np.testing.assert_allclose(blocks, 16.3**2, rtol=1e-5)


def test_calibrate_end_to_end(guv_optics):
    """White frame → fitted grid → rectified light field close to the truth."""
    shape, pitch, rotation, origin = (330, 350), (15.38, 15.38), -1.1, (161.3, 170.8)
    white, a, b = white_frame(shape, pitch, rotation, origin)
    dark = np.full(shape, 100.0)
    cal = calibrate(white, dark, microscope=guv_optics, raw_pixel_size=6.5, flat=False)
    assert cal.nnum == 15 and cal.microscope.pixel_size == 100.0 / 15
    area = abs(a[0] * b[1] - a[1] * b[0])
    raw = raw_from_lightfield(shape, a, b, origin) * 15**2 / area + dark
    out = cal.apply(raw)
    # The fit indexes lenslets from the one nearest the frame centre: find the
    # true index of the crop's first lenslet to compare.
    y, x = cal.grid.lenslet_to_raw(*cal.first_lenslet)
    d = np.linalg.solve(np.column_stack([a, b]), [y - origin[0], x - origin[1]])
    truth = expected_rectified(15, np.rint(d), cal.lenslets)
    err = np.abs(out - truth)[15:-15, 15:-15]
    assert err.max() < 0.005 * np.ptp(truth)
    assert cal.raw_pixel_size == pytest.approx((100 / 15.38, 100 / 15.38), rel=1e-3)


def test_flat_field_makes_uniform_sample_uniform(guv_optics):
    shape, geometry = (330, 350), ((15.38, 15.38), 0.4, (161.3, 170.8))
    white, *_ = white_frame(shape, *geometry, photons=20000, seed=0)
    sample, *_ = white_frame(shape, *geometry, photons=20000, seed=1)  # another exposure
    dark = np.full(shape, 100.0)
    plain = calibrate(white, dark, microscope=guv_optics, flat=False)
    flat = calibrate(white, dark, microscope=guv_optics)
    ny, nx = flat.lenslets
    assert flat.flat.shape == (ny, nx)

    def lenslet_sums(cal):
        return cal.apply(sample).reshape(ny, 15, nx, 15).sum((1, 3))

    raw_sums, flat_sums = lenslet_sums(plain), lenslet_sums(flat)
    assert raw_sums.min() < 0.7 * raw_sums.max()  # vignetted
    # Uniform up to the two frames' shot noise (~0.1 % per lenslet here).
    np.testing.assert_allclose(flat_sums, np.median(flat_sums), rtol=0.005)
    # The pattern inside each lenslet (the pupil image) is kept, not flattened.
    block = flat.apply(sample)[7 * 15 : 8 * 15, 7 * 15 : 8 * 15]
    assert block[7, 7] > 5 * block[0, 0]


def test_nnum_and_lenslets_choices(guv_optics):
    shape = (330, 350)
    white, *_ = white_frame(shape, (15.38, 15.38), 0.4, (161.3, 170.8))
    cal = calibrate(white, microscope=guv_optics, nnum=8, lenslets=(10, 12), flat=False)
    assert cal.nnum == 8 and cal.microscope.pixel_size == pytest.approx(100 / 8)
    assert cal.lenslets == (10, 12) and cal.apply(white).shape == (80, 96)
    # Centred: the crop's middle is within a lenslet of the frame centre.
    i, j = cal.grid.raw_to_lenslet((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    assert abs(cal.first_lenslet[0] + 4.5 - i) <= 1 and abs(cal.first_lenslet[1] + 5.5 - j) <= 1
    with pytest.raises(LFMError, match="largest whole block is"):
        calibrate(white, microscope=guv_optics, lenslets=(30, 30))


# --- bad input -----------------------------------------------------------------
def test_no_grid_is_an_error(guv_optics):
    noise = np.random.default_rng(3).poisson(500.0, (300, 300)).astype(float)
    with pytest.raises(LFMError, match="shows no lenslet grid"):
        calibrate(noise, microscope=guv_optics)
    with pytest.raises(LFMError, match="at least 4 lenslets"):
        fit_lenslet_grid(np.ones((10, 10)))


def test_mismatched_and_nan_frames(guv_optics):
    shape = (330, 350)
    white, *_ = white_frame(shape, (15.38, 15.38), 0.4, (161.3, 170.8))
    with pytest.raises(LFMError, match=r"dark frame is 330×340 px but the white frame is 330×350"):
        calibrate(white, np.zeros((330, 340)), microscope=guv_optics)
    cal = calibrate(white, microscope=guv_optics, flat=False)
    with pytest.raises(LFMError, match=r"raw frame is 300×350 px"):
        cal.apply(np.zeros((300, 350)))
    bad = white.copy()
    bad[5, 7] = np.nan
    with pytest.raises(LFMError, match="NaN"):
        calibrate(bad, microscope=guv_optics)
    with pytest.raises(LFMError, match="NaN"):
        cal.apply(bad)


@pytest.fixture(scope="module")
def white_15_38():
    return white_frame((330, 350), (15.38, 15.38), 0.4, (161.3, 170.8))[0]


@pytest.mark.parametrize(
    ("raw_pixel_size", "outcome"),
    [
        pytest.param(6.5, "silent", id="nominal-0.0%"),
        pytest.param(100 / 15.6, "warning", id="1.4%-off"),
        pytest.param(100 / 16.0, "warning", id="3.9%-off"),
        pytest.param(100 / 16.5, "error", id="7.3%-off"),
        pytest.param(100 / 14.3, "error", id="7.0%-under"),
    ],
)
def test_nominal_pitch_check(white_15_38, guv_optics, raw_pixel_size, outcome):
    nominal = f"{100 / raw_pixel_size:.3f} px"
    if outcome == "error":
        with pytest.raises(LFMError, match=rf"15\.3\d\d × 15\.3\d\d px.*{nominal}"):
            calibrate(white_15_38, microscope=guv_optics, raw_pixel_size=raw_pixel_size)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate(white_15_38, microscope=guv_optics, raw_pixel_size=raw_pixel_size, flat=False)
    ours = [w for w in caught if issubclass(w.category, CalibrationWarning)]
    if outcome == "silent":
        assert not ours
    else:
        (w,) = ours
        assert "15.3" in str(w.message) and nominal in str(w.message)
        assert "using the fitted pitch" in str(w.message)
        assert w.filename == __file__  # points at the caller of calibrate


# --- file ----------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, guv_optics, white_15_38):
    cal = calibrate(white_15_38, np.full(white_15_38.shape, 100.0), microscope=guv_optics)
    path = cal.save(tmp_path / "calib.h5")
    back = Calibration.load(path)
    assert back.grid == cal.grid and back.microscope == cal.microscope
    assert (back.raw_shape, back.first_lenslet, back.lenslets) == (
        cal.raw_shape,
        cal.first_lenslet,
        cal.lenslets,
    )
    np.testing.assert_array_equal(back.dark, cal.dark)
    np.testing.assert_array_equal(back.flat, cal.flat)
    np.testing.assert_array_equal(back.apply(white_15_38), cal.apply(white_15_38))
    plain = Calibration(cal.grid, cal.microscope, cal.raw_shape, cal.first_lenslet, cal.lenslets)
    assert Calibration.load(plain.save(tmp_path / "plain.h5")).dark is None


def test_load_foreign_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "lfm_recon.psf_bank"
        f["kernels"] = np.zeros(3)
    with pytest.raises(LFMError, match=r"not a calibration.*lfm-recon calibrate"):
        Calibration.load(path)
    with pytest.raises(LFMError, match="does not exist"):
        Calibration.load(tmp_path / "missing.h5")


def test_plot_lenslet_grid(tmp_path, guv_optics, white_15_38):
    from lfm_recon.figures import plot_lenslet_grid

    cal = calibrate(white_15_38, microscope=guv_optics, flat=False)
    for target in (cal, cal.grid):
        path = plot_lenslet_grid(white_15_38, target, tmp_path / "grid.png")
        assert path.stat().st_size > 10_000


# --- real samples --------------------------------------------------------------
def test_real_guv_sample(guv_optics):
    white = read_sample("GUVExperim1", "Radiometry_GUVExperim1.tif")
    dark = read_sample("GUVExperim1", "DarkFrame_GUVExperim1.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)  # within 1 % of 100/6.5
        cal = calibrate(white, dark, microscope=guv_optics, raw_pixel_size=6.5)
    nominal = 100 / 6.5
    assert cal.grid.pitch_y == pytest.approx(nominal, rel=0.01)
    assert cal.grid.pitch_x == pytest.approx(nominal, rel=0.01)
    assert cal.grid.rms_residual < 0.15 and cal.grid.n_spots > 700
    assert cal.nnum == 15 and cal.lenslets == (28, 28)
    lf = cal.apply(read_sample("GUVExperim1", "Lightfield_GUVExperim1.tif"))
    assert lf.shape == (420, 420) and np.isfinite(lf).all()


@pytest.fixture(scope="module")
def seaurchin():
    white = read_sample("seaurchin", "radiometry_frame.tif")
    dark = read_sample("seaurchin", "dark_frame.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = calibrate(
            white, dark, microscope=Microscope.preset("seaurchin-20x-0.5na"), raw_pixel_size=7.4
        )
    return cal, [w for w in caught if issubclass(w.category, CalibrationWarning)]


def test_real_seaurchin_sample(seaurchin):
    cal, caught = seaurchin
    # The white frame shows ~17.2 px per lenslet, not the nominal 125/7.4 = 16.89.
    assert cal.grid.pitch_y == pytest.approx(17.2, rel=0.003)
    assert cal.grid.pitch_x == pytest.approx(17.2, rel=0.003)
    assert cal.raw_pixel_size == pytest.approx((125 / 17.2, 125 / 17.2), rel=0.003)
    # Real distortion and dim uint8 spots: ~0.3 px RMS over >13000 spots.
    assert cal.grid.rms_residual < 0.5 and cal.grid.n_spots > 12000
    (w,) = caught  # 1.8 % off: a warning that names both numbers
    assert "16.892 px" in str(w.message) and "17.20" in str(w.message)
    assert cal.nnum == 17 and cal.rectified_shape == (cal.lenslets[0] * 17, cal.lenslets[1] * 17)
