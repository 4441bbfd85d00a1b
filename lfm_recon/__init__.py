"""lfm_recon: light-field microscope snapshots to 3-D fluorescence volumes.

Conventions: lengths in µm; light fields (B, 1, Y, X); volumes (B, D, Yv, Xv);
PSF kernels (D, s, s, K, K); z > 0 farther from the objective. See docs/design.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lfm_recon")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

from .errors import LFMError
from .microscope import Microscope, list_presets
from .operator import LightFieldOperator
from .psf import PSFBank, generate_psf

# The per-frame and file-level reconstruction entry points. (The function
# ``reconstruct`` takes the place of the module's name on the package; import
# the module's other names with ``from lfm_recon.reconstruct import ...``.)
from .reconstruct import reconstruct, reconstruct_files
from .unfolded import UnfoldedISTA

__all__ = [
    "LFMError",
    "LightFieldOperator",
    "Microscope",
    "PSFBank",
    "UnfoldedISTA",
    "__version__",
    "generate_psf",
    "list_presets",
    "reconstruct",
    "reconstruct_files",
]
