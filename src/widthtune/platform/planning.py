"""Planning per experiment kind: a config becomes the ordered list of studies (Tune runs) that carry it out."""

from __future__ import annotations

from collections.abc import Callable

from widthtune.platform.config import ExperimentConfig
from widthtune.platform.studies import Study, plan_methods
from widthtune.platform.transfer import plan_transfer

PLANNERS: dict[str, Callable[[ExperimentConfig], list[Study]]] = {
    "sweep": plan_methods,
    "compare": plan_methods,
    "transfer": plan_transfer,
}


def plan_studies(config: ExperimentConfig) -> list[Study]:
    """Every study of the experiment in run order (a study's shared artifacts are built just before it runs)."""
    return PLANNERS[config.kind](config)
