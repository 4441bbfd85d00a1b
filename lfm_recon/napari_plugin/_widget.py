"""napari widget: reconstruct the selected light-field layer.

The computation (:func:`reconstruct_layer`) is a plain generator that
yields (frames done, frames) and returns the volume; the widget runs it in
napari's worker thread, shows the progress and adds the result as a layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..errors import LFMError
from ..pipeline.reconstructor import ALL_METHODS, Reconstructor
from ..solvers import DEFAULT_ITERATIONS
from ._reader import volume_layer_options


def load_target(path: str | Path, method: str):
    """The network or operator for ``method`` from a model file (.pt) or a
    PSF bank (.h5)."""
    from ..modelfile import load_model
    from ..operator import LightFieldOperator
    from ..psf.bank import PSFBank

    path = Path(path)
    if not str(path).strip() or not path.is_file():
        raise LFMError(f"choose a PSF bank (.h5) or a model file (.pt): {str(path)!r} is none")
    if path.suffix.lower() == ".pt":
        return load_model(path, device="cpu")
    if method == "net":
        raise LFMError("method 'net' needs a model file (.pt), not a PSF bank")
    return LightFieldOperator(PSFBank.load(path))


def reconstruct_layer(frames, target, method: str, n_iter: int | None, background: float):
    """Reconstruct light fields frame by frame.

    Args:
        frames: (Y, X) or (T, Y, X) counts (any array-like, e.g. a layer's data).
        target: an UnfoldedISTA or LightFieldOperator (:func:`load_target`).
        method, n_iter, background: as :class:`~lfm_recon.pipeline.Reconstructor`.

    Yields:
        (frames done, frames).

    Returns:
        float32 volumes (D, Yv, Xv), or (T, D, Yv, Xv) for (T, Y, X) frames,
        photons per voxel.
    """
    a = np.asarray(frames, dtype=np.float32)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim not in (2, 3):
        raise LFMError(f"the layer holds {a.shape}; expected a light field (Y, X) or (T, Y, X)")
    single = a.ndim == 2
    a = a[None] if single else a
    fn = Reconstructor(target, method, background=background, n_iter=n_iter)
    n = fn.op.nnum
    if a.shape[1] % n or a.shape[2] % n:
        raise LFMError(
            f"the light field is {a.shape[1]}×{a.shape[2]} px but the PSF has nnum = {n}"
            " pixels per lenslet: rectify it first (lfm-recon calibrate)"
        )
    import torch

    out = []
    yield 0, len(a)
    for t in range(len(a)):
        out.append(fn(torch.from_numpy(np.ascontiguousarray(a[t : t + 1]))[:, None]).numpy())
        yield t + 1, len(a)
    volumes = np.concatenate(out)
    return volumes[0] if single else volumes


class ReconstructWidget(QWidget):
    """Light-field layer, PSF bank or model file, method, iterations,
    background; "Reconstruct" runs in a worker thread and adds the volume."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._cache: tuple | None = None  # (path, mtime, method kind) → target

        form = QFormLayout(self)
        self.layer_box = QComboBox()
        form.addRow("Light field", self.layer_box)
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("PSF bank .h5 or model .pt")
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.file_edit)
        row.addWidget(browse)
        form.addRow("PSF / model", row)
        self.method_box = QComboBox()
        self.method_box.addItems(list(ALL_METHODS))
        self.method_box.setCurrentText("rl")
        self.method_box.currentTextChanged.connect(self._method_changed)
        form.addRow("Method", self.method_box)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 100000)
        self.iterations.setValue(DEFAULT_ITERATIONS["rl"])
        form.addRow("Iterations", self.iterations)
        self.background = QDoubleSpinBox()
        self.background.setRange(0.0, 1e9)
        self.background.setDecimals(2)
        self.background.setSuffix(" counts")
        form.addRow("Background", self.background)
        self.run_button = QPushButton("Reconstruct")
        self.run_button.clicked.connect(self._run_or_cancel)
        form.addRow(self.run_button)
        self.progress = QProgressBar()
        form.addRow(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form.addRow(self.status)

        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # --- form ---
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_box.currentText()
        self.layer_box.clear()
        names = [layer.name for layer in self._image_layers()]
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    def _browse(self) -> None:
        name, _ = QFileDialog.getOpenFileName(
            self, "PSF bank or model", "", "PSF bank or model (*.h5 *.pt)"
        )
        if name:
            self.file_edit.setText(name)

    def _method_changed(self, method: str) -> None:
        self.iterations.setEnabled(method != "net")
        if method != "net":
            self.iterations.setValue(DEFAULT_ITERATIONS[method])

    # --- running ---
    def _target(self, path: str, method: str):
        p = Path(path)
        key = (str(p), p.stat().st_mtime_ns if p.is_file() else None, method == "net")
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, load_target(path, method))
        return self._cache[1]

    def _run_or_cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("cancelling…")
            return
        self.start()

    def start(self):
        """Start reconstructing the chosen layer; returns the worker (or None
        when the form is not valid: the status line says why)."""
        from napari.qt.threading import create_worker

        name, method = self.layer_box.currentText(), self.method_box.currentText()
        layer = next((la for la in self._image_layers() if la.name == name), None)
        try:
            if layer is None:
                raise LFMError("add or open a light-field image layer first")
            target = self._target(self.file_edit.text(), method)
        except (LFMError, OSError) as exc:
            self._fail(exc)
            return None
        n_iter = None if method == "net" else self.iterations.value()
        worker = create_worker(
            reconstruct_layer,
            layer.data,
            target,
            method,
            n_iter,
            self.background.value(),
            _start_thread=False,
        )
        worker.yielded.connect(self._progress)
        worker.returned.connect(lambda volume: self._add(volume, layer.name, method, target))
        worker.errored.connect(self._fail)
        worker.finished.connect(self._done)
        self.worker = worker
        self.run_button.setText("Cancel")
        self.status.setText(f"reconstructing {name} ({method})…")
        self.progress.setRange(0, 0)  # busy until the first frame is done
        worker.start()
        return worker

    def _progress(self, value) -> None:
        done, total = value
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _add(self, volume, name: str, method: str, target) -> None:
        op = getattr(target, "op", target)
        lateral, axial = op.voxel_size
        options = volume_layer_options(
            ndim=volume.ndim,
            element_size_um=(axial or 1.0, lateral, lateral),
            depths_um=np.asarray(op.depths, dtype=float),
            name=f"{name} ({method})",
            metadata={"depths_um": np.asarray(op.depths), "method": method},
        )
        self.viewer.add_image(volume, **options)
        self.status.setText(f"added {options['name']}")

    def _fail(self, exc) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.status.setText(f"error: {text}")

    def _done(self) -> None:
        self.worker = None
        self.run_button.setText("Reconstruct")
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
