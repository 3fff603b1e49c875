"""Datasets as device-resident tensors and the training loop every method retrains with."""

from widthtune.training.datasets import (
    DATASET_NAMES,
    DatasetNotFoundError,
    DatasetSplits,
    DataSpec,
    class_balanced_subset,
    load_dataset,
)
from widthtune.training.distill import DistillConfig, distillation_loss
from widthtune.training.loader import AUGMENTATIONS, DeviceLoader
from widthtune.training.loop import (
    SCHEDULES,
    EpochRecord,
    History,
    NonFiniteLossError,
    StepInfo,
    StopTraining,
    TrainConfig,
    TrainState,
    evaluate,
    learning_rate,
    train,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "SCHEDULES",
    "DataSpec",
    "DatasetNotFoundError",
    "DatasetSplits",
    "DeviceLoader",
    "DistillConfig",
    "EpochRecord",
    "History",
    "NonFiniteLossError",
    "StepInfo",
    "StopTraining",
    "TrainConfig",
    "TrainState",
    "class_balanced_subset",
    "distillation_loss",
    "evaluate",
    "learning_rate",
    "load_dataset",
    "train",
]
