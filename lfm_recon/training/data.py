"""What a run trains and validates on: labelled (volume + light field) frames,
unlabeled light fields and the validation set, loaded once, split, and checked
for leaks between training and validation.

Every frame carries its *signal scale* c = mean(y − b) over the whole frame
(:meth:`lfm_recon.unfolded.UnfoldedISTA.signal_scale`), so that a patch cut
from it is normalised as the whole frame is at inference. Patches are drawn
by :mod:`lfm_recon.training.sampler`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._h5 import file_format
from ..data import FORMAT as DATASET_FORMAT
from ..data import SimulatedData
from ..errors import LFMError
from ..psf.bank import PSFBank
from ..recording import Recording
from ..unfolded import UnfoldedISTA
from .config import DataConfig


@dataclass(frozen=True)
class FrameSet:
    """Whole light fields of one source, with what sampling needs.

    Attributes:
        name: where they came from (for messages).
        y: float32 (N, 1, Y, X) counts.
        background: float32 (N,) counts per pixel.
        scale: float32 (N,) signal scale c of each whole frame.
        volumes: float32 (N, D, Yv, Xv) ground truth in photons per voxel
            (gain · volume), or None for unlabeled frames.
    """

    name: str
    y: np.ndarray
    background: np.ndarray
    scale: np.ndarray
    volumes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def frame_set(name: str, y: np.ndarray, background, volumes=None) -> FrameSet:
    """A :class:`FrameSet` with each frame's signal scale computed."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    b = np.broadcast_to(np.asarray(background, dtype=np.float32), (len(y),)).copy()
    scale = np.zeros(len(y), np.float32)
    for start in range(0, len(y), 64):  # bounded memory
        t = torch.from_numpy(y[start : start + 64])
        tb = torch.from_numpy(b[start : start + 64]).reshape(-1, 1, 1, 1)
        scale[start : start + 64] = UnfoldedISTA.signal_scale(t, tb).flatten().numpy()
    return FrameSet(name, y, b, scale, volumes)


