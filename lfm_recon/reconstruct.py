"""Batch reconstruction of recordings: streaming, resumable, multi-process.

Two entry points:

* :func:`reconstruct` — arrays in, volumes out (the per-frame API).
* :func:`reconstruct_files` — what ``lfm-recon reconstruct`` runs: frames
  from TIFF/HDF5 inputs (:class:`~lfm_recon.recording.Recording`), optionally
  calibrated, stream through a prefetching loader and are reconstructed in
  batches; the volumes go to an HDF5 file, one ImageJ TIFF, or a folder of
  ImageJ TIFFs (one per frame), with a per-frame QC table.

Crash safety and resuming: finished batches are written as *part* files in
``OUT.partial/`` (each written under a temporary name, then renamed), next
to a manifest of the run's settings. A frame counts as done only once its
part is renamed into place, so a run killed at any moment (Ctrl-C, SIGTERM,
kill -9, a full disk) leaves every finished frame intact. Re-running the
same command recomputes only the missing frames; when all are done, the
parts are merged into OUT (again via a temporary name) and the folder is
removed. Under ``torchrun`` each process takes every N-th batch and writes
its own parts; rank 0 merges.

Output layout:

* ``OUT.h5``: ``volumes`` float32 (T, D, Yv, Xv), one chunk per frame, with
  attributes ``element_size_um`` (axial, lateral, lateral), ``depths_um``,
  ``axes`` "TZYX"; ``qc/residual``, ``qc/max``, ``qc/mean``, ``qc/flagged``
  (T,) and ``qc/source``; file attributes ``format`` and ``provenance``
  (JSON: inputs, method and parameters, PSF/model/calibration hashes,
  package version).
* ``OUT.tif``: one ImageJ hyperstack (T, Z, Y, X) (TZYX) with the voxel size;
  ``OUT.qc.csv`` and ``OUT.provenance.json`` beside it.
* ``OUT/`` (no suffix): ``frame_000000.tif``… ImageJ hyperstacks (Z, Y, X),
  plus ``qc.csv`` and ``provenance.json``.

QC: the relative reprojection residual ‖H x + b − y‖/‖y‖ of each frame, its
volume's max and mean; a frame is flagged when its residual exceeds the
median by more than 5 robust standard deviations (1.4826 · MAD, at least 1 %
of the median), or when it holds no signal.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from ._device import resolve_device
from .background import AUTO, frames_background, recording_background, split_level
from .errors import LFMError
from .io import TIFF_SUFFIXES, write_volume_tiff
from .operator import LightFieldOperator
from .psf.bank import PSFBank
from .recording import H5_SUFFIXES, Recording, file_sha256
from .solvers import (
    DEFAULT_ITERATIONS,
    DEFAULT_LAMBDA_FRACTION,
    FILTERED_METHODS,
    METHODS,
    check_filter,
    solve,
)
from .unfolded import UnfoldedISTA

FORMAT = "lfm_recon.volumes"
FORMAT_VERSION = 1
ALL_METHODS = ("net", *METHODS)
FLAG_SIGMAS = 5.0


# --- the per-batch function ------------------------------------------------------------
class Reconstructor:
    """Light fields (B, 1, Y, X) → volumes (B, D, Yv, Xv) by one method.

    Args:
        model_or_op: an :class:`~lfm_recon.unfolded.UnfoldedISTA` (any
            method; "net" needs it) or a :class:`LightFieldOperator`.
        method: "net" or a solver of :data:`lfm_recon.solvers.METHODS`.
        background: the frames' constant level c, counts per pixel: c ≥ 0
            is the model's background, c < 0 (a camera offset below the dark
            frame) is added back to the frames (:mod:`lfm_recon.background`);
            or ``"auto"``: estimated from the frames by
            :meth:`estimate_background` before the first call.
        n_iter, lam_fraction, rho, prior, filter: the solvers' (see
            :func:`lfm_recon.solvers.solve`); ignored by "net".

    Frames without signal (all ≤ background) give a zero volume (the
    solvers would refuse them; one dark frame must not stop a recording).
    """

    def __init__(
        self,
        model_or_op,
        method: str = "net",
        *,
        background: float = 0.0,
        n_iter: int | None = None,
        lam_fraction: float = DEFAULT_LAMBDA_FRACTION,
        rho: float | None = None,
        prior: str = "l1",
        filter: str | None = None,
    ) -> None:
        if method not in ALL_METHODS:
            raise LFMError(f"method must be one of {', '.join(ALL_METHODS)}, got {method!r}")
        if isinstance(model_or_op, UnfoldedISTA):
            self.net, self.op = model_or_op, model_or_op.op
        elif isinstance(model_or_op, LightFieldOperator):
            self.net, self.op = None, model_or_op
        else:
            raise LFMError(
                "reconstruct needs a trained model (UnfoldedISTA) or a LightFieldOperator,"
                f" got {type(model_or_op).__name__}"
            )
        if method == "net" and self.net is None:
            raise LFMError("method 'net' needs a trained model (--model); the PSF alone is not one")
        self.method, self.background = method, None
        self.estimated = isinstance(background, str) and background == AUTO
        if not self.estimated:
            self.set_background(background)
        self.n_iter = None if method == "net" else _iterations(n_iter, method)
        _check_solver_options(lam_fraction, rho, prior)
        if method == "net" and filter not in (None, "none"):
            raise LFMError("--filter is for the solvers rl and isra, not for the network")
        self.filter = "none" if method == "net" else check_filter(method, filter)
        self.options = {"lam_fraction": lam_fraction, "rho": rho, "prior": prior}
        self.options["filter"] = self.filter

    def set_background(self, level) -> None:
        """Use the constant level ``level`` (counts per pixel, any sign)."""
        if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
            raise LFMError(f"background must be a number of counts or 'auto', got {level!r}")
        self.lift, self.solver_background = split_level(level)
        self.background = float(level)

    def estimate_background(self, lightfields) -> float:
        """Set the level from rectified light fields (Y, X) or (T, Y, X)
        (:func:`lfm_recon.background.estimate_background`); returns it."""
        self.set_background(frames_background(lightfields, self.op.nnum))
        return self.background

    def parameters(self) -> dict:
        """What determines the result (for provenance and resume checks)."""
        p = {"method": self.method, "background": self.background}
        if self.estimated:
            p["background_estimated"] = True
        if self.method != "net":
            p["iterations"] = self.n_iter
            if self.method in ("fista", "admm"):
                p["lam_fraction"] = self.options["lam_fraction"]
            if self.method == "admm":
                p["rho"], p["prior"] = self.options["rho"], self.options["prior"]
        if self.method in FILTERED_METHODS:
            p["filter"] = self.filter
        return p

    @torch.no_grad()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        op = self.op
        if self.background is None:
            raise LFMError("background 'auto' is not estimated yet: call estimate_background")
        y = y.to(device=op.device, dtype=op.dtype)
        signal = (y - self.background).clamp_min(0).flatten(1).sum(dim=1) > 0
        out = torch.zeros((len(y), *op.volume_shape(_lenslets(op, y))), device=op.device)
        if not bool(signal.any()):
            return out
        keep = torch.nonzero(signal).flatten()
        ys = y if bool(signal.all()) else y[keep]
        ys, b = ys + self.lift, self.solver_background  # c < 0 lifts the frames, c ≥ 0 is b
        if self.method == "net":
            x = self.net(ys, b)
        else:
            x = solve(op, ys, self.method, self.n_iter, background=b, **self.options)
        if bool(signal.all()):
            return x
        out[keep] = x
        return out


def _iterations(n_iter, method: str) -> int:
    if n_iter is None:
        return DEFAULT_ITERATIONS[method]
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise LFMError(f"iterations (n_iter) must be a positive integer, got {n_iter!r}")
    return n_iter


def _check_solver_options(lam_fraction, rho, prior) -> None:
    """The solvers' options, checked before any file is touched."""
    from .solvers import PRIORS

    if not (isinstance(lam_fraction, (int, float)) and math.isfinite(lam_fraction)):
        raise LFMError(f"λ fraction must be finite and ≥ 0, got {lam_fraction}")
    if lam_fraction < 0:
        raise LFMError(f"λ fraction must be finite and ≥ 0, got {lam_fraction}")
    if rho is not None and not (math.isfinite(rho) and rho > 0):
        raise LFMError(f"rho must be a positive number, got {rho}")
    if prior not in PRIORS:
        raise LFMError(f"prior must be one of {PRIORS}, got {prior!r}")


