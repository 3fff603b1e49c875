"""Training a weight-sharing supernet once per recipe: AutoSlim's sandwich rule or CafeNet's min-min rule.

A supernet recipe (`supernet_recipe`) is a `trained-supernet` artifact: the model spec, data, training recipe,
the widths multiplier of the supernet over the base, the training rule and its settings, and the epochs. The
platform builds it once per experiment, recipe and seed (`train_supernet`); every trial that asks for the same
recipe loads the same weights (`load_supernet`). Training checkpoints every epoch into the artifact's folder
and a later call resumes there, so a killed run loses at most one epoch.

Rules, one optimizer step per batch:

- `sandwich` (AutoSlim): the largest, the smallest and `n` random width vectors (per group, on the divisor
  grid); the largest learns from the labels (with the recipe's label smoothing), the others from its soft
  targets (inplace distillation: cross-entropy against the detached softmax of the largest); gradients of
  all of them are summed before the step.
- `min-min` (CafeNet): one random width vector; `assignments` of its locally free channel assignments
  (`locally_free`) are run without gradients, and only the one with the smallest training loss is run
  again with gradients and updated.

FLOPs are counted as the design says: a forward is 2 FLOPs per MAC per image, forward + backward 6.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, channel_space
from widthtune.models.supernet import Supernet
from widthtune.models.widths import Widths
from widthtune.search_spaces.domains import unflatten
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe
from widthtune.trainables.task import Task
from widthtune.training.datasets import DatasetSplits, DataSpec, load_dataset
from widthtune.training.loop import TrainConfig, learning_rate, resolve_device

SUPERNET_KIND = "trained-supernet"
SUPERNET_FILE = "supernet.pt"
SUMMARY_FILE = "supernet.json"
CHECKPOINT_FILE = "checkpoint.pt"
RULES = ("sandwich", "min-min")
FORWARD_FLOPS_PER_MAC = 2
TRAIN_FLOPS_PER_MAC = 6


def supernet_recipe(
    context: ArtifactContext,
    *,
    multiplier: float,
    rule: str,
    settings: Mapping[str, Any],
    epochs: int,
) -> ArtifactRecipe:
    """The recipe of a supernet trained once: the trial's model, data and training recipe, for `epochs`."""
    train = {k: v for k, v in context.train.items() if k not in ("epochs", "seed")}
    recipe = {
        "model": str(canonical_spec(context.model)),
        "data": dict(context.data),
        "train": {**train, "epochs": int(epochs)},
        "multiplier": float(multiplier),
        "rule": str(rule),
        "settings": {str(k): v for k, v in sorted(settings.items())},
    }
    return ArtifactRecipe(SUPERNET_KIND, recipe, context.seed)


def max_widths(spec: str, multiplier: float) -> Widths:
    """The supernet's widths: every group of the base times `multiplier` (divisor-rounded)."""
    return Widths.base(channel_space(spec)).scale(multiplier)


def locally_free(
    widths: Widths, largest: Widths, offset: int, rng: np.random.Generator
) -> dict[str, list[int]]:
    """One locally free channel assignment of `widths` (CafeNet eq. 5): per group, the base channels
    [0, c - r - 1) and c - c_b free channels drawn from the zone [c - r - 1, c + r) (0-based, clipped to the
    supernet's channels)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"method.offset: {offset!r} is not allowed; choose an integer >= 0")
    chosen: dict[str, list[int]] = {}
    for name in widths.space.names:
        c, n = widths[name], largest[name]
        base = max(c - offset - 1, 0)
        zone = np.arange(base, min(c + offset, n))
        free = rng.choice(zone, size=c - base, replace=False) if len(zone) > c - base else zone
        chosen[name] = sorted([*range(base), *(int(i) for i in free)])
    return chosen


@dataclass(frozen=True)
class SupernetSummary:
    """What training the supernet cost and reached, saved beside its weights as `supernet.json`."""

    model: str
    max_widths: Mapping[str, int]
    seed: int
    rule: str
    epochs: int
    flops: float
    seconds: float
    starts: int  # how many times training began from scratch (1 unless the folder was wiped)
    resumes: int  # how many times training continued from an epoch checkpoint
    train_loss: tuple[float, ...]


def _sandwich_step(
    supernet: Supernet, x: Tensor, y: Tensor, rng: np.random.Generator, n: int, smoothing: float
) -> tuple[Tensor, list[Widths]]:
    """Backward of the largest on labels and of the smallest and n random on its soft targets."""
    chosen = supernet.sandwich(n, rng)
    logits = supernet(x, chosen[0])
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    loss.backward()
    soft = logits.detach().softmax(1)
    for widths in chosen[1:]:
        student = -(soft * F.log_softmax(supernet(x, widths), 1)).sum(1).mean()
        student.backward()
    return loss.detach(), chosen


def _minmin_step(
    supernet: Supernet,
    x: Tensor,
    y: Tensor,
    rng: np.random.Generator,
    offset: int,
    assignments: int,
    smoothing: float,
) -> tuple[Tensor, Widths, int, list[dict[str, list[int]]]]:
    """Backward of the sampled width's assignment with the smallest loss; returns which one it was."""
    widths = supernet.sample(rng)
    options = [locally_free(widths, supernet.max_widths, offset, rng) for _ in range(assignments)]
    with torch.no_grad():
        losses = [float(F.cross_entropy(supernet(x, option), y)) for option in options]
    best = int(np.argmin(losses))
    loss = F.cross_entropy(supernet(x, options[best]), y, label_smoothing=smoothing)
    loss.backward()
    return loss.detach(), widths, best, options


