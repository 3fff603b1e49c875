"""Rethinking's retraining budgets: Scratch-E, Scratch-B (epochs and decay stretched exactly) and fine-tuning."""

import math

import pytest
import torch

from widthtune.trainables.retraining import (
    RETRAIN_MODES,
    Retraining,
    finetune_lr,
    rescale_recipe,
    retrain_recipe,
)
from widthtune.training import DataSpec, TrainConfig, learning_rate
from widthtune.training.datasets import DATASET_NAMES, DATASET_SCALE

CIFAR = TrainConfig(epochs=160, lr=0.1, schedule="multistep", milestones=(80, 120), gamma=0.1)
IMAGENET = TrainConfig(epochs=90, lr=0.1, schedule="step", step_size=30, gamma=0.1)


def test_modes():
    assert RETRAIN_MODES == ("scratch-e", "scratch-b", "finetune")


def test_scratch_e_trains_the_same_recipe():
    assert retrain_recipe("scratch-e", CIFAR, 400.0, 100.0) == CIFAR


def test_scratch_b_at_half_the_flops_doubles_epochs_and_milestones():
    recipe = retrain_recipe("scratch-b", CIFAR, 398e6, 199e6)
    assert (recipe.epochs, recipe.milestones) == (320, (160, 240))
    assert (recipe.lr, recipe.schedule, recipe.gamma) == (0.1, "multistep", 0.1)


def test_scratch_b_rounds_epochs_and_keeps_decays_at_the_same_fraction():
    recipe = retrain_recipe("scratch-b", CIFAR, 3.3, 1.0)
    assert recipe.epochs == 528
    assert recipe.milestones == (264, 396)  # 80 and 120 of 160 -> half and three quarters of 528


def test_scratch_b_stretches_step_size_and_warmup():
    recipe = retrain_recipe("scratch-b", TrainConfig(epochs=30, step_size=10, warmup_epochs=2.0), 3.0, 1.0)
    assert (recipe.epochs, recipe.step_size, recipe.warmup_epochs) == (90, 30, 6.0)


def test_imagenet_scale_scratch_b_is_capped_at_twice_the_epochs():
    recipe = retrain_recipe("scratch-b", IMAGENET, 4.1e9, 1.0e9, large_scale=True)
    assert (recipe.epochs, recipe.step_size) == (180, 60)
    small_saving = retrain_recipe("scratch-b", IMAGENET, 4.1e9, 3.0e9, large_scale=True)
    assert small_saving.epochs == round(90 * 4.1 / 3.0)


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (CIFAR, 0.001),
        (IMAGENET, 0.001),
        (TrainConfig(epochs=100, lr=0.1, schedule="multistep", milestones=(50, 200)), 0.01),
        (TrainConfig(epochs=10, lr=0.05, schedule="constant"), 0.05),
        (TrainConfig(epochs=30, lr=0.1, schedule="cosine"), 0.1 * (0.5 - math.sqrt(2) / math.pi)),
    ],
)
def test_finetune_holds_the_smallest_learning_rate(recipe, expected):
    assert finetune_lr(recipe) == pytest.approx(expected)
    tuned = retrain_recipe("finetune", recipe, 2.0, 1.0, finetune_epochs=40)
    assert (tuned.epochs, tuned.schedule, tuned.warmup_epochs) == (40, "constant", 0.0)
    assert all(learning_rate(tuned, step, 10) == pytest.approx(expected) for step in range(0, 400, 37))


def test_step_and_multistep_lowest_rate_is_what_the_last_epoch_trains_at():
    for recipe in (CIFAR, IMAGENET):
        last = learning_rate(recipe, recipe.epochs * 5 - 1, 5)
        assert finetune_lr(recipe) == pytest.approx(last)


def test_cosine_finetune_rate_is_the_mean_of_the_last_quarter():
    recipe = TrainConfig(epochs=40, lr=0.2, schedule="cosine")
    steps = 100
    tail = [learning_rate(recipe, s, steps) for s in range(30 * steps, 40 * steps)]
    assert finetune_lr(recipe) == pytest.approx(sum(tail) / len(tail), rel=1e-2)  # a discrete sum


def test_finetune_epochs_default_to_the_chapters_budget_by_the_datasets_scale():
    assert retrain_recipe("finetune", CIFAR, 2.0, 1.0).epochs == 40
    assert retrain_recipe("finetune", IMAGENET, 2.0, 1.0, large_scale=True).epochs == 20
    assert DataSpec(name="cifar100").scale == "cifar" and DataSpec(name="imagenet").scale == "imagenet"
    assert DataSpec(name="imagefolder").scale == "imagenet" and DataSpec(name="digits").scale == "cifar"
    assert Retraining("finetune").recipe(CIFAR, 2.0, 1.0, DataSpec(name="cifar10").scale).epochs == 40
    assert Retraining("finetune").recipe(IMAGENET, 2.0, 1.0, DataSpec(name="imagenet").scale).epochs == 20
    assert Retraining("finetune", large_scale=False).recipe(IMAGENET, 2.0, 1.0, "imagenet").epochs == 40
    assert Retraining("finetune", finetune_epochs=7).recipe(CIFAR, 2.0, 1.0, "cifar").epochs == 7
    assert set(DATASET_SCALE) == set(DATASET_NAMES)  # every dataset declares its scale


def test_rescale_recipe_shrinks_too():
    recipe = rescale_recipe(CIFAR, 40)
    assert (recipe.epochs, recipe.milestones) == (40, (20, 30))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrain_recipe("scratch", CIFAR, 2.0, 1.0), "retrain.mode: 'scratch' is not allowed"),
        (lambda: retrain_recipe("scratch-b", CIFAR, 0.0, 1.0), "retrain.full_cost: 0.0 is not allowed"),
        (lambda: retrain_recipe("scratch-b", CIFAR, 2.0, -1), "retrain.pruned_cost: -1 is not allowed"),
        (
            lambda: retrain_recipe("scratch-b", CIFAR, 1.0, 2.0),
            "retrain.pruned_cost: 2 is more than full_cost",
        ),
        (
            lambda: retrain_recipe("finetune", CIFAR, 2.0, 1.0, finetune_epochs=0),
            "retrain.finetune_epochs: 0 is not allowed",
        ),
        (lambda: rescale_recipe(CIFAR, 0), "train.epochs: 0 is not allowed"),
    ],
)
def test_errors_name_the_field(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_final_train_full_trains_on_training_and_validation_with_the_test_set_untouched():
    from widthtune.training import load_dataset

    data = load_dataset(DataSpec(name="shapes", size=200, resolution=8, val_fraction=0.2))
    assert Retraining().training_data(data) is data  # default: the validation split stays held out
    full = Retraining(final_train="full").training_data(data)
    assert len(full.train_y) == len(data.train_y) + len(data.val_y)

    assert torch.equal(full.train_x[: len(data.train_y)], data.train_x)
    assert torch.equal(full.train_x[len(data.train_y) :], data.val_x)
    assert torch.equal(full.test_x, data.test_x) and torch.equal(full.val_x, data.val_x)
    assert full.mean == data.mean  # normalised by the training split's statistics, as before
    with pytest.raises(
        ValueError, match=r"retrain.final_train: 'all' is not allowed; choose one of: split, full"
    ):
        Retraining(final_train="all")
