"""napari reader of the package's volume outputs (see the package doc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.readers import VolumeFile, is_volume_output, open_volumes


def get_reader(path):
    """The reader for ``path`` when it is a volume output of lfm_recon, else
    None (napari then asks its other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_volume_layer if is_volume_output(path) else None


def read_volume_layer(path) -> list[tuple]:
    """One image layer: the volumes (lazy), voxel size as scale, depths as
    the z axis (µm), provenance and QC as metadata."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    f = open_volumes(path)
    return [(f.levels if len(f.levels) > 1 else f.data, layer_options(f), "image")]


def layer_options(f: VolumeFile) -> dict:
    """napari ``add_image`` keywords for an opened output."""
    return volume_layer_options(
        ndim=len(f.data.shape),
        element_size_um=f.element_size_um,
        depths_um=f.depths_um,
        name=Path(f.path).name + ("" if f.complete else " (unfinished)"),
        metadata={"provenance": f.provenance, "depths_um": f.depths_um, "qc": f.qc},
        multiscale=len(f.levels) > 1,
        peak=None if f.qc is None or "max" not in f.qc else float(np.max(f.qc["max"])),
    )


def volume_layer_options(
    ndim, element_size_um, depths_um, name, metadata, multiscale=False, peak=None
) -> dict:
    """Scale (µm), translation (z = first depth, µm), axis names and units
    for a (T, D, Yv, Xv) or (D, Yv, Xv) volume layer."""
    z, y, x = (float(v) for v in element_size_um)
    first = float(depths_um[0]) if len(depths_um) else 0.0
    scale, translate = [z, y, x], [first, 0.0, 0.0]
    labels, units = ["z", "y", "x"], ["µm", "µm", "µm"]
    if ndim == 4:
        scale, translate = [1.0, *scale], [0.0, *translate]
        labels, units = ["t", *labels], [None, *units]
    options = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "axis_labels": labels,
        "units": units,
        "metadata": metadata,
        "colormap": "magma",
        "multiscale": multiscale,
    }
    if peak is not None and peak > 0:  # saves napari a pass over a large lazy array
        options["contrast_limits"] = (0.0, peak)
    return options
