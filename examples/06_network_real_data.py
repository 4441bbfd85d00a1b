"""06 — The unfolded network on a real light field, next to Richardson–Lucy.

A network is trained for the sample's optics with the package's recipe
(README, "Training"): fresh simulated neurons every step (supervised loss)
and the sample's own frame (Poisson re-synthesis loss on held-out pixels,
unlabeled). Then both methods reconstruct the frame:

    calibrate, rectify, level c        as example 05 (GUVExperim1 by default)
    network            RL start stopped on held-out pixels, 8 layers
                       x_{k+1} = ReLU(x_k − μ_k EM-step(x_k) + P(x_k) − μ_k λ_k),
                       the held-out guard (blend toward its RL start, filter)
                       and the pass on every pixel (holdout_refit = "all")
    RL                 x ← F_z[x · Hᵀ(y / (H x + b)) / Hᵀ1] with n_iter = "auto"
                       (accelerated): each frame stops at its least held-out
                       Poisson deviance

There is no ground truth for a real frame, and the reprojection residual
‖H x + c − y‖/‖y‖ on the pixels a method fitted favours whichever fits noise
best. So the example also scores both methods on light neither has seen: a
fixed random eighth of the pixels (a pattern of its own, apart from the one
both methods hold out to make their choices) is hidden from both, and each
volume's Poisson deviance on those pixels, per pixel, says how well it
predicts light it was not fitted to. RL is given its best case there: its
iterate of least deviance on the scored pixels themselves, with or without
the filter (an oracle no real run has), next to its own automatic stop.
(The network's training saw the frame through its re-synthesis loss, the
scored pixels among the rest.)

What it shows, honestly: the network's prior comes from simulated neurons
(solid balls and thin processes), not membranes or eggs: the real frame is
data unlike its training data, the case the guard is for. The held-out
score says whether the network is at least as good a model of this frame's
light as RL; the projections show what each makes of the sample. The
README ("Real camera images") has both samples' figures.

    python examples/06_network_real_data.py [--samples PATH] [--sample NAME]
        [-o out/] [--quick] [--budget S] [--model run/model.pt] [--rl-filter antialias]

Sizes fit a 2-core CPU: 11 depths, s = 3; the GUV's PSF reaches 13
lenslets, so it trains on whole 28-lenslet frames; the sea urchin's reaches
4, so on 15-lenslet patches. ``--budget``: training seconds (15 minutes);
``--model``: reuse a model this example trained (skips training);
``--rl-filter antialias``: the RL start filtered (README, `rl_filter`).

PATH defaults to $LFM_SAMPLES, else ../shared/data/lf-samples next to the
repository. Training keys used (lfm_recon.training.TrainConfig and
lfm_recon.simulator.SimulationRanges): psf, output, seed, device,
steps_per_epoch, checkpoint_every; model.*; data.patch_lenslets,
unlabeled, frames_background, unlabeled_batch_size, simulate.batch_size,
lenslets, reuse, validation, density, soma_radius; loss.supervised,
resynthesis, resynthesis_kind, resynthesis_holdout; optim.steps, time_budget.
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

from lfm_recon import LightFieldOperator, Microscope, generate_psf
from lfm_recon.antialias import as_filter
from lfm_recon.background import estimate_background, split_level
from lfm_recon.calibration import CalibrationWarning, calibrate
from lfm_recon.errors import LFMError
from lfm_recon.figures import plot_mips_side_by_side
from lfm_recon.io import read_frames, write_volume_tiff
from lfm_recon.metrics import reprojection_residual
from lfm_recon.modelfile import load_model
from lfm_recon.reconstruct import Reconstructor
from lfm_recon.solvers import holdout_mask, poisson_deviance, rl_iterations
from lfm_recon.training import TrainConfig, train
from lfm_recon.unfolded import RECIPE

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
SCORED_SEED = 1  # the scored pixels' pattern; the methods' own held-out pattern has seed 0


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
    parser.add_argument("--model", help="a model.pt this example trained (skips training)")
    parser.add_argument(
        "--rl-filter",
        choices=("none", "antialias"),
        default="none",
        help="the network's RL start with the anti-aliasing filter (model.rl_filter; README)",
    )
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

    # 3. Train (the recipe), or reuse a model this example trained.
    if args.model:
        try:  # a model trained for other optics is refused: say so in one line
            net = load_model(args.model, bank=bank)
        except LFMError as err:
            sys.exit(f"06_network_real_data: {err}")
    else:
        path = train_recipe(bank, lifted, b, min(ny, nx), out, quick, args.budget, args.rl_filter)
        net = load_model(path, bank=bank)

    # 4. Both methods on the whole frame, as a user runs them.
    y = torch.from_numpy(lightfield)[None, None]
    methods = {
        "network": Reconstructor(net, "net", background=level),
        "RL auto": Reconstructor(op, "rl", background=level, n_iter="auto", accelerate=True),
    }
    methods["network"](y[..., : 2 * calibration.nnum, : 2 * calibration.nnum])  # warm-up
    rows = {}
    for label, method in methods.items():
        start = time.perf_counter()
        volume = method(y)[0].numpy()
        seconds = time.perf_counter() - start
        residual = reprojection_residual(op, volume[None], y, level)[0]
        info = {k: v[0] for k, v in method.frame_info.items() if v[0] is not None}
        rows[label] = (volume, seconds, residual)
        print(f"{label:8s} {seconds:8.2f} s   residual ‖Hx + c − y‖/‖y‖ = {residual:.4f}   {info}")
    (x_net, t_net, r_net), (x_rl, t_rl, r_rl) = rows.values()

    # 5. Light neither method has seen.
    score = held_out_score(net, op, lifted, b, max_iter=20 if quick else 300)
    (auto, n_auto), (best, n_best) = score["rl_auto"], score["rl_best"]
    print(
        f"held-out light ({score['pixels']} pixels hidden from both), Poisson deviance per"
        f" pixel: network {score['network']:.4f} (RL start {score['net_rl_iterations']} it.,"
        f" guard α {score['alpha']:.2f}, filter {score['antialiased']}); RL auto {auto:.4f}"
        f" ({n_auto} it.); RL's best case {best:.4f} ({n_best} it.). Network / RL auto"
        f" {score['network'] / auto:.3f}, / RL's best {score['network'] / best:.3f}"
        " (< 1: the network predicts the unseen light better)"
    )

    write_volume_tiff(out / f"{name}_network.tif", x_net, bank.voxel_size, bank.depths)
    write_volume_tiff(out / f"{name}_rl.tif", x_rl, bank.voxel_size, bank.depths)
    plot_mips_side_by_side(
        [x_rl, x_net],
        [
            f"{name}: RL auto (filter on), {t_rl:.1f} s, held-out dev. {auto:.3f}",
            f"{name}: network, {t_net:.1f} s, held-out dev. {score['network']:.3f}",
        ],
        bank.voxel_size,
        out / f"{name}_rl_vs_network.png",
        depths=bank.depths,
    )
    corr = np.corrcoef(x_net.ravel(), x_rl.ravel())[0, 1]
    print(
        f"network / RL: {t_net / t_rl:.2f} of RL's time; residual {r_net:.4f} vs {r_rl:.4f};"
        f" correlation of the two volumes {corr:.3f}. See {name}_rl_vs_network.png."
    )


def train_recipe(bank, lifted, b, lenslets, out, quick, budget, rl_filter="none") -> Path:
    """Train the README's recipe for this bank: simulated neurons (fresh
    draws) + the lifted frame as unlabeled data; returns the model path."""
    radius = int(bank.radii.max())
    # A patch explains itself only R lenslets in from its cut edges (README,
    # "Patches"): with a long reach (the GUV's R = 13) train on whole frames.
    patch = 2 * radius + 7
    whole = patch > lenslets
    side = lenslets if whole else patch
    if quick:
        side = min(side, lenslets)
    voxel = bank.voxel_size[0] * bank.voxels_per_lenslet  # µm per lenslet
    extent_mm3 = float(np.ptp(bank.depths)) * (side * voxel) ** 2 * 1e-9
    tifffile.imwrite(out / "frames.tif", lifted[None])
    model = dict(RECIPE, rl_filter=rl_filter)
    model |= {"n_layers": 2, "prior_channels": 4, "rl_start": 5} if quick else {}
    config = TrainConfig.from_dict(
        {
            "psf": str(out / "psf.h5"),
            "output": str(out / "run"),
            "seed": 0,
            "device": "cpu",
            "steps_per_epoch": 2 if quick else 25,
            "checkpoint_every": 2 if quick else 25,
            "model": model,
            "data": {
                "patch_lenslets": 0 if whole else side,
                "unlabeled": [str(out / "frames.tif")],
                "frames_background": b,
                "unlabeled_batch_size": 1 if whole else 4,
                "simulate": {
                    "batch_size": 2 if whole else 4,
                    "lenslets": side,
                    "reuse": 2,
                    "validation": 2 if quick else 8,
                    # 2 to 20 cells in each simulated volume, 3 to 10 voxels in radius:
                    # the simulator's defaults are for µm-sized voxels (neurons at 20-40x).
                    "density": [2 / extent_mm3, 20 / extent_mm3],
                    "soma_radius": [3 * bank.voxel_size[0], 10 * bank.voxel_size[0]],
                },
            },
            "loss": {
                "supervised": 1.0,
                "resynthesis": 1.0,
                "resynthesis_kind": "poisson",
                "resynthesis_holdout": 0.2,
            },
            "optim": {"steps": 4 if quick else 100_000, "time_budget": 0 if quick else budget},
        }
    )
    start = time.perf_counter()
    result = train(config, overwrite=True, progress=not quick)
    best = result.best
    print(
        f"trained {result.step} steps in {time.perf_counter() - start:.0f} s"
        f" ({'whole frames' if whole else f'{side}-lenslet patches'}, R = {radius});"
        f" best validation (simulated neurons) PSNR {best['psnr']:.2f} dB at step {best['step']}"
    )
    return result.model_path


@torch.no_grad()
def held_out_score(net, op, lifted, b, max_iter: int) -> dict:
    """Poisson deviance per pixel on a fixed random eighth of the frame's
    pixels hidden from both methods: the network (its guard's own held-out
    pixels taken from the rest); RL as step 4 runs it (accelerated, filter
    on, stopped at its least deviance on its own held-out pixels, likewise
    taken from the rest); and RL's best case: its least deviance on the
    scored pixels themselves, with or without the filter."""
    y = torch.from_numpy(lifted)[None, None].clamp_min(0)
    gen = torch.Generator().manual_seed(SCORED_SEED)
    scored = (torch.rand(y.shape, generator=gen) < 1 / 8).to(y.dtype)
    keep = 1 - scored
    own = holdout_mask(y.shape[-2:], dtype=y.dtype) * keep  # each method's own held-out pixels

    def deviance(x):
        mean = op.project(x) + b
        return float((scored * poisson_deviance(y, mean)).sum() / scored.sum())

    x_net = net(y, b, weight=keep)
    level = (y - b).clamp_min(0).sum() / op.backproject(torch.ones_like(y)).sum()
    x0 = level * torch.ones_like(x_net)
    aa = as_filter(op, "antialias")

    def rl(weight, held, filtered):
        x, n = rl_iterations(
            op.project, op.backproject, x0, y, b, max_iter,
            sensitivity=op.backproject(weight), accelerate=True, weight=weight, held=held,
            post=(lambda v: aa(v, inplace=True)) if filtered else None,
        )  # fmt: skip
        return deviance(x), int(n[0])

    best = min(rl(keep, scored, filtered) for filtered in (False, True))
    return {
        "pixels": int(scored.sum()),
        "network": deviance(x_net),
        "net_rl_iterations": int(net.rl_iterations[0]),
        "alpha": float(net.guard_blend[0]),
        "antialiased": bool(net.guard_antialiased[0]),
        "rl_auto": rl(keep - own, own, True),
        "rl_best": best,
    }


if __name__ == "__main__":
    main()
