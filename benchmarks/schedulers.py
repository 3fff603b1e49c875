"""What "schedulers prune weak trials" buys: the training spent and the accuracy reached under FIFO, ASHA,
HyperBand and the median stopping rule, against FIFO in the same run.

One space for all: `resnet_cifar:depth=8` on `digits` at 8x8 (the platform's train/val/test split), method
`direct` (one multiplier per stage in [0.25, 2.0], matched to half the base MACs), `train.lr` loguniform in
[0.005, 0.5], batch 64, no augmentation (a 4-pixel crop and flips wreck 8x8 digits: FIFO's best then
reaches ~62% against ~98% without), `--epochs` epochs (default 9: ASHA's and HyperBand's rungs at 1, 3 and 9 with reduction factor 3), `--trials`
trials (default 32) drawn by Tune's random
search, 1 CPU per trial (2 run at once on 2 cores; no `search.max_concurrent`, which stalls HyperBand). Per seed (`--seeds`, default 0 1 2) one `compare` experiment runs
the four schedulers as four studies of the same entry; the seed is the search's random state and every
trial's training seed, so at one seed all four schedulers are offered the same trials in the same order.
Schedulers: `fifo` (every trial trains every epoch), `asha` (grace period 1, reduction factor 3), `hyperband`
(reduction factor 3) and `median` (grace period 1, at least 3 samples), time counted in epochs, metric
val_acc; their settings are the platform's defaults.

Read back from the Parquet store, per study: epochs spent (the sum of the trials' `epochs_trained`), training
FLOPs spent (the sum of `train_flops` + `search_flops`), the best validation accuracy any trial reached at any
epoch (ties go to the lower val_loss), and the test accuracy at that trial and epoch (what a user picking by
validation gets). Printed: every study, then a table per scheduler with the means over the seeds, each
scheduler's saving against FIFO (FIFO's mean epochs and FLOPs over its own) and its accuracy gap in points
(its mean best val, and test at that, minus FIFO's; negative: worse). Target: ASHA spends >= 3x fewer epochs
than FIFO, and both of its gaps are >= -0.5 points. On digits' 144-image validation split one image is 0.7
points, so a gap moves in steps of 0.23 points over 3 seeds. Timings are not the measure (the machine may be
shared; a warning is printed when the load average says so). The script exits 0 either way and prints
PASS or FAIL.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEDULERS = ("fifo", "asha", "hyperband", "median")
EPOCH_TARGET = 3.0
GAP_TARGET = 0.5  # points
BUSY_LOAD = 1.0

MODEL = "resnet_cifar:depth=8"
DATA = {"name": "digits", "resolution": 8}


@dataclass(frozen=True)
class Outcome:
    """One study (a scheduler at a seed): what it spent and what it reached."""

    scheduler: str
    seed: int
    trials: int
    stopped: int
    errored: int
    epochs: int
    flops: float
    best_val: float
    test_at_best_val: float
    seconds: float


def experiment_config(name: str, storage: Path, trials: int, epochs: int, seed: int) -> dict[str, Any]:
    """One seed's experiment: the same direct-width entry once per scheduler."""
    entry = {"name": "direct", "space": "stage", "low": 0.25, "high": 2.0, "matched": True}
    return {
        "name": name,
        "kind": "compare",
        "model": MODEL,
        "data": dict(DATA),
        "train": {"epochs": epochs, "batch_size": 64, "lr": {"loguniform": [0.005, 0.5]}, "augment": "none"},
        "cost_target": {"ratio": 0.5},
        "methods": [{**entry, "label": scheduler, "scheduler": scheduler} for scheduler in SCHEDULERS],
        # no search.max_concurrent: with it, Tune's synchronous HyperBand never fills a bracket (paused trials
        # count against the limit) and either trains every trial to the end or waits forever
        "search": {"name": "random"},
        "num_samples": trials,
        "seeds": [seed],
        "storage": str(storage),
        "resources": {"cpu": 1},
        "max_failures": 0,
    }


