"""Training data: labelled (volume + light field) and unlabeled light fields,
random lenslet-aligned patches, and flips/transposes that keep y = H x.

Batches are drawn from a generator seeded by (seed, step): the global batch
of a step is the same whatever the number of processes, each process takes
its slice, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import SimulatedData
from ..errors import LFMError
from ..io import TIFF_SUFFIXES
from ..psf.bank import PSFBank
from .config import DataConfig


@dataclass
class Batch:
    """One step's samples (this process's slice).

    Attributes:
        y: (B, 1, Y, X) light fields, counts; labelled ones first.
        background: (B, 1, 1, 1) counts per pixel.
        target: (L, D, Yv, Xv) volumes of the first L light fields, in photons
            per voxel (gain · ground truth), or None when L = 0.
    """

    y: torch.Tensor
    background: torch.Tensor
    target: torch.Tensor | None

    @property
    def n_labelled(self) -> int:
        return 0 if self.target is None else len(self.target)

    def to(self, device) -> Batch:
        t = None if self.target is None else self.target.to(device)
        return Batch(self.y.to(device), self.background.to(device), t)


def bank_symmetries(bank: PSFBank, rtol: float = 1e-4) -> dict[str, bool]:
    """Which lateral symmetries the kernels have (so H commutes with them).

    ``flip_y``: kernels[:, s−1−a, b, K−1−u, v] = kernels[:, a, b, u, v];
    ``flip_x`` likewise along x; ``transpose``: kernels[:, b, a, v, u] =
    kernels[:, a, b, u, v]. True within ``rtol`` of the largest tap.
    """
    k = bank.kernels
    tol = rtol * float(k.max())
    return {
        "flip_y": bool(np.abs(k[:, ::-1, :, ::-1, :] - k).max() <= tol),
        "flip_x": bool(np.abs(k[:, :, ::-1, :, ::-1] - k).max() <= tol),
        "transpose": bool(np.abs(k.transpose(0, 2, 1, 4, 3) - k).max() <= tol),
    }


def augment(t: torch.Tensor, code: int) -> torch.Tensor:
    """Apply dihedral element ``code`` (bits: 1 flip y, 2 flip x, 4 transpose)
    to the last two axes of (…, Y, X); volumes and light fields alike."""
    if code & 1:
        t = t.flip(-2)
    if code & 2:
        t = t.flip(-1)
    if code & 4:
        t = t.transpose(-1, -2)
    return t


class TrainingData:
    """The labelled, unlabeled and validation sets of a run, in memory.

    Args:
        cfg: the run's data section.
        bank: the PSF bank; every data set must have been made with it.
    """

    def __init__(self, cfg: DataConfig, bank: PSFBank) -> None:
        self.cfg = cfg
        self.nnum, self.s = bank.nnum, bank.voxels_per_lenslet
        train = _load_dataset(cfg.train, bank)
        n_paired = len(train.volumes)
        if cfg.validation:
            self.validation = _load_dataset(cfg.validation, bank)
            self.validation_indices = np.arange(len(self.validation.volumes))
            held = n_paired
        else:
            if cfg.n_validation >= n_paired:
                raise LFMError(
                    f"{cfg.train} has {n_paired} paired samples: holding out"
                    f" data.n_validation = {cfg.n_validation} leaves none to train on; give"
                    " data.validation or lower data.n_validation"
                )
            self.validation = train
            held = n_paired - cfg.n_validation
            self.validation_indices = np.arange(held, n_paired)
        if len(self.validation_indices) == 0:
            raise LFMError("the validation set has no paired samples to score")
        n_labelled = held if cfg.n_labelled == 0 else cfg.n_labelled
        if n_labelled > held:
            raise LFMError(
                f"data.n_labelled = {cfg.n_labelled} but {cfg.train} has only {held} paired"
                " samples outside the validation set"
            )
        background = float(train.simulation.get("background", 0.0))
        self.volumes = train.volumes[:n_labelled] * train.gains[:n_labelled, None, None, None]
        self.volumes = self.volumes.astype(np.float32)
        self.lightfields = train.lightfields[:n_labelled]
        self.labelled_background = np.full(n_labelled, background, np.float32)
        unlabeled, backgrounds = [], []
        if cfg.use_train_unlabeled and len(train.unlabeled):
            unlabeled.append(train.unlabeled)
            backgrounds.append(np.full(len(train.unlabeled), background, np.float32))
        for path in cfg.unlabeled:
            frames, b = _load_unlabeled(path, bank, cfg.tiff_background)
            unlabeled.append(frames)
            backgrounds.append(np.full(len(frames), b, np.float32))
        self._unlabeled_parts = unlabeled
        self._unlabeled_bg = backgrounds
        if self.n_labelled == 0 and self.n_unlabeled == 0:
            raise LFMError(
                f"nothing to train on: {cfg.train} gives no paired samples outside the validation"
                " set and no unlabeled light fields are given (data.unlabeled)"
            )
        self._check_sizes()
        self.symmetries = bank_symmetries(bank)
        self.codes = _allowed_codes(self.symmetries) if cfg.augment else [0]

    @property
    def n_labelled(self) -> int:
        return len(self.volumes)

    @property
    def n_unlabeled(self) -> int:
        return sum(len(u) for u in self._unlabeled_parts)

    def _check_sizes(self) -> None:
        p = self.cfg.patch_lenslets
        frames = [self.lightfields, *self._unlabeled_parts]
        if p == 0:
            sizes = {f.shape[2:] for f in frames if len(f)}
            if len(sizes) > 1:
                raise LFMError(
                    f"the light fields have different sizes {sorted(sizes)}; whole frames"
                    " cannot share a batch: use patches (data.patch_lenslets > 0)"
                )
            return
        smallest = min(min(f.shape[2], f.shape[3]) // self.nnum for f in frames if len(f))
        if p > smallest:
            raise LFMError(
                f"data.patch_lenslets = {p} but the smallest light field is {smallest} lenslets"
                f" across; use at most {smallest} (or 0 for whole frames)"
            )

    def batch(self, seed: int, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This process's slice of step ``step``'s global batch."""
        cfg = self.cfg
        rng = np.random.default_rng([seed, step])
        n_l = cfg.batch_size if self.n_labelled else 0
        n_u = cfg.unlabeled_batch_size if self.n_unlabeled else 0
        labelled = [self._draw(rng, labelled=True) for _ in range(n_l)]
        unlabeled = [self._draw(rng, labelled=False) for _ in range(n_u)]
        mine_l = _slice(labelled, rank, world)
        mine_u = _slice(unlabeled, rank, world)
        items = mine_l + mine_u
        y = torch.from_numpy(np.stack([it[0] for it in items]))
        b = torch.tensor([it[1] for it in items], dtype=torch.float32).reshape(-1, 1, 1, 1)
        target = torch.from_numpy(np.stack([it[2] for it in mine_l])) if mine_l else None
        return Batch(y, b, target)

    def _draw(self, rng: np.random.Generator, labelled: bool):
        """(y (1, Y, X), background, volume (D, Yv, Xv) or None), augmented."""
        if labelled:
            i = int(rng.integers(self.n_labelled))
            y, b, v = self.lightfields[i], self.labelled_background[i], self.volumes[i]
        else:
            sizes = np.array([len(u) for u in self._unlabeled_parts])
            flat = int(rng.integers(sizes.sum()))
            part = int(np.searchsorted(np.cumsum(sizes), flat, side="right"))
            i = flat - int(sizes[:part].sum())
            y, b, v = self._unlabeled_parts[part][i], self._unlabeled_bg[part][i], None
        p = self.cfg.patch_lenslets
        n, s = self.nnum, self.s
        if p:
            ny, nx = y.shape[1] // n, y.shape[2] // n
            i0, j0 = int(rng.integers(ny - p + 1)), int(rng.integers(nx - p + 1))
            y = y[:, i0 * n : (i0 + p) * n, j0 * n : (j0 + p) * n]
            if v is not None:
                v = v[:, i0 * s : (i0 + p) * s, j0 * s : (j0 + p) * s]
        code = int(self.codes[int(rng.integers(len(self.codes)))])
        y = augment(torch.from_numpy(np.ascontiguousarray(y)), code).contiguous().numpy()
        if v is not None:
            v = augment(torch.from_numpy(np.ascontiguousarray(v)), code).contiguous().numpy()
        return y, float(b), v


