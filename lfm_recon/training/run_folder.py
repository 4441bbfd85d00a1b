"""A run's folder: what it holds, starting afresh or resuming, checkpoints
and the metrics log.

    config.toml      the run's configuration, paths relative to the folder
    checkpoint.pt    everything needed to resume (written atomically and fsynced)
    model.pt         the best network by validation PSNR (a model file)
    metrics.jsonl    one JSON line per epoch: losses, validation, seconds

A resumed run compares its configuration with the checkpoint's *before*
writing anything, so a refused resume leaves the run as it was. Paths are
recorded relative to the run folder, so a run moved together with its data
still resumes. The metrics log is rewritten from the checkpoint on resume,
so epochs after the last checkpoint (lost in a crash and recomputed) are
not listed twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._durable import replacing, write_bytes
from ..errors import LFMError
from .config import TrainConfig
from .distributed import Processes

CHECKPOINT_FORMAT = "lfm_recon.checkpoint"
CHECKPOINT_VERSION = 2
# Config keys a resumed run may change (to stop it earlier or move it).
RESUMABLE_CHANGES = {("optim", "steps"), ("optim", "time_budget"), ("output",)}


class RunFolder:
    """The files of one run (``config.output``)."""

    def __init__(self, cfg: TrainConfig, processes: Processes) -> None:
        self.cfg, self.processes = cfg, processes
        self.path = Path(cfg.output)
        self.checkpoint = self.path / "checkpoint.pt"
        self.model = self.path / "model.pt"
        self.metrics = self.path / "metrics.jsonl"

    def portable_config(self) -> dict:
        return self.cfg.portable(self.path)

    # --- start ---------------------------------------------------------------------
    def open(self, resume: bool, overwrite: bool) -> dict | None:
        """Check the folder, then set it up; returns the checkpoint's state
        when resuming (checked against the config), else None."""
        exists = self.checkpoint.exists() or self.model.exists()
        if resume and not self.checkpoint.is_file():
            raise LFMError(f"--resume: {self.checkpoint} does not exist; start without it")
        if exists and not (resume or overwrite):
            raise LFMError(
                f"{self.path} already holds a training run; pass --resume to continue it or"
                " --overwrite to start again"
            )
        state = self._read_checkpoint() if resume else None
        if self.processes.main:
            self.path.mkdir(parents=True, exist_ok=True)
            if state is None:
                for f in (self.checkpoint, self.model, self.metrics):
                    f.unlink(missing_ok=True)
            else:
                self._write_metrics(state["history"])
            _replace_text(self.path / "config.toml", self.cfg.to_toml(self.path))
        self.processes.barrier()
        return state

    def _read_checkpoint(self) -> dict:
        path = self.checkpoint
        try:
            state = torch.load(path, map_location=self.processes.device, weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors of several types
            raise LFMError(
                f"cannot read checkpoint {path} ({exc}); start without --resume"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise LFMError(f"{path} is not an lfm_recon training checkpoint")
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise LFMError(
                f"{path} was written by another lfm_recon version (checkpoint format"
                f" {state.get('format_version')!r}, this one reads {CHECKPOINT_VERSION});"
                " start a new run"
            )
        changed = _differences(_with_model_defaults(state["config"]), self.portable_config())
        changed = [k for k in changed if k not in RESUMABLE_CHANGES]
        if changed:
            names = ", ".join(".".join(k) for k in changed)
            raise LFMError(
                f"the config differs from the checkpoint's in {names}; only optim.steps and"
                " optim.time_budget may change on --resume (start a new run for other changes)"
            )
        o, horizon = self.cfg.optim, int(state["schedule_steps"])
        if o.schedule == "cosine" and o.steps > horizon:
            raise LFMError(
                f"optim.steps = {o.steps} goes beyond the {horizon} steps this run's cosine"
                f" schedule was laid over (the learning rate is 0 from step {horizon} on);"
                f" resume with optim.steps ≤ {horizon}, or start a new run"
            )
        return state

    # --- during the run -------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Write the checkpoint atomically (rank 0), then wait for all ranks."""
        if self.processes.main:
            state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
            with replacing(self.checkpoint) as tmp:  # fsynced: survives a power loss
                torch.save(state, tmp)
        self.processes.barrier()

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _write_metrics(self, history: list[dict]) -> None:
        _replace_text(self.metrics, "".join(json.dumps(r) + "\n" for r in history))


def _replace_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _with_model_defaults(config: dict) -> dict:
    """A checkpoint's config with the architecture options it predates set to
    their defaults (the values it was trained with), so that a run started
    before an option existed still resumes."""
    from ..unfolded import UnfoldedConfig

    model = config.get("model")
    if not isinstance(model, dict):
        return config
    return {**config, "model": {**UnfoldedConfig().to_dict(), **model}}


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
