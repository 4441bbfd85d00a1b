"""06 — The unfolded network on a real light field, next to Richardson–Lucy.

The network (example 03) learns from simulated volumes with ground truth;
here it also sees the sample's own frame, through the re-synthesis loss
‖H x̂ + b − y‖²/‖y‖² on random patches of it: every reconstruction it makes
of the real frame must explain that frame. Then both methods reconstruct
the frame:

    calibrate, rectify, level c        as example 05 (GUVExperim1 by default)
    training data      simulated neurons for the calibration's optics (paired,
                       supervised loss) + the rectified real frame, lifted by
                       −c when c < 0 (unlabeled, re-synthesis loss)
    network            x_{k+1} = ReLU(x_k − μ_k EM-step(x_k) + P_k(x_k) − μ_k λ_k)
    RL                 x ← F_z[x · Hᵀ(y / (H x + b)) / Hᵀ1], the package default
                       (anti-aliasing filter F_z on)

and the example writes their xy/xz/yz maximum projections side by side, the
reprojection residual ‖H x + c − y‖/‖y‖ of each and their times.

What it shows, honestly: there is no ground truth for a real frame. The
residual says how well each volume explains the frame (RL minimises exactly
that misfit, so it is expected to win on it); the projections say what each
method makes of a vesicle. The network's prior comes from simulated neurons
(solid balls), not membranes, and it has seen one real frame: its output is
what a network trained this way gives, not what a network trained on
vesicle-like data would give. It is two orders of magnitude faster than RL
per frame, which is what would matter on a recording of many frames.

    python examples/06_network_real_data.py [--samples PATH] [-o out/] [--quick] [--budget S]

Sizes fit a 2-core CPU: 11 depths (2 µm apart for the GUV), s = 3, a
network of 6 layers trained on whole frames for ``--budget`` seconds
(15 minutes), RL at its default 100 iterations on the same PSF bank.

PATH defaults to $LFM_SAMPLES, else ../shared/data/lf-samples next to the
repository. Training data keys used (lfm_recon.training.TrainConfig):
psf, output, seed, device, steps_per_epoch, checkpoint_every; model.n_layers,
data_term, per_depth_step, prior; data.train, n_validation, unlabeled,
frames_background, patch_lenslets, batch_size, unlabeled_batch_size;
loss.supervised, resynthesis; optim.steps, time_budget.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

from lfm_recon import LightFieldOperator, Microscope, generate_psf, reconstruct
from lfm_recon.background import estimate_background, split_level
from lfm_recon.calibration import CalibrationWarning, calibrate
from lfm_recon.data import simulate_dataset
from lfm_recon.figures import plot_mips_side_by_side
from lfm_recon.io import read_frames, write_volume_tiff
from lfm_recon.metrics import reprojection_residual
from lfm_recon.modelfile import load_model
from lfm_recon.solvers import DEFAULT_ITERATIONS
from lfm_recon.training import TrainConfig, train

DEFAULT_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/lf-samples"
SAMPLES = {  # folder: (white, dark, light field, preset, nominal camera pixel µm, depths µm)
    "GUVExperim1": (
        "Radiometry_GUVExperim1.tif",
        "DarkFrame_GUVExperim1.tif",
        "Lightfield_GUVExperim1.tif",
        "guv-60x-1.2na",
        6.5,
        np.linspace(-10, 10, 11),
    ),
    "seaurchin": (
        "radiometry_frame.tif",
        "dark_frame.tif",
        "light_field.tif",
        "seaurchin-20x-0.5na",
        7.4,
        np.linspace(-50, 50, 11),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        default=os.environ.get("LFM_SAMPLES", str(DEFAULT_SAMPLES)),
        help="the lf-samples folder (default: $LFM_SAMPLES or ../shared/data/lf-samples)",
    )
    parser.add_argument("--sample", choices=sorted(SAMPLES), default="GUVExperim1")
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (CI)")
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds (CPU)")
    args = parser.parse_args()
    root, name = Path(args.samples), args.sample
    if not (root / name).is_dir():
        sys.exit(f"06_network_real_data: {name} not found under {root}; pass --samples PATH")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    white_file, dark_file, lf_file, preset, raw_pixel, depths = SAMPLES[name]

    # 1. Calibrate, rectify, the level c (as example 05).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # example 05 reports it
        calibration = calibrate(
            read_frames(root / name / white_file, "white frame"),
            read_frames(root / name / dark_file, "dark frame"),
            microscope=Microscope.preset(preset),
            raw_pixel_size=raw_pixel,
            lenslets=(12, 12) if quick else None,
        )
    lightfield = calibration.apply(read_frames(root / name / lf_file, "light field"))
    level = estimate_background(lightfield, calibration.nnum)
    lift, b = split_level(level)
    lifted = lightfield + np.float32(lift)
    ny, nx = calibration.lenslets
    print(f"{name}: {ny}×{nx} lenslets, level c = {level:.3g} counts/px")

    # 2. The PSF bank of the calibration's optics.
    depths = depths[::5] if quick else depths
    s = 1 if quick else 3
    start = time.perf_counter()
    bank = generate_psf(calibration.microscope, depths, s)
    bank.save(out / "psf.h5")
    op = LightFieldOperator(bank)
    print(f"PSF bank: {len(depths)} depths, s = {s}, in {time.perf_counter() - start:.1f} s")

    # 3. Training data: simulated neurons at the frame's brightness, and the frame.
    # Whole frames of the real frame's size: this PSF's kernels reach up to
    # R lenslets (13 for the GUV optics), so a patch cut from the frame would
    # need more than 2R lenslets to explain any of itself (issue 11).
    extent_mm3 = np.ptp(depths) * ny * nx * (bank.voxel_size[0] * s) ** 2 * 1e-9
    simulate_dataset(
        bank,
        6 if quick else 40,
        0,
        lenslets=(ny, nx),
        photons=float(np.percentile(lifted, 99.9)),
        background=b,
        density=6 / extent_mm3,  # about six somata per frame
        seed=1,
    ).save(out / "train.h5")
    tifffile.imwrite(out / "frames.tif", lifted[None])
    config = TrainConfig.from_dict(
        {
            "psf": str(out / "psf.h5"),
            "output": str(out / "run"),
            "seed": 0,
            "device": "cpu",
            "steps_per_epoch": 2 if quick else 50,
            "checkpoint_every": 2 if quick else 50,
            "model": {"n_layers": 3 if quick else 6, "data_term": "poisson"}
            | {"per_depth_step": True, "prior": "cnn"},
            "data": {
                "train": str(out / "train.h5"),
                "n_validation": 2 if quick else 8,
                "unlabeled": [str(out / "frames.tif")],
                "frames_background": b,
                "patch_lenslets": 0,
                "batch_size": 2,
                "unlabeled_batch_size": 2,
            },
            "loss": {"supervised": 1.0, "resynthesis": 0.5},
            "optim": {"steps": 4 if quick else 100_000, "time_budget": 0 if quick else args.budget},
        }
    )
    start = time.perf_counter()
    result = train(config, overwrite=True, progress=not quick)
    best = result.best
    print(
        f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; best validation"
        f" (simulated neurons) PSNR {best['psnr']:.2f} dB at step {best['step']}"
    )

    # 4. Both methods on the real frame.
    net = load_model(result.model_path, bank=bank)
    y = torch.from_numpy(lightfield)[None, None]
    n_iter = 5 if quick else DEFAULT_ITERATIONS["rl"]
    rows = {}
    reconstruct(lightfield[: 2 * calibration.nnum, : 2 * calibration.nnum], net, "net")  # warm-up
    for label, run in (
        ("network", lambda: reconstruct(lightfield, net, "net", background=level)),
        (
            f"RL {n_iter} it.",
            lambda: reconstruct(lightfield, op, "rl", background=level, n_iter=n_iter),
        ),
    ):
        start = time.perf_counter()
        volume = run()
        seconds = time.perf_counter() - start
        residual = reprojection_residual(op, volume[None], y, level)[0]
        rows[label] = (volume, seconds, residual)
        print(f"{label:12s} {seconds:8.2f} s   residual ‖Hx + c − y‖/‖y‖ = {residual:.4f}")
    (x_net, t_net, r_net), (x_rl, t_rl, r_rl) = rows.values()
    write_volume_tiff(out / f"{name}_network.tif", x_net, bank.voxel_size, bank.depths)
    write_volume_tiff(out / f"{name}_rl.tif", x_rl, bank.voxel_size, bank.depths)
    plot_mips_side_by_side(
        [x_rl, x_net],
        [
            f"{name}: RL {n_iter} it. (filter on), {t_rl:.1f} s, residual {r_rl:.3f}",
            f"{name}: network, {t_net:.2f} s, residual {r_net:.3f}",
        ],
        bank.voxel_size,
        out / f"{name}_rl_vs_network.png",
        depths=bank.depths,
    )
    corr = np.corrcoef(x_net.ravel(), x_rl.ravel())[0, 1]
    print(
        f"network / RL: {t_net / t_rl:.3f} of RL's time; residual {r_net:.4f} vs {r_rl:.4f};"
        f" correlation of the two volumes {corr:.3f}. No ground truth: judge by the residual"
        f" and {name}_rl_vs_network.png."
    )


if __name__ == "__main__":
    main()
