"""Batch reconstruction of recordings (kept for imports: the code lives in
:mod:`lfm_recon.pipeline`, one module per job).

* :func:`reconstruct` — arrays in, volumes out (the per-frame API).
* :func:`reconstruct_files` — what ``lfm-recon reconstruct`` runs: frames
  from TIFF/HDF5 inputs stream through a prefetching loader and are
  reconstructed in batches; the volumes are written in place, frame by
  frame, to an HDF5 file, one ImageJ TIFF, a folder of ImageJ TIFFs or an
  OME-Zarr folder, with a per-frame QC table; a stopped run resumes.
* :func:`read_volumes` — an output back into memory, with its metadata.
"""

from .pipeline.readers import open_volumes, read_volumes
from .pipeline.reconstructor import ALL_METHODS, Reconstructor, load_reconstructor, reconstruct
from .pipeline.run import RunReport, reconstruct_files
from .pipeline.writers import FORMAT, FORMAT_VERSION, output_kind

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
