"""What a sweep of many short trials costs as a widthtune experiment over the same trainings in a bare Tune script.

Both sides run the same N trials (`--trials`, default 100): `resnet_cifar:depth=8` on `digits` at 8x8
(fraction 0.3 of the platform's train/val split, so an epoch is a few batches), 1 epoch each (`--epochs`),
trial seed 0, method `random`'s widths (per-group multipliers in [0.25, 1.0], no cost target), over a grid
of `train.lr` x `method.shape_seed` (N = lrs x shape seeds; the nearest factorisation is used). Each trial
gets 1 CPU (1 torch thread), at most 2 run at once, and Tune reuses its actors on both sides.

Baseline ("bare"): a `tune.Tuner` over a plain function that does what a researcher's own Tune script would:
`load_dataset` (every trial, no cache), draws the same widths as `random` from the shape seed,
`materialize`s the model, trains it with `widthtune.training.train` and `tune.report`s every epoch's record
(no checkpoints). `reuse_actors=True`, `max_concurrent_trials=2`, `verbose=0`, storage in a temporary folder.
Its clock covers building the Tuner and `fit()`.

widthtune: the same sweep as one experiment through `widthtune.platform.runner.run_experiment`: its clock covers
the whole call -- the experiment folder, the MLflow store and runs, Tune's driver, every trial (the per-worker
dataset and cost-model caches, the method's search, a checkpoint and `tune.report` every epoch), the recorder's
Parquet rows and MLflow child runs, and the report.

Ray is started once, here, before either side (a new local instance), and one untimed two-trial bare sweep lets
its start-up settle. The sides alternate (`--repeats`, default 1; medians reported). Both sides must produce
the same widths and, trial for trial, the same validation accuracy (the trainings are deterministic); the
script checks that. Printed: both wall times, the ratio widthtune / bare (target <= 1.2), and the seconds of
overhead per trial ((widthtune - bare) / N); then each side split at its first trial's start and last trial's
report (Tune's `result.json` timestamps: fixed costs before and after, the trials in between), and the CPU
seconds of the driver process on each side (it shares the cores with the trials). On a shared machine other processes skew both sides (a warning is
printed when the load average says so). The script exits 0 either way and prints PASS or FAIL.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widthtune.models import Widths, channel_space, materialize
from widthtune.search_spaces.width_space import WidthSpace
from widthtune.training import DataSpec, TrainConfig, load_dataset, train

TARGET = 1.2
# a 1-minute load average above this (before start) or CONCURRENCY + this (at the end): someone else computes
BUSY_LOAD = 1.0
CONCURRENCY = 2
CPUS_PER_TRIAL = 1
MODEL = "resnet_cifar:depth=8,resolution=8"
DATA = {"name": "digits", "resolution": 8, "fraction": 0.3}
SEED = 0
# method random's defaults: per-group multipliers in [LOW, HIGH]
LOW, HIGH = 0.25, 1.0
LR_RANGE = (0.02, 0.2)
# a trial's validation accuracy may differ between the sides by at most this (the same deterministic training)
ACC_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Timing:
    """One side's wall seconds, the CPU seconds of this (the driver's) process in them, and the part before
    the first trial started and after the last one reported (from Tune's `result.json` timestamps)."""

    wall: float
    driver_cpu: float
    before_first: float
    after_last: float


def measure(started: float, ended: float, cpu: float, results: list[Path]) -> Timing:
    """A side's timing; `started`/`ended` are `time.time()`, `results` its trials' `result.json` files."""
    first, last = math.inf, -math.inf
    for path in results:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            first = min(first, rows[0]["timestamp"] - rows[0]["time_this_iter_s"])
            last = max(last, rows[-1]["timestamp"])
    if not results or first == math.inf:
        raise RuntimeError("no trial wrote a Tune result.json")
    return Timing(ended - started, cpu, first - started, ended - last)


@dataclass(frozen=True)
class Sweep:
    """The grid both sides run: learning rates x shape seeds, and the epochs per trial."""

    lrs: tuple[float, ...]
    shape_seeds: tuple[int, ...]
    epochs: int

    @property
    def trials(self) -> int:
        """How many trials the grid holds."""
        return len(self.lrs) * len(self.shape_seeds)


def make_sweep(trials: int, epochs: int) -> Sweep:
    """The grid closest to square with exactly `trials` points (log-spaced learning rates)."""
    if trials < 1:
        raise ValueError(f"--trials: {trials} is not allowed; choose an integer >= 1")
    lrs = max(d for d in range(1, math.isqrt(trials) + 1) if trials % d == 0)
    low, high = LR_RANGE
    values = tuple(
        round(low * (high / low) ** (i / max(lrs - 1, 1)), 6) if lrs > 1 else low for i in range(lrs)
    )
    return Sweep(values, tuple(range(trials // lrs)), epochs)


def random_widths(shape_seed: int) -> Widths:
    """The widths method `random` draws from a shape seed (no cost target: the rounded shape)."""
    space = WidthSpace(channel_space(MODEL), "group", LOW, HIGH, matched=True)
    rng = np.random.default_rng(shape_seed)
    draws = {key: float(rng.uniform(LOW, HIGH)) for key in space.param_names()}
    return Widths.from_mapping(space.space, space.shape(draws), round=True)


def bare_trial(config: dict[str, Any]) -> None:
    """The bare Tune function: load the data, build the model, train it, report every epoch."""
    from ray import tune

    torch.set_num_threads(CPUS_PER_TRIAL)
    data = load_dataset(DataSpec(**DATA))
    widths = random_widths(int(config["shape_seed"]))
    model = materialize(MODEL, widths, seed=SEED)
    recipe = TrainConfig(epochs=int(config["epochs"]), lr=float(config["lr"]), seed=SEED)
    train(model, data, recipe, on_epoch=lambda record: tune.report(asdict(record)))


def run_bare(sweep: Sweep, storage: Path, name: str) -> tuple[Timing, dict[tuple[float, int], float]]:
    """The bare sweep's timing, and each trial's final val_acc by (lr, shape_seed)."""
    from ray import tune

    started, cpu = time.time(), time.process_time()
    tuner = tune.Tuner(
        tune.with_resources(bare_trial, {"cpu": CPUS_PER_TRIAL}),
        param_space={
            "lr": tune.grid_search(list(sweep.lrs)),
            "shape_seed": tune.grid_search(list(sweep.shape_seeds)),
            "epochs": sweep.epochs,
        },
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=CONCURRENCY),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    timing = measure(
        started, time.time(), time.process_time() - cpu, sorted((storage / name).glob("*/result.json"))
    )
    accuracies = {}
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"a bare trial failed: {result.error}")
        accuracies[(float(result.config["lr"]), int(result.config["shape_seed"]))] = float(
            result.metrics["val_acc"]
        )
    return timing, accuracies


def experiment_config(name: str, storage: Path, sweep: Sweep) -> dict[str, Any]:
    """The same sweep as a widthtune experiment."""
    return {
        "name": name,
        "model": MODEL,
        "data": dict(DATA),
        "train": {"epochs": sweep.epochs, "lr": {"grid": list(sweep.lrs)}},
        "method": {
            "name": "random",
            "low": LOW,
            "high": HIGH,
            "shape_seed": {"grid": list(sweep.shape_seeds)},
        },
        "search": {"name": "grid", "max_concurrent": CONCURRENCY},
        "seeds": [SEED],
        "storage": str(storage),
        "resources": {"cpu": CPUS_PER_TRIAL},
        "max_failures": 0,
        "reuse_actors": True,
    }


def run_widthtune(sweep: Sweep, storage: Path, name: str) -> tuple[Timing, dict[tuple[float, int], float]]:
    """The whole `run_experiment` call's timing, and each stored trial's final val_acc by (lr, shape_seed)."""
    from widthtune.platform.config import validate_config
    from widthtune.platform.runner import run_experiment
    from widthtune.results.store import read_trials

    config = validate_config(experiment_config(name, storage, sweep))
    environment = dict(os.environ)
    started, cpu = time.time(), time.process_time()
    try:
        with redirect_stdout(io.StringIO()):  # the progress line
            directory = run_experiment(config, say=lambda _: None)
    finally:
        ended = time.time()
        os.environ.clear()  # the runner's settings for Tune stay out of the bare side's later repeats
        os.environ.update(environment)
    timing = measure(
        started, ended, time.process_time() - cpu, sorted((directory / "tune").glob("*/*/result.json"))
    )
    rows = read_trials(directory / "results")  # not `directory`: see results_root (its trials/ misleads it)
    accuracies = {}
    for row in rows:
        if row["status"] != "completed":
            raise RuntimeError(f"trial {row['trial_key']} ended {row['status']}: {row['error']}")
        params = json.loads(row["params_json"])
        key = (float(params["train.lr"]), int(params["method.shape_seed"]))
        expected = random_widths(key[1])
        if row["widths"] != list(expected.values):
            raise RuntimeError(f"trial {key}: widths {row['widths']} differ from the bare side's {expected}")
        accuracies[key] = float(row["final_val_acc"])
    return timing, accuracies


def compare(bare: dict[tuple[float, int], float], platform: dict[tuple[float, int], float], n: int) -> None:
    """Both sides ran the same N trainings with the same outcome."""
    if len(bare) != n or set(bare) != set(platform):
        raise RuntimeError(
            f"the sides ran different trials: bare {len(bare)}, widthtune {len(platform)} of {n}"
        )
    differ = [k for k in bare if abs(bare[k] - platform[k]) > ACC_TOLERANCE]
    if differ:
        k = differ[0]
        raise RuntimeError(
            f"{len(differ)} trials trained differently, e.g. lr {k[0]}, shape_seed {k[1]}: "
            f"bare val_acc {bare[k]:.4f}, widthtune {platform[k]:.4f}"
        )


def start_ray() -> float:
    """Start a new local Ray (as the runner would) and return the seconds it took."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(
        "RAY_AIR_NEW_OUTPUT", "0"
    )  # Tune's old output honours verbose=0 (as the runner sets)
    import ray

    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    return time.perf_counter() - started


def quiet_logs() -> None:
    """Keep MLflow's, Optuna's and Ray's lines out of the benchmark's output (in a log file, as a run does)."""
    from widthtune.platform.logs import route_library_logs  # with the platform, imported after Ray's setup

    route_library_logs(Path(tempfile.mkdtemp(prefix="widthtune-bench-logs-")))


def main() -> None:
    """Run the bare and the widthtune sweep alternately and print the times, the ratio and the verdict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trials", type=int, default=100, help="trials per sweep (a grid of lr x shape seed)"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=1, help="bare and widthtune sweeps each (alternating)")
    args = parser.parse_args()
    sweep = make_sweep(args.trials, args.epochs)
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD:
        print(f"warning: load average {busy:.1f} before starting; other processes will skew the timings")
    quiet_logs()
    ray_seconds = start_ray()
    bare_s: list[Timing] = []
    platform_s: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="widthtune-many-trials-") as folder:
        storage = Path(folder)
        run_bare(make_sweep(2, 1), storage, "warm-up")  # untimed: lets Ray's start-up settle
        for index in range(args.repeats):
            order = ("bare", "widthtune") if index % 2 == 0 else ("widthtune", "bare")
            results = {}
            for side in order:
                if side == "bare":
                    timing, results[side] = run_bare(sweep, storage, f"bare-{index}")
                    bare_s.append(timing)
                else:
                    timing, results[side] = run_widthtune(sweep, storage, f"many-trials-{index}")
                    platform_s.append(timing)
            compare(results["bare"], results["widthtune"], sweep.trials)
            print(
                f"repeat {index + 1}: bare {bare_s[-1].wall:.1f}s, widthtune {platform_s[-1].wall:.1f}s "
                f"(same {sweep.trials} trainings, same val_acc)",
                flush=True,
            )
    bare_m = statistics.median(t.wall for t in bare_s)
    platform_m = statistics.median(t.wall for t in platform_s)
    bare_cpu = statistics.median(t.driver_cpu for t in bare_s)
    platform_cpu = statistics.median(t.driver_cpu for t in platform_s)
    bare_in = statistics.median(t.wall - t.before_first - t.after_last for t in bare_s)
    platform_in = statistics.median(t.wall - t.before_first - t.after_last for t in platform_s)
    print()
    print(
        f"{sweep.trials} trials ({len(sweep.lrs)} lr x {len(sweep.shape_seeds)} shape seeds) of {MODEL} on "
        f"digits 8x8, fraction {DATA['fraction']}, {sweep.epochs} epoch(s) each, {CPUS_PER_TRIAL} CPU per trial, "
        f"{CONCURRENCY} at once, actors reused; median of {args.repeats}"
    )
    print(f"{'':40s} {'seconds':>9s} {'/ trial':>8s} {'/ bare':>7s}")
    print(f"{'Ray start-up (not in any ratio)':40s} {ray_seconds:9.2f}")
    print(f"{'bare Tune script (Tuner + fit)':40s} {bare_m:9.2f} {bare_m / sweep.trials:8.3f} {1.0:7.2f}")
    print(
        f"{'widthtune run_experiment end to end':40s} {platform_m:9.2f} {platform_m / sweep.trials:8.3f} "
        f"{platform_m / bare_m:7.2f}"
    )
    for label, runs in (("bare", bare_s), ("widthtune", platform_s)):
        print(
            f"  {label}: before the first trial starts {statistics.median(t.before_first for t in runs):.2f}s, "
            f"first trial start to last trial report "
            f"{statistics.median(t.wall - t.before_first - t.after_last for t in runs):.2f}s, "
            f"after the last report {statistics.median(t.after_last for t in runs):.2f}s"
        )
    print(
        f"  between the first trial's start and the last report: widthtune / bare {platform_in / bare_in:.2f}, "
        f"{(platform_in - bare_in) / sweep.trials:.3f}s more per trial"
    )
    print(
        f"driver process CPU (Tune's driver; widthtune's also the recorder, MLflow, Parquet, report): "
        f"bare {bare_cpu:.1f}s, widthtune {platform_cpu:.1f}s ({(platform_cpu - bare_cpu) / sweep.trials:.3f}s "
        "more per trial, on the cores the trials train on)"
    )
    print(f"overhead per trial: {(platform_m - bare_m) / sweep.trials:.3f} s")
    busy = os.getloadavg()[0]
    if busy > CONCURRENCY + BUSY_LOAD:
        print(f"warning: load average {busy:.1f} at the end; other processes may have skewed the timings")
    ratio = platform_m / bare_m
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"wall-time ratio (widthtune / bare): {ratio:.2f} (target <= {TARGET:.2f}) {verdict}")


if __name__ == "__main__":
    main()
