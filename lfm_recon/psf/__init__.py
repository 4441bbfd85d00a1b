"""Wave-optics light-field PSF: Debye field, microlens array, propagation,
the per-depth filter bank and its HDF5 file."""

from .bank import PSFBank
from .generate import generate_psf

__all__ = ["PSFBank", "generate_psf"]
