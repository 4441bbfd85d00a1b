"""Benchmark: does the learned reconstruction hold up on data unlike its
training data? Richardson–Lucy at its best iteration against the network,
family by family, on families of phantoms the network never trained on.

Test families (reference optics, 11 depths −50…50 µm, s 5, 21×21 lenslets;
rendered by ``lfm_recon.phantoms.neurons``, a different renderer from the
training simulator's; each with a validation set (4), a test set (6),
unlabeled light fields (16) and unpaired volumes (4), all from its own seeds):

* ``package``: the package's default family (density 10⁴ /mm³, radius 3–6
  µm, no background, 300 photons peak, background 5): what the old recipe
  trained on.
* ``dense-neuropil``: 4·10⁴ /mm³, radius 2–3.5 µm, bright smooth neuropil
  (0.1), 100 photons.
* ``sparse-processes``: 3·10³ /mm³, radius 6–9 µm, two processes per soma,
  no background.
* ``bright-point``: brightness 0.05–1, 3000 photons, background 10, read
  noise 1.5, point-sampled planes (the density at the plane, not a slab mean).
* ``psf-mag+2%``: package phantoms whose light fields come from a PSF bank
  computed with a 2 % higher magnification (a wrong calibration), scored
  with the nominal bank.

And one family *in* the training distribution: ``simulator``, fixed draws
of the training simulator itself (``[data.simulate]``'s default ranges,
21×21 lenslets, each sample its own photons and background; seeds no
training uses). Only ``sup`` and ``+tta`` run on it (``--families
simulator``; it has no unlabeled or unpaired sets; ``+tta`` adapts with
each test light field's own background).

Methods, scored on each family's test set (PSNR after least-squares
scaling, pooled detection F1):

* ``rl``: Richardson–Lucy (anti-aliased, the package default), its
  iteration count chosen on that family's validation set; beside it (not
  the yardstick) accelerated RL (``accelerate=True``), with and without the
  anti-aliasing filter, chosen the same way (``RL_BASELINES``); and what a
  user without ground truth can run: accelerated RL that stops itself frame
  by frame at its least held-out deviance
  (:func:`lfm_recon.solvers.richardson_lucy_holdout`, ``HOLDOUT_BASELINES``).
* ``fixed``: the old recipe: the network trained (supervised) on a fixed set
  of the package family (16 volumes + 16 unlabeled light fields).
* ``sup``: the network trained (supervised) on randomised simulation only
  (``[data.simulate]``, each draw serving 2 steps under the bank's flips
  and transposes, 1200 steps: the package's recipe now).
* ``+res``: ``sup`` fine-tuned on the family's unlabeled light fields
  (Poisson re-synthesis with a pixel hold-out), simulation continuing.
* ``+adv``: as ``+res`` plus the family's unpaired volumes in an
  adversarial loss.
* ``+tta``: ``sup`` adapted on the test light fields themselves
  (``lfm_recon.adapt``: no ground truth, the recording's own frames).

The network is the package's recipe (``MODEL``: accelerated RL that stops
frame by frame at its least held-out deviance, at most 100 iterations, then
8 layers with a 32-channel CNN prior and a Poisson EM step, and at
inference the held-out guard at 1.15: each frame blended toward its RL
start as far as its held-out light requires); a variant is
``--model '{"rl_start": 15, "rl_stop": "fixed"}' --tag name`` (the previous
recipe; its methods and run folders carry the tag). ``--reuse-base`` takes
a seed's trained ``sup`` network from its run folder, so that +tta/+res/+adv
can run in a later process.

Each network run is repeated for ``--seeds`` seeds; tables give mean ± half
the spread (max − min)/2. Times per volume are measured in this process.

    python -m benchmarks.bench_generalisation --folder F [--steps 1200] [--finetune 60]
        [--seeds 0,1,2] [--only fixed,sup,res,adv,tta] [--json out.json]
    python -m benchmarks.bench_generalisation --folder F --summarise out-*.json

Each network run also reports the guard's ratio (``lfm_recon.guard``: the
network's deviance per photon over RL's at 50 iterations, on 3 test frames).
Seeds can run in parallel processes (one ``--seeds`` each, same ``--folder``
after a first process has made the data sets), merged with ``--summarise``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import tifffile
import torch

from benchmarks.bench_operator import _time
from lfm_recon import LightFieldOperator, PSFBank, generate_psf
from lfm_recon import solvers as S
from lfm_recon.adapt import AdaptConfig, adapt
from lfm_recon.data import SimulatedData, sample, simulate_dataset
from lfm_recon.evaluate import score
from lfm_recon.guard import check_network
from lfm_recon.modelfile import load_model
from lfm_recon.simulator import SimulationRanges, Simulator, simulated_dataset
from lfm_recon.training import TrainConfig, train
from lfm_recon.unfolded import RECIPE

BASE = dict(
    density=10000.0,
    neuropil=0.0,
    processes=0,
    radius=(3.0, 6.0),
    brightness=(0.3, 1.0),
    planes="slab",
    photons=300.0,
    background=5.0,
    read_noise=0.0,
)
FAMILIES = {
    "package": {},
    "dense-neuropil": dict(density=40000.0, radius=(2.0, 3.5), neuropil=0.1, photons=100.0),
    "sparse-processes": dict(density=3000.0, radius=(6.0, 9.0), processes=2, background=0.0),
    "bright-point": dict(
        brightness=(0.05, 1.0), photons=3000.0, planes="point", background=10.0, read_noise=1.5
    ),
    "psf-mag+2%": dict(psf="mag"),
}
# Plain anti-aliased RL (the package default) is the yardstick; beside it,
# accelerated RL with and without the anti-aliasing filter (key, accelerate, filter).
RL_BASELINES = (
    ("rl", False, "antialias"),
    ("rl_accelerated", True, "antialias"),
    ("rl_accelerated_unfiltered", True, "none"),
)
# RL that stops itself, frame by frame, at its least held-out deviance (no
# ground truth, no validation set: what a user can run): accelerated, with
# and without the anti-aliasing filter (key, filter).
HOLDOUT_BASELINES = (("rl_holdout", "antialias"), ("rl_holdout_unfiltered", "none"))
SIZES = {"val": 4, "test": 6, "unlabeled": 16, "unpaired": 4}
RL_CHECKPOINTS = (5, 10, 20, 30, 50, 70, 100, 150, 200, 300, 400, 600)
# The network (the package's recipe, lfm_recon.unfolded.RECIPE) and the simulation recipe.
MODEL = dict(RECIPE)
# Settings that act at inference only: a reused network takes the recipe's.
INFERENCE_ONLY = ("holdout_guard", "holdout_antialias", "holdout_refit")
SIMULATE = {"batch_size": 4, "validation": 8, "reuse": 2}  # a draw serves 2 steps


# --- data ------------------------------------------------------------------------------------
def banks(folder: Path) -> tuple[PSFBank, PSFBank]:
    """The sample's bank and one computed with a 2 % higher magnification."""
    bank, _ = sample()
    path = folder / "bank-mag.h5"
    if path.exists():
        return bank, PSFBank.load(path)
    m = dataclasses.replace(bank.microscope, magnification=bank.microscope.magnification * 1.02)
    mag = generate_psf(m, bank.depths, bank.voxels_per_lenslet)
    mag.save(path)
    return bank, mag


