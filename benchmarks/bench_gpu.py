"""Benchmark: everything that needs a GPU, in one process (one device lease).

1. PSF banks built on the GPU: reference (11 depths, s 5) and large
   (40x/0.8 NA, nnum 19, s 3, 53 depths −26…26 µm).
2. The operator H and Hᵀ on both, per precision (exact fp32, tf32, bf16),
   against a dense matmul of equal FLOPs in the same precision and run.
3. The unfolded network, 8 layers, time per volume on the large
   configuration at 100×100 lenslets (the reference method reports 0.3 s per
   volume) and on the reference one: DESIGN's pure μ/λ form and the
   benchmarks' main architecture (CNN prior, Poisson step), per precision.
4. Richardson–Lucy seconds per iteration (reference; a public tool's 4.4 s
   on a 2-core CPU).

    python -m benchmarks.bench_gpu [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.bench_operator import CONFIGS, _sync, _time
from lfm_recon import LightFieldOperator, Microscope, UnfoldedISTA, generate_psf
from lfm_recon import solvers as S

PRECISIONS = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}
ARCHITECTURES = {
    "pure (gaussian, per-layer step)": {},
    "main (cnn 32, poisson, per-depth)": {
        "prior": "cnn",
        "prior_channels": 32,
        "data_term": "poisson",
        "per_depth_step": True,
    },
}


def matmul_rate(flops: float, device, precision: str, repeat: int) -> float:
    """GFLOP/s of a square matmul of ``flops`` in the given precision."""
    n = max(256, round((flops / 2) ** (1 / 3) / 64) * 64)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        t = _time(lambda: a @ b, device, repeat)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / t / 1e9


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    parser.add_argument("--configs", default="reference,large")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {label}", flush=True)
    out: dict = {"device": label, "psf": {}, "operator": [], "network": [], "rl": {}}
    banks = {}
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        micro = Microscope.preset(cfg["preset"])
        generate_psf(micro, cfg["depths"][:2], cfg["s"], device=device)  # warm-up
        _sync(device)
        start = time.perf_counter()
        banks[name] = generate_psf(micro, cfg["depths"], cfg["s"], device=device)
        _sync(device)
        out["psf"][name] = time.perf_counter() - start
        print(
            f"PSF {name}: {out['psf'][name]:.2f} s, radii {banks[name].radii.tolist()}", flush=True
        )

    for name, bank in banks.items():
        n = CONFIGS[name]["lenslets"]
        for precision, compute in PRECISIONS.items():
            op = LightFieldOperator(bank, device=device, compute=compute)
            flops = op.flops((n, n))
            rate = matmul_rate(flops, device, precision, args.repeat)
            for batch in (1, 4):
                x = torch.rand(batch, *op.volume_shape((n, n)), device=device)
                with torch.no_grad():
                    y = op(x)
                    t_f = _time(lambda x=x, op=op: op(x), device, args.repeat) / batch
                    t_a = _time(lambda y=y, op=op: op.adjoint(y), device, args.repeat) / batch
                row = dict(
                    config=name,
                    precision=precision,
                    batch=batch,
                    forward_s=t_f,
                    adjoint_s=t_a,
                    gflop=flops / 1e9,
                    matmul_gflops=rate,
                    forward_vs_matmul=flops / t_f / 1e9 / rate,
                    adjoint_vs_matmul=flops / t_a / 1e9 / rate,
                )
                out["operator"].append(row)
                print(
                    f"H {name} {precision} B={batch}: fwd {t_f * 1e3:.2f} ms"
                    f" ({row['forward_vs_matmul']:.0%} of {rate:.0f} GFLOP/s matmul),"
                    f" adj {t_a * 1e3:.2f} ms ({row['adjoint_vs_matmul']:.0%})",
                    flush=True,
                )
            del op
            _free(device)

    for name, bank in banks.items():
        n = CONFIGS[name]["lenslets"]
        for arch, options in ARCHITECTURES.items():
            for precision, compute in PRECISIONS.items():
                op = LightFieldOperator(bank, device=device, compute=compute)
                net = UnfoldedISTA(op, 8, **options).eval()
                x = torch.rand(1, *op.volume_shape((n, n)), device=device) < 1e-3
                with torch.no_grad():
                    y = op.simulate(x.float(), photons=300, background=5, seed=0)
                    autocast = torch.autocast(
                        "cuda", dtype=torch.bfloat16, enabled=precision == "bf16"
                    )
                    for batch in (1, 4):
                        yb = y.expand(batch, -1, -1, -1).contiguous()

                        def run(yb=yb, net=net, autocast=autocast):
                            with autocast:
                                return net(yb, 5.0)

                        t = _time(run, device, max(3, args.repeat // 2)) / batch
                        out["network"].append(
                            dict(
                                config=name,
                                architecture=arch,
                                precision=precision,
                                batch=batch,
                                s_per_volume=t,
                            )
                        )
                        print(
                            f"net {name} {arch} {precision} B={batch}: {t * 1e3:.1f} ms/volume",
                            flush=True,
                        )
                del op, net
                _free(device)

    if "reference" in banks:
        op = LightFieldOperator(banks["reference"], device=device)
        x = (torch.rand(8, *op.volume_shape((21, 21)), device=device) < 1e-3).float()
        y = op.simulate(x, photons=300, background=5, seed=0)
        for batch in (1, 8):
            solver = S.RichardsonLucy(op, y[:batch], 5.0)
            t = _time(solver.step, device, args.repeat) / batch
            out["rl"][batch] = t
            print(
                f"RL reference B={batch}: {t * 1e3:.2f} ms per iteration per volume"
                f" ({4.4 / t:.0f}x faster than the published 4.4 s)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
