"""The training loop: semi-supervised unfolded ISTA with an optional
adversarial stage, checkpoints, validation and multi-process data parallelism.

Per step (normalised units, see ``lfm_recon.unfolded``):

    loss = w_sup · ‖x̂_L − x_L‖²/‖x_L‖² + w_ssim · (1 − SSIM(x̂_L, x_L))
         + w_res · ‖H x̂ + b − y‖²/‖y‖²         (labelled and unlabeled)
         + w_adv · generator loss of D(x̂)      (after optim.warmup_steps)

and, in the adversarial stage, one discriminator step on real (ground-truth)
against reconstructed volumes first. Under ``torchrun`` every process takes
its slice of the step's global batch (``TrainingData.batch``); the network is
wrapped in DistributedDataParallel, the discriminator's gradients are
averaged with an all-reduce (WGAN-GP's double backward does not go through
DDP's hooks), and rank 0 validates, logs and writes files.

Files in ``config.output``: ``checkpoint.pt`` (everything needed to resume,
written atomically every ``checkpoint_every`` steps), ``model.pt`` (the best
network by validation PSNR, a model file), ``metrics.jsonl`` (one line per
epoch), ``config.toml`` (the run's configuration).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from .._device import resolve_device
from ..errors import LFMError
from ..evaluate import score
from ..modelfile import save_model
from ..operator import LightFieldOperator
from ..psf.bank import PSFBank
from ..unfolded import UnfoldedISTA
from . import losses
from .config import TrainConfig
from .data import TrainingData
from .discriminator import VolumeDiscriminator

CHECKPOINT_FORMAT = "lfm_recon.checkpoint"
CHECKPOINT_VERSION = 1
# Config keys a resumed run may change (to extend or shorten it).
RESUMABLE_CHANGES = {("optim", "steps"), ("optim", "time_budget"), ("output",)}
_COMPUTE = {"fp32": "exact", "tf32": "tf32", "bf16": "bf16"}


class TrainingDiverged(LFMError):
    """A loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run produced.

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
        LFMError: bad config or data, a data set from another PSF, an
            existing run without ``resume``/``overwrite``;
            :class:`TrainingDiverged` on NaN/Inf.
    """
    if not isinstance(config, TrainConfig):
        raise LFMError(f"train needs a TrainConfig, got {type(config).__name__}")
    if resume and overwrite:
        raise LFMError("--resume and --overwrite contradict each other: choose one")
    ctx = _Distributed.start(config.device)
    try:
        return _Run(config, ctx, resume, overwrite, progress).run()
    finally:
        ctx.stop()


# --- processes and devices ---------------------------------------------------------
@dataclass
class _Distributed:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @classmethod
    def start(cls, device_name: str) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name, local)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank, world, device, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_min(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over processes (a constant: no gradient)."""
        value = value.detach()
        if self.world == 1:
            return value
        t = value.reshape(1).to(self._comm_device)
        dist.all_reduce(t)
        return (t / self.world).to(value.device).reshape(())

    def average_gradients(self, params) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        dist.broadcast(t, 0)
        return bool(t.item())

    @property
    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def stop(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# --- one run ------------------------------------------------------------------------
class _Run:
    def __init__(self, cfg: TrainConfig, ctx: _Distributed, resume, overwrite, progress):
        self.cfg, self.ctx = cfg, ctx
        self.progress = progress and ctx.main
        self.out = Path(cfg.output)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.model_path = self.out / "model.pt"
        if cfg.precision != "fp32" and ctx.device.type != "cuda":
            raise LFMError(f"precision {cfg.precision!r} needs a CUDA device; use fp32 on the CPU")
        self._prepare_output(resume, overwrite)
        torch.manual_seed(cfg.seed)
        bank = PSFBank.load(cfg.psf)
        self.data = TrainingData(cfg.data, bank)
        self.op = LightFieldOperator(
            bank, device=ctx.device, compute=_COMPUTE[cfg.precision], check_inputs=False
        )
        self.net = UnfoldedISTA(self.op, config=cfg.model)
        self._init_lambda()
        groups = [{"params": self._scalar_params(), "lr": cfg.optim.lr}]
        if self.net.priors is not None:
            groups.append({"params": list(self.net.priors.parameters()), "lr": cfg.optim.prior_lr})
        self.opt = torch.optim.Adam(groups)
        self._base_lrs = [g["lr"] for g in groups]
        self.disc = self.opt_d = None
        if cfg.loss.adversarial > 0:
            self.disc = VolumeDiscriminator().to(ctx.device)
            self.opt_d = torch.optim.Adam(
                self.disc.parameters(), lr=cfg.optim.discriminator_lr, betas=(0.5, 0.999)
            )
        self.step, self.elapsed = 0, 0.0
        self.best: dict = {}
        self.history: list = []
        if resume:
            self._load_checkpoint()
        self.model = self.net
        if ctx.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.writer = self._tensorboard() if cfg.tensorboard and ctx.main else None

    # --- set-up --------------------------------------------------------------------
    def _prepare_output(self, resume: bool, overwrite: bool) -> None:
        exists = self.checkpoint_path.exists() or self.model_path.exists()
        if resume and not self.checkpoint_path.is_file():
            raise LFMError(f"--resume: {self.checkpoint_path} does not exist; start without it")
        if exists and not (resume or overwrite):
            raise LFMError(
                f"{self.out} already holds a training run; pass --resume to continue it or"
                " --overwrite to start again"
            )
        if self.ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                for name in ("checkpoint.pt", "model.pt", "metrics.jsonl"):
                    (self.out / name).unlink(missing_ok=True)
            (self.out / "config.toml").write_text(self.cfg.to_toml(), encoding="utf-8")
        self.ctx.barrier()

    def _scalar_params(self) -> list:
        net = self.net
        params = [net.step_logits, net.lam_logits]
        if net.config.initial == "adjoint":
            params.append(net.start_scale)
        return params

    def _init_lambda(self) -> None:
        """λ₀ from the training light fields (up to 32 whole frames)."""
        d = self.data
        if len(d.lightfields):
            y, b = d.lightfields[:32], d.labelled_background[:32]
        else:  # unlabeled light fields only (re-synthesis training)
            y, b = d._unlabeled_parts[0][:32], d._unlabeled_bg[0][:32]
        self.net.set_lambda_scale(torch.from_numpy(y), torch.from_numpy(b).reshape(-1, 1, 1, 1))

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LFMError(
                "tensorboard = true needs the tensorboard package: pip install tensorboard"
            ) from None
        return SummaryWriter(str(self.out / "tensorboard"))

    # --- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        budget = cfg.optim.time_budget
        bar = tqdm(
            total=cfg.optim.steps, initial=self.step, desc="train", disable=not self.progress
        )
        epoch_losses: list[dict] = []
        started = time.perf_counter() - self.elapsed
        stop = False
        while self.step < cfg.optim.steps and not stop:
            epoch_losses.append(self._train_step())
            self.step += 1
            self.elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_losses[-1]['total']:.4g}")
            stop = ctx.broadcast_flag(bool(budget) and self.elapsed >= budget)
            last = self.step == cfg.optim.steps or stop
            if self.step % cfg.steps_per_epoch == 0 or last:
                self._end_epoch(epoch_losses, bar)
                epoch_losses = []
            if self.step % cfg.checkpoint_every == 0 or last:
                self._save_checkpoint()
        bar.close()
        ctx.barrier()
        return TrainResult(self.model_path, self.step, dict(self.best), list(self.history))

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _train_step(self) -> dict:
        cfg, ctx, w = self.cfg, self.ctx, self.cfg.loss
        self._set_learning_rates()
        batch = self.data.batch(cfg.seed, self.step, ctx.rank, ctx.world).to(ctx.device)
        y, b = batch.y, batch.background
        c = UnfoldedISTA.normalisation(y, b)
        yn, bn = y / c, b / c
        with self._autocast():
            xn = self.model(y, b, normalised=True).float()
        n_l = batch.n_labelled
        terms: dict[str, torch.Tensor] = {}
        total = xn.new_zeros(())
        target = batch.target / c[:n_l] if n_l else None
        if n_l and w.supervised:
            den = ctx.mean(target.pow(2).sum())
            terms["supervised"] = losses.supervised(xn[:n_l], target, den)
            total = total + w.supervised * terms["supervised"]
        if n_l and w.ssim:
            terms["ssim"] = 1 - losses.ssim3d(xn[:n_l], target)
            total = total + w.ssim * terms["ssim"]
        if w.resynthesis:
            den = ctx.mean(yn.pow(2).sum())
            terms["resynthesis"] = losses.resynthesis(
                self.op, xn, yn, bn, w.resynthesis_highpass, den
            )
            total = total + w.resynthesis * terms["resynthesis"]
        if self.disc is not None and self.step >= cfg.optim.warmup_steps and n_l:
            terms["discriminator"] = self._discriminator_step(target, xn)
            self.disc.requires_grad_(False)
            with self._autocast():
                score_fake = self.disc(xn).float()
            self.disc.requires_grad_(True)
            terms["adversarial"] = losses.generator_loss(score_fake, w.gan)
            total = total + w.adversarial * terms["adversarial"]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        finite = bool(torch.isfinite(total)) and bool(torch.isfinite(norm))
        if not ctx.all_min(finite):
            self._diverged(terms)
        self.opt.step()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["total"] = float(total.detach())
        return out

    def _set_learning_rates(self) -> None:
        """Cosine decay over optim.steps (a function of the step alone, so
        resumed and uninterrupted runs agree)."""
        o = self.cfg.optim
        factor = 1.0
        if o.schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * self.step / o.steps))
        for group, base in zip(self.opt.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = o.discriminator_lr * factor

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        seed = np.random.SeedSequence([cfg.seed, self.step, 1]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(seed))
        with self._autocast():
            loss = losses.discriminator_loss(
                self.disc, real, fake, cfg.loss.gan, cfg.loss.gradient_penalty, gen
            ).float()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.ctx.average_gradients(self.disc.parameters())
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 10 * cfg.optim.grad_clip)
        if not self.ctx.all_min(bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))):
            self._diverged({"discriminator": loss})
        self.opt_d.step()
        return loss.detach()

    def _diverged(self, terms: dict) -> None:
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
        kept = (
            f"the last good checkpoint {self.checkpoint_path} is kept (resume from it with"
            " --resume after lowering optim.lr or optim.grad_clip)"
            if self.checkpoint_path.exists()
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: a loss or its gradient is NaN or"
            f" infinite ({values}); {kept}"
        )

    # --- epochs, validation, files ----------------------------------------------------
    def _end_epoch(self, epoch_losses: list[dict], bar) -> None:
        if not self.ctx.main:
            self.ctx.barrier()
            return
        record = {"step": self.step, "seconds": round(self.elapsed, 2)}
        for key in sorted({k for d in epoch_losses for k in d}):
            record[f"loss_{key}"] = float(np.mean([d[key] for d in epoch_losses if key in d]))
        val = self.validate()
        record.update({f"val_{k}": v for k, v in val.items()})
        record["lr"] = self.opt.param_groups[0]["lr"]
        if not self.best or val["psnr"] > self.best["psnr"]:
            self.best = {**val, "step": self.step}
            save_model(self.net, self.model_path, training=self._training_info())
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self._log_tensorboard(record)
        if self.progress:
            bar.write(
                f"step {self.step}: loss {record.get('loss_total', float('nan')):.4g},"
                f" validation PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f},"
                f" F1 {val['f1']:.3f} (best {self.best['psnr']:.2f} dB at step"
                f" {self.best['step']})"
            )
        self.ctx.barrier()

    @torch.no_grad()
    def validate(self, batch: int = 4) -> dict:
        """Validation metrics of the current network on whole frames."""
        data, idx = self.data.validation, self.data.validation_indices
        background = float(data.simulation.get("background", 0.0))
        parts = []
        self.net.eval()
        for start in range(0, len(idx), batch):
            y = torch.from_numpy(data.lightfields[idx[start : start + batch]]).to(self.ctx.device)
            with self._autocast():
                parts.append(self.net(y, background).float().cpu())
        self.net.train()
        x = torch.cat(parts)
        self._last_validation = x
        return score(x, data, idx, self.op, background).summary()

    def _training_info(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "validation": dict(self.best),
            "lfm_recon_version": __version__,
        }

    def _log_tensorboard(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, self.step)
        x = self._last_validation[0]
        for name, mip in (("xy", x.amax(0)), ("xz", x.amax(1))):
            self.writer.add_image(
                f"mip/{name}", (mip / mip.max().clamp_min(1e-12))[None], self.step
            )
        self.writer.flush()

    def _checkpoint_state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "history": self.history,
            "net": {k: v for k, v in self.net.state_dict().items() if not k.startswith("op.")},
            "opt": self.opt.state_dict(),
            "disc": None if self.disc is None else self.disc.state_dict(),
            "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
        }

    def _save_checkpoint(self) -> None:
        if self.ctx.main:
            tmp = self.checkpoint_path.with_name(f".checkpoint.pt.tmp-{os.getpid()}")
            try:
                torch.save(self._checkpoint_state(), tmp)
                os.replace(tmp, self.checkpoint_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        self.ctx.barrier()

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_path
        try:
            state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors of several types
            raise LFMError(
                f"cannot read checkpoint {path} ({exc}); start without --resume"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise LFMError(f"{path} is not an lfm_recon training checkpoint")
        changed = _differences(state["config"], self.cfg.to_dict())
        changed = [k for k in changed if k not in RESUMABLE_CHANGES]
        if changed:
            names = ", ".join(".".join(k) for k in changed)
            raise LFMError(
                f"the config differs from the checkpoint's in {names}; only optim.steps and"
                " optim.time_budget may change on --resume (start a new run for other changes)"
            )
        self.net.load_state_dict(state["net"], strict=False)
        self.opt.load_state_dict(state["opt"])
        if self.disc is not None and state["disc"] is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.best, self.history = dict(state["best"]), list(state["history"])


def _differences(a: dict, b: dict, prefix: tuple = ()) -> list[tuple]:
    keys = set(a) | set(b)
    out = []
    for k in sorted(keys):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_differences(va, vb, (*prefix, k)))
        elif va != vb:
            out.append((*prefix, k))
    return out