def family_sets(folder: Path, name: str, index: int) -> dict:
    """The family's val/test/unlabeled/unpaired sets (cached), the unlabeled
    light fields as a TIFF stack and the unpaired volumes as HDF5 with voxel size."""
    if name == IN_DISTRIBUTION:
        return simulator_sets(folder)
    bank, mag = banks(folder)
    spec = {**BASE, **FAMILIES[name]}
    source = mag if spec.pop("psf", None) == "mag" else bank
    out = {}
    for k, kind in enumerate(SIZES):
        path = folder / f"{name}-{kind}.h5"
        if not path.exists():
            paired = SIZES[kind] if kind != "unlabeled" else 0
            unlabeled = SIZES[kind] if kind == "unlabeled" else 0
            data = simulate_dataset(
                source, paired, unlabeled, lenslets=(21, 21), seed=9000 + 10 * index + k, **spec
            )
            # Scored with the nominal bank: label the set with it.
            dataclasses.replace(data, psf_sha256=bank.sha256).save(path)
        out[kind] = SimulatedData.load(path)
    tif = folder / f"{name}-unlabeled.tif"
    if not tif.exists():
        tifffile.imwrite(tif, out["unlabeled"].unlabeled[:, 0], photometric="minisblack")
    vols = folder / f"{name}-unpaired-volumes.h5"
    if not vols.exists():
        dz = float(np.mean(np.diff(bank.depths)))
        with h5py.File(vols, "w") as f:
            d = f.create_dataset("volumes", data=out["unpaired"].volumes)
            d.attrs["element_size_um"] = (dz, bank.voxel_size[0], bank.voxel_size[0])
    out["tif"], out["volumes_file"] = tif, vols
    out["background"] = float(out["test"].simulation["background"])
    return out


