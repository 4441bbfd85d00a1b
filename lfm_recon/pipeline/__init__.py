"""Batch reconstruction of recordings: streaming, resumable, multi-process,
written in place.

One module per job:

* :mod:`.reconstructor` — :class:`Reconstructor` (light fields (B, 1, Y, X)
  → volumes (B, D, Yv, Xv) by one method), :func:`load_reconstructor` (the
  one place a model file or PSF bank is loaded for files) and
  :func:`reconstruct` (frames in memory → volumes);
* :mod:`.writers` — the output kinds (HDF5, ImageJ TIFF, a folder of TIFFs,
  OME-Zarr), laid out first and written frame by frame in place;
* :mod:`.store` — the run folder ``OUT.partial/``: manifest and completion
  markers, from which a stopped run resumes;
* :mod:`.lock` — one writer per output;
* :mod:`.run` — :func:`reconstruct_files` (what ``lfm-recon reconstruct``
  runs): the loop, QC, torchrun sharding and the processes' agreement;
* :mod:`.readers` — :func:`read_volumes` / :func:`open_volumes` for every
  output kind;
* :mod:`.qc` — per-frame reprojection residual and flags.

``docs/design.md`` describes the data flow and the file formats.
"""

from .readers import open_volumes, read_volumes
from .reconstructor import ALL_METHODS, Reconstructor, load_reconstructor, reconstruct
from .run import RunReport, reconstruct_files
from .writers import FORMAT, FORMAT_VERSION, output_kind

__all__ = [
    "ALL_METHODS",
    "FORMAT",
    "FORMAT_VERSION",
    "Reconstructor",
    "RunReport",
    "load_reconstructor",
    "open_volumes",
    "output_kind",
    "read_volumes",
    "reconstruct",
    "reconstruct_files",
]
