"""The training loop: semi-supervised unfolded ISTA with an optional
adversarial stage, checkpoints, validation and multi-process data parallelism.

Each step draws a batch (``sampler``), reconstructs it, and minimises the
objective (``objective``); in the adversarial stage (after
``optim.warmup_steps``) one discriminator step (``adversarial``) comes
first. Every ``steps_per_epoch`` steps the network is validated
(``validation``) and the best one kept as ``model.pt``; checkpoints and the
metrics log live in the run folder (``run_folder``). Under ``torchrun`` every
process takes its slice of the step's global batch; the network is wrapped
in DistributedDataParallel, and rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import LFMError
from ..modelfile import save_model
from ..operator import LightFieldOperator
from ..psf.bank import PSFBank
from ..unfolded import UnfoldedISTA
from .adversarial import Adversary
from .batches import BatchSource
from .config import TrainConfig
from .data import TrainingData
from .distributed import Processes
from .objective import Objective
from .run_folder import RunFolder
from .schedule import learning_rate_factor
from .validation import Validator

_COMPUTE = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}


class TrainingDiverged(LFMError):
    """A loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run produced (the same on every process).

    Attributes:
        model_path: the best model file (``model.pt``).
        step: steps done in all.
        best: validation metrics of the best model (psnr, ssim, f1, ...).
        history: one dict per epoch (losses, validation, seconds).
    """

    model_path: Path
    step: int
    best: dict
    history: list = field(default_factory=list)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train an :class:`~lfm_recon.unfolded.UnfoldedISTA` as ``config`` says.

    Args:
        config: the run (``TrainConfig.from_file``).
        resume: continue from ``output/checkpoint.pt``.
        overwrite: start afresh even if ``output`` holds a run.
        progress: tqdm progress bar and epoch lines (rank 0).

    Returns:
        :class:`TrainResult` (on every process).

    Raises:
        LFMError: bad config or data, a data set from another PSF, a
            validation set that shares frames or a seed with the training
            data, an existing run without ``resume``/``overwrite``;
            :class:`TrainingDiverged` on NaN/Inf.
    """
    if not isinstance(config, TrainConfig):
        raise LFMError(f"train needs a TrainConfig, got {type(config).__name__}")
    if resume and overwrite:
        raise LFMError("--resume and --overwrite contradict each other: choose one")
    processes = Processes.start(config.device)
    try:
        return _Trainer(config, processes, resume, overwrite, progress).run()
    finally:
        processes.stop()


