"""Figures for a quick look: PSF banks, volumes, lenslet grids (PNG via
matplotlib's Agg canvas)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import LFMError
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


_MIN_Z_SHARE = 0.2  # the z panels are stretched to at least this share of the lateral extent


def plot_mips(
    volume: np.ndarray,
    voxel_size: tuple[float, float],
    path: str | Path,
    title: str = "",
    depths=None,
) -> Path:
    """Save orthogonal maximum-intensity projections of a volume.

    Layout: xy (max over z) large at the top left, xz (max over y) below it
    with z growing downwards, yz (max over x) at its right with z growing to
    the right; the panels share their lateral axes. Axes are in µm and the
    panels keep the physical aspect, except that a thin z range is stretched
    to a fifth of the lateral extent (a note then says by how much).
    One intensity scale for all three (0 to the 99.9th percentile of the xy
    projection, so a few hot voxels do not darken the rest).

    Args:
        volume: (D, Yv, Xv) volume, any non-negative intensity.
        voxel_size: (lateral, axial) µm; axial is the depth step (0 for D = 1).
        path: output PNG path.
        title: figure title.
        depths: optional (D,) µm of the planes (evenly spaced, e.g. a PSF
            bank's ``depths``); default 0, axial, 2·axial, …

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise LFMError(f"volume must be (D, Yv, Xv), got shape {volume.shape}")
    lateral, axial = (float(v) for v in voxel_size)
    if not (lateral > 0 and axial >= 0 and math.isfinite(lateral + axial)):
        raise LFMError(f"voxel_size must be (lateral > 0, axial ≥ 0) µm, got {voxel_size}")
    d, yv, xv = volume.shape
    step = axial if axial > 0 else lateral  # one plane: draw it one voxel thick
    z = np.arange(d) * step if depths is None else np.asarray(depths, dtype=np.float64)
    if z.shape != (d,):
        raise LFMError(f"depths must have shape ({d},), got {z.shape}")
    z_lo, z_hi = z[0] - step / 2, z[-1] + step / 2
    x_ext, y_ext, z_ext = xv * lateral, yv * lateral, z_hi - z_lo
    stretch = max(1.0, _MIN_Z_SHARE * max(x_ext, y_ext) / z_ext)
    z_show = z_ext * stretch

    xy, xz, yz = volume.max(axis=0), volume.max(axis=1), volume.max(axis=2).T
    vmax = float(np.percentile(xy, 99.9)) or float(xy.max()) or 1.0
    style = dict(cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="auto")

    # Panel boxes in inches, proportional to µm, so the aspect is physical.
    scale = 6.0 / max(x_ext + z_show, y_ext + z_show)
    left, bottom, gap, right, top = 0.8, 0.6, 0.12, 0.25, 0.55 if title else 0.25
    w_xy, h_xy, zs = x_ext * scale, y_ext * scale, z_show * scale
    width = left + w_xy + gap + zs + right
    height = bottom + zs + gap + h_xy + top
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    upper = bottom + zs + gap
    ax_xy = fig.add_axes((left / width, upper / height, w_xy / width, h_xy / height))
    ax_xz = fig.add_axes((left / width, bottom / height, w_xy / width, zs / height))
    ax_yz = fig.add_axes(((left + w_xy + gap) / width, upper / height, zs / width, h_xy / height))
    ax_xy.imshow(xy, extent=(0, x_ext, y_ext, 0), **style)
    ax_xz.imshow(xz, extent=(0, x_ext, z_hi, z_lo), **style)
    ax_yz.imshow(yz, extent=(z_lo, z_hi, y_ext, 0), **style)
    ax_xy.set_ylabel("y (µm)")
    ax_xy.tick_params(labelbottom=False)
    ax_xz.set_xlabel("x (µm)")
    ax_xz.set_ylabel("z (µm)")
    ax_yz.set_xlabel("z (µm)")
    ax_yz.tick_params(labelleft=False)
    if stretch > 1:  # said once, in the empty corner below yz
        corner = ((left + w_xy + gap) / width, (bottom + 0.3 * zs) / height)
        fig.text(*corner, f"z drawn ×{stretch:.2g}", fontsize=8, va="center")
    for ax, name in ((ax_xy, "xy"), (ax_xz, "xz"), (ax_yz, "yz")):
        ax.text(0.02, 0.02, name, color="white", transform=ax.transAxes, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_mips_side_by_side(
    volumes,
    titles,
    voxel_size: tuple[float, float],
    path: str | Path,
    depths=None,
) -> Path:
    """Save the :func:`plot_mips` figures of several volumes next to each other.

    Each panel keeps :func:`plot_mips`' layout and its own intensity scale
    (0 to the 99.9th percentile of its xy projection), so methods whose
    volumes differ in overall scale are shown alike.

    Args:
        volumes: sequence of (D, Yv, Xv) volumes on one grid.
        titles: one title per volume (e.g. the method and its time).
        voxel_size: (lateral, axial) µm.
        path: output PNG path.
        depths: optional (D,) µm of the planes.

    Returns:
        The path written.
    """
    import tempfile

    from PIL import Image

    volumes, titles = list(volumes), list(titles)
    if not volumes or len(volumes) != len(titles):
        raise LFMError(f"give one title per volume: {len(volumes)} volumes, {len(titles)} titles")
    panels = []
    with tempfile.TemporaryDirectory() as folder:
        for i, (volume, title) in enumerate(zip(volumes, titles, strict=True)):
            panel = plot_mips(volume, voxel_size, Path(folder) / f"{i}.png", title, depths)
            with Image.open(panel) as image:
                panels.append(np.asarray(image.convert("RGB")))
    height = max(p.shape[0] for p in panels)
    padded = [
        np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels
    ]
    path = Path(path)
    Image.fromarray(np.concatenate(padded, axis=1)).save(path)
    return path