def _slice(items: list, rank: int, world: int) -> list:
    if len(items) % world:
        raise LFMError(
            f"a batch of {len(items)} cannot be split evenly over {world} processes; make"
            " data.batch_size and data.unlabeled_batch_size multiples of the process count"
        )
    per = len(items) // world
    return items[rank * per : (rank + 1) * per]


def _allowed_codes(sym: dict[str, bool]) -> list[int]:
    codes = [0]
    for bit, name in ((1, "flip_y"), (2, "flip_x"), (4, "transpose")):
        if sym[name]:
            codes = codes + [c | bit for c in codes]
    return codes


def _load_dataset(path: str, bank: PSFBank) -> SimulatedData:
    data = SimulatedData.load(path)
    if data.psf_sha256 != bank.sha256:
        raise LFMError(
            f"{path} was simulated with PSF bank {data.psf_sha256[:12]}… but the run's PSF"
            f" bank is {bank.sha256[:12]}…; train with the bank the data was made with (or"
            " simulate the data again with `lfm-recon simulate --psf`)"
        )
    return data


def _load_unlabeled(path: str, bank: PSFBank, tiff_background: float):
    """(frames (T, 1, Y, X) float32, background) from an HDF5 data set's
    unlabeled light fields or a TIFF stack of rectified frames."""
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        if not Path(path).is_file():
            raise LFMError(f"unlabeled light-field file {path} does not exist")
        try:
            frames = np.asarray(tifffile.imread(path), dtype=np.float32)
        except Exception as exc:  # tifffile raises several types
            raise LFMError(f"cannot read {path} as a TIFF stack ({exc})") from None
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise LFMError(f"{path} must hold (T, Y, X) light fields, got shape {frames.shape}")
        n = bank.nnum
        if frames.shape[1] % n or frames.shape[2] % n:
            raise LFMError(
                f"{path} frames are {frames.shape[1]}×{frames.shape[2]} px, not whole lenslets of"
                f" nnum = {n}; rectify them first (lfm-recon calibrate)"
            )
        if not np.isfinite(frames).all():
            raise LFMError(f"{path} contains NaN or infinite values")
        return frames[:, None], tiff_background
    data = _load_dataset(path, bank)
    if not len(data.unlabeled):
        raise LFMError(f"{path} holds no unlabeled light fields")
    return data.unlabeled, float(data.simulation.get("background", 0.0))
