"""Simulated data sets: paired (volume, light field) samples plus unlabeled
light fields, their HDF5 file, and the cached sample set of the demo.

File layout (format ``lfm_recon.dataset`` version 1):

    volumes      float32 (N, D, Yv, Xv)  ground truth, one chunk per sample
    lightfields  float32 (N, 1, Y, X)    their noisy light fields (photons)
    unlabeled    float32 (M, 1, Y, X)    light fields of other phantoms
    gains        float64 (N + M,)        photons per unit of H x of each light field:
                                         y ≈ Poisson(gain·H x + background)
    somata       float64 (S, 8)          sample, z, y, x, rz, ry, rx (µm), brightness
    attrs        format, format_version, psf_sha256, microscope (JSON),
                 depths (µm), voxel_size (lateral µm), simulation (JSON)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from ._h5 import atomic_write, open_checked
from .errors import LFMError
from .microscope import Microscope
from .operator import LightFieldOperator, check_camera
from .phantoms import neurons
from .psf import PSFBank, generate_psf

FORMAT = "lfm_recon.dataset"
FORMAT_VERSION = 1
DEFAULT_DENSITY = 10_000.0  # somata per mm³: sparse, a few dozen per sample

SAMPLE_PRESET = "reference"
SAMPLE_DEPTHS = np.linspace(-50.0, 50.0, 11)
SAMPLE_VOXELS = 5
SAMPLE_LENSLETS = (21, 21)
SAMPLE_VERSION = 2  # bump when the sample's recipe changes


@dataclass(frozen=True, eq=False)
class SimulatedData:
    """A simulated data set (arrays in memory; see the module doc for files).

    Attributes:
        volumes: float32 (N, D, Yv, Xv) ground-truth volumes.
        lightfields: float32 (N, 1, Y, X) their camera light fields (photons).
        unlabeled: float32 (M, 1, Y, X) light fields without ground truth.
        gains: float64 (N + M,) gain of each light field (paired first):
            y ≈ Poisson(gain · H x + background), so a reconstruction of
            ``lightfields[i]`` in photon units is ``gains[i] · volumes[i]``.
        somata: float64 (S, 8): sample index, centre z, y, x and semi-axes
            rz, ry, rx in µm, brightness.
        psf_sha256: content hash of the PSF bank used.
        microscope: the optics.
        depths: float64 (D,) µm.
        voxel_size: lateral voxel size, µm.
        simulation: the parameters that made it.
    """

    volumes: np.ndarray
    lightfields: np.ndarray
    unlabeled: np.ndarray
    gains: np.ndarray
    somata: np.ndarray
    psf_sha256: str
    microscope: Microscope
    depths: np.ndarray
    voxel_size: float
    simulation: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the HDF5 file atomically (temporary file, then rename)."""
        path = Path(path)
        with atomic_write(path, FORMAT, FORMAT_VERSION) as f:
            f.attrs["psf_sha256"] = self.psf_sha256
            f.attrs["microscope"] = json.dumps(self.microscope.to_dict())
            f.attrs["depths"] = self.depths
            f.attrs["voxel_size"] = self.voxel_size
            f.attrs["simulation"] = json.dumps(self.simulation)
            for name in ("volumes", "lightfields", "unlabeled"):
                data = getattr(self, name)
                chunks = (1, *data.shape[1:]) if len(data) else None
                f.create_dataset(name, data=data, chunks=chunks)
            f.create_dataset("somata", data=self.somata)
            f.create_dataset("gains", data=self.gains)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SimulatedData:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        with open_checked(path, FORMAT, FORMAT_VERSION, "data set", "lfm-recon simulate") as f:
            return cls(
                volumes=f["volumes"][...],
                lightfields=f["lightfields"][...],
                unlabeled=f["unlabeled"][...],
                gains=f["gains"][...],
                somata=f["somata"][...],
                psf_sha256=str(f.attrs["psf_sha256"]),
                microscope=Microscope.from_dict(json.loads(f.attrs["microscope"])),
                depths=np.asarray(f.attrs["depths"], dtype=np.float64),
                voxel_size=float(f.attrs["voxel_size"]),
                simulation=json.loads(f.attrs["simulation"]),
            )


