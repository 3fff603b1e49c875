"""Datasets (device-resident tensors, or image folders streamed from disk) and the training loop every method retrains with."""

from widthtune.training.datasets import (
    DATASET_NAMES,
    LOADER_CHOICES,
    DatasetNotFoundError,
    DatasetSplits,
    DataSpec,
    check_dataset,
    class_balanced_subset,
    load_dataset,
)
from widthtune.training.distill import DistillConfig, distillation_loss
from widthtune.training.loader import AUGMENTATIONS, DeviceLoader
from widthtune.training.loop import (
    SCHEDULES,
    EpochBatches,
    EpochRecord,
    History,
    NonFiniteLossError,
    StepInfo,
    StopTraining,
    TrainConfig,
    TrainState,
    evaluate,
    evaluate_batches,
    learning_rate,
    train,
)
from widthtune.training.streaming import StreamedSplits, StreamLoader

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "LOADER_CHOICES",
    "SCHEDULES",
    "DataSpec",
    "DatasetNotFoundError",
    "DatasetSplits",
    "DeviceLoader",
    "DistillConfig",
    "EpochBatches",
    "EpochRecord",
    "History",
    "NonFiniteLossError",
    "StepInfo",
    "StopTraining",
    "StreamLoader",
    "StreamedSplits",
    "TrainConfig",
    "TrainState",
    "check_dataset",
    "class_balanced_subset",
    "distillation_loss",
    "evaluate",
    "evaluate_batches",
    "learning_rate",
    "load_dataset",
    "train",
]
