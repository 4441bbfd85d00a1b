"""03 — Train the unfolded network, semi-supervised, from one config file.

The network unrolls ISTA with learned step sizes μ_k and thresholds λ_k
(and, here, a small learned CNN correction per layer):

    x_{k+1} = ReLU(x_k − μ_k Hᵀ(H x_k + b − y)/(H x_k + b + κ) + P_k(·) − μ_k λ_k),

with H the fixed light-field operator. It learns from a few volumes with
ground truth (supervised loss) and from light fields without it (the
re-synthesis loss ‖H x̂ + b − y‖²/‖y‖²: every reconstruction must explain
its own light field); an adversarial loss can be switched on too.

Steps: PSF bank → simulated data (labelled + unlabeled + validation) →
config.toml → ``lfm-recon train config.toml`` (here through the Python API)
→ model.pt, which ``lfm-recon reconstruct --model model.pt`` uses.

    python examples/03_train.py [-o out/] [--quick] [--budget SECONDS]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from lfm_recon import Microscope, generate_psf
from lfm_recon.data import simulate_dataset
from lfm_recon.training import TrainConfig, train

CONFIG = """\
psf = "psf.h5"
output = "run"
seed = 0
steps_per_epoch = {epoch}
checkpoint_every = {epoch}

[model]
n_layers = {layers}
data_term = "poisson"      # variance-weighted gradient (photon noise)
per_depth_step = true
prior = "cnn"              # "none" is DESIGN's pure μ/λ network

[data]
train = "train.h5"
validation = "validation.h5"
patch_lenslets = {patch}
batch_size = 4
unlabeled_batch_size = 4

[loss]
supervised = 1.0
resynthesis = 0.1
adversarial = 0.0          # e.g. 0.01 to add the volume discriminator

[optim]
steps = {steps}
time_budget = {budget}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    quick = args.quick
    depths = np.linspace(-50, 50, 5 if quick else 11)
    bank = generate_psf(Microscope.preset("reference"), depths, 3 if quick else 5)
    bank.save(out / "psf.h5")
    lenslets = (9, 9) if quick else (21, 21)
    camera = dict(lenslets=lenslets, photons=300.0, background=5.0)
    # A few labelled volumes, more unlabeled light fields, and a validation set.
    simulate_dataset(bank, 4, 4 if quick else 32, seed=1, **camera).save(out / "train.h5")
    simulate_dataset(bank, 2 if quick else 8, 0, seed=2, **camera).save(out / "validation.h5")

    text = CONFIG.format(
        epoch=5 if quick else 50,
        layers=3 if quick else 8,
        patch=0 if quick else 11,  # quick: whole 9×9-lenslet frames
        steps=10 if quick else 100_000,
        budget=0 if quick else args.budget,
    )
    (out / "config.toml").write_text(text)
    config = TrainConfig.from_file(out / "config.toml")
    start = time.perf_counter()
    result = train(config, overwrite=True, progress=not quick)
    best = result.best
    print(
        f"{result.step} steps in {time.perf_counter() - start:.0f} s; best validation PSNR"
        f" {best['psnr']:.2f} dB, SSIM {best['ssim']:.3f}, F1 {best['f1']:.3f} at step"
        f" {best['step']}"
    )
    print(f"model: {result.model_path}  (lfm-recon reconstruct FRAMES --model {result.model_path})")


if __name__ == "__main__":
    main()