def simulator_sets(folder: Path) -> dict:
    """The in-distribution family: val/test draws of the training simulator
    (cached), with per-sample backgrounds (n, 1, 1, 1) photons per pixel."""
    bank, _ = banks(folder)
    out = {}
    for kind, seed in (("val", 7_000_001), ("test", 7_000_002)):  # no training seed
        path = folder / f"{IN_DISTRIBUTION}-{kind}.h5"
        if not path.exists():
            sim = Simulator(LightFieldOperator(bank), SimulationRanges(), lenslets=21)
            data, background = simulated_dataset(sim, SIZES[kind], seed)
            data.simulation["backgrounds"] = [float(v) for v in background]
            data.save(path)
        out[kind] = SimulatedData.load(path)
        b = np.asarray(out[kind].simulation["backgrounds"], dtype=np.float32)
        out[f"background_{kind}"] = b.reshape(-1, 1, 1, 1)
    out["background"] = out["background_test"]
    return out


def fixed_training_set(folder: Path) -> Path:
    """The old recipe's data: 16 package-family volumes + 16 unlabeled light fields."""
    bank, _ = banks(folder)
    path = folder / "fixed-train.h5"
    if not path.exists():
        simulate_dataset(bank, 16, 16, lenslets=(21, 21), seed=8000, **BASE).save(path)
    return path


# --- methods -----------------------------------------------------------------------------------
def rl_best(op, fam, filter: str = "antialias", accelerate: bool = False) -> dict:
    """RL (the package's default: anti-aliased) at its best iteration count
    on the family's validation set, scored on its test set; ``accelerate``:
    with Biggs–Andrews extrapolation (checkpoints up to 300)."""
    val, test, b = fam["val"], fam["test"], fam["background"]
    b_val = fam.get("background_val", b)
    checkpoints = [k for k in RL_CHECKPOINTS if not accelerate or k <= 300]
    curve = {}

    def at(k, x):
        if k in checkpoints:
            curve[k] = score(x, val, np.arange(len(x)), op, b_val).summary()["psnr"]

    y_val = torch.from_numpy(val.lightfields)
    solver = S.RichardsonLucy(op, y_val, _tensor(b_val), filter=filter, accelerate=accelerate)
    solver.run(max(checkpoints), callback=at)
    n = max(curve, key=curve.get)
    y = torch.from_numpy(test.lightfields)

    def run(v):
        return S.richardson_lucy(
            op, v, n, background=_tensor(b), filter=filter, accelerate=accelerate
        )

    out = {
        "iterations": n,
        "filter": filter,
        "accelerate": accelerate,
        **score(run(y), test, np.arange(len(y)), op, b).summary(),
    }
    out["s_per_volume"] = _time(lambda: run(y), op.device, 1) / len(y)
    return out


