"""05 — Calibrate, rectify and reconstruct real light-field images.

A raw camera frame r (Y, X) sees a non-integer number of pixels per lenslet on
a slightly rotated grid. Three steps take it to a volume:

    grid      centre(i, j) = o + i·a + j·b                  fitted to the white frame w
    rectify   y[r, c] = |a × b|/nnum² · (r − dark)(centre(i0 − ½ + (r+½)/nnum, …)) / flat
    level     c = mean of the dim lenslets' dark corners     lfm_recon.background
    solve     x ← F_z[x · Hᵀ(y' / (H x + b)) / Hᵀ1]          Richardson–Lucy (Poisson)

a, b the fitted lattice vectors (raw px per lenslet), flat the per-lenslet
transmission of the white frame, H the light-field operator of a PSF bank
computed from the calibration's rectified optics (pixel mla_pitch / nnum).
The constant level c left after dark subtraction is estimated from the frame
itself: c ≥ 0 is the background b; c < 0 (GUVExperim1: its dark frame reads
~107 counts, its light field's floor ~54) lifts the frame, y' = y − c, b = 0.
F_z is the depth-adaptive anti-aliasing filter (lfm_recon.antialias; Stefanoiu
et al. 2019), a low-pass per depth that removes the lenslet-grid artifact
near the native plane z = 0; F_z = identity is plain RL. The effective raw
pixel is mla_pitch / |a|: the camera pixel as the MLA sees it, through any relay.

For GUVExperim1 (a vesicle, 60×/1.2 NA) and seaurchin (an egg, 20×/0.5 NA) of
the lf-samples folder: calibrate from the radiometry and dark frames, save the
grid overlay, rectify the light field, estimate c, reconstruct with plain RL
and with the filter, save xy/xz/yz maximum projections of both side by side
(PNG) and the filtered volume (ImageJ TIFF). What to look at: the xz and yz
projections around z = 0, where plain RL piles light into a bright band of
lenslet-sized blocks and the filtered one does not.

    python examples/05_real_data.py [--samples PATH] [-o out/] [--quick]

PATH defaults to $LFM_SAMPLES, else ../shared/data/lf-samples next to the
repository.
"""

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lfm_recon import LightFieldOperator, Microscope, generate_psf, reconstruct
from lfm_recon.background import estimate_background
from lfm_recon.calibration import CalibrationWarning, calibrate
from lfm_recon.figures import plot_lenslet_grid, plot_mips_side_by_side
from lfm_recon.io import read_frames, write_volume_tiff
from lfm_recon.metrics import lenslet_grid_index, reprojection_residual

DEFAULT_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/lf-samples"


@dataclass(frozen=True)
class Sample:
    """One folder of lf-samples and how to reconstruct it."""

    folder: str
    white: str
    dark: str
    lightfield: str
    preset: str
    raw_pixel: float  # nominal camera pixel, µm (metadata.txt)
    depths: np.ndarray  # µm
    voxels_per_lenslet: int
    quick_depths: np.ndarray
    quick_lenslets: tuple[int, int]  # central crop in --quick mode


SAMPLES = {
    "GUVExperim1": Sample(
        "GUVExperim1",
        "Radiometry_GUVExperim1.tif",
        "DarkFrame_GUVExperim1.tif",
        "Lightfield_GUVExperim1.tif",
        "guv-60x-1.2na",
        6.5,
        depths=np.linspace(-10, 10, 21),  # 1 µm steps, about the axial resolution at 1.2 NA
        voxels_per_lenslet=3,
        quick_depths=np.array([-4.0, 0.0, 4.0]),
        quick_lenslets=(16, 16),  # the vesicle is ~17 lenslets across
    ),
    "seaurchin": Sample(
        "seaurchin",
        "radiometry_frame.tif",
        "dark_frame.tif",
        "light_field.tif",
        "seaurchin-20x-0.5na",
        7.4,
        depths=np.linspace(-50, 50, 21),
        voxels_per_lenslet=3,
        quick_depths=np.array([-40.0, 0.0, 40.0]),
        quick_lenslets=(32, 32),  # the egg in the middle is ~24 lenslets across
    ),
}