def rule_step(
    supernet: Supernet,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    rng: np.random.Generator,
    rule: str,
    settings: Mapping[str, Any],
    cost_model: CostModel,
    smoothing: float = 0.0,
) -> tuple[Tensor, float]:
    """One optimizer step of a training rule; returns the step's loss (detached) and its FLOPs."""
    optimizer.zero_grad(set_to_none=True)
    images = len(y)
    if rule == "sandwich":
        loss, chosen = _sandwich_step(supernet, x, y, rng, int(settings["n"]), smoothing)
        macs = sum(float(cost_model.cost(w, "macs")) for w in chosen)
        flops = TRAIN_FLOPS_PER_MAC * macs * images
    elif rule == "min-min":
        assignments = int(settings["assignments"])
        loss, widths, _, _ = _minmin_step(
            supernet, x, y, rng, int(settings["offset"]), assignments, smoothing
        )
        macs = float(cost_model.cost(widths, "macs"))
        flops = (FORWARD_FLOPS_PER_MAC * assignments + TRAIN_FLOPS_PER_MAC) * macs * images
    else:
        raise ValueError(f"supernet rule {rule!r} is not one of: {', '.join(RULES)}")
    optimizer.step()
    return loss, flops


def _train_config(recipe: ArtifactRecipe) -> TrainConfig:
    values = dict(recipe.recipe["train"])
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig(**{**values, "seed": recipe.seed})


