"""The demo: the whole pipeline on the embedded default, from nothing.

1. The sample (``lfm_recon.data.sample``): the reference PSF bank and 16
   paired + 16 unlabeled simulated light fields (cached).
2. The unfolded network of the package's recipe (accelerated RL stopped
   frame by frame at its least held-out deviance, then 8 learned layers):
   by default the pretrained one shipped with the package
   (``pretrained/demo_network.pt``: 1200 steps, each simulated draw serving
   two, 47 min at one thread of a busy 2-core CPU, on randomised simulation
   only, never on the sample), bound to the sample's bank; with
   ``budget`` > 0 one trained from scratch for that many CPU seconds
   (cached per recipe and budget with the sample): supervised on 8 of the
   paired samples and on simulation drawn fresh every step
   (``[data.simulate]``), and on the unlabeled light fields through the
   re-synthesis loss (Poisson deviance, held-out pixels).
3. 4 further paired light fields (neither trained on nor used to pick the
   best checkpoint) written as a TIFF time series and
   reconstructed through the batch pipeline (``reconstruct_files``) with
   Richardson–Lucy and with the network.
4. A metrics table, MIP figures and ImageJ TIFFs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from . import __version__
from .data import SAMPLE_VERSION, cache_dir, sample
from .errors import LFMError
from .evaluate import score
from .figures import plot_mips, plot_psf_bank
from .modelfile import load_model, save_model
from .operator import LightFieldOperator
from .reconstruct import read_volumes, reconstruct_files
from .training import TrainConfig, train
from .unfolded import RECIPE, UnfoldedConfig, UnfoldedISTA

SECONDS_PER_STEP = 2.0  # of this recipe on a 2-core CPU: the cosine schedule ends with the budget
N_TRAIN, N_VALIDATION = 8, 4  # of the sample's 16 paired samples
RL_ITERATIONS = 100


def _recipe(folder: Path, budget: float) -> dict:
    return {
        "psf": str(folder / "psf.h5"),
        "output": str(folder / "run"),
        "seed": 0,
        "steps_per_epoch": 25,
        "checkpoint_every": 25,
        "model": dict(RECIPE),
        "data": {
            "train": str(folder / "data.h5"),
            "n_validation": N_VALIDATION,
            "n_labelled": N_TRAIN,
            "patch_lenslets": 11,
            "batch_size": 2,
            "unlabeled_batch_size": 2,
            "simulate": {"batch_size": 2},
        },
        "loss": {
            "supervised": 1.0,
            "resynthesis": 1.0,
            "resynthesis_kind": "poisson",
            "resynthesis_holdout": 0.2,
        },
        "optim": {
            "steps": max(10, round(budget / SECONDS_PER_STEP)),
            "warmup_steps": 0,
            "time_budget": budget,
        },
    }


PRETRAINED = Path(__file__).parent / "pretrained" / "demo_network.pt"
PRETRAINED_FORMAT = "lfm_recon.pretrained"


def write_pretrained(model_path: str | Path, path: str | Path = PRETRAINED, note: str = "") -> Path:
    """Write the weights of a trained model file (without its PSF bank: the
    demo rebuilds the bank) as the demo's pretrained network; ``note`` says
    how it was trained. The shipped one: ``benchmarks/bench_generalisation.py``
    seed 0 of the recipe (its ``note`` says so)."""
    net = load_model(model_path)
    bank = net.op.bank
    payload = {
        "format": PRETRAINED_FORMAT,
        "architecture": net.config.to_dict(),
        "state_dict": {
            k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("op.")
        },
        "bank": {
            "microscope": bank.microscope.to_dict(),
            "depths": [float(z) for z in bank.depths],
            "voxels_per_lenslet": int(bank.voxels_per_lenslet),
        },
        "note": note,
    }
    torch.save(payload, path)
    return Path(path)


def pretrained_model(bank, path: str | Path = PRETRAINED) -> UnfoldedISTA:
    """The shipped network on ``bank``, which must be the optics, depths and
    voxels per lenslet it was trained for (else LFMError): the weights do
    not depend on the last bits of the kernels, which the PSF computation
    may round differently on another machine. The note on how it was
    trained is in ``net.training_info["pretrained"]``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a missing or damaged package file
        raise LFMError(f"cannot read the demo's pretrained network {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != PRETRAINED_FORMAT:
        raise LFMError(f"{path} is not a pretrained lfm_recon network")
    fits = payload["bank"]
    if (
        fits["microscope"] != bank.microscope.to_dict()
        or fits["voxels_per_lenslet"] != bank.voxels_per_lenslet
        or len(fits["depths"]) != len(bank.depths)
        or not np.allclose(fits["depths"], bank.depths)
    ):
        raise LFMError(
            "the demo's pretrained network was trained for another PSF bank than this"
            " sample's; train one instead: lfm-recon demo --budget 120"
        )
    net = UnfoldedISTA(LightFieldOperator(bank), config=UnfoldedConfig(**payload["architecture"]))
    missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
    if [k for k in missing if not k.startswith("op.")] or unexpected:  # H comes from bank
        raise LFMError(f"{path} does not fit its architecture: reinstall lfm_recon")
    net.training_info = {"pretrained": payload.get("note", "")}
    return net.eval()


def demo_model(budget: float = 0.0, progress: bool = True) -> Path:
    """The demo's trained model file, cached next to the sample: with
    ``budget`` 0 the shipped pretrained network (:data:`PRETRAINED`) bound to
    the sample's bank; else one trained once for ``budget`` seconds on the
    CPU (the recipe of :func:`_recipe`, from scratch)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
        raise LFMError(
            f"--budget is seconds of training, ≥ 0 (0: the pretrained network), got {budget!r}"
        )
    bank, data = sample(progress=progress)
    if budget == 0:
        digest = hashlib.sha256(PRETRAINED.read_bytes()).hexdigest()[:12]
        path = cache_dir() / f"sample-v{SAMPLE_VERSION}-pretrained-{digest}-{bank.sha256[:12]}.pt"
        if not path.is_file():
            net = pretrained_model(bank)
            save_model(net, path, training=net.training_info)
        return path
    # The cache is named by the recipe and the budget (not by a version to
    # remember to bump): another recipe or budget never reuses a stale model.
    # The package version too: the code that trains and runs it may change.
    recipe = json.dumps(_recipe(Path("."), float(budget)), sort_keys=True)
    salt = f"{recipe} {bank.sha256} {__version__}"
    key = hashlib.sha256(salt.encode()).hexdigest()[:12]
    path = cache_dir() / f"sample-v{SAMPLE_VERSION}-model-{key}.pt"
    if path.is_file():
        try:
            load_model(path, bank=bank)
            return path
        except LFMError:
            pass  # damaged or stale: train again
    with tempfile.TemporaryDirectory(prefix="lfm_demo_train-") as tmp:
        folder = Path(tmp)
        bank.save(folder / "psf.h5")
        data.save(folder / "data.h5")
        result = train(TrainConfig.from_dict(_recipe(folder, budget)), progress=progress)
        shutil.copyfile(result.model_path, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path


def run_demo(output: str | Path = "lfm_demo", budget: float = 0.0, progress: bool = True):
    """Run the demo, writing into ``output``; returns the metrics rows."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bank, data = sample(progress=progress)
    print(bank.summary().splitlines()[1])
    print(f"sample ready in {time.perf_counter() - start:.1f} s (cached in {cache_dir()})")
    bank.save(out / "psf.h5")
    plot_psf_bank(bank, out / "psf.png")
    t = time.perf_counter()
    model = demo_model(budget, progress)
    print(f"network ready in {time.perf_counter() - t:.1f} s ({model})")

    held = np.arange(N_TRAIN, N_TRAIN + 4)  # unseen: after the labelled, before validation
    background = float(data.simulation["background"])
    tifffile.imwrite(out / "lightfields.tif", data.lightfields[held, 0], photometric="minisblack")
    rows = []
    runs = (
        ("rl", dict(psf=out / "psf.h5", method="rl", n_iter=RL_ITERATIONS), "rl.tif"),
        ("net", dict(model=model, method="net"), "net.h5"),
    )
    volumes = {}
    op = LightFieldOperator(bank)  # for scoring (the reprojection residual)
    for name, kwargs, target in runs:
        for stale in (out / target, out / f"{target}.partial"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        report = reconstruct_files(
            [out / "lightfields.tif"],
            out / target,
            background=background,
            device="cpu",
            progress=False,
            **kwargs,
        )
        if target.endswith(".h5"):
            x = read_volumes(out / target)[0]
        else:
            x = tifffile.imread(out / target)
        volumes[name] = x
        s = score(torch.from_numpy(x), data, held, op, background).summary()
        rows.append({"method": name, **s, "s_per_volume": report.seconds / report.computed})
    m = _recipe(Path("."), budget)["model"]  # the pretrained network's too
    label = {
        "rl": f"RL, {RL_ITERATIONS} it., anti-aliased",
        "net": f"unfolded network (held-out RL + {m['n_layers']} layers)",
    }
    print(
        f"\n{len(held)} unseen volumes, 21×21 lenslets, 11 depths (PSNR after least-squares"
        " scaling, peak = truth max)"
    )
    print(
        f"{'method':44s} {'PSNR dB':>8s} {'SSIM':>6s} {'F1':>6s} {'residual':>9s} {'s/volume':>9s}"
    )
    for r in rows:
        print(
            f"{label[r['method']]:44s} {r['psnr']:8.2f} {r['ssim']:6.3f} {r['f1']:6.3f}"
            f" {r['residual']:9.4f} {r['s_per_volume']:9.3f}"
        )
    truth = data.volumes[held[0]] * data.gains[held[0]]
    for name, vol in (("truth", truth), ("rl", volumes["rl"][0]), ("net", volumes["net"][0])):
        plot_mips(
            vol,
            bank.voxel_size,
            out / f"mip_{name}.png",
            title=f"{name}: held-out volume 0",
            depths=bank.depths,
        )
    print(
        f"\nwrote {out}/: psf.h5, psf.png, lightfields.tif (the input), rl.tif and net.h5"
        " (volumes, ImageJ / HDF5 with voxel size), mip_truth.png, mip_rl.png, mip_net.png;"
        f" {time.perf_counter() - start:.0f} s in all"
    )
    return rows
