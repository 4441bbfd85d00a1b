"""``lfm-recon``: a thin command line over the Python API.

Each sub-command builds its inputs, calls the API and reports. Bad input
(:class:`~lfm_recon.errors.LFMError`, unreadable files) ends with one line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import LFMError
from .microscope import Microscope, list_presets
from .psf.generate import DEFAULT_ENERGY

_RANGE_OPTIONS = ("--depths",)  # values such as "-50:50:11" start with "-"


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
    microscope = Microscope.resolve(args.microscope)
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
            f" somata each) in {time.perf_counter() - start:.1f} s; wrote {out}"
        )


def _cmd_info(args: argparse.Namespace) -> None:
    target = args.target
    if target is None:
        print("microscope presets (lfm-recon info NAME for details):")
        for name, text in list_presets().items():
            print(f"  {name:24s} {text}")
        return
    path = Path(target)
    if path.suffix in (".h5", ".hdf5"):
        from .psf import PSFBank

        print(PSFBank.load(path).summary())
    else:
        print(Microscope.resolve(target).describe())


def _cmd_demo(args: argparse.Namespace) -> None:
    from .data import SAMPLE_PRESET, cache_dir, sample
    from .figures import plot_psf_bank, plot_volume_and_lightfield

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Demo on the embedded default (the '{SAMPLE_PRESET}' microscope):")
    print(Microscope.preset(SAMPLE_PRESET).describe())
    start = time.perf_counter()
    bank, data = sample(progress=True)
    print(
        f"PSF bank and sample data ready in {time.perf_counter() - start:.1f} s"
        f" (cached in {cache_dir()})"
    )
    print(bank.summary())
    bank.save(out / "psf.h5")
    plot_psf_bank(bank, out / "psf.png")
    plot_volume_and_lightfield(
        data.volumes[0],
        data.lightfields[0],
        bank.voxel_size,
        out / "sample.png",
        title=f"simulated neurons and their light field ({data.simulation['photons']:g}"
        " photons peak)",
    )
    print(
        f"{len(data.volumes)} paired and {len(data.unlabeled)} unlabeled light fields of"
        f" {data.lightfields.shape[-1]}×{data.lightfields.shape[-2]} px"
    )
    print(f"wrote {out / 'psf.h5'}, {out / 'psf.png'} and {out / 'sample.png'}")


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise LFMError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise LFMError(f"output folder {path.parent} does not exist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfm-recon", description="Light-field microscopy reconstruction."
    )
    parser.add_argument("--version", action="version", version=f"lfm_recon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("psf", help="compute a PSF bank (HDF5) for a microscope")
    p.add_argument("microscope", help="preset name (lfm-recon info lists them) or a .toml file")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("info", help="describe a PSF bank, a microscope file or a preset")
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        help="bank .h5, microscope .toml or preset name; none lists presets",
    )
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="run the pipeline on the embedded default")
    p.add_argument("-o", "--output", default="lfm_demo", help="output folder (default lfm_demo)")
    p.set_defaults(func=_cmd_demo)
    return parser


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
