"""Figures for a quick look at PSF banks (PNG via matplotlib's Agg canvas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .psf.bank import PSFBank


def plot_psf_bank(bank: PSFBank, path: str | Path, n_depths: int = 5, gamma: float = 0.5) -> Path:
    """Save a grid of kernels: columns are depths, rows sub-positions.

    Rows: the centre sub-position and a corner one (a = b = 0). Each panel is
    scaled to its own maximum with a display gamma (0.5 shows the dim
    lenslets of defocused depths); lenslet borders are drawn faintly.

    Args:
        bank: the PSF bank.
        path: output PNG path.
        n_depths: how many depths, evenly spread over the bank's.
        gamma: display exponent applied to the normalised intensity.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s, nnum = bank.voxels_per_lenslet, bank.nnum
    picks = np.unique(np.linspace(0, bank.n_depths - 1, min(n_depths, bank.n_depths)).round())
    subs = [((s - 1) // 2, (s - 1) // 2)] + ([(0, 0)] if s > 1 else [])
    fig = Figure(figsize=(2.2 * len(picks), 2.3 * len(subs) + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(subs), len(picks), squeeze=False)
    k = bank.kernel_size
    for col, d in enumerate(picks.astype(int)):
        for row, (a, b) in enumerate(subs):
            kern = bank.kernels[d, a, b]
            ax = axes[row, col]
            ax.imshow(
                (kern / max(kern.max(), 1e-30)) ** gamma, cmap="magma", interpolation="nearest"
            )
            for edge in range(0, k + 1, nnum):
                ax.axhline(edge - 0.5, color="white", lw=0.3, alpha=0.3)
                ax.axvline(edge - 0.5, color="white", lw=0.3, alpha=0.3)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"z = {bank.depths[d]:g} µm", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"sub-position {a},{b}", fontsize=8)
    fig.suptitle(
        f"Light-field PSF, nnum {nnum}, s {s}, K {k} px (intensity^{gamma:g})", fontsize=10
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_volume_and_lightfield(
    volume: np.ndarray,
    lightfield: np.ndarray,
    voxel_size: tuple[float, float],
    path: str | Path,
    title: str = "",
) -> Path:
    """Save maximum projections of a volume (xy, xz) beside its light field.

    Args:
        volume: (D, Yv, Xv).
        lightfield: (Y, X) or (1, Y, X).
        voxel_size: (lateral, axial) µm, for the aspect of the xz projection.
        path: output PNG path.
        title: figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lateral, axial = voxel_size
    fig = Figure(figsize=(12, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(volume.max(axis=0), cmap="magma")
    axes[0].set_title("volume, max over z (xy)")
    axes[1].imshow(volume.max(axis=1), cmap="magma", aspect=(axial or lateral) / lateral)
    axes[1].set_title("volume, max over y (xz)")
    axes[2].imshow(np.squeeze(lightfield), cmap="gray")
    axes[2].set_title("light field")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_lenslet_grid(white: np.ndarray, calibration_or_grid, path: str | Path) -> Path:
    """Save the fitted lenslet centres over a white frame: full view + zooms.

    Left: the whole frame with every fitted centre (and, for a
    :class:`~lfm_recon.calibration.Calibration`, the rectified crop outlined).
    Middle and right: about 6×6 lenslets at pixel scale around the frame
    centre and at the top-left corner, where each cross should sit in the
    middle of its spot (a wrong pitch or rotation shows up at the corner).

    Args:
        white: (Y, X) white (radiometry) frame, raw px; a (T, Y, X) stack is
            averaged.
        calibration_or_grid: a ``Calibration`` or a ``LensletGrid``.
        path: output PNG path.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .calibration import Calibration

    calibration = calibration_or_grid if isinstance(calibration_or_grid, Calibration) else None
    grid = calibration.grid if calibration else calibration_or_grid
    white = np.asarray(white, dtype=np.float64)
    if white.ndim == 3:
        white = white.mean(axis=0)
    ny, nx = white.shape
    ci, cj = grid.raw_to_lenslet([0, 0, ny - 1, ny - 1], [0, nx - 1, 0, nx - 1])
    i, j = np.meshgrid(
        np.arange(np.floor(ci.min()), np.ceil(ci.max()) + 1),
        np.arange(np.floor(cj.min()), np.ceil(cj.max()) + 1),
        indexing="ij",
    )
    cy, cx = grid.lenslet_to_raw(i.ravel(), j.ravel())
    inside = (cy > -0.5) & (cy < ny - 0.5) & (cx > -0.5) & (cx < nx - 0.5)
    cy, cx = cy[inside], cx[inside]
    lo, hi = np.percentile(white, [0.5, 99.5])
    half = 3 * max(grid.pitch_y, grid.pitch_x)
    views = [
        ("centre of the frame", ((ny - 1) / 2, (nx - 1) / 2)),
        ("top-left corner", (half - 0.5, half - 0.5)),
    ]

    fig = Figure(figsize=(16, 5.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.imshow(white, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    full = axes[0]
    full.plot(cx, cy, ".", color="tab:red", ms=min(3.0, 1200 / max(ny, nx)), mew=0)
    if calibration is not None:
        (i0, j0), (li, lj) = calibration.first_lenslet, calibration.lenslets
        ei = np.array([i0, i0, i0 + li, i0 + li, i0]) - 0.5
        ej = np.array([j0, j0 + lj, j0 + lj, j0, j0]) - 0.5
        ey, ex = grid.lenslet_to_raw(ei, ej)
        full.plot(ex, ey, "-", color="tab:cyan", lw=1, label="rectified crop")
        full.legend(loc="lower right", fontsize=8)
    full.set_title(f"white frame {ny}×{nx} px, {len(cy)} fitted centres", fontsize=10)
    for ax, (title, (y0, x0)) in zip(axes[1:], views, strict=True):
        near = (abs(cy - y0) < half + 1) & (abs(cx - x0) < half + 1)
        ax.plot(cx[near], cy[near], "+", color="tab:red", ms=12, mew=1.5)
        ax.set_xlim(x0 - half, x0 + half)
        ax.set_ylim(y0 + half, y0 - half)
        ax.set_title(f"{title} (pixel scale)", fontsize=10)
    fig.suptitle(grid.describe(), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