def run(sample: Sample, root: Path, out: Path, quick: bool, n_iter: int) -> None:
    name = sample.folder
    print(f"\n=== {name} ({sample.preset}, nominal raw pixel {sample.raw_pixel:g} µm)")
    white = read_frames(root / name / sample.white, "white frame")
    dark = read_frames(root / name / sample.dark, "dark frame")
    raw = read_frames(root / name / sample.lightfield, "light-field")  # one frame (Y, X)

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        calibration = calibrate(
            white,
            dark,
            microscope=Microscope.preset(sample.preset),
            raw_pixel_size=sample.raw_pixel,
            lenslets=sample.quick_lenslets if quick else None,
        )
    t_cal = time.perf_counter() - start
    for w in caught:
        print(f"warning: {w.message}")
    print(calibration.summary())
    calibration.save(out / f"{name}_calibration.h5")
    plot_lenslet_grid(white, calibration, out / f"{name}_grid.png")

    start = time.perf_counter()
    lightfield = calibration.apply(raw)
    t_rect = time.perf_counter() - start
    level = estimate_background(lightfield, calibration.nnum)

    depths = sample.quick_depths if quick else sample.depths
    s = 2 if quick else sample.voxels_per_lenslet
    start = time.perf_counter()
    bank = generate_psf(calibration.microscope, depths, s)
    t_psf = time.perf_counter() - start
    op = LightFieldOperator(bank)
    y = torch.from_numpy(lightfield)[None, None]
    volumes, labels = {}, {"none": "plain RL", "antialias": "RL + anti-aliasing filter"}
    z0 = int(np.argmin(np.abs(bank.depths)))
    ny, nx = calibration.lenslets
    print(
        f"level c = {level:.3g} counts/px (estimated from the frame's dark lenslet corners);"
        f" {ny}×{nx} lenslets, {len(depths)} depths {depths[0]:g}…{depths[-1]:g} µm, s = {s}"
    )
    for kind in labels:
        start = time.perf_counter()
        # background=level: c < 0 lifts the frame, c ≥ 0 is the model's background.
        volume = reconstruct(lightfield, op, "rl", background=level, n_iter=n_iter, filter=kind)
        seconds = time.perf_counter() - start
        residual = reprojection_residual(op, volume[None], y, level)[0]
        grid = lenslet_grid_index(volume, s)[z0]
        share = volume[z0].sum() / volume.sum()
        volumes[kind] = volume
        labels[kind] += f", {n_iter} it., {seconds:.1f} s; residual {residual:.3f}"
        print(
            f"{labels[kind].split(',')[0]:26s} {seconds:6.1f} s ({seconds / n_iter:.2f} s/it.);"
            f" reprojection residual ‖Hx + c − y‖/‖y‖ = {residual:.4f}; at z = 0: lenslet-grid"
            f" index {grid:.2f}, {share:.1%} of the light"
        )

    lateral, axial = bank.voxel_size
    write_volume_tiff(
        out / f"{name}_volume.tif", volumes["antialias"], bank.voxel_size, bank.depths
    )
    plot_mips_side_by_side(
        volumes.values(),
        [f"{sample.folder}: {label}" for label in labels.values()],
        bank.voxel_size,
        out / f"{sample.folder}_mips.png",
        depths=bank.depths,
    )
    print(
        f"volume {volumes['antialias'].shape} (D, Y, X), voxels {lateral:.3g}×{lateral:.3g}×"
        f"{axial:.3g} µm; time: calibrate {t_cal:.2f} s, rectify {t_rect:.2f} s, PSF bank"
        f" {t_psf:.1f} s"
    )
    print(
        f"wrote {sample.folder}_calibration.h5, {sample.folder}_grid.png,"
        f" {sample.folder}_mips.png (plain RL | filtered), {sample.folder}_volume.tif (filtered)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        default=os.environ.get("LFM_SAMPLES", str(DEFAULT_SAMPLES)),
        help="the lf-samples folder (default: $LFM_SAMPLES or ../shared/data/lf-samples)",
    )
    parser.add_argument(
        "--sample", nargs="+", choices=sorted(SAMPLES), default=sorted(SAMPLES), help="which"
    )
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="central crops, 3 depths, s = 2, 5 iterations"
    )
    parser.add_argument("--iterations", type=int, default=None, help="RL iterations (30)")
    args = parser.parse_args()

    root = Path(args.samples)
    missing = [name for name in args.sample if not (root / name).is_dir()]
    if missing:
        sys.exit(
            f"05_real_data: {', '.join(missing)} not found under {root}; pass --samples PATH"
            " (or set LFM_SAMPLES) to the lf-samples folder"
        )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    n_iter = args.iterations or (5 if args.quick else 30)
    start = time.perf_counter()
    for name in args.sample:
        run(SAMPLES[name], root, out, args.quick, n_iter)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
