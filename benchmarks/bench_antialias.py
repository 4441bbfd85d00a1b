"""The anti-aliasing filter: native-plane artifact, PSNR per depth, and cost.

Quality, on the embedded sample (reference optics, 11 depths −50…50 µm,
s = 5, 21×21 lenslets, simulated neurons, 300 photons peak, background 5,
Poisson noise), ``--frames`` volumes, Richardson–Lucy at each of
``--iterations``:

    none        plain RL
    lanczos4    RL with the filter (lfm_recon.antialias: zero spacing W_z = s·w_z/p),
                Lanczos window of 4 lobes
    lanczos2    the same with 2 lobes (softer transition, smaller side lobes)
    nyquist     4 lobes, twice as wide (zero spacing 2·W_z: cut-off at the
                lenslet Nyquist frequency at z = 0)

The package's ``filter="antialias"`` is one of the first two
(``lfm_recon.antialias.LANCZOS_LOBES``).

Figures: PSNR (least-squares scaled, peak = truth max; mean over volumes),
per-depth PSNR (the volume's scale and peak, so depths compare), the
lenslet-grid index (metrics.lenslet_grid_index) of the plane at z = 0 over
the truth's, and the power at the exact lenslet harmonics of that plane
over the truth's (the figure the issue suggested; it misses the blocky
pattern, see the metric's docstring).

Cost: the time of one RL iteration (``RichardsonLucy.step``) with and
without the filter, in the same process, steps interleaved, batch 1 and 8;
and of the filter alone. The minimum over the repeats, not the median: on a
shared machine the minimum is the run least disturbed by other processes,
and interleaving keeps the comparison fair.

    python -m benchmarks.bench_antialias [--frames 8] [--iterations 50,100,200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lfm_recon import LightFieldOperator
from lfm_recon.antialias import AntiAliasFilter, filter_widths
from lfm_recon.data import sample
from lfm_recon.metrics import lenslet_grid_index, psnr, scale_to
from lfm_recon.solvers import RichardsonLucy


def per_depth_psnr(x: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D,) PSNR per plane, dB, mean over volumes: x scaled to gt by the
    volume's least-squares factor, peak = the volume's truth maximum."""
    xs = scale_to(x, gt)
    mse = ((xs - gt) ** 2).mean(axis=(2, 3))
    peak = gt.max(axis=(1, 2, 3))[:, None]
    return (10 * np.log10(peak**2 / mse)).mean(axis=0)


def harmonic_power(plane: np.ndarray, n_lenslets: tuple[int, int]) -> np.ndarray:
    """(B,) power of (B, Yv, Xv) planes at the lenslet harmonics (DFT bins at
    multiples of the lenslet counts), DC excluded."""
    spectrum = np.abs(np.fft.fft2(plane)) ** 2
    mask = np.zeros(plane.shape[-2:], bool)
    mask[:: n_lenslets[0], :: n_lenslets[1]] = True
    mask[0, 0] = False
    return spectrum[:, mask].sum(axis=1)


def run_rl(op, y, n_iter, filt, background):
    """Volumes after each count in n_iter (sorted), one run."""
    solver = RichardsonLucy(op, y, background, filter=filt)
    out, done = {}, 0
    with torch.no_grad():
        for n in sorted(n_iter):
            for _ in range(n - done):
                solver.step()
            done = n
            out[n] = solver.x.cpu().numpy().copy()
    return out


