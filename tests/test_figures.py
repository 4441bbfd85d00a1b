"""Figures: files are written, shapes and layout follow the data."""

import matplotlib.image
import numpy as np
import pytest

from lfm_recon import LFMError
from lfm_recon.figures import plot_mips

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_mips(tmp_path):
    volume = np.zeros((5, 20, 40), np.float32)
    volume[1, 5, 10] = volume[3, 15, 30] = 1.0
    path = plot_mips(volume, (0.5, 2.0), tmp_path / "mips.png", "two points", np.arange(5) * 2.0)
    assert path == tmp_path / "mips.png" and path.read_bytes()[:8] == PNG
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > height  # 20 µm × 10 µm laterally: the xy panel is wide
    # One plane (axial step 0) is drawn one voxel thick.
    assert plot_mips(volume[:1], (0.5, 0.0), tmp_path / "one.png").read_bytes()[:8] == PNG
    with pytest.raises(LFMError, match=r"\(D, Yv, Xv\)"):
        plot_mips(volume[0], (0.5, 2.0), tmp_path / "bad.png")
    with pytest.raises(LFMError, match="depths must have shape"):
        plot_mips(volume, (0.5, 2.0), tmp_path / "bad.png", depths=[0, 1])
