"""01 — Compute a light-field PSF bank and look at it.

The light-field PSF of a point at depth z and sub-lenslet position (a, b) is

    h(x) = ∫_pixel | P_f{ U_Debye(ξ − M·r_ab, z) · T_MLA(ξ) }(x) |² dx

U_Debye: the scalar Debye field at the native image plane; T_MLA: the
microlens array, exp(−i k0 ρ²/2f) per lenslet; P_f: angular-spectrum
propagation to the sensor one microlens focal length behind. One kernel per
(z, a, b), normalised to sum 1, is the filter bank of the forward operator.

    python examples/01_psf.py [--preset reference] [-o out/] [--quick]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from lfm_recon import Microscope, generate_psf
from lfm_recon.figures import plot_psf_bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reference", help="preset name or .toml file")
    parser.add_argument("-o", "--output", default="example_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="3 depths, s = 3 (for CI)")
    args = parser.parse_args()

    microscope = Microscope.resolve(args.preset)
    print(microscope.describe())
    depths = np.linspace(-50, 50, 3 if args.quick else 11)
    s = 3 if args.quick else 5

    start = time.perf_counter()
    bank = generate_psf(microscope, depths, s, progress=True)
    print(f"bank computed in {time.perf_counter() - start:.2f} s")
    print(bank.summary())

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    bank.save(out / "psf.h5")
    plot_psf_bank(bank, out / "psf.png")
    print(f"wrote {out / 'psf.h5'} and {out / 'psf.png'}")


if __name__ == "__main__":
    main()
