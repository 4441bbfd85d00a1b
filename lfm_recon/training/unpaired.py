"""Unpaired volumes: real volumes without light fields (e.g. two-photon
z-stacks of the same kind of tissue), the discriminator's "real" examples.

Each file is read with its voxel size, resampled once to the PSF bank's
lateral voxel and to a fine uniform axial grid, and cut into random crops
laid out as the bank's volumes: (D, Yv, Xv), each plane the mean over its
slab (halfway to its neighbours, the convention of ``lfm_recon.phantoms``).
A stack's depth has no relation to the light-field microscope's native
plane, so each crop also takes a random axial offset within the stack.

Files: a TIFF with ImageJ voxel size (``spacing`` for z, the X/YResolution
tags for y and x, unit µm) or an HDF5 dataset with an ``element_size_um``
attribute (z, y, x), given as ``file.h5:name`` or as a file holding one 3-D
(Z, Y, X) or 4-D (T, Z, Y, X) dataset (this package's volume outputs are
such files).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tifffile
import torch
from scipy import ndimage

from ..errors import LFMError
from ..io import TIFF_SUFFIXES
from ..phantoms import slab_edges
from ..psf.bank import PSFBank
from ..recording import H5_SUFFIXES
from .augment import augment

_MICRONS = {"um", "µm", "micron", "microns", "\\u00B5m", "micrometer", "micrometre"}


@dataclass(frozen=True)
class UnpairedVolume:
    """One stack on the bank's lateral grid and a fine axial grid.

    Attributes:
        name: the file it came from.
        data: float32 (Z', Yv', Xv'), lateral voxel = the bank's.
        dz: µm between the rows of ``data``.
    """

    name: str
    data: np.ndarray
    dz: float


def read_volume_file(spec: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume file as float32 (T, Z, Y, X) and its voxel size (z, y, x) in µm.

    Raises LFMError naming the file for a missing voxel size, a shape that is
    not 3-D or 4-D, NaN/Inf values or an unreadable file."""
    path, dataset = _split(spec)
    if not path.is_file():
        raise LFMError(f"unpaired volume file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        volume, voxel = _read_tiff(path)
    elif suffix in H5_SUFFIXES:
        volume, voxel = _read_h5(path, dataset)
    else:
        raise LFMError(f"{path}: unpaired volumes are TIFF (.tif) or HDF5 (.h5) files")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4:
        raise LFMError(
            f"{spec} holds an array of shape {volume.shape}; an unpaired volume is 3-D"
            " (Z, Y, X), or 4-D (T, Z, Y, X) for several"
        )
    if not np.isfinite(volume).all():
        raise LFMError(f"{spec} contains NaN or infinite values")
    if volume.min() < 0:
        raise LFMError(f"{spec} has negative values; fluorescence volumes are non-negative")
    if not all(np.isfinite(v) and v > 0 for v in voxel):
        raise LFMError(f"{spec}: voxel size {voxel} µm must be positive")
    return volume, voxel


def _split(spec: str) -> tuple[Path, str | None]:
    for suffix in H5_SUFFIXES:
        marker = suffix + ":"
        if marker in spec.lower():
            at = spec.lower().index(marker) + len(suffix)
            return Path(spec[:at]), spec[at + 1 :]
    return Path(spec), None


def _read_tiff(path: Path):
    try:
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            meta = tif.imagej_metadata or {}
            tags = tif.pages[0].tags
            xres = tags["XResolution"].value if "XResolution" in tags else None
            yres = tags["YResolution"].value if "YResolution" in tags else xres
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise LFMError(f"cannot read {path} as a TIFF volume ({exc})") from None
    unit = str(meta.get("unit", "")).lower()
    if "spacing" not in meta or xres is None or tuple(xres) == (1, 1) or unit not in _MICRONS:
        raise LFMError(
            f"{path} does not state its voxel size in µm (ImageJ 'spacing' and unit, and the"
            " X/YResolution tags); save it from Fiji with Image ▸ Properties set, or as HDF5"
            " with an element_size_um attribute"
        )
    return volume, (float(meta["spacing"]), yres[1] / yres[0], xres[1] / xres[0])


def _read_h5(path: Path, dataset: str | None):
    try:
        with h5py.File(path, "r") as f:
            if dataset is None:
                names = []
                f.visititems(
                    lambda n, o: (
                        names.append(n)
                        if isinstance(o, h5py.Dataset) and o.ndim in (3, 4)
                        else None
                    )
                )
                if len(names) != 1:
                    raise LFMError(
                        f"{path} holds {len(names)} 3-D/4-D datasets ({names[:4]}); name one as"
                        f" {path}:NAME"
                    )
                dataset = names[0]
            if dataset not in f:
                raise LFMError(f"{path} has no dataset {dataset!r}")
            d = f[dataset]
            size = d.attrs.get("element_size_um")
            if size is None:
                raise LFMError(
                    f"{path}:{dataset} has no element_size_um attribute (z, y, x voxel size in"
                    " µm); add it, e.g. with h5py: dset.attrs['element_size_um'] = (dz, dy, dx)"
                )
            volume = d[...]
    except OSError as exc:
        raise LFMError(f"cannot read {path} as HDF5 ({exc})") from None
    size = np.asarray(size, dtype=np.float64).ravel()
    if size.size != 3:
        raise LFMError(f"{path}:{dataset}: element_size_um must be (z, y, x), got {size}")
    return volume, tuple(float(v) for v in size)


def resample(volume: np.ndarray, voxel: tuple[float, float, float], lateral: float, dz: float):
    """(Z, Y, X) with voxel (z, y, x) µm → (Z', Y', X') with voxel (dz, lateral,
    lateral): area-averaged where the grid gets coarser (box filter of the
    ratio, then linear interpolation), linear where it gets finer, so the
    integral of the volume (its content in µm³ · intensity) is kept."""
    factors = (voxel[0] / dz, voxel[1] / lateral, voxel[2] / lateral)  # new samples per old
    out = volume.astype(np.float64)
    for axis, f in enumerate(factors):
        if f < 1:  # coarser: average over the new voxel's extent first
            out = ndimage.uniform_filter1d(
                out, size=max(1, round(1 / f)), axis=axis, mode="nearest"
            )
    shape = [max(1, round(n * f)) for n, f in zip(out.shape, factors, strict=True)]
    # Sample the new voxel centres: new index j sits at old position (j + ½)/f − ½.
    coords = np.meshgrid(
        *[(np.arange(m) + 0.5) / f - 0.5 for m, f in zip(shape, factors, strict=True)],
        indexing="ij",
    )
    resampled = ndimage.map_coordinates(out, coords, order=1, mode="nearest")
    return resampled.astype(np.float32)


class UnpairedVolumes:
    """The run's unpaired volumes and their random crops.

    Args:
        files: volume file specs (see the module doc).
        bank: the PSF bank (its lateral voxel and depths set the crops' grid).
    """

    def __init__(self, files, bank: PSFBank) -> None:
        self.bank = bank
        self.lateral = float(bank.voxel_size[0])
        depths = np.asarray(bank.depths, dtype=np.float64)
        edges = slab_edges(depths, self.lateral)
        spacing = np.diff(edges).min()
        self.dz = float(spacing / max(1, int(np.ceil(spacing / self.lateral))))
        # Rows of the fine axial grid that each plane's slab averages, from the crop's top.
        rel = (edges - edges[0]) / self.dz
        bounds = np.rint(rel).astype(int)
        self.rows = [(int(a), max(int(a) + 1, int(b))) for a, b in itertools.pairwise(bounds)]
        self.span_rows = self.rows[-1][1]
        self.volumes: list[UnpairedVolume] = []
        for spec in files:
            array, voxel = read_volume_file(spec)
            for t, vol in enumerate(array):
                fine = resample(vol, voxel, self.lateral, self.dz)
                name = f"{spec}[{t}]" if len(array) > 1 else str(spec)
                if fine.shape[0] < self.span_rows:
                    raise LFMError(
                        f"{name} spans {vol.shape[0] * voxel[0]:.1f} µm in z but the PSF bank's"
                        f" planes span {edges[-1] - edges[0]:.1f} µm; give deeper stacks"
                    )
                self.volumes.append(UnpairedVolume(name, fine, self.dz))
        if not self.volumes:
            raise LFMError("data.unpaired_volumes lists no volumes")

    def crop(self, rng: np.random.Generator, lateral_voxels: int) -> np.ndarray:
        """A random crop (D, n, n), n = ``lateral_voxels``, flipped at random."""
        sizes = [min(v.data.shape[1:]) for v in self.volumes]
        if max(sizes) < lateral_voxels:
            raise LFMError(
                f"unpaired volumes are at most {max(sizes)} voxels of {self.lateral:.2f} µm"
                f" across, smaller than the {lateral_voxels}-voxel patches; use smaller patches"
                " (data.patch_lenslets) or larger volumes"
            )
        fits = [i for i, s in enumerate(sizes) if s >= lateral_voxels]
        v = self.volumes[fits[int(rng.integers(len(fits)))]].data
        z0 = int(rng.integers(v.shape[0] - self.span_rows + 1))
        y0 = int(rng.integers(v.shape[1] - lateral_voxels + 1))
        x0 = int(rng.integers(v.shape[2] - lateral_voxels + 1))
        block = v[z0 : z0 + self.span_rows, y0 : y0 + lateral_voxels, x0 : x0 + lateral_voxels]
        planes = np.stack([block[a:b].mean(axis=0) for a, b in self.rows])
        return augment(torch.from_numpy(planes), int(rng.integers(8))).contiguous().numpy()
