"""``reconstruct_files``: a recording from files to a volume file, written in
place, resumable, one writer per output, shared by torchrun processes.

Steps (every one agreed by all processes: if it fails on one, every process
stops with an error naming it):

1. rank 0 takes the output's lock (:mod:`.lock`): a second run on the same
   output is refused at once;
2. every process loads the model or PSF bank, the recording and the
   calibration (:func:`.reconstructor.load_reconstructor`);
3. rank 0 starts the run folder (:mod:`.store`) and lays out the output
   (:mod:`.writers`), or on resume checks both;
4. the processes check the frames already done (a share each) and rank 0
   reports the damaged ones (one line each), which are recomputed;
5. the missing frames, cut into batches, are shared round-robin; each
   process reads (a thread), reconstructs, computes QC, and writes its
   frames in place and their completion marker (another thread). A process
   that fails leaves a note in the run folder and the others stop at their
   next batch;
6. rank 0 writes the QC table, marks the output complete, removes the run
   folder and the lock.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from .._device import resolve_device
from ..background import recording_background
from ..errors import LFMError
from ..recording import Recording, file_sha256, spread
from .lock import OutputLock
from .qc import flag, frame_qc
from .reconstructor import Reconstructor, check_batch, load_reconstructor
from .store import QC_FIELDS, QC_OPTIONAL, Marker, RunFolder
from .writers import Damaged, OutputSpec, Writer, make_writer, output_kind, zarr_package


@dataclass
class RunReport:
    """What :func:`reconstruct_files` did.

    Attributes:
        output: the file or folder written.
        frames: frames in the recording.
        computed: frames reconstructed by this call (the rest were done before).
        flagged: indices of frames whose QC flags them (far residual or no signal).
        seconds: wall time of this call's reconstruction loop.
        parameters: the method and its parameters.
        empty: indices of frames without signal (their volumes are zero).
        damaged: indices of frames found damaged on resume and recomputed.
    """

    output: Path
    frames: int
    computed: int
    flagged: list[int]
    seconds: float
    parameters: dict
    empty: list[int]
    damaged: list[int] = field(default_factory=list)

    @property
    def volumes_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


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
    pyramid: int = 1,
    adapt: int = 0,
    guard: str = "warn",
    **options,
) -> RunReport:
    """Reconstruct a recording from files to a volume file (see the module doc).

    Args:
        inputs: TIFF/HDF5 files, ``file.h5:dataset`` specs or globs.
        output: ``.h5``, ``.tif``, ``.ome.zarr`` or a folder name (see
            :func:`~lfm_recon.pipeline.writers.output_kind`); volumes
            (T, D, Yv, Xv) float32 with voxel size in µm.
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
        pyramid: resolution levels of an OME-Zarr output (1: full only;
            each further level halves Y and X).
        adapt: with "net": first adapt the network to this recording for
            this many steps (:mod:`lfm_recon.adapt`; 0 = off). Deterministic
            on the CPU, so a resumed run adapts to the same network.
        guard: with "net": ``"warn"`` compares the network with RL on a few
            frames (:mod:`lfm_recon.guard`) and warns when it explains them
            much worse; ``"fallback"`` then reconstructs with RL instead;
            ``"off"`` skips the check. Its finding goes to the provenance.
        options: n_iter, lam_fraction, rho, prior, filter, accelerate for the
            solvers; refit for "net" (see :class:`Reconstructor`).

    Returns:
        :class:`RunReport`.
    """
    output = Path(output)
    kind = output_kind(output)
    check_batch(batch)
    if isinstance(pyramid, bool) or not isinstance(pyramid, int) or pyramid < 1:
        raise LFMError(f"pyramid must be a positive number of levels, got {pyramid!r}")
    if pyramid > 1 and kind != "zarr":
        raise LFMError(f"--pyramid is for OME-Zarr outputs (.ome.zarr), not {output.name}")
    if kind == "zarr":
        zarr_package()  # a clear error before anything is loaded when zarr is absent
    if guard not in GUARD_MODES:
        raise LFMError(f"guard must be one of {GUARD_MODES}, got {guard!r}")
    if isinstance(adapt, bool) or not isinstance(adapt, int) or adapt < 0:
        raise LFMError(f"adapt is a number of steps ≥ 0, got {adapt!r}")
    if adapt and method != "net":
        raise LFMError(f"--adapt adapts a network: use it with --method net, not {method}")
    if not output.parent.is_dir():
        raise LFMError(f"output folder {output.parent} does not exist")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    group = _Group(world, rank)
    lock = OutputLock(output)
    try:
        group.agree(lock.acquire if rank == 0 else _nothing)

        def setup():
            fn, provenance = load_reconstructor(
                model, psf, method, background, dev, precision, options
            )
            recording = Recording(inputs)
            cal = _calibration(calibration, fn.op, recording, provenance)
            if fn.background is None:  # "auto": from the frames, before the manifest
                fn.set_background(recording_background(recording, cal, fn.op.nnum))
                provenance.update(fn.parameters())
            if method == "net":
                fn = _adapt_and_check(fn, recording, cal, adapt, guard, group, provenance)
            provenance.update(
                inputs=recording.describe(),
                frames=len(recording),
                volume_shape=list(fn.op.volume_shape(_lenslets_of(cal, fn.op, recording))),
                output_kind=kind,
                lfm_recon_version=__version__,
            )
            if kind == "zarr":
                provenance["pyramid"] = pyramid
            return fn, provenance, recording, cal

        fn, provenance, recording, cal = group.agree(setup)
        spec = OutputSpec(
            frames=len(recording),
            volume_shape=tuple(provenance["volume_shape"]),
            voxel_size=tuple(provenance["voxel_size_um"]),
            depths=tuple(provenance["depths_um"]),
            provenance=provenance,
            pyramid=pyramid,
        )
        run = _Run(output, spec, recording, group)
        return run.execute(cal, fn, batch, overwrite, progress and rank == 0)
    finally:
        lock.release()
        group.close()


def _nothing() -> None:
    return None


GUARD_MODES = ("warn", "fallback", "off")
# Provenance measured during set-up: kept in the output, not compared on resume.
MEASURED = ("adaptation_result", "guard")


def _adapt_and_check(fn, recording, cal, steps, guard, group, provenance):
    """Adapt the network to the recording (rank 0, then shared) and check it
    against RL (rank 0); returns the reconstructor to use."""
    from ..adapt import AdaptConfig, adapt
    from ..guard import check_network

    level = fn.background  # the frames' constant level (any sign, see Reconstructor)
    bg = fn.solver_background  # the model's background after lifting the frames

    def frames_at(indices):
        return (
            np.concatenate([_load(recording, cal, (int(i), int(i) + 1)) for i in indices]) + fn.lift
        )

    net = fn.net
    if steps:
        config = AdaptConfig(steps=steps)
        picked = spread(len(recording), config.frames)
        provenance["adaptation"] = {"config": asdict(config), "frames": picked.tolist()}
        state = None
        if group.rank == 0:
            tuned, record = adapt(net, frames_at(picked), bg, config)
            state = {
                k: v.cpu() if isinstance(v, torch.Tensor) else v
                for k, v in tuned.state_dict().items()
            }
            provenance["adaptation_result"] = {
                k: record[k]
                for k in ("held_out_deviance_before", "held_out_deviance_after", "step_kept")
            }
        state = group.all_gather(state)[0]
        net.load_state_dict(state)
        fn = Reconstructor(net, "net", background=level)
    if guard != "off" and group.rank == 0:
        picked = spread(len(recording), 3)
        frames = frames_at(picked)
        signal = (frames - bg).mean(axis=(1, 2)) > 0
        if signal.any():
            report = check_network(net, frames[signal], bg, indices=picked[signal])
            provenance["guard"] = report.to_dict()
            print(f"lfm-recon: {report.message()}", file=sys.stderr)
    suspect = bool(provenance.get("guard", {}).get("suspect"))
    if guard == "fallback" and group.all_gather(suspect)[0]:
        provenance["guard_fallback"] = "rl"
        fn = Reconstructor(net.op, "rl", background=level)
        provenance.update(fn.parameters())
    return fn


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
    from ..calibration import Calibration, check_bank

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


# --- processes --------------------------------------------------------------------------------
class _Group:
    """The processes of one run (1, or torchrun's) and their agreement.

    Control messages go through gloo even on GPUs: the pipeline exchanges
    no tensors, and gloo notices at once when a peer process has died
    (NCCL would wait for its timeout)."""

    def __init__(self, world: int, rank: int) -> None:
        self.world, self.rank = world, rank
        self.owns, self.pg = False, None
        if world > 1:
            if not dist.is_initialized():
                dist.init_process_group("gloo")
                self.owns = True
            elif dist.get_backend() != "gloo":
                self.pg = dist.new_group(backend="gloo")

    def agree(self, step):
        """Run ``step()`` here; if it raised on any process, raise on every
        process (the failing one re-raises its own exception, the others an
        LFMError naming it). Returns the step's result."""
        error, result = None, None
        try:
            result = step()
        except BaseException as exc:
            error = exc
        if self.world > 1:
            statuses = self.all_gather(None if error is None else _describe(error), error)
            failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
            if error is None and failed:
                r, s = failed[0]
                raise LFMError(f"process {r} of {self.world} failed: {s}")
        if error is not None:
            raise error
        return result

    def all_gather(self, value, error: BaseException | None = None) -> list:
        if self.world == 1:
            return [value]
        out = [None] * self.world
        try:
            dist.all_gather_object(out, value, group=self.pg)
        except (RuntimeError, dist.DistBackendError) as exc:
            if error is not None:
                raise error from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LFMError(
                f"another process of this run stopped ({first}); the frames already finished"
                " are kept: run the same command again"
            ) from None
        return out

    def close(self) -> None:
        if self.owns and dist.is_initialized():
            dist.destroy_process_group()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, LFMError) else f"{type(exc).__name__}: {text}"


