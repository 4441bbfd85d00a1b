"""02 — Simulate light fields of neuron-like volumes with the forward operator.

The operator H maps a volume x (D, Yv, Xv) to the light field it makes,

    y = H x = Σ_d Σ_voxels x[d, p, q] · kernel[d, p % s, q % s] placed at lenslet (p//s, q//s),

run as a polyphase convolution. The camera then counts photons:

    y_camera = Poisson(g · H x + background) + N(0, read_noise²),

g chosen so the brightest pixel receives ``photons`` photons.

    python examples/02_simulate.py [-o out/] [--quick]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lfm_recon import LightFieldOperator, Microscope, generate_psf
from lfm_recon.data import simulate_dataset
from lfm_recon.figures import plot_volume_and_lightfield
from lfm_recon.phantoms import neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    depths = np.linspace(-50, 50, 5 if args.quick else 11)
    s = 3 if args.quick else 5
    lenslets = 9 if args.quick else 21
    bank = generate_psf(Microscope.preset("reference"), depths, s)
    op = LightFieldOperator(bank)
    lateral, axial = bank.voxel_size
    print(
        f"operator: {op.n_depths} depths, s = {s}, ‖H‖ = {op.norm():.4f},"
        f" weights {op.weight_bytes / 2**20:.1f} MiB"
    )

    # One phantom, its clean and noisy light field.
    _, yv, xv = op.volume_shape((lenslets, lenslets))
    phantom = neurons(depths, (yv, xv), lateral, n_neurons=12, processes=1, neuropil=0.03)
    x = torch.from_numpy(phantom.volume)[None]
    start = time.perf_counter()
    clean = op(x)
    print(f"H x: {tuple(clean.shape)} in {1e3 * (time.perf_counter() - start):.1f} ms")
    noisy = op.simulate(x, photons=300, background=5, read_noise=1.5, seed=0)
    plot_volume_and_lightfield(
        phantom.volume,
        noisy[0].numpy(),
        (lateral, axial),
        out / "phantom_lightfield.png",
        title="300 photons peak",
    )

    # A small paired + unlabeled data set, as `lfm-recon simulate` writes it.
    data = simulate_dataset(
        bank,
        2 if args.quick else 8,
        2 if args.quick else 8,
        lenslets=(lenslets, lenslets),
        photons=300,
        background=5,
        seed=1,  # a fixed seed: the same data set every run (the CLI draws a fresh one)
    )
    data.save(out / "data.h5")
    print(f"wrote {out / 'phantom_lightfield.png'} and {out / 'data.h5'}")


if __name__ == "__main__":
    main()
