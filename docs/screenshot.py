"""Make docs/napari.png: a real napari window with the plugin at work.

A light field of the embedded sample (reference microscope, 21×21 lenslets)
is reconstructed by the plugin's widget (Richardson–Lucy with the sample's
PSF bank) in its worker thread, and a recording written by
``lfm-recon reconstruct -o … .ome.zarr`` is opened with the plugin's reader;
the window is then captured. Needs a display; on a headless machine:

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshot.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from lfm_recon.data import sample
    from lfm_recon.reconstruct import reconstruct_files

    bank, data = sample()
    folder = Path(tempfile.mkdtemp(prefix="lfm-screenshot-"))
    bank.save(folder / "psf.h5")
    frames = np.round(data.unlabeled[:4, 0]).astype(np.uint16)
    tifffile.imwrite(folder / "recording.tif", frames)
    reconstruct_files(
        [folder / "recording.tif"],
        folder / "recording.ome.zarr",
        psf=folder / "psf.h5",
        method="rl",
        n_iter=30,
        background=5.0,
        pyramid=2,
        progress=False,
    )

    viewer = napari.Viewer(title="lfm_recon in napari")
    viewer.window.resize(1500, 900)
    viewer.open(str(folder / "recording.ome.zarr"), plugin="lfm_recon")
    # The light field at its object-space pixel size (µm), beside the volume.
    pixel = bank.microscope.pixel_size / bank.microscope.magnification
    viewer.add_image(
        data.lightfields[0, 0],
        name="light field",
        colormap="gray",
        scale=(pixel, pixel),
        units=("µm", "µm"),
        axis_labels=("y", "x"),
    )
    _, widget = viewer.window.add_plugin_dock_widget("lfm_recon", "Reconstruct light field")
    widget.layer_box.setCurrentText("light field")
    widget.file_edit.setText(str(folder / "psf.h5"))
    widget.iterations.setValue(30)
    widget.background.setValue(5.0)
    worker = widget.start()
    app = QApplication.instance()
    while widget.worker is not None:  # the worker thread reports through Qt signals
        app.processEvents()
    for layer in viewer.layers:
        layer.visible = layer.name != "recording.ome.zarr"
    volume = viewer.layers["light field (rl)"]
    volume.projection_mode = "max"  # a maximum projection over all depths
    volume.contrast_limits = (0.0, float(np.percentile(volume.data, 99.95)))
    z = viewer.dims.axis_labels.index("z")
    thickness = list(viewer.dims.thickness)
    thickness[z] = 200.0  # µm: every depth
    viewer.dims.thickness = thickness
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 2)
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
    out = Path(__file__).parent / "napari.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out} ({worker is not None})")
    viewer.close()


if __name__ == "__main__":
    main()