def _optimizer(supernet: Supernet, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        supernet.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def train_supernet(
    recipe: ArtifactRecipe, folder: Path, data: DatasetSplits | None = None
) -> SupernetSummary:
    """Train the recipe's supernet into `folder` (resuming from its epoch checkpoint); a finished one is kept."""
    folder = Path(folder)
    summary_path = folder / SUMMARY_FILE
    if (folder / SUPERNET_FILE).is_file() and summary_path.is_file():
        return read_summary(folder)
    settings = recipe.recipe
    rule = str(settings["rule"])
    if rule not in RULES:
        raise ValueError(f"supernet rule {rule!r} is not one of: {', '.join(RULES)}")
    config = _train_config(recipe)
    spec = str(settings["model"])
    data = data if data is not None else load_dataset(DataSpec(**settings["data"]))
    device = resolve_device(config.device)
    largest = max_widths(spec, float(settings["multiplier"]))
    supernet = Supernet(spec, largest, seed=recipe.seed).to(device)
    cost_model = CostModel.from_spec(spec)
    optimizer = _optimizer(supernet, config)
    loader = data.train_batches(
        config.batch_size, augment=config.augment, drop_last=config.drop_last, seed=config.seed, device=device
    )
    rng = np.random.default_rng(recipe.seed)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / CHECKPOINT_FILE
    done, step, flops, seconds, losses, starts, resumes = 0, 0, 0.0, 0.0, [], 1, 0
    torch.manual_seed(recipe.seed)
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        supernet.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        loader.generator.set_state(saved["loader_rng"])
        torch.set_rng_state(saved["torch_rng"])
        rng.bit_generator.state = json.loads(saved["numpy_rng"])
        progress = json.loads(saved["progress"])
        done, step, flops, seconds = (
            progress["epoch"],
            progress["step"],
            progress["flops"],
            progress["seconds"],
        )
        losses, starts, resumes = progress["train_loss"], progress["starts"], progress["resumes"] + 1
    for epoch in range(done + 1, config.epochs + 1):
        started = time.perf_counter()
        supernet.train()
        total, count = 0.0, 0
        for x, y in loader:
            lr = learning_rate(config, step, len(loader))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, spent = rule_step(
                supernet, optimizer, x, y, rng, rule, settings["settings"], cost_model, config.label_smoothing
            )
            if not torch.isfinite(loss):
                raise ValueError(
                    f"supernet training loss became {float(loss)} in epoch {epoch}; lower train.lr"
                )
            total += float(loss) * len(y)
            count += len(y)
            flops += spent
            step += 1
        losses.append(total / max(1, count))
        seconds += time.perf_counter() - started
        progress = {
            "epoch": epoch,
            "step": step,
            "flops": flops,
            "seconds": seconds,
            "train_loss": losses,
            "starts": starts,
            "resumes": resumes,
        }
        partial = checkpoint.with_suffix(".partial")
        torch.save(
            {
                "model": {k: v.detach().cpu() for k, v in supernet.model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "loader_rng": loader.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": json.dumps(rng.bit_generator.state),
                "progress": json.dumps(progress),
            },
            partial,
        )
        partial.replace(checkpoint)
    summary = SupernetSummary(
        model=spec,
        max_widths=largest.as_dict(),
        seed=recipe.seed,
        rule=rule,
        epochs=config.epochs,
        flops=flops,
        seconds=seconds,
        starts=starts,
        resumes=resumes,
        train_loss=tuple(losses),
    )
    weights = folder / (SUPERNET_FILE + ".partial")
    torch.save({k: v.detach().cpu() for k, v in supernet.model.state_dict().items()}, weights)
    summary_path.write_text(json.dumps({**summary.__dict__, "recipe": recipe.as_dict()}, indent=1))
    weights.replace(folder / SUPERNET_FILE)
    return summary


def read_summary(folder: Path) -> SupernetSummary:
    """The `supernet.json` a finished training wrote."""
    saved = json.loads((Path(folder) / SUMMARY_FILE).read_text())
    saved.pop("recipe", None)
    saved["train_loss"] = tuple(saved["train_loss"])
    return SupernetSummary(**saved)


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> tuple[Supernet, SupernetSummary]:
    """A trained supernet from its `supernet.pt` (weights only) and the summary beside it."""
    path = Path(path)
    summary = read_summary(path.parent)
    space = channel_space(summary.model)
    supernet = Supernet(summary.model, Widths.from_mapping(space, summary.max_widths), seed=summary.seed)
    supernet.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return supernet.to(device), summary


def recipe_of(path: str | Path) -> ArtifactRecipe:
    """The recipe a trained supernet was built from (to check a trial asks for this one)."""
    saved = json.loads((Path(path).parent / SUMMARY_FILE).read_text())
    return ArtifactRecipe.from_dict(saved["recipe"])


def calibration_batches(data: DatasetSplits, batch_size: int, count: int, seed: int) -> list[Tensor]:
    """The same `count` training batches (seeded order, no augmentation) for every candidate's BN statistics."""
    loader = data.train_batches(batch_size, augment="none", seed=seed)
    batches = []
    while len(batches) < count:
        before = len(batches)
        for x, _ in loader:
            batches.append(x)
            if len(batches) == count:
                break
        if len(batches) == before:
            break
    return batches


def held_out(data: DatasetSplits, batch_size: int, count: int | None) -> list[tuple[Tensor, Tensor]]:
    """The first `count` batches of the validation split (all of it when None): what candidates are scored on."""
    if len(data.val_y) == 0:
        raise ValueError(
            "data.val_fraction: 0 leaves no held-out split to score sub-networks on; choose a value in (0, 1)"
        )
    batches = list(data.eval_batches("val", batch_size))
    return batches if count is None else batches[:count]


@dataclass
class Scorer:
    """Held-out accuracy of a sub-network after BN recalibration, counting every forward it runs."""

    supernet: Supernet
    calibration: Sequence[Tensor]
    evaluation: Sequence[tuple[Tensor, Tensor]]
    cost_model: CostModel
    flops: float = 0.0
    scored: int = 0

    @torch.no_grad()
    def __call__(self, choice: Widths | Mapping[str, Sequence[int]]) -> float:
        """Recalibrate BN on the calibration batches, then the accuracy on the held-out batches."""
        subnet = self.supernet.subnet(choice)
        self.supernet.recalibrate(subnet, self.calibration, len(self.calibration))
        device = next(self.supernet.parameters()).device
        self.supernet.eval()
        correct, count = 0, 0
        for x, y in self.evaluation:
            logits = self.supernet(x.to(device), subnet)
            correct += int((logits.argmax(1) == y.to(device)).sum())
            count += len(y)
        images = count + sum(len(x) for x in self.calibration)
        self.flops += FORWARD_FLOPS_PER_MAC * float(self.cost_model.cost(subnet.widths, "macs")) * images
        self.scored += 1
        return correct / max(1, count)


def trial_context(task: Task) -> ArtifactContext:
    """The trial's model, data and recipe as an artifact recipe sees them (spaces sampled to this trial's)."""
    flat = task.trial_params
    return ArtifactContext(
        model=str(flat.get("model", task.model)),
        data=unflatten(flat, "data"),
        train=unflatten(flat, "train"),
        seed=task.seed,
    )


@functools.lru_cache(maxsize=2)
def _loaded(path: str, device: str) -> tuple[Supernet, SupernetSummary]:
    return load_supernet(path, device)


def supernet_for(task: Task, name: str, recipe: ArtifactRecipe) -> tuple[Supernet, SupernetSummary, str]:
    """The trial's supernet: the shared artifact when it was built from this trial's recipe (loaded once
    per worker), else one trained for this trial alone (a supernet setting searched as a space); with a note."""
    device = str(resolve_device(task.train.device))
    path = task.artifacts.get(name)
    if path is not None and recipe_of(path).key == recipe.key:
        supernet, summary = _loaded(str(path), device)
        return supernet, summary, f"shared supernet {recipe.key}"
    folder = Path(tempfile.mkdtemp(prefix=f"{recipe.key}-"))
    train_supernet(recipe, folder, data=task.data)
    supernet, summary = load_supernet(folder / SUPERNET_FILE, device)
    why = "no shared one was handed over" if path is None else "its recipe differs from the shared one"
    return supernet, summary, f"supernet {recipe.key} trained for this trial ({why})"