def _lenslets(op: LightFieldOperator, y: torch.Tensor) -> tuple[int, int]:
    return y.shape[-2] // op.nnum, y.shape[-1] // op.nnum


def reconstruct(
    frames,
    model_or_op,
    method: str = "net",
    *,
    background: float | str = 0.0,
    batch: int = 8,
    calibration=None,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """Reconstruct light-field frames held in memory.

    Args:
        frames: (Y, X), (T, Y, X) or (T, 1, Y, X) counts (array or tensor):
            rectified light fields, or raw camera frames with ``calibration``.
        model_or_op: a trained :class:`~lfm_recon.unfolded.UnfoldedISTA` or a
            :class:`~lfm_recon.LightFieldOperator`.
        method: "net" or a solver name (see :class:`Reconstructor`).
        background: the constant level, counts per pixel (any sign, see
            :class:`Reconstructor`), or ``"auto"``: estimated from up to 8
            of the (rectified) frames (:func:`lfm_recon.background.frames_background`).
        batch: frames per batch.
        calibration: a :class:`~lfm_recon.calibration.Calibration` for raw frames.
        options: n_iter, lam_fraction, rho, prior, filter for the solvers.

    Returns:
        float32 (T, D, Yv, Xv) volumes in photons per voxel ((D, Yv, Xv) for
        one 2-D frame).
    """
    fn = Reconstructor(model_or_op, method, background=background, **options)
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    single = a.ndim == 2
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if single:
        a = a[None]
    if a.ndim != 3:
        raise LFMError(f"frames must be (Y, X), (T, Y, X) or (T, 1, Y, X), got {a.shape}")
    _check_batch(batch)
    if calibration is not None:
        from .calibration import check_bank

        check_bank(calibration, fn.op.bank)
    if fn.background is None:
        fn.set_background(frames_background(a, fn.op.nnum, calibration))
    out = []
    for start in tqdm(range(0, len(a), batch), disable=not progress, desc="reconstruct"):
        y = a[start : start + batch].astype(np.float32)
        if calibration is not None:
            y = calibration.apply(y)
        y = torch.from_numpy(np.ascontiguousarray(y))[:, None]
        out.append(fn(y).cpu().numpy().astype(np.float32))
    volumes = np.concatenate(out)
    return volumes[0] if single else volumes


def _check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LFMError(f"batch must be a positive integer, got {batch!r}")


# --- files ---------------------------------------------------------------------------------
@dataclass
class RunReport:
    """What :func:`reconstruct_files` did.

    Attributes:
        output: the file or folder written.
        frames: frames in the recording.
        computed: frames reconstructed by this call (the rest were done before).
        flagged: indices of frames whose QC flags them (far residual or no signal).
        empty: indices of frames without signal (their volumes are zero).
        seconds: wall time of this call's reconstruction loop.
        parameters: the method and its parameters.
    """

    output: Path
    frames: int
    computed: int
    flagged: list[int]
    seconds: float
    parameters: dict
    empty: list[int]

    @property
    def volumes_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def output_kind(path: Path) -> str:
    """ "h5", "tif" (one hyperstack) or "folder" (one TIFF per frame)."""
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        return "h5"
    if suffix in TIFF_SUFFIXES:
        return "tif"
    if suffix:
        raise LFMError(
            f"output {path}: give an .h5 file, a .tif file (one ImageJ hyperstack) or a folder"
            " name without suffix (one ImageJ TIFF per frame)"
        )
    return "folder"


def reconstruct_files(
    inputs,
    output: str | Path,
    *,
    method: str = "net",
    model: str | Path | None = None,
    psf: str | Path | None = None,
    calibration: str | Path | None = None,
    background: float | str = 0.0,
    batch: int = 8,
    device: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> RunReport:
    """Reconstruct a recording from files to a volume file (see the module doc).

    Args:
        inputs: TIFF/HDF5 files, ``file.h5:dataset`` specs or globs.
        output: ``.h5``, ``.tif`` or a folder name (see :func:`output_kind`).
        method: "net" (needs ``model``) or a solver name (needs ``psf`` or
            ``model``, whose PSF is then used).
        model: a trained model file (``lfm-recon train``).
        psf: a PSF bank file; with ``model`` it must be the model's.
        calibration: a calibration file; the inputs are then raw frames.
        background: the constant level, counts per pixel (after the dark
            frame, if calibrated; any sign), or ``"auto"``: estimated from up
            to 8 frames spread over the recording and recorded in the
            provenance (``background``, ``background_estimated``).
        batch: frames per batch.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
        precision: "fp32", or "tf32"/"bf16" for the operator on CUDA.
        overwrite: replace an existing output or an unfinished run of other
            settings.
        progress: progress bar (volumes/s, ETA) on rank 0.
        options: n_iter, lam_fraction, rho, prior, filter for the solvers.

    Returns:
        :class:`RunReport`.
    """
    output = Path(output)
    kind = output_kind(output)
    _check_batch(batch)
    if not output.parent.is_dir():
        raise LFMError(f"output folder {output.parent} does not exist")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    try:
        fn, provenance = _setup(model, psf, method, background, dev, precision, options)
        recording = Recording(inputs)
        cal = _calibration(calibration, fn.op, recording, provenance)
        if fn.background is None:  # "auto": from the frames, before the manifest
            fn.set_background(recording_background(recording, cal, fn.op.nnum))
            provenance.update(fn.parameters())
        provenance.update(
            inputs=recording.describe(),
            frames=len(recording),
            volume_shape=list(fn.op.volume_shape(_lenslets_of(cal, fn.op, recording))),
            output_kind=kind,
            lfm_recon_version=__version__,
        )
        run = _PartStore(output, provenance, overwrite, rank, world)
        return run.execute(recording, cal, fn, batch, progress and rank == 0)
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def _setup(model, psf, method, background, device, precision, options):
    from .modelfile import load_model

    compute = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}.get(precision)
    if compute is None:
        raise LFMError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    if compute != "exact" and device.type != "cuda":
        raise LFMError(f"precision {precision} needs a CUDA device; use fp32 on the CPU")
    if model is None and psf is None:
        raise LFMError("give --model (a trained network) or --psf (a PSF bank for the solvers)")
    bank = None if psf is None else PSFBank.load(psf)
    provenance: dict = {"psf_sha256": None, "model_sha256": None}
    if model is not None:
        net = load_model(model, bank=bank, device=device, compute=compute)
        target = net
        provenance["model_sha256"] = file_sha256(model)
        provenance["psf_sha256"] = net.op.bank_sha256
    else:
        target = LightFieldOperator(bank, device=device, compute=compute)
        provenance["psf_sha256"] = bank.sha256
    fn = Reconstructor(target, method, background=background, **options)
    provenance.update(fn.parameters())
    provenance["voxel_size_um"] = list(fn.op.voxel_size)
    provenance["depths_um"] = list(fn.op.depths)
    return fn, provenance


def _calibration(path, op, recording: Recording, provenance: dict):
    provenance["calibration_sha256"] = None
    if path is None:
        y, x = recording.frame_shape
        n = op.nnum
        if y % n or x % n:
            raise LFMError(
                f"frames are {y}×{x} px but the PSF has nnum = {n} pixels per lenslet, so they"
                f" must be multiples of {n} (e.g. {y // n * n}×{x // n * n}); raw camera"
                " frames need --calibration (lfm-recon calibrate)"
            )
        return None
    from .calibration import Calibration, check_bank

    cal = Calibration.load(path)
    check_bank(cal, op.bank)
    if tuple(recording.frame_shape) != tuple(cal.raw_shape):
        raise LFMError(
            f"frames are {recording.frame_shape[0]}×{recording.frame_shape[1]} px but the"
            f" calibration {path} is for {cal.raw_shape[0]}×{cal.raw_shape[1]} px raw frames"
        )
    provenance["calibration_sha256"] = file_sha256(path)
    return cal


def _lenslets_of(cal, op, recording: Recording) -> tuple[int, int]:
    if cal is not None:
        return cal.lenslets
    y, x = recording.frame_shape
    return y // op.nnum, x // op.nnum


# --- parts, resume and merge -------------------------------------------------------------------
class _PartStore:
    """The unfinished run's folder ``OUT.partial``: manifest + part files."""

    def __init__(self, output: Path, provenance: dict, overwrite: bool, rank: int, world: int):
        self.output, self.provenance = output, provenance
        self.folder = output.with_name(output.name + ".partial")
        self.rank, self.world = rank, world
        # Every process checks (so all raise alike), then rank 0 alone changes files.
        discard = self._check(overwrite)
        _barrier(world)
        if rank == 0:
            if discard:
                shutil.rmtree(self.folder)
            if not self.folder.is_dir():
                self.folder.mkdir()
                _write_json(self.folder / "manifest.json", self.provenance)
        _barrier(world)
        self.done = self._done_ranges()

    def _check(self, overwrite: bool) -> bool:
        """Whether an unfinished run of other settings must be discarded."""
        if self.output.exists() and not overwrite:
            raise LFMError(f"{self.output} exists; pass --overwrite to replace it")
        if not self.folder.is_dir():
            return False
        previous = _read_json(self.folder / "manifest.json")
        same = previous is not None and _comparable(previous) == _comparable(self.provenance)
        if not same and not overwrite:
            changed = _changed_keys(previous, self.provenance)
            raise LFMError(
                f"{self.folder} holds an unfinished run with other settings ({changed});"
                " re-run with the same arguments to finish it, or pass --overwrite to"
                " discard it"
            )
        return not same

    def _done_ranges(self) -> list[tuple[int, int]]:
        out = []
        for p in self.folder.glob("part-*.h5"):
            try:
                _, a, b = p.stem.split("-")
                out.append((int(a), int(b)))
            except ValueError:
                continue
        return sorted(out)

    def execute(self, recording, cal, fn: Reconstructor, batch: int, progress: bool) -> RunReport:
        total = len(recording)
        done = np.zeros(total, dtype=bool)
        for a, b in self.done:
            done[a:b] = True
        todo = _batches(np.flatnonzero(~done), batch)[self.rank :: self.world]
        if progress and done.any():
            print(f"resuming: {int(done.sum())} of {total} frames already done in {self.folder}")
        start = time.perf_counter()
        computed = 0
        bar = tqdm(
            total=total,
            initial=int(done.sum()),
            unit="vol",
            disable=not progress,
            desc="reconstruct",
            smoothing=0.1,
        )
        try:
            # One thread reads (and calibrates) the next batch, another writes
            # the last one, while this one computes; at most one of each is
            # in flight, which bounds memory and surfaces their errors here.
            with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(1) as writer:
                loading = reader.submit(_load, recording, cal, todo[0]) if todo else None
                writing = None
                for i, (a, b) in enumerate(todo):
                    y = loading.result()
                    if i + 1 < len(todo):
                        loading = reader.submit(_load, recording, cal, todo[i + 1])
                    y = torch.from_numpy(y)[:, None]
                    x = fn(y)
                    qc = _qc(fn, x, y)
                    volumes = x.cpu().numpy().astype(np.float32, copy=False)
                    if writing is not None:
                        computed += writing.result()
                    writing = writer.submit(self._write_part, a, b, volumes, qc)
                    bar.update((b - a) * self.world)
                if writing is not None:
                    computed += writing.result()
        except BaseException:
            # A run that fails before finishing any frame leaves nothing behind.
            if self.rank == 0 and self.world == 1 and not self._done_ranges():
                shutil.rmtree(self.folder, ignore_errors=True)
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        _barrier(self.world)
        flagged: list[int] = []
        empty: list[int] = []
        if self.rank == 0:
            flagged, empty = self._merge(recording, total)
        _barrier(self.world)
        parameters = {k: self.provenance.get(k) for k in ("method", "iterations", "background")}
        return RunReport(self.output, total, computed, flagged, seconds, parameters, empty)

    def _write_part(self, a: int, b: int, volumes: np.ndarray, qc: dict) -> int:
        """Write frames a…b−1 as a part (temporary name, then rename); returns
        the number of frames written."""
        final = self.folder / f"part-{a:07d}-{b:07d}.h5"
        tmp = self.folder / f".part-{a:07d}-{b:07d}.tmp-{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("volumes", data=volumes)
                for key, value in qc.items():
                    f.create_dataset(key, data=value)
            os.replace(tmp, final)
            return b - a
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC or "No space" in str(exc):
                raise LFMError(
                    f"the disk is full while writing frames {a}…{b - 1} to {self.folder}; the"
                    " frames already written are kept: free space and run the same command"
                    " again to continue"
                ) from None
            raise

    def _merge(self, recording: Recording, total: int) -> list[int]:
        parts = self._done_ranges()
        covered = np.zeros(total, dtype=bool)
        for a, b in parts:
            covered[a:b] = True
        if not covered.all():
            missing = int((~covered).sum())
            raise LFMError(f"{missing} frames have no part in {self.folder}; run again to finish")
        qc = {k: np.zeros(total) for k in ("residual", "max", "mean")}
        qc["empty"] = np.zeros(total, dtype=bool)
        for a, b in parts:
            with h5py.File(self.folder / f"part-{a:07d}-{b:07d}.h5", "r") as f:
                for k in qc:
                    qc[k][a:b] = f[k][...]
        if qc["empty"].all():
            shutil.rmtree(self.folder)
            raise LFMError(
                f"no frame of the {total} has signal above the background"
                f" ({self.provenance['background']:g} counts): nothing to reconstruct; check"
                " the input frames and --background"
            )
        flagged = _flag(qc["residual"]) | qc["empty"]
        qc["flagged"] = flagged
        sources = [recording.source_of(i) for i in range(total)]
        kind = self.provenance["output_kind"]
        try:
            if kind == "h5":
                self._merge_h5(parts, qc, sources)
            elif kind == "tif":
                self._merge_tif(parts, qc, sources)
            else:
                self._merge_folder(parts, qc, sources)
        except OSError as exc:
            if exc.errno == errno.ENOSPC or "No space" in str(exc):
                raise LFMError(
                    f"the disk is full while assembling {self.output}; every frame is kept in"
                    f" {self.folder}: free space and run the same command again"
                ) from None
            raise
        shutil.rmtree(self.folder)
        return np.flatnonzero(flagged).tolist(), np.flatnonzero(qc["empty"]).tolist()

    def _volumes(self, parts):
        for a, b in parts:
            with h5py.File(self.folder / f"part-{a:07d}-{b:07d}.h5", "r") as f:
                yield a, b, f["volumes"][...]

    def _merge_h5(self, parts, qc, sources) -> None:
        p = self.provenance
        total, shape = p["frames"], tuple(p["volume_shape"])
        lateral, axial = p["voxel_size_um"]
        tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["provenance"] = json.dumps(p)
                d = f.create_dataset(
                    "volumes", shape=(total, *shape), dtype="float32", chunks=(1, *shape)
                )
                d.attrs["axes"] = "TZYX"
                d.attrs["element_size_um"] = [axial or 1.0, lateral, lateral]
                d.attrs["depths_um"] = p["depths_um"]
                d.attrs["unit"] = "photons per voxel"
                for a, b, v in self._volumes(parts):
                    d[a:b] = v
                g = f.create_group("qc")
                for key, value in qc.items():
                    g.create_dataset(key, data=value)
                g.create_dataset("source", data=np.array(sources, dtype=h5py.string_dtype()))
            os.replace(tmp, self.output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _merge_tif(self, parts, qc, sources) -> None:
        p = self.provenance
        volumes = np.empty((p["frames"], *p["volume_shape"]), dtype=np.float32)
        for a, b, v in self._volumes(parts):
            volumes[a:b] = v
        write_volume_tiff(self.output, volumes, p["voxel_size_um"], p["depths_um"])
        base = self.output.with_suffix("")
        _write_qc_csv(base.with_name(base.name + ".qc.csv"), qc, sources)
        _write_json(base.with_name(base.name + ".provenance.json"), p)

    def _merge_folder(self, parts, qc, sources) -> None:
        p = self.provenance
        tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            for a, _b, v in self._volumes(parts):
                for k, vol in enumerate(v):
                    path = tmp / f"frame_{a + k:06d}.tif"
                    write_volume_tiff(path, vol, p["voxel_size_um"], p["depths_um"])
            _write_qc_csv(tmp / "qc.csv", qc, sources)
            _write_json(tmp / "provenance.json", p)
            if self.output.exists():  # --overwrite of an old folder
                shutil.rmtree(self.output)
            os.replace(tmp, self.output)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _batches(indices: np.ndarray, batch: int) -> list[tuple[int, int]]:
    """Contiguous runs of ``indices`` cut into ranges of at most ``batch``."""
    out = []
    if not len(indices):
        return out
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    for run in np.split(indices, breaks):
        for s in range(0, len(run), batch):
            chunk = run[s : s + batch]
            out.append((int(chunk[0]), int(chunk[-1]) + 1))
    return out


def _load(recording: Recording, cal, span: tuple[int, int]) -> np.ndarray:
    y = recording.read(*span)
    if cal is not None:
        y = cal.apply(y)
    return np.ascontiguousarray(y, dtype=np.float32)


def _qc(fn: Reconstructor, x: torch.Tensor, y: torch.Tensor) -> dict:
    op = fn.op
    y = y.to(device=op.device, dtype=op.dtype)
    with torch.no_grad():
        r = op.project(x.to(op.dtype)) + fn.background - y
        num = r.flatten(1).double().norm(dim=1)
        den = y.flatten(1).double().norm(dim=1)
    residual = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.inf))
    empty = (y - fn.background).clamp_min(0).flatten(1).sum(dim=1) <= 0
    return {
        "residual": residual.cpu().numpy(),
        "max": x.flatten(1).amax(dim=1).double().cpu().numpy(),
        "mean": x.flatten(1).mean(dim=1).double().cpu().numpy(),
        "empty": empty.cpu().numpy(),
    }