class TrainingData:
    """The labelled, unlabeled and validation frames of a run, in memory.

    Args:
        cfg: the run's data section.
        bank: the PSF bank; every data set must have been made with it.
        seed: the run's seed (draws a simulated validation set, if one is needed).

    Attributes:
        labelled: paired frames used with their volumes (may be empty).
        unlabeled: light fields without volumes, one :class:`FrameSet` per source.
        validation: the data set scored each epoch, and
        validation_indices: which of its paired samples, and
        validation_background: (n,) their backgrounds, photons per pixel.
        simulated_lenslets: side of simulated light fields (``[data.simulate]``).
    """

    def __init__(self, cfg: DataConfig, bank: PSFBank, seed: int = 0) -> None:
        self.cfg = cfg
        self.nnum, self.s = bank.nnum, bank.voxels_per_lenslet
        train = _load_dataset(cfg.train, bank) if cfg.train else None
        if train is None and cfg.n_labelled:
            raise LFMError(
                f"data.n_labelled = {cfg.n_labelled} but no data.train set holds paired samples"
            )
        self.unlabeled: list[FrameSet] = []
        if train is not None and cfg.use_train_unlabeled and len(train.unlabeled):
            name = f"{cfg.train} (unlabeled)"
            self.unlabeled.append(frame_set(name, train.unlabeled, _background(train)))
        for path in cfg.unlabeled:
            self.unlabeled.append(_load_unlabeled(path, bank, cfg.frames_background))
        held = self._split_validation(train, bank, seed)
        n_labelled = held if cfg.n_labelled is None else cfg.n_labelled
        if n_labelled > held:
            raise LFMError(
                f"data.n_labelled = {cfg.n_labelled} but {cfg.train} has only {held} paired"
                " samples outside the validation set"
            )
        if train is None:
            self.labelled = frame_set("no paired set", np.zeros((0, 1, 1, 1), np.float32), 0.0)
        else:
            volumes = train.volumes[:n_labelled] * train.gains[:n_labelled, None, None, None]
            self.labelled = frame_set(
                f"{cfg.train} (paired)",
                train.lightfields[:n_labelled],
                _background(train),
                volumes.astype(np.float32),
            )
        if self.n_labelled == 0 and self.n_unlabeled == 0 and cfg.simulate is None:
            raise LFMError(
                f"nothing to train on: {cfg.train or 'no data.train'} gives no paired samples"
                " outside the validation set, no unlabeled light fields are given"
                " (data.unlabeled) and there is no [data.simulate]"
            )
        self._check_leaks(train)

    # --- split ------------------------------------------------------------------------
    def _split_validation(self, train: SimulatedData | None, bank: PSFBank, seed: int) -> int:
        """Set the validation set; returns how many paired samples of train
        are left to learn from (the first ones)."""
        cfg = self.cfg
        n_paired = 0 if train is None else len(train.volumes)
        self.simulated_lenslets = self._simulated_lenslets(train)
        if not cfg.validation and train is None:
            self._simulated_validation(bank, seed)
            return 0
        if cfg.validation:
            if _same_file(cfg.validation, cfg.train):
                raise LFMError(
                    f"data.validation and data.train are the same file ({cfg.train}): the model"
                    " would be picked on its own training data; simulate a separate validation"
                    " set (lfm-recon simulate with another --seed) or leave data.validation"
                    " empty to hold out data.n_validation samples"
                )
            self.validation = _load_dataset(cfg.validation, bank)
            self.validation_indices = np.arange(len(self.validation.volumes))
            train_seed = None if train is None else train.simulation.get("seed")
            seeds = (train_seed, self.validation.simulation.get("seed"))
            if seeds[0] is not None and seeds[0] == seeds[1]:
                raise LFMError(
                    f"{cfg.train} and {cfg.validation} were simulated with the same seed"
                    f" ({seeds[0]}), so their samples repeat one another; simulate the"
                    " validation set with another --seed"
                )
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
        self.validation_background = np.full(
            len(self.validation_indices), _background(self.validation)
        )
        return held

    def _simulated_lenslets(self, train: SimulatedData | None) -> int:
        """Side of simulated light fields: as asked, else the patches', else
        the frames' (whole-frame training), else 11 lenslets."""
        cfg = self.cfg
        if cfg.simulate is not None and cfg.simulate.lenslets:
            return cfg.simulate.lenslets
        if cfg.patch_lenslets:
            return cfg.patch_lenslets
        frames = [u.y for u in self.unlabeled] + ([] if train is None else [train.lightfields])
        sizes = {(f.shape[2] // self.nnum, f.shape[3] // self.nnum) for f in frames if len(f)}
        square = {s[0] for s in sizes if s[0] == s[1]}
        return square.pop() if len(sizes) == 1 and len(square) == 1 else 11

    def _simulated_validation(self, bank: PSFBank, seed: int) -> None:
        from ..operator import LightFieldOperator
        from ..simulator import Simulator, simulated_dataset

        sim = self.cfg.simulate
        if sim is None or not sim.validation:
            raise LFMError(
                "nothing to pick the model on: give data.validation, data.train or"
                " [data.simulate] with validation > 0"
            )
        op = LightFieldOperator(bank)
        simulator = Simulator(op, sim, self.simulated_lenslets)
        self.validation, self.validation_background = simulated_dataset(
            simulator, sim.validation, seed
        )
        self.validation_indices = np.arange(sim.validation)

    def _check_leaks(self, train: SimulatedData | None) -> None:
        """No validation light field or volume may also be a training one."""
        val = self.validation
        idx = self.validation_indices
        val_frames = {_digest(f): i for i, f in zip(idx, val.lightfields[idx], strict=True)}
        for part in (self.labelled, *self.unlabeled):
            shared = [val_frames[d] for d in map(_digest, part.y) if d in val_frames]
            if shared:
                raise LFMError(
                    f"{len(shared)} validation light field(s) (e.g. sample {shared[0]} of"
                    f" {self.cfg.validation or self.cfg.train or 'the simulated set'}) are"
                    " also training frames in"
                    f" {part.name}; a model picked on them would be scored on what it was"
                    " trained on: remove them from the training inputs"
                )
        val_volumes = {_digest(v) for v in val.volumes[idx]}
        if train is None:
            return
        if any(_digest(v) in val_volumes for v in train.volumes[: self.n_labelled]):
            raise LFMError(
                f"a validation volume is also a training volume of {self.cfg.train}; simulate"
                " the validation set with another --seed"
            )

    # --- sizes --------------------------------------------------------------------------
    @property
    def n_labelled(self) -> int:
        return len(self.labelled)

    @property
    def n_unlabeled(self) -> int:
        return sum(len(u) for u in self.unlabeled)

    def frame_lenslets(self) -> list[tuple[int, int]]:
        """(ny, nx) lenslets of every training source's frames."""
        return [
            (part.y.shape[2] // self.nnum, part.y.shape[3] // self.nnum)
            for part in (self.labelled, *self.unlabeled)
            if len(part)
        ]


def _digest(a: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest()


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:
        return False


def _background(data: SimulatedData) -> float:
    return float(data.simulation.get("background", 0.0))


def _load_dataset(path: str, bank: PSFBank) -> SimulatedData:
    data = SimulatedData.load(path)
    if data.psf_sha256 != bank.sha256:
        raise LFMError(
            f"{path} was simulated with PSF bank {data.psf_sha256[:12]}… but the run's PSF"
            f" bank is {bank.sha256[:12]}…; train with the bank the data was made with (or"
            " simulate the data again with `lfm-recon simulate --psf`)"
        )
    return data


def _load_unlabeled(path: str, bank: PSFBank, frames_background: float) -> FrameSet:
    """Unlabeled light fields: a simulated data set's ``unlabeled`` set (with
    its background), or rectified frames of any file a
    :class:`~lfm_recon.recording.Recording` reads (TIFF stacks, HDF5
    datasets ``file.h5:name``) with ``frames_background``."""
    if file_format(Path(path)) == DATASET_FORMAT:
        data = _load_dataset(path, bank)
        if not len(data.unlabeled):
            raise LFMError(f"{path} holds no unlabeled light fields")
        return frame_set(path, data.unlabeled, _background(data))
    recording = Recording([path])
    ny, nx = recording.frame_shape
    n = bank.nnum
    if ny % n or nx % n:
        raise LFMError(
            f"{path} frames are {ny}×{nx} px, not whole lenslets of nnum = {n}; rectify them"
            " first (lfm-recon calibrate)"
        )
    frames = recording.read(0, len(recording))[:, None]
    return frame_set(path, frames, frames_background)
