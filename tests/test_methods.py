"""uniform, random and direct as plain `search(task)` functions, and the adapter's cost matching — no Ray."""

import pytest

from widthtune.trainables.adapter import find_widths
from widthtune.trainables.registry import get_method, registered

SPEC = "resnet_cifar:depth=8"


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task


@pytest.mark.parametrize("name", ["uniform", "random"])
def test_method_result_is_matched_to_the_cost_target(task, name):
    found = find_widths(task, name)
    cost = task.cost_model.cost(found.widths)
    assert abs(cost - task.cost_target) <= 0.005 * task.cost_target


def test_uniform_is_one_multiplier_of_the_base(task):
    found = find_widths(task, "uniform")
    ratios = found.widths.ratio_to_base()
    assert max(ratios.values()) - min(ratios.values()) < 0.2  # one multiplier, up to divisor rounding


def test_random_shapes_differ_by_seed_and_repeat_by_seed(task):
    from dataclasses import replace

    a = find_widths(replace(task, seed=1), "random").widths
    b = find_widths(replace(task, seed=1), "random").widths
    c = find_widths(replace(task, seed=2), "random").widths
    assert a == b and a != c


def test_direct_decodes_the_sampled_vector(task):
    params = {"space": "stage", "low": 0.25, "high": 2.0, "matched": True}
    trial_params = {"widths.stage1": 2.0, "widths.stage2": 1.0, "widths.stage3": 0.25}
    from dataclasses import replace

    found = find_widths(replace(task, params=params, trial_params=trial_params), "direct")
    ratios = found.widths.ratio_to_base()
    assert ratios["stage1.stream"] > ratios["stage2.stream"] > ratios["stage3.stream"]
    assert abs(task.cost_model.cost(found.widths) - task.cost_target) <= 0.005 * task.cost_target


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match="uniform, random, direct"):
        get_method("magic")
    assert {"uniform", "random", "direct"} <= set(registered())


def test_starting_weights_follow_the_retraining_mode(task):
    from widthtune.trainables.adapter import FoundWidths, starting_weights
    from widthtune.trainables.retraining import Retraining

    weights = {"w": 1}
    kept = FoundWidths(find_widths(task, "uniform").widths, 0.0, 0.0, weights=weights)
    generated = FoundWidths(kept.widths, 0.0, 0.0, weights=weights, init_from_weights=True)
    none = FoundWidths(kept.widths, 0.0, 0.0)
    assert starting_weights(Retraining("finetune"), kept, "slimming") is weights
    assert (
        starting_weights(Retraining("scratch-e"), kept, "slimming") is None
    )  # kept weights: fine-tuning only
    assert starting_weights(Retraining("scratch-b"), generated, "lwdna") is weights  # init=hypernet
    with pytest.raises(
        ValueError, match=r"retrain\.mode: finetune needs inherited weights, and uniform kept none"
    ):
        starting_weights(Retraining("finetune"), none, "uniform")
