"""The training loop: SGD, a per-iteration schedule, evaluation every epoch, hooks for methods and reporting.

The learning rate is set before every iteration: linear warm-up, then the schedule. `step` and `multistep`
decay only at epoch boundaries (milestones and step sizes are in epochs); `cosine` moves every iteration.
The data is either kind of splits: tensors in memory (`DatasetSplits`, batched on the device) or files
streamed by worker processes (`StreamedSplits`); the loop sees only `EpochBatches` and evaluation batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from widthtune.training.data_parallel import Shard, all_sum
from widthtune.training.datasets import DatasetSplits
from widthtune.training.distill import DistillConfig, distillation_loss
from widthtune.training.loader import AUGMENTATIONS, tensor_batches
from widthtune.training.streaming import StreamedSplits

SCHEDULES = ("constant", "step", "multistep", "cosine")
# Checking the loss for NaN costs a host-device sync; on an accelerator it is batched over this many steps.
NONFINITE_CHECK_STEPS_ON_ACCELERATOR = 50


class EpochBatches(Protocol):
    """What the loop trains on: (x, y) batches on the device, a fixed count per epoch, and the random state
    (order and augmentation) that a checkpoint saves and a resumed run restores, in `generator`."""

    generator: torch.Generator

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class StopTraining(Exception):
    """Raised from `on_epoch` (or `on_step`) to end training cleanly; the finished epochs are returned."""


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the platform records the trial as errored with this reason."""


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe; every field is validated with a message naming it."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "crop+flip"
    drop_last: bool = False
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs, isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1"),
            (
                "batch_size",
                self.batch_size,
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                "an integer >= 1",
            ),
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("schedule", self.schedule, self.schedule in SCHEDULES, f"one of: {', '.join(SCHEDULES)}"),
            (
                "milestones",
                self.milestones,
                all(isinstance(m, int) and m >= 1 for m in self.milestones),
                "a list of epochs >= 1",
            ),
            (
                "step_size",
                self.step_size,
                isinstance(self.step_size, int) and self.step_size >= 1,
                "an integer >= 1",
            ),
            ("gamma", self.gamma, 0 < self.gamma <= 1, "a number in (0, 1]"),
            (
                "warmup_epochs",
                self.warmup_epochs,
                0 <= self.warmup_epochs < self.epochs,
                "a number in [0, epochs)",
            ),
            ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
            ("augment", self.augment, self.augment in AUGMENTATIONS, f"one of: {', '.join(AUGMENTATIONS)}"),
            (
                "device",
                self.device,
                self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                "auto, cpu, cuda[:N] or mps",
            ),
            ("eval_batch_size", self.eval_batch_size, self.eval_batch_size >= 1, "an integer >= 1"),
        ]
        for field, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"train.{field}: {value!r} is not allowed; choose {allowed}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("train.nesterov: Nesterov momentum needs train.momentum > 0")


@dataclass(frozen=True)
class StepInfo:
    """What an on_step hook is told after each optimizer step (`loss` stays a tensor: `.item()` syncs a GPU)."""

    epoch: int
    step: int
    lr: float
    loss: Tensor


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures, as reported to Tune and stored in the history table.

    `train_loss` is the minimised objective (with label smoothing, distillation and regularizer);
    val/test losses are plain cross-entropy. `seconds` covers training and evaluation,
    `images_per_second` the training part only; `images_seen` counts training images so far.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    test_loss: float
    test_acc: float
    lr: float
    seconds: float
    images_per_second: float
    images_seen: int


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue training after `epoch`: a retried, paused or exploited trial resumes here."""

    epoch: int
    step: int
    images_seen: int
    model: dict[str, Tensor]
    optimizer: dict
    loader_rng: Tensor
    torch_rng: Tensor
    records: tuple[EpochRecord, ...]


@dataclass(frozen=True)
class History:
    """Every epoch's record; `stopped_early` when an on_epoch hook ended training."""

    records: tuple[EpochRecord, ...]
    stopped_early: bool = False

    @property
    def final(self) -> EpochRecord:
        """The last epoch trained."""
        return self.records[-1]

    def best(self, metric: str = "val_acc") -> EpochRecord:
        """The epoch with the highest value of `metric` (accuracies) or lowest (losses)."""
        metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        if metric not in metrics:
            raise ValueError(f"metric: {metric!r} is not allowed; choose one of: {', '.join(metrics)}")
        scored = [r for r in self.records if getattr(r, metric) is not None]
        if not scored:
            raise ValueError(f"no epoch has a value for {metric!r}")
        pick = min if metric.endswith("loss") else max
        return pick(scored, key=lambda r: getattr(r, metric))


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global iteration: linear warm-up, then the schedule (evaluated every iteration)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    epoch = step // steps_per_epoch
    if config.schedule == "step":
        return config.lr * config.gamma ** (epoch // config.step_size)
    if config.schedule == "multistep":
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch - warmup
        return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total)))
    return config.lr


def resolve_device(name: str) -> torch.device:
    """`auto` means the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _raise_if_nonfinite(losses: list[Tensor], first_step: int, epoch: int) -> None:
    values = torch.stack(losses)
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        index = int(bad[0])
        raise NonFiniteLossError(
            f"training loss became {values[index].item()} in epoch {epoch}, step {first_step + index} "
            "(global optimizer step, counted from 0); lower train.lr or check the data and model"
        )


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in eval mode."""
    return evaluate_batches(model, tensor_batches(images, labels, batch_size), device)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split given as batches (in memory or streamed), in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for images, labels in batches:
        x, y = images.to(device), labels.to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return loss_sum.item() / max(1, count), correct.item() / max(1, count)


