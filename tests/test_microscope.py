import math

import numpy as np
import pytest

from lfm_recon import LFMError, Microscope, list_presets

REF = dict(
    magnification=20,
    numerical_aperture=0.5,
    medium_index=1.33,
    wavelength=0.525,
    mla_pitch=150.0,
    mla_focal_length=3000.0,
    pixel_size=10.0,
)


def test_derived_quantities():
    m = Microscope(**REF)
    assert m.nnum == 15
    assert m.lenslet_pitch_object == pytest.approx(7.5)
    assert m.voxel_size(5) == pytest.approx(1.5)
    assert m.mla_to_sensor == 3000.0
    assert m.lenslet_na == pytest.approx(m.image_side_na)  # matched design


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(dict(numerical_aperture=1.4), "below medium_index", id="NA>=n"),
        pytest.param(dict(mla_pitch=-150.0), "positive", id="negative-pitch"),
        pytest.param(dict(wavelength=0.0), "positive", id="zero-wavelength"),
        pytest.param(dict(wavelength=525.0), "did you mean 0.525", id="wavelength-in-nm"),
        pytest.param(dict(wavelength=5.25e-7), "did you mean 0.525", id="wavelength-in-m"),
        pytest.param(dict(pixel_size=6.5), "rectify", id="non-integer-nnum"),
        pytest.param(dict(medium_index=0.9), "below 1", id="index<1"),
        pytest.param(dict(magnification=float("nan")), "finite", id="nan"),
        pytest.param(dict(magnification="20"), "must be a number", id="string"),
    ],
)
def test_impossible_optics_are_rejected(change, message):
    with pytest.raises(LFMError, match=message):
        Microscope(**{**REF, **change})


def test_non_integer_pitch_error_suggests_the_rectified_pixel():
    with pytest.raises(LFMError) as err:
        Microscope(**{**REF, "mla_pitch": 100.0, "pixel_size": 6.5})
    assert "15.38" in str(err.value) and "6.66667" in str(err.value)


def test_pixel_size_close_to_integer_grid_is_snapped():
    m = Microscope(**{**REF, "mla_pitch": 100.0, "pixel_size": 6.67})  # 0.05 % off
    assert m.nnum == 15 and m.pixel_size == 100.0 / 15


def test_numpy_scalars_are_numbers():
    m = Microscope(**{**REF, "magnification": np.int64(20), "wavelength": np.float32(0.525)})
    assert m.nnum == 15 and isinstance(m.magnification, float)


def test_toml_round_trip(tmp_path):
    m = Microscope(**REF, tube_lens_focal_length=180000.0)
    path = tmp_path / "m.toml"
    m.save(path, description='my "scope"')
    assert Microscope.from_file(path) == m


def test_toml_nnum_key_and_unknown_keys(tmp_path):
    path = tmp_path / "m.toml"
    text = "\n".join(f"{k} = {v}" for k, v in REF.items() if k != "pixel_size")
    path.write_text(text + "\nnnum = 15\n")
    assert Microscope.from_file(path).pixel_size == 10.0
    path.write_text(text + "\nnnum = 15\nobjective_na = 0.5\n")
    with pytest.raises(LFMError, match="unknown key"):
        Microscope.from_file(path)
    path.write_text(text + "\nnnum = 15\npixel_size = 12.0\n")
    with pytest.raises(LFMError, match="contradicts"):
        Microscope.from_file(path)
    path.write_text(text.replace("150.0", '"150"') + "\nnnum = 15\n")
    with pytest.raises(LFMError, match="mla_pitch must be a number"):
        Microscope.from_file(path)
    path.write_text("magnification = [")
    with pytest.raises(LFMError, match="not valid TOML"):
        Microscope.from_file(path)


def test_presets_load_with_their_documented_geometry():
    presets = list_presets()
    assert {"reference", "guv-60x-1.2na", "seaurchin-20x-0.5na", "water-40x-0.8na"} <= set(presets)
    expected_nnum = {
        "reference": 15,
        "guv-60x-1.2na": 15,
        "seaurchin-20x-0.5na": 17,
        "water-40x-0.8na": 19,
    }
    for name, nnum in expected_nnum.items():
        m = Microscope.preset(name)
        assert m.nnum == nnum
        assert presets[name]
    assert Microscope.preset("reference") == Microscope(**REF)
    assert Microscope.preset("seaurchin-20x-0.5na").mla_to_sensor == 2433.0
    # 40x/0.8 water with a matched f/25 lenslet
    w = Microscope.preset("water-40x-0.8na")
    assert math.isclose(w.lenslet_na, w.image_side_na)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(LFMError, match="reference"):
        Microscope.resolve("no-such-scope")
    with pytest.raises(LFMError, match="does not exist"):
        Microscope.resolve("missing.toml")
