"""The training loop: it learns, schedules are exact, hooks run, distillation is the formula, NaN is an error."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from widthtune.training import (
    DataSpec,
    DistillConfig,
    NonFiniteLossError,
    StopTraining,
    TrainConfig,
    distillation_loss,
    learning_rate,
    load_dataset,
    train,
)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec("digits", resolution=8))


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def config(**changes):
    return TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 0.1, "augment": "none", **changes})


def test_loss_decreases_and_every_epoch_is_recorded(data):
    history = train(small_model(), data, config(epochs=4))
    assert [r.epoch for r in history.records] == [1, 2, 3, 4]
    assert history.final.train_loss < history.records[0].train_loss
    assert history.final.test_acc > 0.5 and history.final.val_acc is not None
    assert history.final.images_seen == 4 * len(data.train_y)
    assert history.best("val_acc").val_acc == max(r.val_acc for r in history.records)


def test_same_seed_same_history(data):
    a = train(small_model(), data, config(seed=7, augment="crop+flip"))
    b = train(small_model(), data, config(seed=7, augment="crop+flip"))
    c = train(small_model(), data, config(seed=8, augment="crop+flip"))
    assert [r.train_loss for r in a.records] == [r.train_loss for r in b.records]
    assert [r.train_loss for r in a.records] != [r.train_loss for r in c.records]


def test_schedules_are_exact():
    steps = 10
    cosine = config(epochs=4, lr=0.2, schedule="cosine", warmup_epochs=1)
    assert learning_rate(cosine, 0, steps) == pytest.approx(0.02)
    assert learning_rate(cosine, 9, steps) == pytest.approx(0.2)
    assert learning_rate(cosine, 10, steps) == pytest.approx(0.2)
    assert learning_rate(cosine, 25, steps) == pytest.approx(0.1 * (1 + math.cos(math.pi * 15 / 30)))
    multistep = config(epochs=10, lr=0.1, schedule="multistep", milestones=(3, 6), gamma=0.1)
    assert [learning_rate(multistep, e * steps, steps) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    step = config(epochs=10, schedule="step", step_size=4, gamma=0.5, lr=1.0)
    assert [learning_rate(step, e * steps, steps) for e in (0, 3, 4, 8)] == [1.0, 1.0, 0.5, 0.25]
    assert learning_rate(config(schedule="constant"), 123, steps) == 0.1


def test_label_smoothing_changes_the_loss(data):
    plain = train(small_model(), data, config(epochs=1))
    smooth = train(small_model(), data, config(epochs=1, label_smoothing=0.3))
    assert smooth.final.train_loss > plain.final.train_loss


def test_distillation_loss_is_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 10), torch.randn(5, 10)
    targets = torch.randint(0, 10, (5,))
    cfg = DistillConfig(alpha=0.4, temperature=4.0)
    p_t = F.softmax(teacher / 4, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / 4, dim=1))).sum(1).mean()
    expected = 0.6 * F.cross_entropy(student, targets) + 0.4 * 16 * kl
    assert distillation_loss(student, teacher, targets, cfg) == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_trains_toward_the_teacher(data):
    teacher = small_model(1)
    train(teacher, data, config(epochs=2))
    history = train(small_model(2), data, config(epochs=2), teacher=teacher, distill=DistillConfig(alpha=0.9))
    assert history.final.test_acc > 0.3


def test_regularizer_and_hooks_run(data):
    steps, epochs = [], []
    model = small_model()
    l1 = lambda m: 1.0 * sum(p.abs().sum() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    train(
        model,
        data,
        config(epochs=2),
        regularizer=l1,
        on_step=lambda m, info: steps.append(info.step),
        on_epoch=epochs.append,
    )
    free = small_model()
    train(free, data, config(epochs=2))
    weight = lambda m: sum(p.abs().sum().item() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    assert weight(model) < 0.5 * weight(free)
    assert steps == list(range(len(steps))) and len(steps) == 2 * math.ceil(len(data.train_y) / 64)
    assert [r.epoch for r in epochs] == [1, 2]


class Gated(nn.Module):
    """The small model with a gate the loss does not depend on (its gradient is zero, not None)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_model()
        self.gate = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.net(x) + 0 * self.gate


def test_parameters_named_no_decay_are_trained_without_weight_decay(data):
    exempt, decayed = Gated(), Gated()
    train(exempt, data, config(epochs=1, weight_decay=0.1), no_decay=[exempt.gate])
    train(decayed, data, config(epochs=1, weight_decay=0.1))
    assert exempt.gate.item() == 1.0
    assert decayed.gate.item() < 0.9
    # the rest of the model decays as before: same weights either way
    for a, b in zip(exempt.net.parameters(), decayed.net.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_stop_training_returns_the_history_so_far(data):
    def stop_after_two(record):
        if record.epoch == 2:
            raise StopTraining

    history = train(small_model(), data, config(epochs=5), on_epoch=stop_after_two)
    assert len(history.records) == 2 and history.stopped_early


def test_stop_training_from_on_step_keeps_finished_epochs(data):
    steps_per_epoch = math.ceil(len(data.train_y) / 64)

    def stop_in_second_epoch(model, info):
        if info.step == steps_per_epoch + 2:
            raise StopTraining

    history = train(small_model(), data, config(epochs=5), on_step=stop_in_second_epoch)
    assert [r.epoch for r in history.records] == [1] and history.stopped_early


def test_nan_loss_is_an_error_naming_the_epoch_and_step(data):
    steps_per_epoch = math.ceil(len(data.train_y) / 64)
    calls = []

    def nan_at_step_25(model):
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 26 else 0.0)

    epoch = 25 // steps_per_epoch + 1
    with pytest.raises(NonFiniteLossError, match=f"epoch {epoch}, step 25 "):
        train(small_model(), data, config(epochs=3), regularizer=nan_at_step_25)


def test_diverging_lr_is_a_non_finite_loss_error(data):
    steps = []
    with pytest.raises(NonFiniteLossError, match="epoch 1, step") as error:
        train(small_model(), data, config(epochs=2, lr=1e30), on_step=lambda m, info: steps.append(info.step))
    # the failing step is caught before its optimizer step, so the hook never saw it
    assert f"step {len(steps)} " in str(error.value)


def test_drop_last_trains_on_full_batches_only(data):
    history = train(small_model(), data, config(epochs=2, drop_last=True))
    assert history.final.images_seen == 2 * (len(data.train_y) // 64) * 64


def test_misuse_is_a_clear_error(data):
    with pytest.raises(ValueError, match="without a teacher"):
        train(small_model(), data, config(epochs=1), distill=DistillConfig())
    with pytest.raises(ValueError, match=r"train\.batch_size: 4096"):
        train(small_model(), data, config(epochs=1, batch_size=4096, drop_last=True))
    history = train(small_model(), data, config(epochs=1))
    with pytest.raises(ValueError, match="metric: 'val_accuracy'"):
        history.best("val_accuracy")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epochs": 0}, "train.epochs"),
        ({"schedule": "poly"}, "train.schedule"),
        ({"lr": -1}, "train.lr"),
        ({"warmup_epochs": 5}, "train.warmup_epochs"),
        ({"device": "tpu"}, "train.device"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        config(**changes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_uses_bf16_and_channels_last(data):
    history = train(small_model(), data, config(epochs=2, device="cuda"))
    assert history.final.test_acc > 0.3 and history.final.images_per_second > 0
