"""Benchmark: the batch pipeline's throughput against the bare network.

Reference configuration (nnum 15, 11 depths, s 5, 21×21 lenslets), a
``--frames`` recording of simulated light fields as one multi-page TIFF.
Yardstick, timed in the same process on the same frames and device: the bare
network forward in a loop over in-memory batches of the same size (no file
reading, no QC, no writing). The pipeline's overhead is the ratio of the
two times (1.0 = free). The network is untrained (its speed does not depend
on its weights) with the architecture of the benchmarks' main run.

    python -m benchmarks.bench_batch [--frames 64] [--batch 8] [--device cpu|cuda]
        [--large] [--json out.json]

``--large`` uses the GPU configuration instead (40x/0.8 NA, nnum 19, s 3,
53 depths, 100×100 lenslets; CUDA only, the PSF is computed on the device).
Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from benchmarks.bench_operator import _sync
from lfm_recon import LightFieldOperator, Microscope, UnfoldedISTA, generate_psf
from lfm_recon.data import sample
from lfm_recon.modelfile import save_model
from lfm_recon.reconstruct import reconstruct_files

ARCHITECTURE = {"n_layers": 8, "prior": "cnn", "data_term": "poisson", "per_depth_step": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    folder = Path(tempfile.mkdtemp(prefix="bench_batch-"))
    if args.large:
        bank = generate_psf(
            Microscope.preset("water-40x-0.8na"), np.linspace(-26, 26, 53), 3, device=device
        )
        lenslets = 100
    else:
        bank, _ = sample()
        lenslets = 21
    op = LightFieldOperator(bank)
    net = UnfoldedISTA(op, config=None, **ARCHITECTURE)
    save_model(net, folder / "model.pt")
    # Frames: noisy light fields of random sparse volumes.
    rng = np.random.default_rng(0)
    shape = op.volume_shape((lenslets, lenslets))
    x = torch.from_numpy((rng.random((1, *shape)) > 0.999).astype(np.float32))
    y = op.simulate(x, photons=300, background=5, seed=0)[0, 0].numpy()
    frames = np.stack([np.roll(y, 7 * t, axis=1) for t in range(args.frames)]).astype(np.uint16)
    tifffile.imwrite(folder / "recording.tif", frames, photometric="minisblack")

    from lfm_recon.modelfile import load_model

    compute = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}[args.precision]
    bare = load_model(folder / "model.pt", device=device, compute=compute)
    data = torch.from_numpy(frames.astype(np.float32))[:, None]
    with torch.no_grad():
        bare(data[: args.batch].to(device), 5.0)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for s in range(0, len(data), args.batch):
            bare(data[s : s + args.batch].to(device), 5.0).cpu()
        _sync(device)
        t_bare = time.perf_counter() - start

    for target in ("warm.h5", "out.h5"):  # a warm-up (caches, autotuning), then the timed run
        start = time.perf_counter()
        report = reconstruct_files(
            [folder / "recording.tif"],
            folder / target,
            model=folder / "model.pt",
            background=5.0,
            batch=args.batch,
            device=args.device,
            precision=args.precision,
            progress=False,
        )
    t_pipe = time.perf_counter() - start
    result = {
        "config": "large" if args.large else "reference",
        "device": str(device),
        "precision": args.precision,
        "frames": args.frames,
        "batch": args.batch,
        "bare_s_per_volume": t_bare / args.frames,
        "pipeline_s_per_volume": t_pipe / args.frames,
        "pipeline_volumes_per_s": args.frames / t_pipe,
        "loop_volumes_per_s": report.volumes_per_second,
        "overhead_ratio": t_pipe / t_bare,
        "output_bytes": (folder / "out.h5").stat().st_size,
    }
    print(
        f"{result['config']}, {device} {args.precision}, {args.frames} frames, batch {args.batch}:"
        f" pipeline {result['pipeline_volumes_per_s']:.2f} volumes/s"
        f" ({result['pipeline_s_per_volume'] * 1e3:.1f} ms/volume, files included), bare network"
        f" {result['bare_s_per_volume'] * 1e3:.1f} ms/volume; ratio {result['overhead_ratio']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
