"""The experiment config: its schema, how it is read and overridden, and the checks run before anything starts."""

from widthtune.platform.config.loading import apply_overrides, load_config, validate_config
from widthtune.platform.config.schema import (
    BASELINES,
    KINDS,
    NAME_PATTERN,
    OBJECTIVES,
    ConfigError,
    DistillEntry,
    ExperimentConfig,
    MethodEntry,
    Resources,
    SchedulerConfig,
    SearchConfig,
    TransferConfig,
)

__all__ = [
    "BASELINES",
    "KINDS",
    "NAME_PATTERN",
    "OBJECTIVES",
    "ConfigError",
    "DistillEntry",
    "ExperimentConfig",
    "MethodEntry",
    "Resources",
    "SchedulerConfig",
    "SearchConfig",
    "TransferConfig",
    "apply_overrides",
    "load_config",
    "validate_config",
]