# --- one run -----------------------------------------------------------------------------------
class _Run:
    def __init__(self, output: Path, spec: OutputSpec, recording: Recording, group: _Group):
        self.output, self.spec, self.recording, self.group = output, spec, recording, group
        self.rank, self.world = group.rank, group.world
        self.folder = RunFolder(output)
        self.writer: Writer = make_writer(output, spec)
        self.created = False  # this call laid out the output (and may remove it on failure)
        self.damaged: list[int] = []

    def execute(self, cal, fn: Reconstructor, batch: int, overwrite: bool, progress: bool):
        try:
            return self._execute(cal, fn, batch, overwrite, progress)
        except BaseException:
            # A run that fails before finishing any frame leaves nothing behind.
            if self.rank == 0 and self.created and not self.folder.has_markers():
                self.writer.remove()
                self.folder.remove()
            raise

    def _execute(self, cal, fn, batch, overwrite, progress) -> RunReport:
        g = self.group
        g.agree(lambda: self._prepare(overwrite) if self.rank == 0 else None)
        g.agree(self.writer.open)
        done = self._verify()
        total = self.spec.frames
        todo = _batches(np.flatnonzero(~done), batch)
        if progress and done.any():
            print(
                f"resuming: {int(done.sum())} of {total} frames already done in {self.folder.path}"
            )
        g.agree(lambda: self._check_space(int((~done).sum())) if self.rank == 0 else None)
        start = time.perf_counter()
        mine = todo[self.rank :: self.world]
        computed = g.agree(lambda: self._loop(mine, cal, fn, done, progress))
        seconds = time.perf_counter() - start
        computed = sum(g.all_gather(computed))
        flagged, empty = g.agree(lambda: self._finish() if self.rank == 0 else ([], []))
        flagged, empty = g.all_gather((flagged, empty))[0]
        keys = ("method", "iterations", "background")
        parameters = {k: self.spec.provenance.get(k) for k in keys}
        return RunReport(
            self.output, total, computed, flagged, seconds, parameters, empty, self.damaged
        )

    # --- rank 0: the run folder and the output's layout ---
    def _prepare(self, overwrite: bool) -> None:
        folder, output, manifest = self.folder, self.output, _comparable(self.spec.provenance)
        folder.sweep()
        if output.exists() and not folder.exists():
            if not overwrite:
                raise LFMError(f"{output} exists; pass --overwrite to replace it")
            self._fresh(manifest, replace=True)
            return
        if not folder.exists():
            self._fresh(manifest, replace=False)
            return
        previous = folder.manifest()
        if previous is None or _comparable(previous) != manifest:
            if not overwrite:
                raise LFMError(
                    f"{folder.path} holds an unfinished run with other settings"
                    f" ({_changed_keys(previous, manifest)}); re-run with the same arguments to"
                    " finish it, or pass --overwrite to discard it"
                )
            self._fresh(manifest, replace=True)
            return
        folder.clear_failure()
        if not output.exists():
            self._notice(f"{output} is missing: its frames are recomputed")
            self._lay_out()
            return
        try:
            for notice in self.writer.check(folder.layout()):
                self._notice(notice)
        except Damaged as exc:
            self._notice(f"{output} {exc}: it is laid out again and every frame recomputed")
            self.writer.remove()
            self._lay_out()

    def _fresh(self, manifest: dict, replace: bool) -> None:
        if replace:
            self.folder.remove()
            if self.output.exists():
                self.writer.remove()
        self.folder.create(manifest)
        self.created = True
        self._lay_out()

    def _lay_out(self) -> None:
        for marker in self.folder.markers()[0]:  # nothing of an output laid out anew is done
            self.folder.remove_marker(marker)
        sources = [self.recording.source_of(i) for i in range(self.spec.frames)]
        layout = _disk_full(lambda: self.writer.create(sources), f"laying out {self.output}")
        self.folder.write_json("layout.json", layout)

    def _check_space(self, frames: int) -> None:
        need = self.spec.output_bytes() // max(self.spec.frames, 1) * frames
        import shutil

        free = shutil.disk_usage(self.output.parent).free
        if need > free:
            raise LFMError(
                f"{self.output} needs {need / 1e9:.3g} GB more but its disk has"
                f" {free / 1e9:.3g} GB free: free space (or write the output elsewhere), then run"
                " the same command again"
            )

    def _notice(self, text: str) -> None:
        print(f"lfm-recon: {text}", file=sys.stderr)

    # --- every rank: what is done, checked ---
    def _verify(self) -> np.ndarray:
        """Frames done (bool (T,)), after checking each against its record;
        damaged frames are reported by rank 0 and not done."""
        markers, unreadable = self.folder.markers()
        share = markers[self.rank :: self.world]

        def check():
            return [
                (m.name, [(t, why) for t in range(m.start, m.stop) if (why := self._why(m, t))])
                for m in share
            ]

        results = [r for part in self.group.all_gather(self.group.agree(check)) for r in part]
        bad = {name: frames for name, frames in results if frames}

        def report():
            for name in unreadable:
                self._notice(
                    f"completion marker {name} in {self.folder.path} is damaged: its frames are"
                    " recomputed"
                )
            everything = {t: why for frames in bad.values() for t, why in frames}
            for (a, b), why in _runs(everything):
                which = f"frame {a}" if b == a + 1 else f"frames {a}…{b - 1}"
                self._notice(f"{which} of {self.output} damaged ({why}): recomputed")
            for marker in markers:
                if marker.name in bad:
                    self._drop(marker, dict(bad[marker.name]))

        # Markers are rewritten (rank 0) before anyone reads them again.
        self.group.agree(report if self.rank == 0 else _nothing)
        done = np.zeros(self.spec.frames, dtype=bool)
        for m in self.folder.markers()[0]:
            done[m.start : m.stop] = True
        self.damaged = sorted(t for frames in bad.values() for t, _ in frames)
        return done

    def _why(self, marker: Marker, t: int) -> str | None:
        return self.writer.verify(t, marker.records[t - marker.start])

    def _drop(self, marker: Marker, bad: dict[int, str]) -> None:
        """Replace a marker by markers of its good frames only."""
        good = np.ones(marker.stop - marker.start, dtype=bool)
        for t in bad:
            good[t - marker.start] = False
        for a, b in _batches(np.flatnonzero(good) + marker.start, marker.stop - marker.start):
            self.folder.write_marker(marker.subset(a, b))
        self.folder.remove_marker(marker)

    # --- every rank: the loop ---
    def _loop(self, todo, cal, fn, done, progress) -> int:
        total = self.spec.frames
        bar = tqdm(
            total=total,
            initial=int(done.sum()),
            unit="vol",
            disable=not progress,
            desc="reconstruct",
            smoothing=0.1,
        )
        computed = 0
        try:
            # One thread reads (and calibrates) the next batch, another writes
            # the last one, while this one computes; at most one of each is
            # in flight, which bounds memory and surfaces their errors here.
            with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
                loading = reader.submit(_load, self.recording, cal, todo[0]) if todo else None
                writing = None
                for i, (a, b) in enumerate(todo):
                    if self.world > 1 and self.folder.failure() is not None:
                        break  # another process failed: the agreement reports it
                    y = loading.result()
                    if i + 1 < len(todo):
                        loading = reader.submit(_load, self.recording, cal, todo[i + 1])
                    y = torch.from_numpy(y)[:, None]
                    x = fn(y)
                    qc = frame_qc(fn, x, y)
                    volumes = x.cpu().numpy()
                    if writing is not None:
                        computed += writing.result()
                    writing = writer.submit(self._write, a, b, volumes, qc)
                    bar.update((b - a) * self.world)
                if writing is not None:
                    computed += writing.result()
        except BaseException as exc:
            if self.world > 1:
                self.folder.signal_failure(self.rank, _describe(exc))
            raise
        finally:
            bar.close()
        return computed

    def _write(self, a: int, b: int, volumes: np.ndarray, qc: dict) -> int:
        """Frames a…b−1 into the output, then their marker; returns b − a."""
        records = _disk_full(
            lambda: self.writer.write(a, volumes), f"writing frames {a}…{b - 1} to {self.output}"
        )
        marker = Marker(a, b, {k: qc[k] for k in QC_FIELDS}, records)
        _disk_full(lambda: self.folder.write_marker(marker), f"writing to {self.folder.path}")
        return b - a

    # --- rank 0: the end ---
    def _finish(self) -> tuple[list[int], list[int]]:
        total = self.spec.frames
        qc = {k: np.zeros(total) for k in ("residual", "max", "mean")}
        qc["empty"] = np.zeros(total, dtype=bool)
        qc |= {k: np.full(total, np.nan) for k in QC_OPTIONAL}  # None (n/a) → NaN
        covered = np.zeros(total, dtype=bool)
        for m in self.folder.markers()[0]:
            covered[m.start : m.stop] = True
            for k in QC_FIELDS:
                qc[k][m.start : m.stop] = np.array(m.qc[k], dtype=qc[k].dtype)
        if not covered.all():
            missing = int((~covered).sum())
            raise LFMError(f"{missing} frames are not done in {self.output}; run again to finish")
        if qc["empty"].all():
            self.writer.remove()
            self.folder.remove()
            raise LFMError(
                f"no frame of the {total} has signal above the background"
                f" ({self.spec.provenance['background']:g} counts): nothing to reconstruct; check"
                " the input frames and --background"
            )
        flagged = flag(qc["residual"]) | qc["empty"]
        qc["flagged"] = flagged
        sources = [self.recording.source_of(i) for i in range(total)]
        _disk_full(lambda: self.writer.finish(qc, sources), f"finishing {self.output}")
        self.folder.remove()
        return np.flatnonzero(flagged).tolist(), np.flatnonzero(qc["empty"]).tolist()