def simulate_dataset(
    bank: PSFBank,
    n_paired: int,
    n_unlabeled: int = 0,
    *,
    lenslets: tuple[int, int] = SAMPLE_LENSLETS,
    photons: float | None = 300.0,
    background: float = 0.0,
    read_noise: float = 0.0,
    density: float = DEFAULT_DENSITY,
    neuropil: float = 0.0,
    processes: int = 0,
    radius: tuple[float, float] = (3.0, 6.0),
    brightness: tuple[float, float] = (0.3, 1.0),
    planes: str = "slab",
    seed: int | None = None,
    batch: int = 8,
    progress: bool = False,
) -> SimulatedData:
    """Phantoms, their noisy light fields, and unlabeled light fields.

    Args:
        bank: PSF bank (its depths and voxel size shape the volumes).
        n_paired: samples with ground truth (N).
        n_unlabeled: light fields of further phantoms without their volumes (M).
        lenslets: (ny, nx) lenslets per light field.
        photons, background, read_noise: camera model of
            :meth:`LightFieldOperator.simulate`.
        density: somata per mm³ of the imaged volume.
        neuropil, processes, radius, brightness, planes: passed to
            :func:`lfm_recon.phantoms.neurons` (µm; relative brightness).
        seed: the set is reproducible from it; sample i draws from
            ``SeedSequence([seed, i])``, so sets with different seeds share
            no sample. None (default) draws a fresh seed from the operating
            system, so two sets made with the defaults (a training and a
            validation set) are disjoint; it is recorded in ``simulation``.
        batch: phantoms made and projected per step (bounds memory).
        progress: show a progress bar.

    Returns:
        :class:`SimulatedData`; light fields (N or M, 1, ny·nnum, nx·nnum).
    """
    for name, value in (("n_paired", n_paired), ("n_unlabeled", n_unlabeled)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise LFMError(f"{name} must be a non-negative integer, got {value!r}")
    check_camera(photons, background, read_noise)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy) % 2**63  # fits HDF5 and JSON readers
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LFMError(
            f"seed must be a non-negative integer (or None for a fresh one), got {seed!r}"
        )
    if n_paired + n_unlabeled == 0:
        raise LFMError("ask for at least one sample (n_paired or n_unlabeled)")
    ny, nx = lenslets
    if ny < 1 or nx < 1:
        raise LFMError(f"lenslets must be positive, got {lenslets}")
    op = LightFieldOperator(bank)
    lateral = bank.voxel_size[0]
    d, yv, xv = op.volume_shape((ny, nx))
    extent_um3 = max(np.ptp(bank.depths), lateral) * yv * xv * lateral**2  # where somata go
    n_neurons = max(1, round(density * extent_um3 * 1e-9))
    volumes, lightfields, gains, somata = [], [], [], []
    total = n_paired + n_unlabeled
    for start in tqdm(
        range(0, total, batch), desc="simulate", unit="batch", disable=not progress, leave=False
    ):
        stop = min(total, start + batch)
        seeds = [np.random.SeedSequence([seed, i]).generate_state(2) for i in range(start, stop)]
        phantoms = [
            neurons(
                bank.depths,
                (yv, xv),
                lateral,
                n_neurons=n_neurons,
                neuropil=neuropil,
                processes=processes,
                radius=tuple(radius),
                brightness=tuple(brightness),
                planes=planes,
                seed=int(pair[0]),
            )
            for pair in seeds
        ]
        vol = torch.from_numpy(np.stack([p.volume for p in phantoms]))
        gain = (
            op.peak_gain(vol, photons)
            if photons is not None
            else torch.ones(len(phantoms), dtype=vol.dtype)
        )
        lf = torch.cat(
            [
                op.simulate(
                    vol[j : j + 1],
                    photons=photons,
                    gain=gain[j : j + 1] if photons else None,
                    background=background,
                    read_noise=read_noise,
                    seed=int(pair[1]),
                )
                for j, pair in enumerate(seeds)
            ]
        )
        gains.extend(gain.tolist())
        for j, p in enumerate(phantoms):
            i = start + j
            if i < n_paired:
                volumes.append(p.volume)
                somata.extend(
                    [i, *c, *r, b] for c, r, b in zip(p.centres, p.radii, p.brightness, strict=True)
                )
            lightfields.append(lf[j].numpy())
    lightfields = np.stack(lightfields).astype(np.float32)
    empty_vol = np.zeros((0, d, yv, xv), np.float32)
    return SimulatedData(
        volumes=np.stack(volumes) if volumes else empty_vol,
        lightfields=lightfields[:n_paired],
        unlabeled=lightfields[n_paired:],
        gains=np.array(gains, dtype=np.float64),
        somata=np.array(somata, dtype=np.float64).reshape(-1, 8),
        psf_sha256=bank.sha256,
        microscope=bank.microscope,
        depths=bank.depths.copy(),
        voxel_size=lateral,
        simulation=dict(
            n_paired=n_paired,
            n_unlabeled=n_unlabeled,
            lenslets=[ny, nx],
            photons=photons,
            background=background,
            read_noise=read_noise,
            density=density,
            neuropil=neuropil,
            processes=processes,
            radius=list(radius),
            brightness=list(brightness),
            planes=planes,
            seed=seed,
            n_neurons=n_neurons,
            lfm_recon_version=__version__,
        ),
    )


def cache_dir() -> Path:
    """Where the package caches derived files: ``$LFM_RECON_CACHE``, else
    ``$XDG_CACHE_HOME/lfm_recon``, else ``~/.cache/lfm_recon``."""
    if os.environ.get("LFM_RECON_CACHE"):
        return Path(os.environ["LFM_RECON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lfm_recon"


def sample(refresh: bool = False, progress: bool = False) -> tuple[PSFBank, SimulatedData]:
    """The embedded default: a small deterministic data set (built once, cached).

    The ``reference`` microscope, 11 depths −50…50 µm, 5 voxels per lenslet,
    21×21 lenslets; 16 paired samples and 16 unlabeled light fields at 300
    photons peak with a background of 5 photons. Built in a few seconds on
    first use and cached in :func:`cache_dir`.

    Returns:
        (bank, data).
    """
    folder = cache_dir()
    bank_path = folder / f"sample-v{SAMPLE_VERSION}-psf.h5"
    data_path = folder / f"sample-v{SAMPLE_VERSION}-data.h5"
    if not refresh and bank_path.is_file() and data_path.is_file():
        try:
            bank, data = PSFBank.load(bank_path), SimulatedData.load(data_path)
            if data.psf_sha256 == bank.sha256:
                return bank, data
        except LFMError:
            pass  # damaged cache: rebuild below
    folder.mkdir(parents=True, exist_ok=True)
    bank = generate_psf(
        Microscope.preset(SAMPLE_PRESET), SAMPLE_DEPTHS, SAMPLE_VOXELS, progress=progress
    )
    data = simulate_dataset(
        bank,
        16,
        16,
        lenslets=SAMPLE_LENSLETS,
        photons=300.0,
        background=5.0,
        seed=2026,
        progress=progress,
    )
    bank.save(bank_path)
    data.save(data_path)
    return bank, data
