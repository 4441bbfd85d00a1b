"""Benchmark: building the light-field PSF bank.

Reference optics (20x/0.5 NA water, 150 µm / f 3000 µm MLA, 10 µm pixels,
nnum 15), 11 depths −50…50 µm, s = 5 and s = 15. For each:

* wall time of ``generate_psf`` (median of ``--repeat`` runs after a warm-up);
* the FFT floor measured in the same process: the same number of complex64
  fft2 + ifft2 pairs on the same grid sizes, i.e. the propagation work that
  cannot be avoided (ratio = time / FFT floor);
* the published figure of a public Python tool on a 2-core CPU (23–26 s at
  s = 5, 192 s at s = 15, both at sensor-pixel sampling, i.e. unconverged);
* peak resident memory of a fresh process building that bank;
* accuracy: how far sensor-pixel sampling (oversampling 1, what such tools
  do) is from the converged kernels, as the worst peak ratio and L1.

    python benchmarks/bench_psf.py [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from lfm_recon import Microscope, generate_psf
from lfm_recon.psf.lightfield import _fast_size

PUBLISHED_S = {5: 24.5, 15: 192.0}  # midpoint of 23–26 s; 192 s


def _build(s: int, device: str):
    m = Microscope.preset("reference")
    return generate_psf(m, np.linspace(-50, 50, 11), s, device=device)


def _fft_floor(bank, device: str, repeat: int) -> float:
    """Seconds for the fft2+ifft2 pairs the bank needed (one per computed
    sub-position and depth, on each depth's grid)."""
    m, s = bank.microscope, bank.voxels_per_lenslet
    half = (s - 1) // 2
    positions = (half + 1) * (half + 2) // 2
    os_ = bank.generation["oversampling"]
    total = 0.0
    for radius in bank.radii:
        n_nip = (2 * (int(radius) + 1) + 1) * m.nnum * os_
        n = _fast_size(n_nip + 2 * m.nnum * os_)
        x = torch.randn(positions, n, n, dtype=torch.complex64, device=device)
        best = np.inf
        for _ in range(repeat):
            start = time.perf_counter()
            torch.fft.ifft2(torch.fft.fft2(x))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        total += best
    return total


def _peak_memory(s: int, device: str) -> float:
    """Peak resident memory (MiB) that building the bank adds to a fresh
    process (Linux VmHWM: ru_maxrss would inherit the parent's peak)."""
    code = (
        "import sys, numpy as np, torch, lfm_recon\n"
        "from benchmarks.bench_psf import _build, _vm_hwm\n"
        "base = _vm_hwm()\n"
        "_build(int(sys.argv[1]), sys.argv[2])\n"
        "print(_vm_hwm() - base)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(s), device], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip())


def _vm_hwm() -> float:
    """This process's peak resident set size so far, MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write results here")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    results = []
    for s in (5, 15):
        _build(s, args.device)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            bank = _build(s, args.device)
            times.append(time.perf_counter() - start)
        t = float(np.median(times))
        floor = _fft_floor(bank, args.device, args.repeat)
        mem = _peak_memory(s, args.device)
        row = dict(
            s=s,
            seconds=t,
            fft_floor_seconds=floor,
            ratio_to_fft_floor=t / floor,
            speedup_vs_published=PUBLISHED_S[s] / t,
            peak_rss_mib=mem,
            kernels_mib=bank.kernels.nbytes / 2**20,
            oversampling=bank.generation["oversampling"],
            radii=bank.radii.tolist(),
        )
        results.append(row)
        print(
            f"s={s:2d}: {t:6.2f} s (FFT floor {floor:.2f} s, x{t / floor:.1f});"
            f" {PUBLISHED_S[s] / t:5.1f}x faster than the published {PUBLISHED_S[s]:g} s;"
            f" peak RSS +{mem:.0f} MiB (kernels {row['kernels_mib']:.0f} MiB);"
            f" oversampling {row['oversampling']}, radii {row['radii']}"
        )

    # Accuracy of sensor-pixel sampling against the converged bank.
    m = Microscope.preset("reference")
    depths = np.linspace(-50, 50, 11)
    good = generate_psf(m, depths, 5, support_radius=4)
    coarse = generate_psf(m, depths, 5, support_radius=4, oversampling=1)
    peak = coarse.kernels.max(axis=(-1, -2)) / good.kernels.max(axis=(-1, -2))
    l1 = np.abs(coarse.kernels.astype(np.float64) - good.kernels).sum(axis=(-1, -2))
    acc = dict(
        worst_peak_ratio=float(max(peak.max(), 1 / peak.min())),
        median_l1=float(np.median(l1)),
        max_l1=float(l1.max()),
    )
    print(
        f"sensor-pixel sampling vs converged: peaks off by up to"
        f" {acc['worst_peak_ratio']:.2f}x, L1 median {acc['median_l1']:.2f},"
        f" max {acc['max_l1']:.2f} (of 2)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(builds=results, sensor_pixel_sampling=acc), f, indent=2)


if __name__ == "__main__":
    main()