def rl_holdout(op, fam, filter: str) -> dict:
    """Accelerated RL with the held-out stop (at most 300 iterations),
    scored on the family's test set; its iterations are the frames' mean."""
    test, b = fam["test"], _tensor(fam["background"])
    y = torch.from_numpy(test.lightfields)

    def run():
        return S.richardson_lucy_holdout(op, y, 300, background=b, filter=filter)

    x, stopped = run()
    out = {"iterations": float(stopped.double().mean()), "filter": filter, "accelerate": True}
    out.update(score(x, test, np.arange(len(y)), op, fam["background"]).summary())
    out["s_per_volume"] = _time(run, op.device, 1) / len(y)
    return out


def net_scores(net, fam) -> dict:
    test, b = fam["test"], _tensor(fam["background"])
    y = torch.from_numpy(test.lightfields)
    with torch.no_grad():
        x = net(y, b)
        rl_iterations = float(net.rl_iterations.double().mean())  # the start's, per frame
        seconds = _time(lambda: net(y, b), net.op.device, 1) / len(y)
    out = {**score(x, test, np.arange(len(y)), net.op, b).summary(), "s_per_volume": seconds}
    return {**out, "rl_iterations": rl_iterations}


def run_training(
    folder: Path,
    name: str,
    seed: int,
    steps: int,
    data: dict,
    loss: dict,
    model=None,
    optim=None,
    **top,
):
    config = TrainConfig.from_dict(
        {
            "psf": str(folder / "bank.h5"),
            "output": str(folder / f"run-{name}-s{seed}"),
            "seed": seed,
            "device": "cpu",
            "steps_per_epoch": 50,
            "checkpoint_every": 10_000,
            "model": model or MODEL,
            "data": {"patch_lenslets": 11, "batch_size": 4, "unlabeled_batch_size": 4, **data},
            "loss": {"supervised": 1.0, "resynthesis": 0.0, **loss},
            "optim": {"steps": steps, "warmup_steps": steps // 4, **(optim or {})},
            **top,
        }
    )
    start = time.perf_counter()
    result = train(config, overwrite=True, progress=False)
    return load_model(result.model_path), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="cache of data sets, RL figures and runs")
    parser.add_argument("--steps", type=int, default=1200, help="steps of each base training")
    parser.add_argument("--finetune", type=int, default=60, help="steps of each fine-tuning")
    parser.add_argument("--adapt-steps", type=int, default=50, help="(the package's default)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="fixed,sup,res,adv,tta")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--tune-families", default="sparse-processes,bright-point", help="for +res and +adv"
    )
    parser.add_argument("--json", default=None, help="this process's results")
    parser.add_argument(
        "--no-rl", action="store_true", help="skip the RL baselines (another process makes them)"
    )
    parser.add_argument("--summarise", nargs="*", default=None, help="JSON files to merge")
    parser.add_argument(
        "--model",
        default="{}",
        help="JSON changes to the network, e.g. '{\"n_layers\": 16}' (a variant)",
    )
    parser.add_argument(
        "--reuse-base",
        action="store_true",
        help="load the seed's trained sup network from its run folder instead of training it",
    )
    parser.add_argument(
        "--simulate",
        default="{}",
        help="JSON changes to [data.simulate], e.g. '{\"reuse\": 1}' (fresh draws every step)",
    )
    parser.add_argument(
        "--optim", default="{}", help="JSON changes to the optimiser, e.g. '{\"prior_lr\": 2e-3}'"
    )
    parser.add_argument(
        "--tune-optim",
        default="{}",
        help="JSON changes to the optimiser of +res/+adv, e.g. '{\"lr\": 0.002}'",
    )
    parser.add_argument(
        "--adapt",
        default="{}",
        help='JSON changes to AdaptConfig, e.g. \'{"parameters": "scalars"}\'',
    )
    parser.add_argument("--tag", default="", help="names a variant's methods and run folders")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.summarise is not None:
        merged = {"runs": []}
        for key, *_ in RL_BASELINES + HOLDOUT_BASELINES:
            cache = folder / f"{key.replace('_', '-')}.json"
            merged[key] = json.loads(cache.read_text()) if cache.exists() else {}
        for path in args.summarise:
            part = json.loads(Path(path).read_text())
            merged["families"] = part["families"]
            merged["runs"] += part["runs"]
        summarise(merged)
        return
    parts = set(args.only.split(","))
    model = {**MODEL, **json.loads(args.model)}
    tag = f"[{args.tag}]" if args.tag else ""
    bank, _ = banks(folder)
    bank.save(folder / "bank.h5")
    op = LightFieldOperator(bank)
    names = args.families.split(",")
    fams = {n: family_sets(folder, n, FAMILIES_INDEX[n]) for n in names}
    out: dict = {"families": names, "rl": {}, "runs": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))

    # Plain RL is the yardstick; accelerated RL (the same fixed point in
    # several times fewer iterations) is reported beside it.
    # The held-out stops first: a few seconds per family, against minutes.
    baselines = {k: partial(rl_holdout, filter=f) for k, f in HOLDOUT_BASELINES}
    baselines |= {k: partial(rl_best, filter=f, accelerate=a) for k, a, f in RL_BASELINES}
    for key, baseline in baselines.items():
        rl_cache = folder / f"{key.replace('_', '-')}.json"
        cached = json.loads(rl_cache.read_text()) if rl_cache.exists() else {}
        out[key] = {}
        for n in names:
            if n not in cached and not args.no_rl:
                cached[n] = baseline(op, fams[n])
                rl_cache.write_text(json.dumps(cached, indent=1, default=float))
            if n in cached:
                out[key][n] = r = cached[n]
                its, psnr, f1 = r["iterations"], r["psnr"], r["f1"]
                print(f"{key} {n}: {its:.0f} it., PSNR {psnr:.2f}, F1 {f1:.3f}")
    save()

    def record(method, seed, net, train_s, fam_names=names):
        for n in fam_names:
            s = net_scores(net, fams[n])
            fam = fams[n]
            b = fam["background"]
            # The guard takes one background: not run on per-sample ones.
            ratio = float("nan")
            if np.isscalar(b):
                ratio = check_network(net, fam["test"].lightfields[:3], b).ratio
            row = {"method": method + tag, "seed": seed, "family": n, "train_s": train_s, **s}
            row["guard_ratio"] = ratio
            out["runs"].append(row)
            rl = out["rl"].get(n)
            versus = f" ({s['psnr'] - rl['psnr']:+.2f} vs RL)" if rl else ""
            print(
                f"{method} seed {seed} {n}: PSNR {s['psnr']:.2f}{versus},"
                f" F1 {s['f1']:.3f}, guard {ratio:.2f},"
                f" RL start {s['rl_iterations']:.0f} it.",
                flush=True,
            )
        save()

    sim = {"simulate": {**SIMULATE, **json.loads(args.simulate)}}
    semi = {"resynthesis": 1.0, "resynthesis_kind": "poisson", "resynthesis_holdout": 0.2}
    for seed in [int(s) for s in args.seeds.split(",")]:
        if "fixed" in parts:
            train_path = fixed_training_set(folder)
            data = {"train": str(train_path), "validation": str(folder / "package-val.h5")}
            net, secs = run_training(folder, "fixed" + tag, seed, args.steps, data, {}, model)
            record("fixed", seed, net, secs)
        if not parts & {"sup", "res", "adv", "tta"}:
            continue
        # The base of +res/+adv/+tta; recorded only when asked for, so that a
        # seed's methods can be split over processes without duplicate rows.
        trained = folder / f"run-sup{tag}-s{seed}" / "model.pt"
        if args.reuse_base:
            if not trained.exists():
                raise SystemExit(f"--reuse-base: no trained network at {trained}; train it first")
            base, secs = load_model(trained), float("nan")
            inference = {k: model[k] for k in INFERENCE_ONLY if k in model}
            base.config = dataclasses.replace(base.config, **inference)
        else:
            base, secs = run_training(
                folder, "sup" + tag, seed, args.steps, sim, {}, model, json.loads(args.optim)
            )
        if "sup" in parts:
            record("sup", seed, base, secs)
        tune = {"init_model": str(trained)}
        tune_optim = json.loads(args.tune_optim)
        for n in names:
            fam = fams[n]
            if "tta" in parts:
                start = time.perf_counter()
                tuned, _ = adapt(
                    base,
                    fam["test"].lightfields,
                    np.asarray(fam["background"]).reshape(-1),  # per frame on the simulator's
                    AdaptConfig(
                        **{"steps": args.adapt_steps, "seed": seed, **json.loads(args.adapt)}
                    ),
                )
                record("+tta", seed, tuned, time.perf_counter() - start, [n])
            if n == IN_DISTRIBUTION:  # no unlabeled or unpaired sets: no +res, +adv
                continue
            if n not in args.tune_families.split(","):
                continue
            unlabeled = {
                **sim,
                "unlabeled": [str(fam["tif"])],
                "frames_background": fam["background"],
            }
            if "res" in parts:
                net, secs = run_training(
                    folder,
                    f"res{tag}-{n}",
                    seed,
                    args.finetune,
                    unlabeled,
                    semi,
                    model,
                    tune_optim,
                    **tune,
                )
                record("+res", seed, net, secs, [n])
            if "adv" in parts:
                adv = {**unlabeled, "unpaired_volumes": [str(fam["volumes_file"])]}
                loss = {**semi, "adversarial": 0.02}
                net, secs = run_training(
                    folder,
                    f"adv{tag}-{n}",
                    seed,
                    args.finetune,
                    adv,
                    loss,
                    model,
                    tune_optim,
                    **tune,
                )
                record("+adv", seed, net, secs, [n])
    save()
    if len(out["rl"]) == len(names):
        summarise(out)


