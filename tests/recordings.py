"""A small test recording (shared by the pipeline tests) and readers of each
output kind written with the file libraries directly (h5py, tifffile, zarr),
independent of ``lfm_recon.pipeline.readers``."""

from pathlib import Path

import numpy as np
import tifffile
import torch

from lfm_recon import LightFieldOperator, UnfoldedISTA
from lfm_recon.data import simulate_dataset
from lfm_recon.modelfile import save_model

T = 12  # frames in the test recording
OUTPUTS = {"h5": "vol.h5", "tif": "vol.tif", "folder": "vol", "zarr": "vol.ome.zarr"}


def slow_rl(root: Path) -> list:
    """``lfm-recon`` arguments (no output, no ``-q``) of an RL run on the
    recording slow enough to be stopped midway (300 iterations, batch 2)."""
    return [
        "reconstruct",
        root / "series.tif",
        "--psf",
        root / "bank.h5",
        "--method",
        "rl",
        "--iterations",
        "300",
        "--background",
        "5",
        "--batch",
        "2",
        "--device",
        "cpu",
    ]


def make_recording(root: Path, bank, frames: int = T):
    """``root/series.tif`` (uint16 counts, 6×7 lenslets), ``root/bank.h5``
    and ``root/model.pt`` (an untrained 4-layer network with perturbed
    weights); returns (root, frames float32 (T, Y, X), the network)."""
    bank.save(root / "bank.h5")
    data = simulate_dataset(bank, 0, frames, lenslets=(6, 7), background=5.0, seed=5)
    counts = np.round(data.unlabeled[:, 0]).astype(np.uint16)
    tifffile.imwrite(root / "series.tif", counts)
    op = LightFieldOperator(bank)
    net = UnfoldedISTA(op, 4, prior="cnn")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    save_model(net, root / "model.pt")
    return root, counts.astype(np.float32), net


def read_back(path: Path) -> np.ndarray:
    """The volumes (T, D, Yv, Xv) of an output, read with its file library."""
    path = Path(path)
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            return f["volumes"][...]
    if path.suffix == ".tif":
        a = tifffile.imread(path)
        return a if a.ndim == 4 else a[None]
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_array(str(path / "0"), mode="r")[...]
    return np.stack([tifffile.imread(p) for p in sorted(path.glob("frame_*.tif"))])
