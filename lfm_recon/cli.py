"""``lfm-recon``: a thin command line over the Python API.

Each sub-command builds its inputs, calls the API and reports. Bad input
(:class:`~lfm_recon.errors.LFMError`, unreadable files) ends with one line on
stderr and exit status 2; anything else is a bug and keeps its traceback. A
:class:`~lfm_recon.calibration.CalibrationWarning` is one ``lfm-recon:
warning:`` line on stderr, and the command goes on.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__
from ._h5 import file_format
from .errors import LFMError
from .microscope import Microscope, list_presets
from .psf.generate import DEFAULT_ENERGY

_RANGE_OPTIONS = ("--depths",)  # values such as "-50:50:11" start with "-"
_H5_SUFFIXES = (".h5", ".hdf5")


def parse_depths(spec: str) -> np.ndarray:
    """Depths in µm from ``START:STOP:COUNT`` (inclusive, evenly spaced),
    a comma-separated list, or one number."""
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 1:
                raise ValueError
            return np.linspace(start, stop, count)
        return np.array([float(v) for v in spec.split(",") if v.strip()])
    except ValueError:
        raise LFMError(
            f"--depths {spec!r} is not START:STOP:COUNT (e.g. -50:50:11), a list"
            " (e.g. -10,0,10) or a number; depths are in µm"
        ) from None


def _cmd_psf(args: argparse.Namespace) -> None:
    from .psf import generate_psf

    out = Path(args.output)
    _check_output(out, args.overwrite)
    if args.figure and not Path(args.figure).parent.exists():
        raise LFMError(f"figure folder {Path(args.figure).parent} does not exist")
    microscope = _microscope(args.microscope)
    depths = parse_depths(args.depths)
    start = time.perf_counter()
    bank = generate_psf(
        microscope,
        depths,
        args.voxels_per_lenslet,
        oversampling=args.oversampling,
        energy=args.energy,
        support_radius=args.support_radius,
        device=args.device,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    bank.save(out)
    if not args.quiet:
        print(bank.summary())
        print(f"computed in {elapsed:.2f} s; wrote {out}")
    if args.figure:
        from .figures import plot_psf_bank

        plot_psf_bank(bank, args.figure)
        if not args.quiet:
            print(f"wrote {args.figure}")


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from .calibration import calibrate
    from .figures import plot_lenslet_grid
    from .io import read_frames

    out = Path(args.output)
    if out.suffix.lower() not in _H5_SUFFIXES:
        raise LFMError(
            f"calibration output {out} must end in .h5 or .hdf5: the calibration is an HDF5"
            " file (it carries the dark frame and the flat field)"
        )
    _check_output(out, args.overwrite)
    figure = None if args.figure is None else Path(args.figure)
    if figure is not None:
        _check_output(figure, args.overwrite)
    microscope = Microscope.resolve(args.microscope)
    lenslets = None if args.lenslets is None else _parse_lenslets(args.lenslets)
    white = read_frames(args.white, "white frame")
    dark = None if args.dark is None else read_frames(args.dark, "dark frame")
    start = time.perf_counter()
    with _warnings_as_lines():
        calibration = calibrate(
            white,
            dark,
            microscope=microscope,
            raw_pixel_size=args.raw_pixel_size,
            nnum=args.nnum,
            lenslets=lenslets,
            flat=not args.no_flat,
        )
    elapsed = time.perf_counter() - start
    calibration.save(out)
    if figure is not None:
        plot_lenslet_grid(white, calibration, figure)
    if not args.quiet:
        print(calibration.summary())
        print(f"fitted in {elapsed:.2f} s; wrote {out}" + (f" and {figure}" if figure else ""))


def _parse_lenslets(spec: str) -> tuple[int, int]:
    """``NY,NX`` (or one N for N×N) lenslets."""
    try:
        values = tuple(int(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise LFMError(
            f"--lenslets {spec!r} is not NY,NX (e.g. 28,28): two positive integers, the"
            " lenslets to keep around the frame centre"
        )
    return values


@contextmanager
def _warnings_as_lines():
    """Print each CalibrationWarning raised inside as one ``lfm-recon:
    warning:`` line on stderr (not Python's two-line warning dump); other
    warnings pass on unchanged. If the block fails, its warnings are dropped:
    the error line says what matters."""
    from .calibration import CalibrationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        yield
    for w in caught:
        if issubclass(w.category, CalibrationWarning):
            print(f"lfm-recon: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _microscope(spec: str) -> Microscope:
    """A preset name, a microscope .toml file, or a calibration file (the
    optics of the rectified light fields it produces)."""
    from .calibration import FORMAT as CALIBRATION_FORMAT
    from .calibration import Calibration

    fmt = file_format(Path(spec))
    if fmt == CALIBRATION_FORMAT:
        return Calibration.load(spec).microscope
    if fmt is not None:
        raise LFMError(
            f"{spec} is an HDF5 file but not a calibration; give a preset name, a microscope"
            " .toml file or a calibration .h5 (`lfm-recon calibrate`)"
        )
    return Microscope.resolve(spec)


def _cmd_simulate(args: argparse.Namespace) -> None:
    from .data import simulate_dataset
    from .psf import PSFBank

    out = Path(args.output)
    _check_output(out, args.overwrite)
    bank = PSFBank.load(args.psf)
    n_unlabeled = args.n if args.n_unlabeled is None else args.n_unlabeled
    start = time.perf_counter()
    data = simulate_dataset(
        bank,
        args.n,
        n_unlabeled,
        lenslets=(args.lenslets, args.lenslets),
        photons=args.photons,
        background=args.background,
        read_noise=args.read_noise,
        neuropil=args.neuropil,
        processes=args.processes,
        seed=args.seed,
        progress=not args.quiet,
    )
    data.save(out)
    if not args.quiet:
        print(
            f"{args.n} paired and {n_unlabeled} unlabeled light fields of"
            f" {args.lenslets}×{args.lenslets} lenslets ({data.simulation['n_neurons']}"
            f" somata each) in {time.perf_counter() - start:.1f} s; seed"
            f" {data.simulation['seed']}; wrote {out}"
        )


def _cmd_info(args: argparse.Namespace) -> None:
    target = args.target
    if target is None:
        print("microscope presets (lfm-recon info NAME for details):")
        for name, text in list_presets().items():
            print(f"  {name:24s} {text}")
        return
    from .calibration import FORMAT as CALIBRATION_FORMAT
    from .psf.bank import FORMAT as BANK_FORMAT

    path = Path(target)
    fmt = file_format(path)  # by content: a calibration may be named anything
    if fmt == CALIBRATION_FORMAT:
        from .calibration import Calibration

        calibration = Calibration.load(path)
        print(calibration.summary())
        print(calibration.microscope.describe())
    elif fmt not in (None, BANK_FORMAT):
        raise LFMError(
            f"{path} is an HDF5 file of format {fmt or 'none'!r}, neither a PSF bank nor a"
            " calibration; `lfm-recon info` describes files of `lfm-recon psf` and"
            " `lfm-recon calibrate`"
        )
    elif fmt == BANK_FORMAT or path.suffix.lower() in _H5_SUFFIXES:
        from .psf import PSFBank

        print(PSFBank.load(path).summary())  # also the error for a missing .h5
    else:
        print(Microscope.resolve(target).describe())


def _cmd_demo(args: argparse.Namespace) -> None:
    from .data import SAMPLE_PRESET
    from .demo import run_demo

    print(f"Demo on the embedded default (the '{SAMPLE_PRESET}' microscope):")
    run_demo(args.output, budget=args.budget, progress=not args.quiet)


def _cmd_reconstruct(args: argparse.Namespace) -> None:
    from .reconstruct import reconstruct_files

    method = args.method or ("net" if args.model else "rl")
    report = reconstruct_files(
        args.inputs,
        args.output,
        method=method,
        model=args.model,
        psf=args.psf,
        calibration=args.calibration,
        background=args.background,
        batch=args.batch,
        device=args.device,
        precision=args.precision,
        overwrite=args.overwrite,
        progress=not args.quiet,
        pyramid=args.pyramid,
        adapt=args.adapt,
        guard=args.guard,
        refit=args.refit,
        n_iter=args.iterations,
        lam_fraction=args.lam,
        rho=args.rho,
        prior=args.prior,
        filter=args.filter,
        accelerate=args.accelerate,
    )
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 speaks for the run
    if not args.quiet and report.output.exists():
        rate = report.volumes_per_second
        its = report.parameters.get("iterations")
        label = method if its is None else f"{method}, {its} iterations"
        if its == "auto":
            label = f"{method}, iterations chosen per frame (held-out stop)"
        rectified = f" (raw frames rectified with {args.calibration})" if args.calibration else ""
        print(
            f"{label}: {report.computed} of {report.frames} frames reconstructed{rectified} in"
            f" {report.seconds:.2f} s ({rate:.3g} volumes/s); wrote {report.output}"
        )
        if args.background == "auto":
            print(
                f"background: {report.parameters['background']:.4g} counts per pixel, estimated"
                " from the frames (recorded in the provenance)"
            )
    if report.empty:
        shown = ", ".join(str(i) for i in report.empty[:10])
        print(
            f"lfm-recon: warning: {len(report.empty)} frame(s) had no signal above the"
            f" background, their volumes are zero: {shown}",
            file=sys.stderr,
        )
        if report.flagged:
            shown = ", ".join(str(i) for i in report.flagged[:10])
            more = " …" if len(report.flagged) > 10 else ""
            print(
                f"QC: {len(report.flagged)} frame(s) flagged (reprojection residual far"
                f" from the rest): {shown}{more}"
            )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import SimulatedData
    from .evaluate import evaluate
    from .operator import LightFieldOperator
    from .psf import PSFBank
    from .solvers import FILTERED_METHODS, default_iterations

    if args.accelerate and "rl" not in args.method:
        raise LFMError("--accelerate is for rl (Richardson–Lucy) only: add --method rl")
    bank = PSFBank.load(args.psf)
    data = SimulatedData.load(args.data)
    op = LightFieldOperator(bank, device=_device(args.device))
    rows = []
    for method in args.method:
        fast = args.accelerate and method == "rl"
        n_iter = default_iterations(method, fast) if args.iterations is None else args.iterations
        scores, seconds = evaluate(
            op,
            data,
            method,
            n_iter,
            frames=args.frames,
            lam_fraction=args.lam,
            rho=args.rho,
            prior=args.prior,
            filter=args.filter if method in FILTERED_METHODS else None,
            accelerate=fast,
        )
        name = "rl-acc" if fast else method
        rows.append({"method": name, "iterations": n_iter, **scores.summary(), "s": seconds})
    n = len(data.volumes) if args.frames is None else min(args.frames, len(data.volumes))
    print(f"{n} volumes of {args.data}; PSNR after least-squares scaling (peak = truth max)")
    print(
        f"{'method':8s} {'iter':>5s} {'PSNR dB':>8s} {'SSIM':>6s} {'Pearson':>8s}"
        f" {'F1':>6s} {'residual':>9s} {'s/volume':>9s}"
    )
    for r in rows:
        print(
            f"{r['method']:8s} {r['iterations']!s:>5s} {r['psnr']:8.2f} {r['ssim']:6.3f}"
            f" {r['pearson']:8.3f} {r['f1']:6.3f} {r['residual']:9.4f} {r['s']:9.3f}"
        )
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(rows, indent=1))


def _cmd_train(args: argparse.Namespace) -> None:
    from .training import TrainConfig, train

    config = TrainConfig.from_file(args.config, output=args.output)
    if not args.quiet:
        print(f"training run {config.output} (config {args.config})")
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        best = result.best
        if best:
            print(
                f"best validation PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.3f},"
                f" F1 {best['f1']:.3f} at step {best['step']}; wrote {result.model_path}"
            )
        else:
            print(f"{result.step} steps done; model in {result.model_path}")


def _cmd_adapt(args: argparse.Namespace) -> None:
    from .adapt import AdaptConfig, adapt
    from .modelfile import load_model, save_model
    from .recording import Recording, spread

    out = Path(args.output)
    _check_output(out, args.overwrite)
    if out.suffix != ".pt":
        raise LFMError(f"the adapted model is a model file: name it *.pt, got {out.name}")
    config = AdaptConfig(
        steps=args.steps,
        frames=args.frames,
        holdout=args.holdout,
        lr=args.lr,
        parameters=args.parameters,
        patch_lenslets=args.patch_lenslets,
    )
    net = load_model(args.model, device=_device(args.device))
    recording = Recording(args.inputs)
    picked = spread(len(recording), config.frames)
    frames = np.stack([recording.read(int(i), int(i) + 1)[0] for i in picked])
    tuned, record = adapt(net, frames, args.background, config, progress=not args.quiet)
    record["inputs"] = [str(p) for p in args.inputs]
    record["model"] = str(args.model)
    save_model(tuned, out, training={**net.training_info, "adaptation": record})
    if not args.quiet:
        print(
            f"adapted on {len(frames)} frames in {record['seconds']:.0f} s: held-out deviance per"
            f" photon {record['held_out_deviance_before']:.5f} → "
            f"{record['held_out_deviance_after']:.5f} (step {record['step_kept']} kept);"
            f" wrote {out}"
        )


def _device(name: str):
    from ._device import resolve_device

    return resolve_device(name)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise LFMError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise LFMError(f"output folder {path.parent} does not exist")


def build_parser() -> argparse.ArgumentParser:
    from .unfolded import REFITS

    parser = argparse.ArgumentParser(
        prog="lfm-recon", description="Light-field microscopy reconstruction."
    )
    parser.add_argument("--version", action="version", version=f"lfm_recon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("psf", help="compute a PSF bank (HDF5) for a microscope")
    p.add_argument(
        "microscope",
        help="preset name (lfm-recon info lists them), a .toml file, or a calibration .h5"
        " (its rectified optics)",
    )
    p.add_argument(
        "--depths", required=True, help="µm: START:STOP:COUNT (e.g. -50:50:11) or a list (-10,0,10)"
    )
    p.add_argument(
        "--voxels-per-lenslet",
        "-s",
        type=int,
        required=True,
        help="voxels per lenslet along each axis (1…nnum)",
    )
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument(
        "--oversampling",
        type=int,
        default=None,
        help="field samples per pixel per axis (default: from the sampling condition)",
    )
    p.add_argument(
        "--energy",
        type=float,
        default=DEFAULT_ENERGY,
        help=f"fraction of each point's light the kernels keep (default {DEFAULT_ENERGY})",
    )
    p.add_argument(
        "--support-radius",
        type=int,
        default=None,
        help="force the kernel radius in lenslets for every depth",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--figure", default=None, help="also save a PNG of kernels here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=_cmd_psf)

    p = sub.add_parser(
        "calibrate", help="fit the lenslet grid to a white frame: a calibration (HDF5)"
    )
    p.add_argument(
        "--white",
        required=True,
        metavar="W.tif",
        help="white (radiometry) frame, TIFF or grey PNG (8/16-bit): a uniform fluorescent"
        " sample through the MLA; a stack is averaged",
    )
    p.add_argument(
        "--dark",
        default=None,
        metavar="D.tif",
        help="dark frame (TIFF or grey PNG) of the same size (camera bias), subtracted",
    )
    p.add_argument(
        "--microscope",
        required=True,
        metavar="PRESET|M.toml",
        help="preset name or .toml file of the rectified optics (its nnum is the PSF bank's)",
    )
    p.add_argument(
        "--raw-pixel-size",
        type=float,
        metavar="UM",
        default=None,
        help="nominal camera pixel in the MLA plane, µm (e.g. 6.5): the fitted pitch is"
        " checked against mla_pitch / this (a warning beyond 1 %%, an error beyond 5 %%)",
    )
    p.add_argument(
        "--nnum",
        type=int,
        metavar="N",
        default=None,
        help="rectified pixels per lenslet (default: the microscope's)",
    )
    p.add_argument(
        "--lenslets",
        default=None,
        metavar="NY,NX",
        help="NY,NX lenslets to keep around the frame centre (default: the largest whole block)",
    )
    p.add_argument("--no-flat", action="store_true", help="no per-lenslet flat field")
    p.add_argument(
        "-o", "--output", required=True, metavar="calib.h5", help="output calibration .h5"
    )
    p.add_argument(
        "--figure",
        default=None,
        metavar="grid.png",
        help="also save a PNG of the fitted grid over the white frame",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("simulate", help="simulate a paired + unlabeled data set (HDF5)")
    p.add_argument("--psf", required=True, help="PSF bank .h5 (lfm-recon psf)")
    p.add_argument("--n", type=int, required=True, help="paired samples (volume + light field)")
    p.add_argument(
        "--n-unlabeled",
        type=int,
        default=None,
        help="light fields without ground truth (default: as many as --n)",
    )
    p.add_argument("--lenslets", type=int, default=21, help="lenslets per side (default 21)")
    p.add_argument(
        "--photons",
        type=float,
        default=300.0,
        help="photons at the brightest pixel of each light field (default 300)",
    )
    p.add_argument("--background", type=float, default=0.0, help="photons per pixel")
    p.add_argument("--read-noise", type=float, default=0.0, help="std, photons")
    p.add_argument(
        "--neuropil",
        type=float,
        default=0.0,
        help="smooth background relative to the brightest soma (e.g. 0.05)",
    )
    p.add_argument("--processes", type=int, default=0, help="thin processes per soma")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="makes the set reproducible (default: a fresh seed, printed and kept in the file,"
        " so training and validation sets made with the defaults are disjoint)",
    )
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "reconstruct",
        help="reconstruct light-field frames (TIFF, TIFF series, HDF5, globs) into volumes",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="TIFF frames or time series, grey PNG frames (8/16-bit), HDF5 files (file.h5 or"
        " file.h5:dataset), or globs; rectified light fields, or raw camera frames with"
        " --calibration",
    )
    p.add_argument("--model", default=None, help="trained model .pt (lfm-recon train)")
    p.add_argument("--psf", default=None, help="PSF bank .h5 (lfm-recon psf), for the solvers")
    p.add_argument(
        "--calibration",
        default=None,
        help="calibration .h5 (lfm-recon calibrate): the inputs are raw frames, dark-subtracted,"
        " rectified and flat-corrected on the fly",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="out.h5 (T, D, Y, X), out.tif (one ImageJ hyperstack), out.ome.zarr (OME-Zarr;"
        " needs the zarr extra) or a folder name (one ImageJ TIFF per frame); written in place,"
        " frame by frame",
    )
    p.add_argument(
        "--pyramid",
        type=int,
        default=1,
        metavar="LEVELS",
        help="OME-Zarr: resolution levels for viewing, each halving Y and X (default 1: full"
        " resolution only)",
    )
    p.add_argument(
        "--adapt",
        type=int,
        default=0,
        metavar="STEPS",
        help="net: first adapt the network to this recording's own frames for STEPS steps"
        " (self-supervised; recorded in the provenance)",
    )
    p.add_argument(
        "--guard",
        choices=("warn", "fallback", "off"),
        default="warn",
        help="net: compare with RL on 3 frames and warn if the network explains them much"
        " worse (fallback: then use RL) (default warn)",
    )
    p.add_argument(
        "--refit",
        choices=REFITS,
        default=None,
        help="net: after the held-out guard's decisions, run again on every pixel: all (the RL"
        " start and the layers), layers, or none (about half the time of all)"
        " (default: the model's setting)",
    )
    _add_solver_options(p, with_net=True)
    p.add_argument(
        "--background",
        type=_background,
        default=0.0,
        metavar="COUNTS|auto",
        help="the constant level per (rectified, dark-subtracted) pixel, counts (default 0;"
        " negative for a camera offset below the dark frame's), or auto: estimated from the"
        " frames' dark lenslet corners and recorded in the provenance",
    )
    p.add_argument("--batch", type=int, default=8, help="frames per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default="fp32",
        help="operator precision; tf32 and bf16 are for CUDA (default fp32)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (a re-run of the same command resumes without it)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser(
        "evaluate", help="score solvers on a simulated data set (PSNR, SSIM, F1, time)"
    )
    p.add_argument("data", help="data set .h5 (lfm-recon simulate)")
    p.add_argument("--psf", required=True, help="the PSF bank the data set was made with")
    _add_solver_options(p, several=True)
    p.add_argument("--frames", type=int, default=None, help="score the first N volumes")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train the unfolded network (config file, TOML)")
    p.add_argument("config", help="training configuration .toml (see lfm_recon.training.config)")
    p.add_argument("--output", default=None, help="run folder (overrides the config's output)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again over an existing run")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "adapt",
        help="fine-tune a trained network on a recording's own light fields (self-supervised)",
    )
    p.add_argument("model", help="trained model file (.pt)")
    p.add_argument("inputs", nargs="+", help="rectified light-field frames (TIFF, HDF5, globs)")
    p.add_argument("-o", "--output", required=True, help="adapted model file (.pt)")
    p.add_argument("--steps", type=int, default=50, help="optimiser steps (default 50)")
    p.add_argument("--frames", type=int, default=32, help="frames used, spread over the input")
    p.add_argument("--background", type=float, default=0.0, help="counts per pixel")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of pixels scored")
    p.add_argument("--lr", type=float, default=0.005, help="learning rate (prior: lr/10)")
    p.add_argument("--parameters", choices=("all", "scalars"), default="all")
    p.add_argument(
        "--patch-lenslets", type=int, default=0, help="random patches of this side (0: whole)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser(
        "info", help="describe a PSF bank, a calibration, a microscope file or a preset"
    )
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        help="bank or calibration .h5, microscope .toml or preset name; none lists presets",
    )
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="run the pipeline on the embedded default")
    p.add_argument("-o", "--output", default="lfm_demo", help="output folder (default lfm_demo)")
    p.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="seconds of CPU training for the demo network, from scratch (default 0: the"
        " shipped pretrained network); a network trained with this budget and recipe before"
        " is reused from the cache",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_solver_options(
    p: argparse.ArgumentParser, several: bool = False, with_net: bool = False
) -> None:
    from .antialias import FILTERS
    from .solvers import DEFAULT_ITERATIONS, DEFAULT_LAMBDA_FRACTION, METHODS, PRIORS

    defaults = ", ".join(f"{m} {n}" for m, n in DEFAULT_ITERATIONS.items())
    if several:
        p.add_argument(
            "--method", nargs="+", choices=METHODS, default=["rl"], help="one or more solvers"
        )
    elif with_net:
        p.add_argument(
            "--method",
            choices=("net", *METHODS),
            default=None,
            help="net (the trained model) or a solver (default: net with --model, else rl)",
        )
    else:
        p.add_argument("--method", choices=METHODS, default="rl", help="solver (default rl)")
    p.add_argument(
        "--iterations",
        type=_iterations,
        default=None,
        help=f"iterations (default: {defaults}); rl: 'auto' stops each frame at its least"
        " held-out deviance (best with --accelerate)",
    )
    p.add_argument(
        "--lam",
        type=float,
        default=DEFAULT_LAMBDA_FRACTION,
        help="fista/admm: λ as a fraction of λ_max = max Hᵀ(y − b), the value that gives"
        f" an empty volume (default {DEFAULT_LAMBDA_FRACTION})",
    )
    p.add_argument("--rho", type=float, default=None, help="admm: penalty ρ (default 0.01‖H‖²)")
    p.add_argument("--prior", choices=PRIORS, default="l1", help="admm: l1 or tv (default l1)")
    p.add_argument(
        "--filter",
        choices=FILTERS,
        default=None,
        help="rl/isra: the depth-adaptive anti-aliasing filter in every iteration, which removes"
        " the lenslet-grid artifact near the native plane (default: antialias for rl and isra)",
    )
    p.add_argument(
        "--accelerate",
        action="store_true",
        help="rl: Biggs–Andrews extrapolation, RL's result in several times fewer iterations"
        " (default --iterations 30 with it; its best is smaller than plain RL's: e.g. 30"
        " where plain RL needs 200)",
    )


def _iterations(text: str) -> int | str:
    """--iterations: a number, or the text as given (``auto``: rl's held-out
    stop); the reconstruction checks it and says what is wrong in one line."""
    try:
        return int(text)
    except ValueError:
        return text


def _background(text: str) -> float | str:
    """--background: a number of counts (any sign) or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of counts nor 'auto' (estimate it from the frames)"
        )
    return value


def _join_range_values(argv: list[str]) -> list[str]:
    """Turn ``--depths -50:50:11`` into ``--depths=-50:50:11`` (argparse would
    read a value starting with '-' as an option)."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _RANGE_OPTIONS:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lfm-recon`` console script; returns the exit status."""
    argv = _join_range_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LFMError as exc:
        print(f"lfm-recon: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lfm-recon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lfm-recon: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
