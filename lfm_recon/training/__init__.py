"""Semi-supervised training of the unfolded network (config, data, losses,
discriminator, trainer). Entry points: :class:`TrainConfig` and :func:`train`."""

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
