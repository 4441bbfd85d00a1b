"""04 — Reconstruct a recording: a TIFF time series in, an HDF5 volume series out.

A recording here is T light-field frames of neurons whose brightness
fluctuates (calcium-like transients), written as one multi-page TIFF, as a
camera would save it. ``lfm-recon reconstruct`` (here
``lfm_recon.reconstruct.reconstruct_files``) streams the frames in batches
through the network (or a solver), writes (T, D, Yv, Xv) volumes with their
voxel size, depths and provenance, and a QC table that flags frames whose
reprojection residual ‖H x + b − y‖/‖y‖ is far from the rest. Killing the
run and re-running the same command continues where it stopped.

    python examples/04_reconstruct_recording.py [-o out/] [--quick] [--model model.pt]

Without ``--model`` it uses the model of example 03 if found in the output
folder (``run/model.pt``), else Richardson–Lucy only.
"""

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch

from lfm_recon import LightFieldOperator, Microscope, generate_psf
from lfm_recon.figures import plot_mips
from lfm_recon.phantoms import neurons
from lfm_recon.reconstruct import read_volumes, reconstruct_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    parser.add_argument("--model", default=None, help="trained model (example 03)")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else out / "run" / "model.pt"

    if model.is_file():
        from lfm_recon.modelfile import load_model

        bank = load_model(model).op.bank  # the PSF the network was trained with
    else:
        depths = np.linspace(-50, 50, 5 if args.quick else 11)
        bank = generate_psf(Microscope.preset("reference"), depths, 3 if args.quick else 5)
    bank.save(out / "psf.h5")
    op = LightFieldOperator(bank)
    lateral, _ = bank.voxel_size
    lenslets = 9 if args.quick else 21
    n_frames = 6 if args.quick else 40

    # One field of neurons; each soma's brightness follows its own transients.
    _, yv, xv = op.volume_shape((lenslets, lenslets))
    rng = np.random.default_rng(0)
    cells = [
        neurons(bank.depths, (yv, xv), lateral, n_neurons=1, seed=int(s)).volume
        for s in rng.integers(1 << 31, size=12)
    ]
    activity = 0.3 + rng.gamma(0.5, 1.0, size=(n_frames, len(cells)))
    volumes = np.einsum("tc,cdyx->tdyx", activity, np.stack(cells)).astype(np.float32)
    frames = op.simulate(torch.from_numpy(volumes), photons=300, background=5, seed=1)
    stack = frames[:, 0].numpy().astype(np.uint16)
    tifffile.imwrite(out / "recording.tif", stack, photometric="minisblack")  # one page per frame
    print(f"recording: {n_frames} frames of {frames.shape[-2]}×{frames.shape[-1]} px")

    runs = [("rl", dict(psf=out / "psf.h5", method="rl", n_iter=10 if args.quick else 100))]
    if model.is_file():
        runs.append(("net", dict(model=model, method="net")))
    for name, kwargs in runs:
        target = out / f"recording_{name}.h5"
        report = reconstruct_files(
            [out / "recording.tif"],
            target,
            background=5.0,
            batch=4,
            overwrite=True,
            progress=not args.quick,
            **kwargs,
        )
        x, info = read_volumes(target)
        print(
            f"{name}: {report.frames} volumes {x.shape[1:]} in {report.seconds:.1f} s"
            f" ({report.volumes_per_second:.2f} volumes/s); voxel (z, y, x)"
            f" {info['element_size_um']} µm; flagged frames: {report.flagged or 'none'}"
        )
        plot_mips(
            x.mean(axis=0),
            bank.voxel_size,
            out / f"recording_{name}_mean.png",
            title=f"{name}: mean over the recording",
            depths=bank.depths,
        )
    print(f"wrote {out}/recording.tif, recording_*.h5 and recording_*_mean.png")


if __name__ == "__main__":
    main()