class _Trainer:
    """One run: set-up, then the loop of steps, epochs and checkpoints."""

    def __init__(self, cfg: TrainConfig, processes: Processes, resume, overwrite, progress):
        self.cfg, self.processes = cfg, processes
        self.progress = progress and processes.main
        if cfg.precision != "fp32" and processes.device.type != "cuda":
            raise LFMError(f"precision {cfg.precision!r} needs a CUDA device; use fp32 on the CPU")
        self.folder = RunFolder(cfg, processes)
        bank = PSFBank.load(cfg.psf)
        # Data first: its errors must come before the run folder is touched.
        self.data = TrainingData(cfg.data, bank, cfg.seed)
        self.op = LightFieldOperator(
            bank, device=processes.device, compute=_COMPUTE[cfg.precision], check_inputs=False
        )
        self.batches = BatchSource(cfg, self.data, bank, self.op)
        state = self.folder.open(resume, overwrite)
        torch.manual_seed(cfg.seed)
        self.net = UnfoldedISTA(self.op, config=cfg.model)
        self._init_lambda()
        if cfg.init_model and state is None:
            self._start_from(cfg.init_model)
        self.opt = torch.optim.Adam(self._parameter_groups())
        self._base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.objective = Objective(
            cfg.loss, self.op, processes, ssim_floor=float(self.net.uniform_level)
        )
        self.adversary = (
            Adversary(cfg.loss, cfg.optim, processes) if cfg.loss.adversarial > 0 else None
        )
        self.validator = Validator(self.data, processes.device)
        self.step, self.elapsed = 0, 0.0
        self.schedule_steps = cfg.optim.steps
        self.best: dict = {}
        self.history: list = []
        if state is not None:
            self._restore(state)
        self.model = self.net
        if processes.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[processes.device.index] if processes.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.writer = self._tensorboard() if cfg.tensorboard and processes.main else None

    # --- set-up --------------------------------------------------------------------
    def _parameter_groups(self) -> list[dict]:
        net, o = self.net, self.cfg.optim
        groups = [{"params": net.scalar_parameters(), "lr": o.lr}]
        if net.priors is not None:
            groups.append({"params": list(net.priors.parameters()), "lr": o.prior_lr})
        return groups

    def _init_lambda(self) -> None:
        """λ₀ from the training light fields (up to 32 whole frames; the
        validation frames when simulation is the only paired source)."""
        d = self.data
        if d.n_labelled or d.n_unlabeled:
            part = d.labelled if d.n_labelled else d.unlabeled[0]
            y, b = torch.from_numpy(part.y[:32]), torch.from_numpy(part.background[:32])
        else:
            y = torch.from_numpy(d.validation.lightfields[d.validation_indices[:32]])
            b = torch.from_numpy(d.validation_background[:32].astype(np.float32))
        self.net.set_lambda_scale(y, b.reshape(-1, 1, 1, 1))

    def _start_from(self, path: str) -> None:
        """Fine-tuning: the weights of a trained model of the same bank and
        architecture (its λ scale included)."""
        from ..modelfile import load_model

        model = load_model(path, bank=self.op.bank)
        if model.config != self.net.config:
            raise LFMError(
                f"init_model {path} has another architecture ({model.config}) than the run's"
                f" [model] ({self.net.config}); make them equal to fine-tune"
            )
        self.net.load_state_dict(model.state_dict())

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LFMError(
                "tensorboard = true needs the tensorboard package: pip install tensorboard"
            ) from None
        return SummaryWriter(str(self.folder.path / "tensorboard"))

    def _precision(self):
        if self.cfg.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, processes = self.cfg, self.processes
        budget = cfg.optim.time_budget
        bar = tqdm(
            total=cfg.optim.steps, initial=self.step, desc="train", disable=not self.progress
        )
        epoch_losses: list[dict] = []
        self._batch_seconds, epoch_start = 0.0, time.perf_counter()
        started = time.perf_counter() - self.elapsed
        stop = False
        while self.step < cfg.optim.steps and not stop:
            epoch_losses.append(self._train_step())
            self.step += 1
            self.elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_losses[-1]['total']:.4g}")
            stop = processes.broadcast_flag(bool(budget) and self.elapsed >= budget)
            last = self.step == cfg.optim.steps or stop
            if self.step % cfg.steps_per_epoch == 0 or last:
                # Where a step's time goes: drawing the batch (host side,
                # simulation included, and the RL starts of reused
                # simulated draws) against the whole step.
                n = len(epoch_losses)
                timing = {
                    "seconds_per_step": (time.perf_counter() - epoch_start) / n,
                    "batch_seconds_per_step": self._batch_seconds / n,
                }
                self._end_epoch(epoch_losses, bar, timing)
                epoch_losses = []
                self._batch_seconds, epoch_start = 0.0, time.perf_counter()
            if self.step % cfg.checkpoint_every == 0 or last:
                self.folder.save_checkpoint(self._checkpoint_state())
        bar.close()
        # Only rank 0 validates: every process returns its record.
        best, history = processes.broadcast_object((self.best, self.history))
        return TrainResult(self.folder.model, self.step, dict(best), list(history))

    def _train_step(self) -> dict:
        cfg, processes = self.cfg, self.processes
        factor = learning_rate_factor(self.step, self.schedule_steps, cfg.optim.schedule)
        for group, base in zip(self.opt.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor
        if self.adversary is not None:
            self.adversary.set_learning_rate(factor)
        drawn = time.perf_counter()
        batch = self.batches.batch(self.step, processes, self._initial)
        self._batch_seconds += time.perf_counter() - drawn
        c = batch.scale
        with self._precision():
            x = self.model(
                batch.y, batch.background, scale=c, weight=batch.data_weight, start=batch.start
            )
            xn = x.float() / c
        n_l = batch.n_labelled
        terms: dict[str, torch.Tensor] = {}
        target = None
        if n_l:
            target = batch.target / c[:n_l]
            terms.update(self.objective.labelled_terms(xn[:n_l], target, batch.volume_weight))
        terms.update(
            self.objective.resynthesis_term(xn, batch.y / c, batch.background / c, batch.lf_weight)
        )
        real = self.batches.real_volumes(self.step, processes) if self.adversary else None
        if real is None:
            real = target  # no unpaired volumes: the labelled targets are the real examples
        if self.adversary is not None and self.step >= cfg.optim.warmup_steps and real is not None:
            d_loss, finite = self.adversary.step(
                real, xn.detach(), cfg.seed, self.step, self._precision()
            )
            if not finite:
                self._diverged({"discriminator": d_loss})
            terms["discriminator"] = d_loss
            terms["adversarial"] = self.adversary.generator_loss(xn, self._precision())
        total = self.objective.total(terms)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        finite = bool(torch.isfinite(total)) and bool(torch.isfinite(norm))
        if not processes.all_min(finite):
            self._diverged(terms)
        self.opt.step()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["total"] = float(total.detach())
        return out

    @property
    def _initial(self):
        """The network's start for the batch source when simulated draws are
        reused (their RL start then runs once per draw), else None (the
        network computes its start in its forward pass)."""
        sim = self.cfg.data.simulate
        if sim is None or sim.reuse == 1:
            return None

        def initial(y, background, scale, weight):
            with self._precision():
                return self.net.initial(y, background, scale=scale, weight=weight)

        return initial

    def _diverged(self, terms: dict) -> None:
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
        kept = (
            f"the last good checkpoint {self.folder.checkpoint} is kept (resume from it with"
            " --resume after lowering optim.lr or optim.grad_clip)"
            if self.folder.checkpoint.exists()
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: a loss or its gradient is NaN or"
            f" infinite ({values}); {kept}"
        )

    # --- epochs, files -----------------------------------------------------------------
    def _end_epoch(self, epoch_losses: list[dict], bar, timing: dict) -> None:
        if not self.processes.main:
            self.processes.barrier()
            return
        record = {"step": self.step, "seconds": round(self.elapsed, 2)}
        record.update({k: round(v, 4) for k, v in timing.items()})
        for key in sorted({k for d in epoch_losses for k in d}):
            record[f"loss_{key}"] = float(np.mean([d[key] for d in epoch_losses if key in d]))
        val = self.validator(self.net, self._precision())
        record.update({f"val_{k}": v for k, v in val.items()})
        record["lr"] = self.opt.param_groups[0]["lr"]
        if not self.best or val["psnr"] > self.best["psnr"]:
            self.best = {**val, "step": self.step}
            save_model(self.net, self.folder.model, training=self._training_info())
        self.history.append(record)
        self.folder.append_metrics(record)
        if self.writer is not None:
            self._log_tensorboard(record)
        if self.progress:
            bar.write(
                f"step {self.step}: loss {record.get('loss_total', float('nan')):.4g},"
                f" validation PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f},"
                f" F1 {val['f1']:.3f} (best {self.best['psnr']:.2f} dB at step"
                f" {self.best['step']})"
            )
        self.processes.barrier()

    def _training_info(self) -> dict:
        return {
            "config": self.folder.portable_config(),
            "step": self.step,
            "validation": dict(self.best),
            "lfm_recon_version": __version__,
        }

    def _log_tensorboard(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, self.step)
        x = self.validator.last_volumes[0]
        for name, mip in (("xy", x.amax(0)), ("xz", x.amax(1))):
            self.writer.add_image(
                f"mip/{name}", (mip / mip.max().clamp_min(1e-12))[None], self.step
            )
        self.writer.flush()

    def _checkpoint_state(self) -> dict:
        return {
            "config": self.folder.portable_config(),
            "schedule_steps": self.schedule_steps,
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "history": self.history,
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "adversary": None if self.adversary is None else self.adversary.state_dict(),
        }

    def _restore(self, state: dict) -> None:
        try:
            self.net.load_state_dict(state["net"])  # strict: every key must fit
        except (RuntimeError, LFMError) as exc:
            detail = " ".join(str(exc).split())  # one line
            raise LFMError(
                f"{self.folder.checkpoint} does not fit this network ({detail}); start a new run"
            ) from None
        self.opt.load_state_dict(state["opt"])
        if self.adversary is not None and state["adversary"] is not None:
            self.adversary.load_state_dict(state["adversary"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.schedule_steps = int(state["schedule_steps"])
        self.best, self.history = dict(state["best"]), list(state["history"])