def _flag(residual: np.ndarray) -> np.ndarray:
    """Frames whose residual is far above the rest (robust z > 5), or not
    finite, or empty (zero volume gives residual 1 exactly: flagged as well
    when the others fit better)."""
    finite = np.isfinite(residual)
    flagged = ~finite
    if finite.sum() >= 3:
        med = float(np.median(residual[finite]))
        mad = 1.4826 * float(np.median(np.abs(residual[finite] - med)))
        flagged |= finite & (residual - med > FLAG_SIGMAS * max(mad, 0.01 * med))
    return flagged


def _write_qc_csv(path: Path, qc: dict, sources: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "source", "residual", "max", "mean", "flagged"])
        for i, src in enumerate(sources):
            w.writerow(
                [
                    i,
                    src,
                    f"{qc['residual'][i]:.6g}",
                    f"{qc['max'][i]:.6g}",
                    f"{qc['mean'][i]:.6g}",
                    int(qc["flagged"][i]),
                ]
            )
    os.replace(tmp, path)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, default=float), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _comparable(p: dict) -> dict:
    return json.loads(json.dumps(p, default=float))


def _changed_keys(previous, current: dict) -> str:
    if previous is None:
        return "its manifest is missing or damaged"
    prev, cur = _comparable(previous), _comparable(current)
    keys = sorted(k for k in set(prev) | set(cur) if prev.get(k) != cur.get(k))
    return "differs in " + ", ".join(keys)


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def read_volumes(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read an HDF5 volume file of :func:`reconstruct_files`: the volumes
    (T, D, Yv, Xv) and a dict with ``provenance``, ``element_size_um`` and the
    ``qc`` arrays."""
    from ._h5 import open_checked

    path = Path(path)
    with open_checked(path, FORMAT, FORMAT_VERSION, "volume", "lfm-recon reconstruct") as f:
        volumes = f["volumes"][...]
        info = {
            "provenance": json.loads(f.attrs["provenance"]),
            "element_size_um": tuple(f["volumes"].attrs["element_size_um"]),
            "qc": {k: f["qc"][k][...] for k in f["qc"]},
        }
    return volumes, info
