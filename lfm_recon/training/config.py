"""One TOML file describes a training run completely.

Sections and their fields are the dataclasses below; every field has a
default except ``psf`` and ``data.train``. Unknown keys and impossible values
are errors that name the key and what is allowed. Relative paths are taken
from the config file's folder. Example (all sections optional but [data]):

    psf = "bank.h5"              # the PSF bank the data sets were made with
    output = "run"               # checkpoint.pt, model.pt, metrics.jsonl
    seed = 0
    device = "auto"              # auto | cpu | cuda | cuda:1
    precision = "fp32"           # fp32 | tf32 | bf16 (the last two on CUDA)

    [model]                      # lfm_recon.unfolded.UnfoldedConfig
    n_layers = 8

    [data]
    train = "data.h5"            # lfm-recon simulate: paired + unlabeled
    validation = "val.h5"        # simulated with another --seed
    n_labelled = 4               # absent: all paired samples of train

    [loss]
    resynthesis = 0.1
    adversarial = 0.01

    [optim]
    steps = 2000
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LFMError
from ..simulator import SimulationRanges
from ..unfolded import UnfoldedConfig
from .schedule import SCHEDULES

RESYNTHESIS_KINDS = ("l2", "poisson")

PRECISIONS = ("fp32", "tf32", "bf16")
GANS = ("lsgan", "wgan-gp")


@dataclass(frozen=True)
class DataConfig:
    """What the network learns from.

    Four kinds of data, each for a reason (give any mix; at least one
    source of light fields): paired sets (``train``) for the supervised
    loss; unlabeled light fields (``unlabeled``, ideally the recordings the
    network is for) for the re-synthesis loss; unpaired volumes
    (``unpaired_volumes``, e.g. two-photon stacks) for the adversarial loss;
    and simulation drawn fresh every step (``[data.simulate]``).

    Attributes:
        train: HDF5 data set (``lfm-recon simulate``) with paired samples
            (volumes + light fields) and unlabeled light fields; empty: none.
        validation: HDF5 data set scored each epoch to pick the best model;
            empty: hold out the last ``n_validation`` paired samples of
            ``train``. It must not share frames, volumes or a simulation seed
            with the training inputs (checked).
        n_validation: paired samples held out when ``validation`` is empty.
        n_labelled: paired samples of ``train`` used with their volumes (the
            first ones); absent: all that are not held out; 0: none (learn
            from unlabeled light fields only).
        unlabeled: further unlabeled light fields: HDF5 data sets (their
            ``unlabeled`` set, with their background) or files of rectified
            frames (TIFF stacks (T, Y, X), ``file.h5:dataset``).
        use_train_unlabeled: also use ``train``'s unlabeled light fields.
        frames_background: background of the light fields read from frame
            files (not from data sets), counts per pixel.
        patch_lenslets: side of the random lenslet-aligned patches, lenslets
            (0 = whole frames). Losses are scored only where a patch's light
            field and volume explain each other (see
            ``lfm_recon.training.sampler``), so a patch cut from a larger
            frame needs more than twice the PSF's largest kernel radius.
        batch_size: labelled patches per step (all processes together).
        unlabeled_batch_size: unlabeled patches per step (all processes).
        augment: random flips and transposes, where the PSF bank has those
            symmetries (checked), so H commutes with them.
        simulate: ``[data.simulate]``: paired samples drawn fresh every step
            from randomised families (:class:`lfm_recon.simulator.SimulationRanges`);
            absent: none. With no ``train`` and no ``validation`` file the
            model is picked on ``simulate.validation`` simulated samples.
        unpaired_volumes: volumes without light fields, the discriminator's
            "real" examples (TIFF with ImageJ voxel size, HDF5 with
            ``element_size_um``), resampled to the PSF bank's grid; empty:
            the discriminator's real examples are the labelled targets.
        unpaired_batch_size: unpaired crops per step (all processes).
    """

    train: str = ""
    validation: str = ""
    n_validation: int = 4
    n_labelled: int | None = None
    unlabeled: tuple[str, ...] = ()
    use_train_unlabeled: bool = True
    frames_background: float = 0.0
    patch_lenslets: int = 11
    batch_size: int = 4
    unlabeled_batch_size: int = 4
    augment: bool = True
    simulate: SimulationRanges | None = None
    unpaired_volumes: tuple[str, ...] = ()
    unpaired_batch_size: int = 4


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (0 switches a term off).

    Attributes:
        supervised: relative squared error ‖x̂ − x‖²/‖x‖² of the
            reconstruction against the ground-truth volume.
        ssim: weight of 1 − SSIM (3-D, σ 1.5 voxels) on labelled samples.
        resynthesis: weight of the re-synthesis term on every light field:
            how well each reconstruction explains its own light field.
        resynthesis_kind: ``"l2"``, the relative squared residual
            ‖H x̂ + b − y‖²/‖y‖², or ``"poisson"``, the Poisson deviance of
            y under H x̂ + b per photon (the photon-noise likelihood; see
            :func:`lfm_recon.training.losses.poisson_resynthesis`).
        resynthesis_holdout: fraction of pixels hidden from the network's
            data term and scored by the re-synthesis term alone (a fresh
            random split per step), so that the term rewards predicting
            light the network did not see rather than fitting noise; 0 = off.
        resynthesis_highpass: σ in lenslets of a Gaussian low-pass removed from
            the re-synthesis residual (ignores slow background); 0 = off.
        adversarial: generator-side adversarial loss (after warm-up).
        gan: ``"lsgan"`` (least squares) or ``"wgan-gp"``.
        gradient_penalty: WGAN-GP's penalty weight.
    """

    supervised: float = 1.0
    ssim: float = 0.0
    resynthesis: float = 0.1
    resynthesis_kind: str = "l2"
    resynthesis_holdout: float = 0.0
    resynthesis_highpass: float = 0.0
    adversarial: float = 0.0
    gan: str = "lsgan"
    gradient_penalty: float = 10.0


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation (Adam) and schedule.

    Attributes:
        steps: training steps in all (a resumed run continues to it). The
            learning-rate schedule is laid over the steps the run started
            with: a resumed run may stop earlier, but may not go beyond
            them with the cosine schedule (it has decayed to 0 there).
        warmup_steps: steps with the supervised and re-synthesis losses only;
            the adversarial stage starts after them.
        lr: learning rate of the step and threshold parameters.
        prior_lr: learning rate of the CNN prior (model.prior = "cnn").
        discriminator_lr: learning rate of the discriminator.
        grad_clip: largest gradient norm (global, per step).
        schedule: ``"cosine"`` (learning rates decay to 0 over ``steps``,
            half a cosine) or ``"constant"``.
        time_budget: seconds of training after which the run stops (counted
            across resumes; 0 = no limit). It stops the run, it does not
            stretch the schedule: give ``steps`` to match the budget.
    """

    steps: int = 1000
    warmup_steps: int = 200
    lr: float = 0.02
    prior_lr: float = 1e-3
    discriminator_lr: float = 2e-4
    grad_clip: float = 1.0
    schedule: str = "cosine"
    time_budget: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """A training run (see the module doc for the file).

    Attributes:
        psf: PSF bank file (HDF5).
        output: run folder (checkpoint.pt, model.pt, metrics.jsonl).
        seed: seeds initialisation, batches and augmentations (a run is
            reproducible on the CPU, also after --resume).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``; ``tf32`` or ``bf16`` (CUDA only) for the
            operator's convolutions and the CNNs.
        steps_per_epoch: validation (PSNR/SSIM, best model kept) every so
            many steps.
        checkpoint_every: checkpoint (with optimiser state) every so many steps.
        tensorboard: also write TensorBoard scalars and MIP images (needs the
            ``tensorboard`` package).
        init_model: a model file to start from (fine-tuning): its PSF bank
            and architecture must be the run's; empty: a fresh network.
    """

    psf: str
    data: DataConfig
    output: str = "run"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    steps_per_epoch: int = 100
    checkpoint_every: int = 100
    tensorboard: bool = False
    init_model: str = ""
    model: UnfoldedConfig = field(default_factory=UnfoldedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        _check(self)

    # --- files -----------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a TOML file; relative paths are resolved against its folder.
        ``overrides`` replace top-level fields (e.g. ``output``)."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LFMError(f"cannot read training config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise LFMError(f"{path} is not valid TOML: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, base=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, values: dict, *, base: Path | None = None, source="config") -> TrainConfig:
        """Build from nested dicts (the TOML structure); see :meth:`from_file`."""
        values = dict(values)
        sections = {"model": UnfoldedConfig, "data": DataConfig, "loss": LossConfig}
        sections["optim"] = OptimConfig
        for name, kind in sections.items():
            raw = values.get(name, {} if name != "data" else None)
            if raw is None:
                raise LFMError(f"{source}: the [data] section with `train = ...` is required")
            if not isinstance(raw, dict):
                raise LFMError(f"{source}: [{name}] must be a table of keys, got {raw!r}")
            if name == "data" and raw.get("simulate", {}) is None:  # from to_dict()
                raw = {k: v for k, v in raw.items() if k != "simulate"}
            if name == "data" and "simulate" in raw:
                raw = dict(raw)
                table = raw["simulate"]
                if not isinstance(table, dict):
                    raise LFMError(f"{source}: [data.simulate] must be a table, got {table!r}")
                raw["simulate"] = SimulationRanges.from_dict(table, f"{source} [data.simulate]")
            nested_keys = ("simulate",) if name == "data" else ()
            values[name] = _build(kind, raw, f"{source} [{name}]", nested=nested_keys)
        top = _build(cls, values, source, nested=tuple(sections))
        if base is not None:
            top = top.resolved(base)
        return top

    def resolved(self, base: Path) -> TrainConfig:
        """The same run with relative paths taken from ``base``."""

        def fix(p: str) -> str:
            return p if not p or Path(p).is_absolute() else str(Path(base) / p)

        data = dataclasses.replace(
            self.data,
            train=fix(self.data.train),
            validation=fix(self.data.validation),
            unlabeled=tuple(fix(p) for p in self.data.unlabeled),
            unpaired_volumes=tuple(fix(p) for p in self.data.unpaired_volumes),
        )
        return dataclasses.replace(
            self,
            psf=fix(self.psf),
            output=fix(self.output),
            init_model=fix(self.init_model),
            data=data,
        )

    def to_dict(self) -> dict:
        """Nested plain dict (TOML/JSON-ready; absent optional values are None)."""
        d = dataclasses.asdict(self)
        d["data"]["unlabeled"] = list(self.data.unlabeled)
        d["data"]["unpaired_volumes"] = list(self.data.unpaired_volumes)
        d["data"]["simulate"] = None if self.data.simulate is None else self.data.simulate.to_dict()
        return d

    def portable(self, folder: str | Path) -> dict:
        """:meth:`to_dict` with every file path relative to ``folder`` (the
        run folder): what a run records, so that moving a run together with
        its data does not change it."""

        def rel(p: str) -> str:
            return p if not p else os.path.relpath(p, folder)

        d = self.to_dict()
        d["psf"], d["output"] = rel(d["psf"]), rel(d["output"])
        d["init_model"] = rel(d["init_model"])
        data = d["data"]
        data["train"], data["validation"] = rel(data["train"]), rel(data["validation"])
        data["unlabeled"] = [rel(p) for p in data["unlabeled"]]
        data["unpaired_volumes"] = [rel(p) for p in data["unpaired_volumes"]]
        return d

    def to_toml(self, folder: str | Path | None = None) -> str:
        """TOML text that :meth:`from_file` reads back to the same config;
        with ``folder``, paths relative to it (for a file kept there)."""
        lines = []
        d = self.to_dict() if folder is None else self.portable(folder)
        lines.extend(_toml_lines({k: v for k, v in d.items() if not isinstance(v, dict)}))
        for key, value in d.items():
            if isinstance(value, dict):
                lines.append(f"\n[{key}]")
                lines.extend(_toml_lines(value))
        return "\n".join(lines) + "\n"


def _toml_lines(d: dict) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(_toml_lines(v)) + " }"
    return repr(v)


def _build(kind, raw: dict, source: str, nested: tuple = ()):
    """kind(**raw) with unknown keys and wrong types named."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise LFMError(f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    values = {}
    for name, value in raw.items():
        if name in nested:
            values[name] = value
            continue
        default = fields[name].default
        expected = type(default) if default is not dataclasses.MISSING else str
        if default is None:  # optional counts (absent or None = no limit)
            expected = int
            if value is None:
                values[name] = value
                continue
        if expected is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise LFMError(f"{source}: {name} must be a list of file names, got {value!r}")
            value = tuple(value)
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise LFMError(f"{source}: {name} must be {_type_name(expected)}, got {value!r}")
        values[name] = value
    missing = [n for n, f in fields.items() if _required(f) and n not in values]
    if missing:
        raise LFMError(f"{source}: missing required key(s) {missing}")
    try:
        return kind(**values)
    except LFMError as exc:
        raise LFMError(f"{source}: {exc}") from None


