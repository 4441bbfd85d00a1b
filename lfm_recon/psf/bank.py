"""The PSF filter bank and its HDF5 file (layout: psf/README.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .._h5 import atomic_write, open_checked
from ..errors import LFMError
from ..microscope import Microscope

FORMAT = "lfm_recon.psf_bank"
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class PSFBank:
    """Per-depth light-field PSF kernels: the weights of the forward operator.

    Attributes:
        kernels: float32 (D, s, s, K, K). ``kernels[d, a, b]`` is the sensor
            image of a point at depth ``depths[d]`` and sub-lenslet position
            (a, b) (voxel (d, p, q) with p % s = a, q % s = b), on K×K pixels
            centred on the voxel's own lenslet, K = nnum·(2R+1); sums to 1.
        depths: float64 (D,), µm, strictly increasing, z > 0 away from the
            objective.
        microscope: the optics the kernels were computed for.
        radii: int32 (D,), support radius of each depth, lenslets; its
            kernels are zero beyond it.
        captured_energy: float64 (D,), smallest fraction of a point's light
            its kernel kept before normalisation.
        generation: how the bank was computed (oversampling, energy, ...).
    """

    kernels: np.ndarray
    depths: np.ndarray
    microscope: Microscope
    radii: np.ndarray
    captured_energy: np.ndarray
    generation: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.microscope, Microscope):
            raise LFMError(f"microscope must be a Microscope, got {type(self.microscope).__name__}")
        # Read-only copies: the content hash is cached, so the arrays must not change.
        for name, dtype in (
            ("kernels", np.float32),
            ("depths", np.float64),
            ("radii", np.int32),
            ("captured_energy", np.float64),
        ):
            array = np.array(getattr(self, name), dtype=dtype)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        k = self.kernels
        if k.ndim != 5 or k.shape[1] != k.shape[2] or k.shape[3] != k.shape[4]:
            raise LFMError(f"kernels must have shape (D, s, s, K, K), got {k.shape}")
        d, s, _, size, _ = k.shape
        nnum = self.microscope.nnum
        if size % nnum or (size // nnum) % 2 == 0:
            raise LFMError(f"kernel size K = {size} must be nnum·(2R+1) with nnum = {nnum}")
        for name in ("depths", "radii", "captured_energy"):
            if getattr(self, name).shape != (d,):
                raise LFMError(f"{name} must have shape ({d},), got {getattr(self, name).shape}")
        if not 1 <= s <= nnum:
            raise LFMError(f"voxels per lenslet s = {s} must be within 1…nnum = {nnum}")
        if not np.all(np.isfinite(self.depths)) or np.any(np.diff(self.depths) <= 0):
            raise LFMError("depths must be finite and strictly increasing")
        if np.any(self.radii < 0) or np.any(nnum * (2 * self.radii + 1) > size):
            raise LFMError(f"radii {self.radii.tolist()} do not fit kernels of K = {size}")
        if not np.all(np.isfinite(k)) or k.min() < 0:
            raise LFMError("kernels must be finite and non-negative (they are intensities)")
        for depth, radius in enumerate(self.radii):
            o = (size - nnum * (2 * radius + 1)) // 2
            if o and (
                k[depth, ..., :o, :].any()
                or k[depth, ..., size - o :, :].any()
                or k[depth, ..., :o].any()
                or k[depth, ..., size - o :].any()
            ):
                raise LFMError(f"kernels of depth {depth} are non-zero beyond its radius {radius}")

    # --- derived ----------------------------------------------------------
    @property
    def n_depths(self) -> int:
        return self.kernels.shape[0]

    @property
    def voxels_per_lenslet(self) -> int:
        """s: voxels per lenslet along each axis."""
        return self.kernels.shape[1]

    @property
    def kernel_size(self) -> int:
        """K: kernel side in sensor pixels."""
        return self.kernels.shape[-1]

    @property
    def nnum(self) -> int:
        return self.microscope.nnum

    @property
    def voxel_size(self) -> tuple[float, float]:
        """(lateral, axial) voxel size in µm; axial is the mean depth step
        (0 for a single depth)."""
        axial = float(np.mean(np.diff(self.depths))) if self.n_depths > 1 else 0.0
        return self.microscope.voxel_size(self.voxels_per_lenslet), axial

    @cached_property
    def sha256(self) -> str:
        """Content hash: kernels, depths, radii and microscope (psf/README.md)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.kernels, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.depths, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.radii, dtype="<i4").tobytes())
        h.update(json.dumps(self.microscope.to_dict(), sort_keys=True).encode())
        return h.hexdigest()

    def summary(self) -> str:
        """A human-readable description of the bank."""
        lat, ax = self.voxel_size
        lines = [
            f"PSF bank  sha256 {self.sha256[:16]}…",
            self.microscope.describe(),
            f"depths      {self.n_depths} from {self.depths[0]:g} to {self.depths[-1]:g} µm"
            + (f" (step {ax:g} µm)" if self.n_depths > 1 else ""),
            f"voxels      {self.voxels_per_lenslet} per lenslet, {lat:.4g} µm laterally",
            f"kernels     (D, s, s, K, K) = {self.kernels.shape}, "
            f"{self.kernels.nbytes / 2**20:.1f} MiB float32",
            "generation  "
            + ", ".join(f"{k} {v}" for k, v in self.generation.items() if v is not None),
            "depth µm   radius (lenslets)   kept energy",
        ]
        for z, r, e in zip(self.depths, self.radii, self.captured_energy, strict=True):
            lines.append(f"{z:9.3f}   {r:8d}            {e:.4f}")
        return "\n".join(lines)

    # --- file -------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the HDF5 file atomically (a temporary file, then rename)."""
        path = Path(path)
        _d, s, _, size, _ = self.kernels.shape
        with atomic_write(path, FORMAT, FORMAT_VERSION) as f:
            f.attrs["microscope"] = json.dumps(self.microscope.to_dict())
            f.attrs["generation"] = json.dumps(self.generation)
            f.attrs["sha256"] = self.sha256
            f.attrs["axes"] = "depth, sub_y, sub_x, y, x"
            f.create_dataset(
                "kernels",
                data=self.kernels,
                chunks=(1, s, s, size, size),
                compression="gzip",
                compression_opts=1,
                shuffle=True,
            )
            f.create_dataset("depths", data=self.depths).attrs["unit"] = "um"
            f.create_dataset("radii", data=self.radii).attrs["unit"] = "lenslets"
            f.create_dataset("captured_energy", data=self.captured_energy)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PSFBank:
        """Read a bank written by :meth:`save`, verifying format and hash."""
        path = Path(path)
        with open_checked(path, FORMAT, FORMAT_VERSION, "PSF bank", "lfm-recon psf") as f:
            bank = cls(
                kernels=f["kernels"][...],
                depths=f["depths"][...],
                microscope=Microscope.from_dict(
                    json.loads(f.attrs["microscope"]), source=str(path)
                ),
                radii=f["radii"][...],
                captured_energy=f["captured_energy"][...],
                generation=json.loads(f.attrs["generation"]),
            )
            stored = f.attrs["sha256"]
        if bank.sha256 != stored:
            raise LFMError(
                f"{path} is corrupt: its content hash does not match the one"
                " stored at save time; regenerate it with `lfm-recon psf`"
            )
        return bank