def _disk_full(step, what: str):
    try:
        return step()
    except OSError as exc:
        if exc.errno == errno.ENOSPC or "No space" in str(exc):
            raise LFMError(
                f"the disk is full while {what}; the frames already written are kept: free"
                " space and run the same command again to continue"
            ) from None
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


def _runs(bad: dict[int, str]) -> list[tuple[tuple[int, int], str]]:
    """Consecutive frames with the same reason, as ((a, b), reason)."""
    out: list = []
    for t in sorted(bad):
        if out and out[-1][0][1] == t and out[-1][1] == bad[t]:
            out[-1] = ((out[-1][0][0], t + 1), bad[t])
        else:
            out.append(((t, t + 1), bad[t]))
    return out


def _load(recording: Recording, cal, span: tuple[int, int]) -> np.ndarray:
    y = recording.read(*span)
    if cal is not None:
        y = cal.apply(y)
    return np.ascontiguousarray(y, dtype=np.float32)


def _comparable(p: dict) -> dict:
    import json

    return json.loads(json.dumps({k: v for k, v in p.items() if k not in MEASURED}, default=float))


def _changed_keys(previous, current: dict) -> str:
    if previous is None:
        return "its manifest is missing or damaged"
    prev, cur = _comparable(previous), _comparable(current)
    keys = sorted(k for k in set(prev) | set(cur) if prev.get(k) != cur.get(k))
    return "differs in " + ", ".join(keys)