def _required(f) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _type_name(t) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        t, t.__name__
    )


def _check(c: TrainConfig) -> None:
    """Impossible values, named with what is allowed."""
    d, loss, o = c.data, c.loss, c.optim
    if not c.psf:
        raise LFMError("psf: give the PSF bank file (.h5) the data sets were made with")
    if not (d.train or d.simulate or d.unlabeled):
        raise LFMError(
            "no light fields to learn from: give data.train (lfm-recon simulate), a"
            " [data.simulate] section or data.unlabeled"
        )
    if not (d.train or d.validation or (d.simulate and d.simulate.validation)):
        raise LFMError(
            "nothing to pick the model on: give data.validation (a simulated set), data.train"
            " (its last data.n_validation samples are held out) or [data.simulate]"
        )
    if loss.resynthesis_kind not in RESYNTHESIS_KINDS:
        raise LFMError(
            f"loss.resynthesis_kind must be one of {RESYNTHESIS_KINDS}, got"
            f" {loss.resynthesis_kind!r}"
        )
    if not 0 <= loss.resynthesis_holdout < 1:
        raise LFMError(
            f"loss.resynthesis_holdout is a fraction of pixels in [0, 1), got"
            f" {loss.resynthesis_holdout}"
        )
    if c.precision not in PRECISIONS:
        raise LFMError(f"precision must be one of {PRECISIONS}, got {c.precision!r}")
    if o.schedule not in SCHEDULES:
        raise LFMError(f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if loss.gan not in GANS:
        raise LFMError(f"loss.gan must be one of {GANS}, got {loss.gan!r}")
    for name, value in (
        ("steps_per_epoch", c.steps_per_epoch),
        ("checkpoint_every", c.checkpoint_every),
        ("data.batch_size", d.batch_size),
        ("optim.steps", o.steps),
    ):
        if value < 1:
            raise LFMError(f"{name} must be ≥ 1, got {value}")
    for name, value in (
        ("data.n_validation", d.n_validation),
        ("data.n_labelled", 0 if d.n_labelled is None else d.n_labelled),
        ("data.patch_lenslets", d.patch_lenslets),
        ("data.unlabeled_batch_size", d.unlabeled_batch_size),
        ("data.unpaired_batch_size", d.unpaired_batch_size),
        ("optim.warmup_steps", o.warmup_steps),
        ("seed", c.seed),
    ):
        if value < 0:
            raise LFMError(f"{name} must be ≥ 0, got {value}")
    for name, value in (
        ("loss.supervised", loss.supervised),
        ("loss.ssim", loss.ssim),
        ("loss.resynthesis", loss.resynthesis),
        ("loss.resynthesis_highpass", loss.resynthesis_highpass),
        ("loss.adversarial", loss.adversarial),
        ("loss.gradient_penalty", loss.gradient_penalty),
        ("data.frames_background", d.frames_background),
        ("optim.time_budget", o.time_budget),
    ):
        if not math.isfinite(value) or value < 0:
            raise LFMError(f"{name} must be a finite number ≥ 0, got {value}")
    for name, value in (
        ("optim.lr", o.lr),
        ("optim.prior_lr", o.prior_lr),
        ("optim.discriminator_lr", o.discriminator_lr),
        ("optim.grad_clip", o.grad_clip),
    ):
        if not math.isfinite(value) or value <= 0:
            raise LFMError(f"{name} must be a finite number > 0, got {value}")
    if loss.supervised + loss.ssim + loss.resynthesis + loss.adversarial == 0:
        raise LFMError("all loss weights are 0: set at least loss.supervised or loss.resynthesis")
    if loss.supervised + loss.ssim + loss.resynthesis == 0:
        raise LFMError(
            "the adversarial loss alone does not tie reconstructions to their light fields;"
            " also set loss.supervised or loss.resynthesis"
        )
    if d.unlabeled_batch_size == 0 and not (loss.supervised or loss.ssim):
        raise LFMError("no labelled loss and data.unlabeled_batch_size = 0: nothing to learn from")
