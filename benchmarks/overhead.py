"""What running a model as a widthtune trial costs over training it with a bare PyTorch loop.

Both sides train the same model (`resnet_cifar:depth=D` at its base widths, seed 0) on the same data
(`digits` at 16x16, the platform's train/val/test split) for the same epochs, with the same recipe:
SGD (lr 0.1, momentum 0.9, weight decay 5e-4, no Nesterov), batch 128, a cosine learning rate set every
iteration, random crop+flip, and a val and test evaluation after every epoch. Both use 2 torch threads on
the CPU. Bare and trial runs alternate, `--repeats` times each; medians are reported.

Baseline ("bare"): a plain loop written here -- `load_dataset`, `materialize`, `torch.optim.SGD`,
forward / backward / step, `model.eval()` passes over val and test. It reuses
`widthtune.training.loader.DeviceLoader` for shuffling, batching and augmentation so that the data path
(and its cost) is identical; it has no NaN check, no hooks, no reporting and no checkpoints. Each bare run
happens in a fresh spawned process, cold like a trial's worker, which imports beforehand the modules a
Tune worker holds when the trainable starts (`ray.tune`, the adapter). Its clock covers what the trial's
clock covers of the same work: the digits loader's lazy `sklearn.datasets` import (timed on its own too),
loading the data, building the model, and every epoch of training and evaluation.

The trial: one experiment (`method: uniform`, no cost target, so the base widths) through
`widthtune.platform.runner.run_experiment`, with Ray already started. Figures reported for it:

- Tune `time_total_s` (headline): the trial as Tune times it, from the trainable function's start to its
  last `tune.report` -- the lazy import, data loading, the cost model, the method's search, the widths
  artifact, building the model, every epoch, and the per-epoch checkpoint save and `tune.report`. It
  excludes starting the trial's worker process (and importing torch there) and the Tune driver's work.
- Parquet `wall_seconds`: the stored row's figure, search seconds plus the epochs' own `seconds`
  (training and evaluation only; no setup, reporting or checkpointing).
- `run_experiment` end to end: the whole call -- MLflow store and parent run, Tune's driver and worker
  start-up, the trial, the recorder's MLflow logging and Parquet rows, and the report. Ray start-up is not
  in it (Ray is up already); it is timed separately and never enters a ratio.

The headline ratio is also printed with the lazy import taken out of both sides (its time as measured in
the bare run). Ray is started here first (a new local instance, `address="local"`, so that a cluster some
other process runs is never joined), then one untimed bare epoch lets its start-up settle. The target is
Tune time / bare time <= 1.10. The script exits 0 either way and prints PASS or FAIL.

An epoch here is well under a second, so machine noise matters: on a shared 2-core machine the per-epoch
time drifts by up to ~10% between runs, and other processes skew it far more (a warning is printed when
the load average says someone else is computing). Use `--repeats 5` for a steadier figure.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from widthtune.models import materialize
from widthtune.training import DataSpec, DeviceLoader, load_dataset

TARGET = 1.10
# a 1-minute load average above this (before start) or THREADS + this (at the end) means someone else computes
BUSY_LOAD = 1.0
THREADS = 2
BATCH_SIZE = 128
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
EVAL_BATCH_SIZE = 1024
SEED = 0
DATA = {"name": "digits", "resolution": 16}
# what a Tune worker has imported when the trainable starts (outside Tune's clock)
WORKER_IMPORTS = ("ray.tune", "widthtune.trainables.adapter")
# what load_dataset("digits") imports on first use (inside Tune's clock)
LAZY_IMPORT = "sklearn.datasets"


@dataclass(frozen=True)
class BareTiming:
    """One bare run: total seconds, its lazy import and setup (data and model), and each epoch's seconds."""

    total: float
    lazy_import: float
    setup: float
    epochs: tuple[float, ...]
    final_val_acc: float


@dataclass(frozen=True)
class TrialTiming:
    """One platform run: the whole `run_experiment` call (and the driver's CPU in it), Tune's and the store's."""

    run_experiment: float
    driver_cpu: float
    tune_total: float
    wall_seconds: float
    epochs: tuple[float, ...]
    iterations: tuple[float, ...]
    final_val_acc: float


def model_spec(depth: int) -> str:
    """The model both sides train."""
    return f"resnet_cifar:depth={depth}"


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        logits = model(images[start : start + EVAL_BATCH_SIZE])
        y = labels[start : start + EVAL_BATCH_SIZE]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return loss / len(labels), correct / len(labels)


