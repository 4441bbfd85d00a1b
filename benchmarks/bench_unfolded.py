"""Benchmark: the unfolded network against Richardson–Lucy and FISTA.

Reference configuration (20x/0.5 NA water, nnum 15, 11 depths −50…50 µm,
s = 5, 21×21 lenslets, the embedded sample's PSF bank). Synthetic
neuron-like data at 300 photons peak, background 5, Poisson noise:

* training set: ``--labelled`` paired volumes (default 4) and
  ``--unlabeled`` light fields (default 64);
* validation set: ``--validation`` paired volumes (default 8), other seeds:
  picks RL's iteration count, FISTA's λ and each network's best checkpoint;
* test set: ``--test`` paired volumes (default 8), other seeds again: every
  figure reported is measured here, on data that selected nothing.

Baselines: Richardson–Lucy at its best iteration count (up to ``--rl-max``)
and FISTA with the best λ after 200 iterations. Each network variant trains
for a number of steps (with a CPU time cap) and is scored by its best
validation checkpoint (PSNR after least-squares scaling, SSIM, pooled
detection F1: ``lfm_recon.evaluate``). Times per volume are measured in this
process at batch 8, after a warm-up.

``--ablate`` undoes one of issue 11's fixes in the training path, to measure
what each does (only with the code that has them): ``margin`` scores whole
patches (light crossing the cut edges included), ``patch-scale`` normalises
each patch by its own mean signal instead of its frame's.

    python -m benchmarks.bench_unfolded [--steps 800] [--variant-steps 250]
        [--only baselines,main,ablation,variants] [--ablate margin] [--patch 11] [--json out.json]

Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_operator import _time
from lfm_recon import LightFieldOperator
from lfm_recon import solvers as S
from lfm_recon.data import sample, simulate_dataset
from lfm_recon.evaluate import score
from lfm_recon.modelfile import load_model
from lfm_recon.training import TrainConfig, train

RL_CHECKPOINTS = (10, 20, 30, 50, 70, 100, 150, 200, 250, 300, 400, 500, 700, 1000)
FISTA_FRACTIONS = (0.001, 0.003, 0.01, 0.03)
BATCH = 8

# name → (model section, loss section) on top of BASE; the main run first.
BASE_MODEL = {"n_layers": 8}
BASE_LOSS = {"supervised": 1.0, "resynthesis": 0.0, "adversarial": 0.0}
CNN = {"prior": "cnn", "prior_channels": 32, "data_term": "poisson", "per_depth_step": True}
MAIN = "main: cnn prior, poisson, per-depth step; sup + resynth + adv"
VARIANTS = {
    MAIN: (CNN, {"resynthesis": 0.1, "adversarial": 0.01}),
    "gaussian, per-layer step (DESIGN's form)": ({}, {"resynthesis": 0.1}),
    "gaussian, per-depth step": ({"per_depth_step": True}, {"resynthesis": 0.1}),
    "poisson, per-layer step": ({"data_term": "poisson"}, {"resynthesis": 0.1}),
    "poisson, per-depth step": (
        {"data_term": "poisson", "per_depth_step": True},
        {"resynthesis": 0.1},
    ),
}


def _score_whole_patches() -> None:
    """Issue 11 ablation: no margins (the old, inconsistent patch losses)."""
    from lfm_recon.training import sampler

    init = sampler.PatchSampler.__init__

    def no_margin(self, data, margin, symmetries):
        init(self, data, 0, symmetries)

    sampler.PatchSampler.__init__ = no_margin


def _patch_scale() -> None:
    """Issue 11 ablation: each patch normalised by its own mean signal."""
    from lfm_recon.training import sampler
    from lfm_recon.unfolded import UnfoldedISTA

    batch = sampler.PatchSampler.batch

    def own_scale(self, *args, **kwargs):
        b = batch(self, *args, **kwargs)
        b.scale = UnfoldedISTA.signal_scale(b.y, b.background)
        return b

    sampler.PatchSampler.batch = own_scale


ABLATIONS = {"margin": _score_whole_patches, "patch-scale": _patch_scale}

ABLATION = {
    "supervised only": {},
    "+ re-synthesis on unlabeled": {"resynthesis": 0.1},
    "+ adversarial": {"resynthesis": 0.1, "adversarial": 0.01},
}


def make_data(bank, folder: Path, n_labelled, n_unlabeled, n_validation, n_test):
    camera = dict(lenslets=(21, 21), photons=300.0, background=5.0)
    train_path, val_path = folder / "train.h5", folder / "validation.h5"
    simulate_dataset(bank, n_labelled, n_unlabeled, seed=7001, **camera).save(train_path)
    val = simulate_dataset(bank, n_validation, 0, seed=7002, **camera)
    val.save(val_path)
    test = simulate_dataset(bank, n_test, 0, seed=7003, **camera)
    return train_path, val_path, val, test


def seconds_per_volume(fn, y, device: torch.device | None = None) -> float:
    device = device or torch.device("cpu")
    return _time(lambda: fn(y.to(device)), device, 3) / len(y)


def baselines(op, val, test, rl_max: int) -> dict:
    """RL at its best iteration and FISTA at its best λ (200 iterations),
    each chosen on the validation set and scored on the test set."""
    background = float(val.simulation["background"])
    curve = {}

    def at(k, x):
        if k in RL_CHECKPOINTS:
            curve[k] = score(x, val, np.arange(len(x)), op, background).summary()["psnr"]

    S.RichardsonLucy(op, torch.from_numpy(val.lightfields), background).run(rl_max, callback=at)
    n = max(curve, key=curve.get)
    y = torch.from_numpy(test.lightfields)
    idx = np.arange(len(y))
    rl = {"iterations": n, "validation_psnr": curve[n], "validation_curve": curve}
    rl.update(
        score(
            S.richardson_lucy(op, y, n, background=background), test, idx, op, background
        ).summary()
    )
    rl["s_per_volume"] = seconds_per_volume(
        lambda v: S.richardson_lucy(op, v, n, background=background), y[:BATCH]
    )
    y_val = torch.from_numpy(val.lightfields)
    fista_val = {}
    for f in FISTA_FRACTIONS:
        lam = f * S.lambda_max(op, y_val, background)
        x = S.fista(op, y_val, lam, 200, background=background)
        fista_val[f] = score(x, val, np.arange(len(x)), op, background).summary()["psnr"]
    lam_f = max(fista_val, key=fista_val.get)

    def run_fista(v):
        return S.fista(op, v, lam_f * S.lambda_max(op, v, background), 200, background=background)

    fista = {"lam_fraction": lam_f, "iterations": 200, "validation_psnr": fista_val[lam_f]}
    fista.update(score(run_fista(y), test, idx, op, background).summary())
    fista["s_per_volume"] = seconds_per_volume(run_fista, y[:BATCH])
    return {"rl": rl, "fista": fista}


def run_variant(
    name, model, loss, steps, budget, paths, folder, seed, test, device="cpu", patch=11
) -> dict:
    train_path, val_path = paths
    config = TrainConfig.from_dict(
        {
            "psf": str(folder / "bank.h5"),
            "output": str(folder / f"run-{abs(hash(name)) % 10**8}"),
            "seed": seed,
            "device": device,
            "steps_per_epoch": 50,
            "checkpoint_every": 1000,
            "model": {**BASE_MODEL, **model},
            "data": {
                "train": str(train_path),
                "validation": str(val_path),
                "patch_lenslets": patch,
                "batch_size": 4,
                "unlabeled_batch_size": 4,
            },
            "loss": {**BASE_LOSS, **loss},
            "optim": {"steps": steps, "warmup_steps": steps // 4, "time_budget": float(budget)},
        }
    )
    start = time.perf_counter()
    result = train(config, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    dev = torch.device(device)
    net = load_model(result.model_path, device=dev)
    background = float(test.simulation["background"])
    y = torch.from_numpy(test.lightfields)
    with torch.no_grad():
        x = torch.cat(
            [net(y[i : i + BATCH].to(dev), background).cpu() for i in range(0, len(y), BATCH)]
        )
        t = seconds_per_volume(lambda v: net(v, background), y[:BATCH], dev)
    scores = score(x, test, np.arange(len(y)), net.op, background).summary()
    return {
        "name": name,
        **scores,
        "validation": dict(result.best),
        "step": result.best["step"],
        "steps": result.step,
        "train_seconds": seconds,
        "s_per_volume": t,
        "history": result.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="main run's training steps")
    parser.add_argument("--budget", type=float, default=900.0, help="s, main run's time cap")
    parser.add_argument("--variant-steps", type=int, default=250, help="each other run's steps")
    parser.add_argument("--variant-budget", type=float, default=300.0, help="s, their time cap")
    parser.add_argument("--labelled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=64)
    parser.add_argument("--validation", type=int, default=8)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--rl-max", type=int, default=1000)
    parser.add_argument("--only", default="baselines,main,ablation,variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--patch", type=int, default=11, help="training patch side, lenslets (0: whole frames)"
    )
    parser.add_argument("--device", default="cpu", help="training and timing device")
    parser.add_argument("--match", default="", help="only the runs whose name contains this")
    parser.add_argument("--ablate", default="", help="margin and/or patch-scale (see the doc)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for fix in filter(None, args.ablate.split(",")):
        ABLATIONS[fix]()
    parts = set(args.only.split(","))
    bank, _ = sample()
    op = LightFieldOperator(bank)
    folder = Path(tempfile.mkdtemp(prefix="bench_unfolded-"))
    bank.save(folder / "bank.h5")
    train_path, val_path, val, test = make_data(
        bank, folder, args.labelled, args.unlabeled, args.validation, args.test
    )
    print(
        f"threads {torch.get_num_threads()}; {args.labelled} labelled, {args.unlabeled} unlabeled,"
        f" {args.validation} validation, {args.test} test volumes (21×21 lenslets, 11 depths,"
        f" s 5); ablated: {args.ablate or 'nothing'}; patches {args.patch or 'whole frames'};"
        f" in {folder}"
    )
    out: dict = {"runs": []}
    if "baselines" in parts:
        base = baselines(op, val, test, args.rl_max)
        out["baselines"] = base
        for key in ("rl", "fista"):
            b = base[key]
            extra = f"λ {b['lam_fraction']:g}·λmax, " if key == "fista" else ""
            print(
                f"{key}: {extra}{b['iterations']} iterations, PSNR {b['psnr']:.2f} dB, SSIM"
                f" {b['ssim']:.3f}, F1 {b['f1']:.3f}, {b['s_per_volume']:.3f} s/volume"
            )
    runs = []
    if "main" in parts:
        runs.append((MAIN, *VARIANTS[MAIN], args.steps, args.budget))
    other = (args.variant_steps, args.variant_budget)
    if "variants" in parts:
        runs += [(n, m, lo, *other) for n, (m, lo) in VARIANTS.items() if n != MAIN]
    if "ablation" in parts:
        runs += [(f"ablation: {n}", CNN, lo, *other) for n, lo in ABLATION.items()]
    runs = [r for r in runs if args.match in r[0]]
    for name, model, loss, steps, budget in runs:
        paths = (train_path, val_path)
        r = run_variant(
            name, model, loss, steps, budget, paths, folder, args.seed, test, patch=args.patch
        )
        out["runs"].append(r)
        if args.json:  # after every run: a long benchmark keeps what it measured
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(
            f"{name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, F1 {r['f1']:.3f} (step"
            f" {r['step']} of {r['steps']}, {r['train_seconds']:.0f} s), {r['s_per_volume']:.3f}"
            " s/volume",
            flush=True,
        )
    if "baselines" in out and out["runs"]:
        rl = out["baselines"]["rl"]
        print("\n| method | PSNR dB | vs best RL | SSIM | F1 | s/volume | vs RL time |")
        print("|---|---|---|---|---|---|---|")
        rows = [("RL, best iteration", rl), ("FISTA, best λ, 200 it.", out["baselines"]["fista"])]
        rows += [(r["name"], r) for r in out["runs"]]
        for name, r in rows:
            print(
                f"| {name} | {r['psnr']:.2f} | {r['psnr'] - rl['psnr']:+.2f} | {r['ssim']:.3f} |"
                f" {r['f1']:.3f} | {r['s_per_volume']:.3f} |"
                f" {r['s_per_volume'] / rl['s_per_volume']:.2f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
