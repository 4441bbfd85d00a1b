"""Semi-supervised training of the unfolded network.

One module per job: ``config`` (the TOML run description), ``data`` (the
fixed frames, the split, leak checks), ``sampler`` (patches and the weights
that keep them consistent with y = H x), ``batches`` (each step's batch from
every kind of data), ``unpaired`` (unpaired volumes for the discriminator),
``augment`` (flips H commutes with), ``losses`` and ``objective``,
``adversarial`` and ``discriminator``, ``schedule``, ``validation``,
``run_folder`` (checkpoints, resume, metrics log), ``distributed``
(torchrun), and ``trainer`` (the loop). Entry points: :class:`TrainConfig`
and :func:`train`.
"""

from .config import DataConfig, LossConfig, OptimConfig, TrainConfig
from .trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "train",
]