def train_bare(depth: int, epochs: int) -> BareTiming:
    """Load the data, build the model and train it with a plain loop; time it all."""
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    importlib.import_module(LAZY_IMPORT)  # load_dataset would do it; timed on its own
    lazy_import = time.perf_counter() - started
    data = load_dataset(DataSpec(**DATA))
    model = materialize(model_spec(depth), None, seed=SEED)
    torch.manual_seed(SEED)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=False
    )
    loader = DeviceLoader(
        data.train_x, data.train_y, BATCH_SIZE, shuffle=True, augment="crop+flip", seed=SEED
    )
    setup = time.perf_counter() - started - lazy_import
    total_steps = epochs * len(loader)
    step, epoch_seconds, val_acc = 0, [], 0.0
    for _ in range(epochs):
        epoch_started = time.perf_counter()
        model.train()
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        _, val_acc = evaluate(model, data.val_x, data.val_y)
        evaluate(model, data.test_x, data.test_y)
        epoch_seconds.append(time.perf_counter() - epoch_started)
    return BareTiming(time.perf_counter() - started, lazy_import, setup, tuple(epoch_seconds), val_acc)


def preload() -> None:
    """Import what a Tune worker has imported before its trainable starts."""
    for name in WORKER_IMPORTS:
        importlib.import_module(name)


def train_bare_fresh(depth: int, epochs: int) -> BareTiming:
    """`train_bare` in a fresh spawned process, cold like a trial's worker."""
    with multiprocessing.get_context("spawn").Pool(1, initializer=preload) as pool:
        return pool.apply(train_bare, (depth, epochs))


