"""The napari plugin, headless (Qt offscreen; napari's ViewerModel, which
needs no OpenGL): the npe2 manifest, the reader on every output kind (scale,
depth axis, data), and the reconstruction widget in its worker thread."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("zarr")

from napari.components import ViewerModel
from recordings import OUTPUTS, make_recording, read_back

from lfm_recon import LightFieldOperator
from lfm_recon.napari_plugin._reader import get_reader
from lfm_recon.pipeline import reconstruct, reconstruct_files

KINDS = [pytest.param(k, id=k) for k in ("h5", "tif", "folder", "zarr")]


@pytest.fixture(scope="module", autouse=True)
def _plugins():
    """Discover installed plugins as a napari window does at start (this
    package's among them, through its entry point)."""
    from npe2 import PluginManager

    PluginManager.instance().discover(include_npe1=False)


@pytest.fixture(scope="module")
def recording(tmp_path_factory, small_bank):
    return make_recording(tmp_path_factory.mktemp("napari"), small_bank, frames=4)


@pytest.fixture(scope="module")
def outputs(recording):
    root, _, _ = recording
    for kind, name in OUTPUTS.items():
        reconstruct_files(
            [root / "series.tif"],
            root / name,
            psf=root / "bank.h5",
            method="rl",
            n_iter=5,
            background=5.0,
            pyramid=2 if kind == "zarr" else 1,
            progress=False,
        )
    return root


def test_manifest_declares_the_reader_and_the_widget():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("lfm_recon")
    (reader,) = manifest.contributions.readers
    assert {"*.h5", "*.tif", "*.zarr"} <= set(reader.filename_patterns)
    assert reader.accepts_directories
    (widget,) = manifest.contributions.widgets
    assert widget.display_name == "Reconstruct light field"


@pytest.mark.parametrize("kind", KINDS)
def test_reader_opens_each_output_with_its_scale_and_depths(kind, outputs, small_bank):
    path = outputs / OUTPUTS[kind]
    viewer = ViewerModel()
    (layer,) = viewer.open(str(path), plugin="lfm_recon")
    lateral, axial = small_bank.voxel_size
    np.testing.assert_allclose(layer.scale, [1.0, axial, lateral, lateral])
    assert tuple(layer.axis_labels) == ("t", "z", "y", "x")
    assert [str(u) for u in layer.units[1:]] == ["micrometer"] * 3
    # Depth index 2 sits at the bank's third depth, in µm.
    assert layer.data_to_world((0, 2, 0, 0))[1] == pytest.approx(small_bank.depths[2])
    data = layer.data[0] if layer.multiscale else layer.data
    np.testing.assert_array_equal(np.asarray(data), read_back(path))
    assert layer.metadata["provenance"]["method"] == "rl"
    if kind == "zarr":
        assert layer.multiscale and len(layer.data) == 2


def test_reader_leaves_other_files_to_napari(recording, tmp_path):
    import h5py

    root, _, _ = recording
    assert get_reader(str(root / "series.tif")) is None  # a light field, not a volume
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert get_reader(str(tmp_path / "other.h5")) is None
    assert get_reader(str(root / "bank.h5")) is None


def _widget(qtbot, viewer):
    from lfm_recon.napari_plugin._widget import ReconstructWidget

    w = ReconstructWidget(viewer)
    qtbot.addWidget(w)
    return w


@pytest.mark.parametrize(
    "target, method, frames",
    [
        pytest.param("bank.h5", "rl", 2, id="rl-psf-two-frames"),
        pytest.param("model.pt", "net", 1, id="net-model-one-frame"),
    ],
)
def test_widget_adds_the_reconstruction_as_a_layer(
    qtbot, recording, small_bank, target, method, frames
):
    root, lightfields, net = recording
    viewer = ViewerModel()
    data = lightfields[:frames] if frames > 1 else lightfields[0]
    viewer.add_image(data, name="lf")
    w = _widget(qtbot, viewer)
    w.layer_box.setCurrentText("lf")
    w.file_edit.setText(str(root / target))
    w.method_box.setCurrentText(method)
    w.iterations.setValue(5)
    w.background.setValue(5.0)
    worker = w.start()
    assert worker is not None and w.run_button.text() == "Cancel"
    qtbot.waitUntil(lambda: len(viewer.layers) == 2 and w.worker is None, timeout=120_000)
    layer = viewer.layers[-1]
    assert layer.name == f"lf ({method})"
    model = net if method == "net" else LightFieldOperator(small_bank)
    expected = reconstruct(data, model, method, background=5.0, n_iter=5)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-6 * expected.max())
    lateral, axial = small_bank.voxel_size
    scale = [axial, lateral, lateral] if frames == 1 else [1.0, axial, lateral, lateral]
    np.testing.assert_allclose(layer.scale, scale)
    assert layer.data_to_world((0,) * layer.ndim)[-3] == pytest.approx(small_bank.depths[0])
    assert w.progress.value() == w.progress.maximum() == frames
    assert w.run_button.text() == "Reconstruct"


@pytest.mark.parametrize(
    "target, method, message",
    [
        pytest.param("", "rl", "choose a PSF bank", id="no-file"),
        pytest.param("bank.h5", "net", "needs a model file", id="net-without-model"),
    ],
)
def test_widget_says_what_is_wrong(qtbot, recording, target, method, message):
    root, lightfields, _ = recording
    viewer = ViewerModel()
    viewer.add_image(lightfields[0], name="lf")
    w = _widget(qtbot, viewer)
    w.file_edit.setText(str(root / target) if target else "")
    w.method_box.setCurrentText(method)
    assert w.start() is None
    assert message in w.status.text() and len(viewer.layers) == 1
