"""Benchmark: classical solvers on the reference configuration.

Reference: 20x/0.5 NA water, nnum 15, 11 depths −50…50 µm, s = 5, 21×21
lenslets: the embedded sample data (``lfm_recon.data.sample``: seeded neuron
phantoms, 300 photons peak, background 5, Poisson noise). For each method and
parameter: PSNR, SSIM and pooled detection F1 (lfm_recon.evaluate's
normalisation) against the iteration count on ``--frames`` volumes, the best
iteration count (by PSNR), and seconds per iteration per volume at batch 1
and 8, with the share of a same-FLOP dense matmul timed in the same run. The
public Python tool's 4.4 s per RL iteration on a 2-core CPU is the figure to
beat by ≥ 20×.

    python -m benchmarks.bench_solvers [--frames 8] [--max-iter 200] [--json out.json]
        [--only "rl,rl accelerated"] [--no-timing | --no-curves]

Run from the repository root, as a module (it reuses the operator benchmark's timers).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.bench_operator import _matmul_rate, _time
from lfm_recon import LightFieldOperator
from lfm_recon import solvers as S
from lfm_recon.data import sample
from lfm_recon.evaluate import score

PUBLISHED_RL_ITERATION = 4.4  # s, public Python tool, 2-core CPU
CHECKPOINTS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300)


def _runs(max_iter: int):
    """(label, method, lam_fraction, prior, iterations) of every curve."""
    admm_iter = max(1, max_iter // 2)  # an ADMM iteration costs 4 H + 4 Hᵀ
    yield "rl", "rl", None, None, max_iter
    yield "rl accelerated", "rl_acc", None, None, max_iter
    yield "isra", "isra", None, None, max_iter
    for f in (0.001, 0.003, 0.01, 0.03):
        yield f"fista λ={f:g}", "fista", f, None, max_iter
    for f in (0.003, 0.01, 0.03):
        yield f"admm-l1 λ={f:g}", "admm", f, "l1", admm_iter
    for f in (0.003, 0.01, 0.03):
        yield f"admm-tv λ={f:g}", "admm", f, "tv", admm_iter


def _solver(op, y, method, lam_fraction, prior, background):
    if method in ("rl", "rl_acc"):
        return S.RichardsonLucy(op, y, background, accelerate=method == "rl_acc")
    if method == "isra":
        return S.ISRA(op, y, background)
    lam = lam_fraction * S.lambda_max(op, y, background)
    if method == "fista":
        return S.FISTA(op, y, lam, background)
    return S.ADMM(op, y, lam, None, background, prior=prior)


def curve(op, data, frames, label, method, lam_fraction, prior, n_iter, background):
    """Metrics at the checkpoints up to ``n_iter``."""
    idx = np.arange(frames)
    y = torch.from_numpy(data.lightfields[idx])
    solver = _solver(op, y, method, lam_fraction, prior, background)
    points = []

    def at_checkpoint(k, x):
        if k in CHECKPOINTS:
            s = score(x, data, idx, op, background).summary()
            points.append({"iteration": k, **s})

    solver.run(n_iter, callback=at_checkpoint)
    best = max(points, key=lambda p: p["psnr"])
    return {"label": label, "points": points, "best": best}


def timing(op, data, method, repeat, background):
    """Seconds per iteration per volume at batch 1 and 8, and the share of
    the matmul rate for the iteration's H/Hᵀ FLOPs."""
    ops_per_iter = {"rl": 2, "rl_acc": 2, "isra": 2, "fista": 2, "admm": 8}[method]
    out = {}
    for batch in (1, 8):
        y = torch.from_numpy(data.lightfields[:batch])
        solver = _solver(op, y, method, 0.01, "l1", background)
        seconds = _time(solver.step, op.device, repeat)
        flops = ops_per_iter * op.flops((21, 21), batch)
        rate = _matmul_rate(flops, op.device, repeat)
        out[batch] = {
            "s_per_iter_per_volume": seconds / batch,
            "vs_matmul": flops / seconds / 1e9 / rate,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="validation volumes")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-timing", action="store_true", help="only the quality curves")
    parser.add_argument("--no-curves", action="store_true", help="only the timings")
    parser.add_argument(
        "--only", default=None, help="comma-separated labels of the curves to run (default: all)"
    )
    args = parser.parse_args()
    bank, data = sample()
    op = LightFieldOperator(bank)
    background = float(data.simulation["background"])
    print(f"threads {torch.get_num_threads()}, {args.frames} volumes, device {op.device}")

    results = {"timing": {}, "curves": []}
    methods = () if args.no_timing else (*S.METHODS, "rl_acc")
    print("\n| method | s/iteration/volume (batch 1) | (batch 8) | vs 4.4 s | vs matmul (b8) |")
    print("|---|---|---|---|---|")
    for method in methods:
        t = timing(op, data, method, args.repeat, background)
        results["timing"][method] = t
        s1, s8 = t[1]["s_per_iter_per_volume"], t[8]["s_per_iter_per_volume"]
        print(
            f"| {method} | {s1 * 1e3:.1f} ms | {s8 * 1e3:.1f} ms |"
            f" {PUBLISHED_RL_ITERATION / s1:.0f}× | {t[8]['vs_matmul']:.0%} |"
        )

    print("\n| method | best iteration | PSNR dB | SSIM | Pearson | F1 | residual | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    only = None if args.only is None else set(args.only.split(","))
    for label, method, f, prior, n_iter in () if args.no_curves else _runs(args.max_iter):
        if only is not None and label not in only:
            continue
        start = time.perf_counter()
        c = curve(op, data, args.frames, label, method, f, prior, n_iter, background)
        c["seconds"] = time.perf_counter() - start
        results["curves"].append(c)
        b = c["best"]
        print(
            f"| {label} | {b['iteration']} | {b['psnr']:.2f} | {b['ssim']:.3f} |"
            f" {b['pearson']:.3f} | {b['f1']:.3f} | {b['residual']:.4f} | {c['seconds']:.0f} |"
        )

    print("\nPSNR (dB) / F1 against iterations:")
    for c in results["curves"]:
        row = "  ".join(f"{p['iteration']}:{p['psnr']:.1f}/{p['f1']:.2f}" for p in c["points"])
        print(f"  {c['label']:18s} {row}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