def summarise(out: dict) -> None:
    """Mean ± half-spread per method and family, against best RL."""
    order = ["fixed", "sup", "+res", "+adv", "+tta"]
    methods = sorted(
        {r["method"] for r in out["runs"]},
        key=lambda m: (order.index(m.split("[")[0]), m),
    )
    print("\n| method | " + " | ".join(out["families"]) + " |")
    print("|---|" + "---|" * len(out["families"]))
    rl = out["rl"]
    print(
        "| RL, best iteration | "
        + " | ".join(
            f"{rl[n]['psnr']:.2f} dB, F1 {rl[n]['f1']:.3f} ({rl[n]['iterations']} it.)"
            for n in out["families"]
        )
        + " |"
    )
    for key, label in (
        ("rl_accelerated", "RL accelerated, best iteration"),
        ("rl_accelerated_unfiltered", "RL accelerated, no anti-aliasing, best iteration"),
        ("rl_holdout", "RL accelerated, held-out stop (mean it.)"),
        ("rl_holdout_unfiltered", "RL accelerated, no anti-aliasing, held-out stop"),
    ):
        fast = out.get(key) or {}
        if all(n in fast for n in out["families"]):
            print(
                f"| {label} | "
                + " | ".join(
                    f"{fast[n]['psnr'] - rl[n]['psnr']:+.2f} dB, F1 {fast[n]['f1']:.3f}"
                    f" ({fast[n]['iterations']:.0f} it., {fast[n]['s_per_volume']:.1f} s)"
                    for n in out["families"]
                )
                + " |"
            )
    for m in methods:
        cells = []
        for n in out["families"]:
            rows = [r for r in out["runs"] if r["method"] == m and r["family"] == n]
            if not rows:
                cells.append("–")
                continue
            d = np.array([r["psnr"] - rl[n]["psnr"] for r in rows])
            f1 = np.array([r["f1"] for r in rows])
            cells.append(f"{d.mean():+.2f} ± {np.ptp(d) / 2:.2f} dB, F1 {f1.mean():.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")


FAMILIES_INDEX = {n: i for i, n in enumerate(FAMILIES)}
IN_DISTRIBUTION = "simulator"
FAMILIES_INDEX[IN_DISTRIBUTION] = len(FAMILIES)


def _tensor(b):
    """A background as the solvers and the network take it: a number, or
    per-sample (n, 1, 1, 1) as a tensor."""
    return b if np.isscalar(b) else torch.from_numpy(np.asarray(b))


if __name__ == "__main__":
    main()