def experiment_config(name: str, storage: str, depth: int, epochs: int) -> dict[str, Any]:
    """The widthtune experiment with the bare loop's settings."""
    return {
        "name": name,
        "model": model_spec(depth),
        "data": dict(DATA),
        "train": {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": LR},
        "method": "uniform",
        "seeds": [SEED],
        "storage": storage,
        "resources": {"cpu": THREADS},
        "max_failures": 0,
    }


def tune_results(directory: Path) -> list[dict[str, Any]]:
    """The single trial's per-iteration results from Tune's `result.json`."""
    files = sorted((directory / "tune").glob("*/*/result.json"))
    if len(files) != 1:
        raise RuntimeError(f"expected one Tune result.json under {directory / 'tune'}, found {len(files)}")
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def quiet_logs() -> None:
    """Keep MLflow's and Tune's INFO lines out of the benchmark's output."""
    for name in ("mlflow", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_trial(depth: int, epochs: int, index: int) -> TrialTiming:
    """Run the experiment through the platform in a temporary directory; time it and read Tune's figures."""
    from widthtune.platform.config import validate_config
    from widthtune.platform.runner import run_experiment
    from widthtune.results.store import read_trials

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="widthtune-overhead-") as storage:
        config = validate_config(experiment_config(f"overhead-{index}", storage, depth, epochs))
        started, cpu = time.perf_counter(), time.process_time()
        with redirect_stdout(io.StringIO()):  # the progress line
            directory = run_experiment(config, say=lambda _: None)
        elapsed, driver_cpu = time.perf_counter() - started, time.process_time() - cpu
        rows = read_trials(directory / "results")
        if len(rows) != 1 or rows[0]["epochs_trained"] != epochs:
            raise RuntimeError(f"expected one trial of {epochs} epochs, got {rows}")
        results = tune_results(directory)
    return TrialTiming(
        run_experiment=elapsed,
        driver_cpu=driver_cpu,
        tune_total=float(results[-1]["time_total_s"]),
        wall_seconds=float(rows[0]["wall_seconds"]),
        epochs=tuple(float(r["seconds"]) for r in results),
        iterations=tuple(float(r["time_this_iter_s"]) for r in results),
        final_val_acc=float(results[-1]["val_acc"]),
    )


def start_ray() -> float:
    """Start a new local Ray (as the runner would) and return the seconds it took."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - started


def median(values: list[float] | tuple[float, ...]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return statistics.median(values)


def per_epoch_medians(runs: list[tuple[float, ...]]) -> list[float]:
    """Each epoch's median over the repeats."""
    return [median(column) for column in zip(*runs, strict=True)]


def print_breakdown(bare: list[BareTiming], trials: list[TrialTiming]) -> None:
    """Per-epoch seconds on both sides and what the trial spends outside its epochs."""
    print("breakdown (medians):")
    rows = zip(
        per_epoch_medians([b.epochs for b in bare]),
        per_epoch_medians([t.epochs for t in trials]),
        per_epoch_medians([t.iterations for t in trials]),
        strict=True,
    )
    print(f"  {'epoch':>5s} {'bare':>8s} {'trial':>8s} {'Tune iter':>10s} {'outside epoch':>14s}")
    for epoch, (b, t, i) in enumerate(rows, 1):
        print(f"  {epoch:5d} {b:8.2f} {t:8.2f} {i:10.2f} {i - t:14.2f}")
    print(
        "  trial 'outside epoch': iteration 1 holds the trial's setup (lazy import, data, cost model, "
        "search, artifact, model); later ones the previous epoch's checkpoint save and tune.report"
    )
    print(
        f"  bare setup: import {LAZY_IMPORT} {median([b.lazy_import for b in bare]):.2f}s, "
        f"load data + build model {median([b.setup for b in bare]):.2f}s"
    )
    print(
        f"  driver process CPU during run_experiment (Tune driver, recorder, MLflow, report; it shares the "
        f"{THREADS} cores with the trial): {median([t.driver_cpu for t in trials]):.2f}s"
    )
    print(
        f"  final val_acc: bare {median([b.final_val_acc for b in bare]):.3f}, "
        f"trial {median([t.final_val_acc for t in trials]):.3f}"
    )


def main() -> None:
    """Time bare and trial runs alternately and print the table, the breakdown and the verdict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs trained on each side")
    parser.add_argument("--depth", type=int, default=20, help="resnet_cifar depth")
    parser.add_argument("--repeats", type=int, default=2, help="bare and trial runs each (alternating)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD:
        print(f"warning: load average {busy:.1f} before starting; other processes will skew the timings")
    ray_seconds = start_ray()
    train_bare_fresh(args.depth, 1)  # untimed: lets Ray's start-up settle and warms the file cache
    bare: list[BareTiming] = []
    trials: list[TrialTiming] = []
    for index in range(args.repeats):
        bare.append(train_bare_fresh(args.depth, args.epochs))
        trials.append(train_trial(args.depth, args.epochs, index))
        print(
            f"repeat {index + 1}: bare {bare[-1].total:.2f}s, trial (Tune) {trials[-1].tune_total:.2f}s, "
            f"run_experiment {trials[-1].run_experiment:.2f}s",
            flush=True,
        )

    bare_s = median([b.total for b in bare])
    tune_s = median([t.tune_total for t in trials])
    wall_s = median([t.wall_seconds for t in trials])
    run_s = median([t.run_experiment for t in trials])
    lazy_s = median([b.lazy_import for b in bare])
    print()
    print(
        f"{model_spec(args.depth)}, digits 16x16, {args.epochs} epochs, batch {BATCH_SIZE}, "
        f"{THREADS} threads, median of {args.repeats}"
    )
    print(f"{'':42s} {'seconds':>9s} {'/ bare':>8s}")
    print(f"{'Ray start-up (not in any ratio)':42s} {ray_seconds:9.2f} {'':>8s}")
    print(f"{'bare loop (import, data, model, epochs)':42s} {bare_s:9.2f} {1.0:8.2f}")
    print(f"{'trial, Parquet wall_seconds':42s} {wall_s:9.2f} {wall_s / bare_s:8.2f}")
    print(f"{'trial, Tune time_total_s':42s} {tune_s:9.2f} {tune_s / bare_s:8.2f}")
    print(f"{'run_experiment end to end':42s} {run_s:9.2f} {run_s / bare_s:8.2f}")
    print()
    print_breakdown(bare, trials)
    print()
    print(
        f"without the {LAZY_IMPORT} import on either side: "
        f"{tune_s - lazy_s:.2f}s / {bare_s - lazy_s:.2f}s = {(tune_s - lazy_s) / (bare_s - lazy_s):.2f}"
    )
    busy = os.getloadavg()[0]
    if busy > THREADS + BUSY_LOAD:
        print(f"warning: load average {busy:.1f} at the end; other processes may have skewed the timings")
    ratio = tune_s / bare_s
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"overhead ratio (trial / bare): {ratio:.2f} (target <= {TARGET:.2f}) {verdict}")


if __name__ == "__main__":
    main()
