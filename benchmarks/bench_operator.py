"""Benchmark: the forward operator H and its adjoint Hᵀ.

Configurations:

* reference: 20x/0.5 NA water, nnum 15, 11 depths −50…50 µm, s = 5,
  21×21 lenslets (the public tool's 2.3 s per forward projection on a 2-core
  CPU is the figure to beat by ≥ 20×);
* large: 40x/0.8 NA water, nnum 19, 53 depths −26…26 µm, s = 3, 100×100
  lenslets (the reference method reports 0.3 s per volume on a GPU).

For each, in one process and on one device: time per forward and per adjoint
(median of several runs after warm-up, batch 1 and 8), achieved GFLOP/s against
a dense square float32 matmul of the same FLOPs timed in the same run (goal
≥ 70 %), the share of executed multiply-adds that hit non-zero kernel taps
(goal ≥ 50 %; also the share above 10⁻⁴ of each kernel's peak), the weight
memory and the peak memory of one frame.

    python benchmarks/bench_operator.py [--device cuda] [--only reference] [--json out.json]

Run from the repository root (the memory probe imports ``benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from lfm_recon import LightFieldOperator, Microscope, generate_psf

CONFIGS = {
    "reference": dict(preset="reference", depths=np.linspace(-50, 50, 11), s=5, lenslets=21),
    "large": dict(preset="water-40x-0.8na", depths=np.linspace(-26, 26, 53), s=3, lenslets=100),
}
PUBLISHED_FORWARD_S = 2.3  # public tool, reference configuration, 2-core CPU


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeat):
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matmul_rate(flops, device, repeat):
    """GFLOP/s of a square float32 matmul with the same FLOPs."""
    n = max(64, round((flops / 2) ** (1 / 3)))
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    return 2 * n**3 / _time(lambda: a @ b, device, repeat) / 1e9


def _tap_shares(op):
    weights = [getattr(op, g.weight) for g in op._groups]
    total = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    # "significant": above 1e-4 of the peak of the kernel the tap belongs to
    significant = 0
    for w in weights:
        peak = w.amax(dim=(0, 2, 3), keepdim=True)  # per input channel = per kernel
        significant += int((w > 1e-4 * peak).sum())
    return nonzero / total, significant / total


def _bank(name):
    cfg = CONFIGS[name]
    return generate_psf(Microscope.preset(cfg["preset"]), cfg["depths"], cfg["s"])


def run(name, bank, device, repeat, batches=(1, 8)):
    cfg = CONFIGS[name]
    op = LightFieldOperator(bank, device=device)
    n = cfg["lenslets"]
    flops = op.flops((n, n))
    matmul = _matmul_rate(flops, device, repeat)
    nonzero, significant = _tap_shares(op)
    rows = []
    with torch.no_grad():
        for batch in batches:
            x = torch.rand(batch, *op.volume_shape((n, n)), device=device)
            y = op(x)
            t_fwd = _time(lambda x=x: op(x), device, repeat) / batch
            t_adj = _time(lambda y=y: op.adjoint(y), device, repeat) / batch
            rows.append(
                dict(
                    config=name,
                    device=str(device),
                    batch=batch,
                    forward_s=t_fwd,
                    adjoint_s=t_adj,
                    forward_gflops=flops / t_fwd / 1e9,
                    adjoint_gflops=flops / t_adj / 1e9,
                    matmul_gflops=matmul,
                    forward_vs_matmul=flops / t_fwd / 1e9 / matmul,
                    adjoint_vs_matmul=flops / t_adj / 1e9 / matmul,
                    gflop_per_frame=flops / 1e9,
                    nonzero_tap_share=nonzero,
                    significant_tap_share=significant,
                    weight_mib=op.weight_bytes / 2**20,
                    radii=bank.radii.tolist(),
                    groups=len(op._groups),
                )
            )
    return rows


def peak_frame_memory(name, bank, device):
    """Peak memory (MiB) one H + Hᵀ of a single frame adds: CUDA allocator
    peak, or on CPU a fresh process's VmHWM growth beyond weights and input."""
    if device.type == "cuda":
        op = LightFieldOperator(bank, device=device)
        n = CONFIGS[name]["lenslets"]
        x = torch.rand(1, *op.volume_shape((n, n)), device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            op.adjoint(op(x))
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = bank.save(f"{tmp}/bank.h5")
        code = (
            "import sys, gc, torch\n"
            "from benchmarks.bench_operator import CONFIGS\n"
            "from benchmarks.bench_psf import _vm_hwm\n"
            "from lfm_recon import LightFieldOperator, PSFBank\n"
            "op = LightFieldOperator(PSFBank.load(sys.argv[2]))\n"
            "n = CONFIGS[sys.argv[1]]['lenslets']\n"
            "x = torch.rand(1, *op.volume_shape((n, n)))\n"
            "gc.collect()\n"
            "open('/proc/self/clear_refs', 'w').write('5')  # reset the peak to now\n"
            "base = _vm_hwm()\n"
            "with torch.no_grad(): op.adjoint(op(x))\n"
            "print(_vm_hwm() - base)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, name, str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    name_dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {name_dev}")
    results = []
    for name in [args.only] if args.only else list(CONFIGS):
        bank = _bank(name)
        repeat = args.repeat if name == "reference" else max(3, args.repeat // 3)
        rows = run(name, bank, device, repeat)
        mem = peak_frame_memory(name, bank, device)
        for row in rows:
            row["peak_frame_mib"] = mem
            results.append(row)
            extra = (
                f"; {PUBLISHED_FORWARD_S / row['forward_s']:.0f}x faster than the"
                f" published {PUBLISHED_FORWARD_S} s"
                if name == "reference"
                else ""
            )
            print(
                f"{name:9s} B={row['batch']}: forward {row['forward_s'] * 1e3:8.2f} ms"
                f" ({row['forward_gflops']:.0f} GFLOP/s, {row['forward_vs_matmul']:.0%} of"
                f" matmul {row['matmul_gflops']:.0f}), adjoint {row['adjoint_s'] * 1e3:8.2f} ms"
                f" ({row['adjoint_vs_matmul']:.0%}){extra}"
            )
        r = rows[0]
        print(
            f"{name:9s} {r['gflop_per_frame']:.1f} GFLOP per frame, {r['groups']} depth"
            f" groups, taps non-zero {r['nonzero_tap_share']:.0%}, above 1e-4 of peak"
            f" {r['significant_tap_share']:.0%}; weights {r['weight_mib']:.1f} MiB,"
            f" peak per frame +{mem:.0f} MiB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