def best_epoch(epochs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The epoch row with the best validation accuracy (ties: the lower validation loss, then the earlier row)."""
    scored = [e for e in epochs if e["val_acc"] is not None]
    if not scored:
        raise RuntimeError("no trial reported a validation accuracy")
    return max(scored, key=lambda e: (e["val_acc"], -(e["val_loss"] or 0.0)))


def outcomes(directory: Path, seed: int) -> list[Outcome]:
    """Each scheduler's figures from the experiment's Parquet store."""
    from widthtune.results.store import read_epochs, read_trials

    results = (
        directory / "results"
    )  # not `directory`: see results_root (the experiment's trials/ misleads it)
    trials, epochs = read_trials(results), read_epochs(results)
    out = []
    for scheduler in SCHEDULERS:
        rows = [t for t in trials if t["label"] == scheduler]
        keys = {t["trial_key"] for t in rows}
        best = best_epoch([e for e in epochs if e["trial_key"] in keys])
        out.append(
            Outcome(
                scheduler=scheduler,
                seed=seed,
                trials=len(rows),
                stopped=sum(t["status"] == "stopped" for t in rows),
                errored=sum(t["status"] == "errored" for t in rows),
                epochs=sum(t["epochs_trained"] or 0 for t in rows),
                flops=sum((t["train_flops"] or 0.0) + (t["search_flops"] or 0.0) for t in rows),
                best_val=float(best["val_acc"]),
                test_at_best_val=float(best["test_acc"]),
                seconds=sum(t["wall_seconds"] or 0.0 for t in rows),
            )
        )
    return out


def run_seed(storage: Path, trials: int, epochs: int, seed: int) -> tuple[list[Outcome], float]:
    """Run one seed's experiment; its outcomes and wall seconds."""
    from widthtune.platform.config import validate_config
    from widthtune.platform.runner import run_experiment

    config = validate_config(experiment_config(f"schedulers-s{seed}", storage, trials, epochs, seed))
    started = time.perf_counter()
    with redirect_stdout(io.StringIO()):  # the progress lines
        directory = run_experiment(config, say=lambda _: None)
    return outcomes(directory, seed), time.perf_counter() - started


def mean(values: Sequence[float]) -> float:
    """The mean over seeds."""
    return statistics.fmean(values)


def print_studies(results: Sequence[Outcome]) -> None:
    """One line per study."""
    print(
        f"{'scheduler':>10s} {'seed':>4s} {'trials':>6s} {'stopped':>7s} {'errored':>7s} {'epochs':>6s} "
        f"{'GFLOPs':>8s} {'best val':>8s} {'test':>6s} {'train s':>7s}"
    )
    for r in results:
        print(
            f"{r.scheduler:>10s} {r.seed:4d} {r.trials:6d} {r.stopped:7d} {r.errored:7d} {r.epochs:6d} "
            f"{r.flops / 1e9:8.1f} {100 * r.best_val:8.2f} {100 * r.test_at_best_val:6.2f} {r.seconds:7.1f}"
        )


def summary(results: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """Per scheduler: means over the seeds, savings against FIFO and accuracy gaps in points."""
    by = {s: [r for r in results if r.scheduler == s] for s in SCHEDULERS}
    table = {}
    for scheduler, rows in by.items():
        table[scheduler] = {
            "stopped": mean([r.stopped for r in rows]),
            "epochs": mean([r.epochs for r in rows]),
            "flops": mean([r.flops for r in rows]),
            "best_val": 100 * mean([r.best_val for r in rows]),
            "test": 100 * mean([r.test_at_best_val for r in rows]),
        }
    fifo = table["fifo"]
    for row in table.values():
        row["epoch_saving"] = fifo["epochs"] / row["epochs"]
        row["flops_saving"] = fifo["flops"] / row["flops"]
        row["val_gap"] = row["best_val"] - fifo["best_val"]
        row["test_gap"] = row["test"] - fifo["test"]
    return table


def print_summary(table: dict[str, dict[str, float]], seeds: int) -> None:
    """The table of means and savings."""
    print(f"means over {seeds} seeds; saving = FIFO's / the scheduler's; gap = scheduler - FIFO (points)")
    print(
        f"{'scheduler':>10s} {'stopped':>7s} {'epochs':>7s} {'GFLOPs':>8s} {'best val':>8s} {'test':>6s} "
        f"{'epochs x':>8s} {'FLOPs x':>8s} {'val gap':>7s} {'test gap':>8s}"
    )
    for scheduler, r in table.items():
        print(
            f"{scheduler:>10s} {r['stopped']:7.1f} {r['epochs']:7.1f} {r['flops'] / 1e9:8.1f} "
            f"{r['best_val']:8.2f} {r['test']:6.2f} {r['epoch_saving']:8.2f} {r['flops_saving']:8.2f} "
            f"{r['val_gap']:+7.2f} {r['test_gap']:+8.2f}"
        )


def quiet_logs() -> None:
    """Keep MLflow's, Optuna's and Ray's lines out of the benchmark's output (in a log file, as a run does)."""
    from widthtune.platform.logs import route_library_logs  # with the platform, imported after Ray's setup

    route_library_logs(Path(tempfile.mkdtemp(prefix="widthtune-bench-logs-")))


def main() -> None:
    """Run every seed's experiment, print the studies, the table and the verdict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=32, help="trials per scheduler and seed")
    parser.add_argument(
        "--epochs", type=int, default=9, help="epochs of a trial that is never stopped (9: rungs at 1, 3, 9)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search and training seeds")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD:
        print(f"warning: load average {busy:.1f} before starting; the wall times below will be skewed")
    quiet_logs()
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="widthtune-schedulers-") as folder:
        for seed in args.seeds:
            found, seconds = run_seed(Path(folder), args.trials, args.epochs, seed)
            results.extend(found)
            print(f"seed {seed}: {seconds:.0f}s for the four schedulers", flush=True)
    print()
    print(
        f"{MODEL} on digits 8x8, method direct (stage, [0.25, 2.0], matched to 0.5x MACs), lr loguniform "
        f"[0.005, 0.5], no augmentation, {args.trials} trials x {args.epochs} epochs, random search, seeds {args.seeds}"
    )
    print_studies(results)
    print()
    table = summary(results)
    print_summary(table, len(args.seeds))
    asha = table["asha"]
    passed = (
        asha["epoch_saving"] >= EPOCH_TARGET
        and asha["val_gap"] >= -GAP_TARGET
        and asha["test_gap"] >= -GAP_TARGET
    )
    busy = os.getloadavg()[0]
    if busy > (os.cpu_count() or 1) + BUSY_LOAD:
        print(f"warning: load average {busy:.1f} at the end (wall times skewed; epochs and accuracy are not)")
    print(
        f"ASHA: {asha['epoch_saving']:.2f}x fewer epochs (target >= {EPOCH_TARGET:.0f}x), best val "
        f"{asha['val_gap']:+.2f} and its test {asha['test_gap']:+.2f} points against FIFO "
        f"(target >= -{GAP_TARGET}) {'PASS' if passed else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