def quality(op, data, frames: int, iterations: list[int]) -> dict:
    bank = op.bank
    s = bank.voxels_per_lenslet
    gt = data.volumes[:frames]
    y = torch.from_numpy(data.lightfields[:frames])
    background = float(data.simulation["background"])
    widths = filter_widths(bank.microscope, bank.depths, s)
    variants = {
        "none": None,
        "lanczos4": AntiAliasFilter(widths, 4),
        "lanczos2": AntiAliasFilter(widths, 2),
        "nyquist": AntiAliasFilter(2 * widths, 4),
    }
    z0 = int(np.argmin(np.abs(bank.depths)))
    lenslets = (gt.shape[2] // s, gt.shape[3] // s)
    truth_grid = lenslet_grid_index(gt[:, z0][:, None], s)[:, 0]
    truth_harm = harmonic_power(gt[:, z0], lenslets)
    rows = []
    for name, filt in variants.items():
        start = time.perf_counter()
        volumes = run_rl(op, y, iterations, filt, background)
        seconds = time.perf_counter() - start
        for n, x in volumes.items():
            xs = scale_to(x, gt)
            grid = lenslet_grid_index(xs[:, z0][:, None], s)[:, 0]
            rows.append(
                {
                    "filter": name,
                    "iterations": n,
                    "psnr": float(np.mean(psnr(x, gt))),
                    "psnr_per_depth": per_depth_psnr(x, gt).round(3).tolist(),
                    "grid_index_ratio": float(np.mean(grid) / np.mean(truth_grid)),
                    "harmonic_power_ratio": float(
                        harmonic_power(xs[:, z0], lenslets).sum() / truth_harm.sum()
                    ),
                }
            )
        print(f"  {name}: {seconds:.0f} s", flush=True)
    return {
        "depths": bank.depths.tolist(),
        "widths_voxels": widths.round(4).tolist(),
        "z0": float(bank.depths[z0]),
        "rows": rows,
    }


def timing(op, data, batches=(1, 8), repeats=30) -> list[dict]:
    bank = op.bank
    filt = AntiAliasFilter.for_operator(op)
    out = []
    for b in batches:
        y = torch.from_numpy(np.repeat(data.lightfields[:1], b, axis=0))
        solvers = {
            "none": RichardsonLucy(op, y, 5.0),
            "antialias": RichardsonLucy(op, y, 5.0, filter=filt),
        }
        times = {k: [] for k in (*solvers, "filter alone")}
        with torch.no_grad():
            for s in solvers.values():  # warm-up (and the filter's matrices)
                s.step()
            for _ in range(repeats):  # interleaved, so load changes hit both alike
                for name, s in solvers.items():
                    t0 = time.perf_counter()
                    s.step()
                    times[name].append(time.perf_counter() - t0)
                x = solvers["none"].x
                t0 = time.perf_counter()
                filt(x)
                times["filter alone"].append(time.perf_counter() - t0)
        med = {k: float(np.min(v)) / b for k, v in times.items()}
        out.append(
            {
                "batch": b,
                "ms_per_iteration_per_volume": {k: 1e3 * v for k, v in med.items()},
                "ratio": med["antialias"] / med["none"],
                "filter_share": med["filter alone"] / med["none"],
                "filtered_depths": len(filt.active),
                "depths": bank.n_depths,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--iterations", default="50,100,200")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bank, data = sample()
    op = LightFieldOperator(bank)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.no_quality:
        iterations = [int(v) for v in args.iterations.split(",")]
        q = quality(op, data, args.frames, iterations)
        result["quality"] = q
        print(f"widths (voxels) per depth {q['depths']}: {q['widths_voxels']}")
        print(
            f"{'filter':10s} {'iter':>5s} {'PSNR dB':>8s} {'grid z0':>8s} {'harm z0':>8s}"
            "  PSNR per depth"
        )
        for r in q["rows"]:
            print(
                f"{r['filter']:10s} {r['iterations']:5d} {r['psnr']:8.2f}"
                f" {r['grid_index_ratio']:8.2f} {r['harmonic_power_ratio']:8.2f} "
                + " ".join(f"{v:5.1f}" for v in r["psnr_per_depth"])
            )
    if not args.no_timing:
        result["timing"] = timing(op, data)
        for t in result["timing"]:
            ms = t["ms_per_iteration_per_volume"]
            print(
                f"batch {t['batch']}: RL {ms['none']:.2f} ms, RL + filter {ms['antialias']:.2f} ms"
                f" per iteration per volume (×{t['ratio']:.3f}); filter alone"
                f" {ms['filter alone']:.3f} ms ({100 * t['filter_share']:.1f} % of RL's),"
                f" {t['filtered_depths']} of {t['depths']} depths filtered"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