def _to_cpu(value: object) -> object:
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def train(
    model: nn.Module,
    data: DatasetSplits | StreamedSplits,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    on_step: Callable[[nn.Module, StepInfo], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    shard: Shard | None = None,
    no_decay: Sequence[nn.Parameter] = (),
) -> History:
    """Train `model` in place on `data`; evaluate every epoch; return the history.

    `no_decay` names parameters of `model` trained without weight decay (gates and masks, whose value is a
    decision that decay would bias toward zero).

    `resume` continues from a saved state (the config may differ, e.g. a PBT-mutated learning rate);
    `on_checkpoint` receives the state after every epoch, before `on_epoch`. With a `shard` of several workers
    (a torch.distributed process group is up) the model trains as DDP: `config.batch_size` is the global batch,
    each worker steps on its share of it, and the epoch's training figures are summed over the workers.
    """
    parallel = shard is not None and shard.parallel
    if len(data.train_y) == 0:
        raise ValueError(
            f"data: the training split of {data.name!r} is empty; raise data.fraction or lower val_fraction"
        )
    if distill is not None and teacher is None:
        raise ValueError("distill: a DistillConfig was given without a teacher; pass teacher=... or drop it")
    device = resolve_device(config.device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
        distill = distill or DistillConfig()
    exempt = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in exempt]
    kept = [p for p in model.parameters() if p.requires_grad and id(p) in exempt]
    optimizer = torch.optim.SGD(
        [{"params": decay}, {"params": kept, "weight_decay": 0.0}] if kept else decay,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    loader: EpochBatches = data.train_batches(
        max(1, config.batch_size // shard.world_size) if parallel else config.batch_size,
        augment=config.augment,
        drop_last=config.drop_last,
        seed=config.seed,
        device=device,
        shard=shard,  # this worker's share of every epoch (streamed: only its files are read)
    )
    forward: nn.Module = model
    if parallel:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
    if len(loader) == 0:
        raise ValueError(
            f"train.batch_size: {config.batch_size} is more than the {len(data.train_y)} training images "
            "and train.drop_last is set, so an epoch would have no step; lower it or unset drop_last"
        )
    check_every = 1 if device.type == "cpu" else NONFINITE_CHECK_STEPS_ON_ACCELERATOR
    records: list[EpochRecord] = []
    images_seen, step, first_epoch = 0, 0, 1
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        if resume is not None:
            model.load_state_dict(resume.model)
            optimizer.load_state_dict(resume.optimizer)
            loader.generator.set_state(resume.loader_rng)
            torch.set_rng_state(resume.torch_rng)
            records, images_seen, step = list(resume.records), resume.images_seen, resume.step
            first_epoch = resume.epoch + 1
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            pending: list[Tensor] = []
            count = 0
            for x, y in loader:
                lr = learning_rate(config, step, len(loader))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    logits = forward(x).float()
                    if teacher is not None:
                        with torch.no_grad():
                            target_logits = teacher(x).float()
                        loss = distillation_loss(logits, target_logits, y, distill, config.label_smoothing)
                    else:
                        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                    if regularizer is not None:
                        loss = loss + regularizer(model)
                pending.append(loss.detach())
                if len(pending) >= check_every:
                    _raise_if_nonfinite(pending, step + 1 - len(pending), epoch)
                    pending = []
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if on_step is not None:
                    try:
                        on_step(model, StepInfo(epoch, step, lr, loss.detach()))
                    except StopTraining:
                        return History(tuple(records), stopped_early=True)
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                count += len(y)
                step += 1
            if pending:
                _raise_if_nonfinite(pending, step - len(pending), epoch)
            if parallel:
                summed = all_sum(loss_sum, correct, torch.tensor(float(count), device=device))
                loss_sum, correct, count = summed[0], summed[1], int(summed[2].item())
            images_seen += count
            train_loss = loss_sum.item() / count  # .item() waits for the device, so the clock below is honest
            train_acc = correct.item() / count
            train_seconds = time.perf_counter() - started
            val = (
                evaluate_batches(model, data.eval_batches("val", config.eval_batch_size, device), device)
                if len(data.val_y)
                else None
            )
            test = evaluate_batches(model, data.eval_batches("test", config.eval_batch_size, device), device)
            record = EpochRecord(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val[0] if val else None,
                val_acc=val[1] if val else None,
                test_loss=test[0],
                test_acc=test[1],
                lr=lr,
                seconds=time.perf_counter() - started,
                images_per_second=count / train_seconds,
                images_seen=images_seen,
            )
            records.append(record)
            if on_checkpoint is not None:
                on_checkpoint(
                    TrainState(
                        epoch=epoch,
                        step=step,
                        images_seen=images_seen,
                        model={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                        optimizer=_to_cpu(optimizer.state_dict()),
                        loader_rng=loader.generator.get_state(),
                        torch_rng=torch.get_rng_state(),
                        records=tuple(records),
                    )
                )
            if on_epoch is not None:
                try:
                    on_epoch(record)
                except StopTraining:
                    return History(tuple(records), stopped_early=True)
    return History(tuple(records))
