"""Benchmark: would an FFT path beat the operator's direct convolutions for
large kernels? (DESIGN: "An FFT path may win for very large kernels; measure
before adding.")

For each depth group of the operator (one kernel radius R, weight
(nnum², C, 2R+1, 2R+1)), in one process and on one device, this times the
group's direct ``conv2d`` (what ``LightFieldOperator`` runs) against the
same convolution by FFT, overlap-save: the zero-padded input is cut into
windows of L×L lenslets overlapping by 2R, each window's rfft2 is multiplied
by the weight's (precomputed, per L) and summed over input channels (one
complex matmul per frequency bin), and the first (L−2R)×(L−2R) outputs of
each window's irfft2 are kept; L = "whole" is one window over the frame.
Each FFT result is checked against the direct one (max error relative to
the output's peak). Memory: the FFT weights, complex64, per L.

Then the whole operator as the package builds it (groups with R ≥
``FFT_RADIUS`` on the FFT path) against ``fft_radius=None`` (all direct):
H and Hᵀ per frame, and their agreement.

Configurations: ``guv`` (60×/1.2 NA, nnum 15, 11 depths ±10 µm, s = 3,
28×28 lenslets: the lf-samples GUV frame, kernels up to R = 13),
``reference`` and ``large`` (as ``bench_operator.py``).

    python -m benchmarks.bench_operator_fft [--only guv] [--device cuda] [--json out.json]

The windowed (overlap-save) variant lives here only: the package's FFT path
is the whole-frame one (``lfm_recon/operator.py``), the fastest measured.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench_operator import CONFIGS as OPERATOR_CONFIGS
from benchmarks.bench_operator import _time
from lfm_recon import LightFieldOperator, Microscope, generate_psf

CONFIGS = {
    "guv": dict(preset="guv-60x-1.2na", depths=np.linspace(-10, 10, 11), s=3, lenslets=28),
    **OPERATOR_CONFIGS,
}
WINDOWS = (16, 24, 32, 48, 64, "whole")


def fft_conv(x: torch.Tensor, weight: torch.Tensor, radius: int, window):
    """conv2d(x, weight, padding=radius) by overlap-save FFT.

    x: (B, C, ny, nx); weight: (O, C, 2R+1, 2R+1); window: L (lenslets per
    FFT window, > 2R) or "whole". Returns (a function of x computing the
    (B, O, ny, nx) result, the FFT weights' bytes)."""
    _, _, ny, nx = x.shape
    r = radius
    if window == "whole":
        ly, lx = ny + 2 * r, nx + 2 * r
    else:
        ly = lx = int(window)
    ty, tx = ly - 2 * r, lx - 2 * r  # outputs kept per window
    o, c = weight.shape[:2]
    padded = weight.new_zeros((o, c, ly, lx))
    padded[..., : 2 * r + 1, : 2 * r + 1] = weight
    # conv2d is a cross-correlation: multiply by the conjugate spectrum.
    spectrum = torch.fft.rfft2(padded).conj()  # (O, C, Ly, Lx//2+1)
    bins = spectrum.shape[-2] * spectrum.shape[-1]
    w = spectrum.permute(2, 3, 0, 1).reshape(bins, o, c).contiguous()

    def run(v: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        nty, ntx = -(-ny // ty), -(-nx // tx)
        v = F.pad(v, (r, nty * tx + 2 * r - nx - r, r, nty * ty + 2 * r - ny - r))
        windows = v.unfold(2, ly, ty).unfold(3, lx, tx)  # (B, C, nty, ntx, Ly, Lx)
        xf = torch.fft.rfft2(windows)
        xf = xf.permute(4, 5, 1, 0, 2, 3).reshape(bins, c, b * nty * ntx)
        yf = torch.bmm(w, xf).reshape(ly, lx // 2 + 1, o, b, nty, ntx)
        out = torch.fft.irfft2(yf.permute(3, 2, 4, 5, 0, 1), s=(ly, lx))[..., :ty, :tx]
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(b, o, nty * ty, ntx * tx)
        return out[..., :ny, :nx]

    return run, w.numel() * w.element_size()


def run(name: str, device: torch.device, repeat: int, batch: int) -> list[dict]:
    cfg = CONFIGS[name]
    bank = generate_psf(Microscope.preset(cfg["preset"]), cfg["depths"], cfg["s"])
    op = LightFieldOperator(bank, device=device)
    n = cfg["lenslets"]
    x = F.pixel_unshuffle(torch.rand(batch, *op.volume_shape((n, n)), device=device), cfg["s"])
    rows = []
    with torch.no_grad():
        for g in op._groups:
            w, xg, r = getattr(op, g.weight), op._take(x, g), g.radius
            direct = F.conv2d(xg, w, padding=r)
            t_direct = _time(lambda xg=xg, w=w, r=r: F.conv2d(xg, w, padding=r), device, repeat)
            row = dict(
                config=name,
                device=str(device),
                batch=batch,
                radius=r,
                channels=xg.shape[1],
                direct_s=t_direct / batch,
                direct_weight_mib=w.numel() * w.element_size() / 2**20,
                fft={},
            )
            for window in WINDOWS:
                if window != "whole" and (window <= 2 * r or window - 2 * r >= n):
                    continue
                fn, nbytes = fft_conv(xg, w, r, window)
                err = float((fn(xg) - direct).abs().max() / direct.abs().max())
                t = _time(lambda fn=fn, xg=xg: fn(xg), device, repeat)
                row["fft"][str(window)] = dict(
                    s=t / batch, vs_direct=t / t_direct, rel_error=err, weight_mib=nbytes / 2**20
                )
            rows.append(row)
        # The whole operator: the package's choice against all-direct.
        direct = LightFieldOperator(bank, device=device, fft_radius=None)
        v = torch.rand(batch, *op.volume_shape((n, n)), device=device)
        y = op(v)
        whole = dict(config=name, device=str(device), batch=batch, operator=True)
        whole["fft_groups"] = [g.radius for g in op._groups if g.fft]
        for label, o in (("package", op), ("direct", direct)):
            whole[f"{label}_forward_s"] = _time(lambda o=o: o(v), device, repeat) / batch
            whole[f"{label}_adjoint_s"] = _time(lambda o=o: o.adjoint(y), device, repeat) / batch
        ref = direct(v)
        whole["rel_error_forward"] = float((op(v) - ref).abs().max() / ref.abs().max())
        ref = direct.adjoint(y)
        whole["rel_error_adjoint"] = float((op.adjoint(y) - ref).abs().max() / ref.abs().max())
        rows.append(whole)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")
    results = []
    for name in [args.only] if args.only else ["guv", "reference"]:
        for row in run(name, device, args.repeat, args.batch):
            results.append(row)
            if row.get("operator"):
                f, a = row["package_forward_s"], row["package_adjoint_s"]
                df, da = row["direct_forward_s"], row["direct_adjoint_s"]
                print(
                    f"{name:9s} operator (FFT for R in {row['fft_groups']}): H {f * 1e3:.1f} ms"
                    f" vs all-direct {df * 1e3:.1f} ms ({df / f:.2f}x faster), Hᵀ"
                    f" {a * 1e3:.1f} vs {da * 1e3:.1f} ms ({da / a:.2f}x); max error"
                    f" {row['rel_error_forward']:.1e} / {row['rel_error_adjoint']:.1e}"
                )
                continue
            best = min(row["fft"].items(), key=lambda kv: kv[1]["s"], default=None)
            fft = (
                f"best FFT L = {best[0]}: {best[1]['s'] * 1e3:.1f} ms"
                f" ({best[1]['vs_direct']:.2f}x direct, error {best[1]['rel_error']:.1e},"
                f" {best[1]['weight_mib']:.1f} MiB)"
                if best
                else "no FFT window fits"
            )
            print(
                f"{name:9s} R = {row['radius']:2d}, C = {row['channels']:3d}: direct"
                f" {row['direct_s'] * 1e3:7.1f} ms ({row['direct_weight_mib']:.1f} MiB); {fft}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
