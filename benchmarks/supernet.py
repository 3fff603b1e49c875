"""What pricing a candidate width vector costs: through the weight-sharing supernet, by training, on the cost model.

One run, one model (`--model`, default a CIFAR-stem MobileNetV2 at 0.5x on 16 px digits) and its supernet at
`--supernet-width` (1.5x) times the base, seed 0, 2 torch threads on the CPU. Candidates are random width
vectors between the supernet's smallest and largest (per group, seeded); every figure is the median over
`--candidates` of them.

- Supernet, no recalibration: `Supernet.subnet(widths)` and `training.evaluate` of the bound sub-network over
  the validation split (eval mode, whatever BN statistics the supernet holds).
- Supernet, with recalibration: the same after `recalibrate` on `--calibration-batches` training batches
  (batch 128, the training loader's augmentation), as AutoSlim evaluates a candidate.
- One epoch of training (the baseline): `materialize(spec, widths)` and `training.train` for one epoch with
  the platform's recipe (SGD, cosine, crop+flip, batch 128), which includes that epoch's validation and test
  evaluation -- what a search that trains each candidate pays per candidate per epoch.
- Cost model alone: `CostModel.cost` of one sampled candidate at a time (sampling included, as an
  evolutionary search's inner loop would call it), and of a batch of candidates in one numpy call.
- Evolutionary search on the cost model alone: CafeNet-E's loop (`search_spaces.bin_search`, population 40,
  `--generations`, FLOPs-sensitive bins at beta = 1, budget half the supernet's MACs) with a score that is
  arithmetic on the widths, so the figure is the search's own throughput (filling each candidate to the
  budget, crossover, mutation, ranking): candidates scored per second, against a supernet evaluation.
- Per step: one SGD step (forward, backward, step) of a candidate through the supernet against the same
  step on the plain model at those widths; what moving the supernet to a new random width vector adds
  (the sub-network's cuts and re-sizing its frame, paid per sandwich-rule random width); and, for scale,
  what building a model per width vector would cost (`materialize`), which the one re-sized frame avoids.

Ratios are printed in the same run. A shared machine skews wall-clock figures; steps alternate supernet and
plain so both see the same load, and a warning is printed when the load average says others are computing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from widthtune.models import Widths, channel_space, materialize
from widthtune.models.cost import CostModel
from widthtune.models.supernet import Supernet
from widthtune.search_spaces.bin_search import BinGrid, evolutionary_search
from widthtune.search_spaces.bins import bin_sizes
from widthtune.training import DataSpec, DeviceLoader, TrainConfig, evaluate, load_dataset, train

THREADS = 2
BATCH_SIZE = 128
SEED = 0
DATA = {"name": "digits", "resolution": 16}
BUSY_LOAD = 1.0


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    """The median of a list of timings."""
    return statistics.median(values)


def evaluation_seconds(supernet: Supernet, widths: Widths, data, loader, batches: int | None) -> float:
    """Seconds to score one candidate on the validation split, recalibrating BN first when `batches` is set."""

    def run() -> None:
        subnet = supernet.subnet(widths)
        if batches is not None:
            supernet.recalibrate(subnet, loader, batches)
        evaluate(supernet.bind(subnet), data.val_x, data.val_y)

    return seconds(run)


def epoch_seconds(spec: str, widths: Widths, data) -> float:
    """Seconds to build the candidate and train it for one epoch (with the epoch's val and test evaluation)."""
    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, seed=SEED, device="cpu")
    return seconds(lambda: train(materialize(spec, widths, seed=SEED), data, config))


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, forward=None) -> float:
    """Seconds of one SGD step (the optimizer built beforehand, outside the clock)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    forward = forward or model

    def run() -> None:
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds(run)


def main() -> None:
    """Time every way of pricing a candidate and print the figures and ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mobilenet_v2:width=0.5,resolution=16")
    parser.add_argument("--supernet-width", type=float, default=1.5)
    parser.add_argument("--candidates", type=int, default=3, help="random candidates timed (median)")
    parser.add_argument("--calibration-batches", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="SGD steps timed per variant (median)")
    parser.add_argument("--cost-candidates", type=int, default=20000)
    parser.add_argument("--generations", type=int, default=10, help="evolutionary search on the cost model")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if os.getloadavg()[0] > BUSY_LOAD:
        print(f"warning: load average {os.getloadavg()[0]:.1f} before starting; timings will be skewed")
    spec = args.model
    space = channel_space(spec)
    data = load_dataset(DataSpec(**DATA))
    supernet = Supernet(spec, Widths.base(space).scale(args.supernet_width), seed=SEED)
    rng = np.random.default_rng(SEED)
    candidates = [supernet.sample(rng) for _ in range(args.candidates)]
    loader = DeviceLoader(data.train_x, data.train_y, BATCH_SIZE, augment="crop+flip", seed=SEED)
    evaluation_seconds(supernet, candidates[0], data, loader, args.calibration_batches)  # warm-up

    plain, recalibrated, epochs = [], [], []
    for widths in candidates:
        plain.append(evaluation_seconds(supernet, widths, data, loader, None))
        recalibrated.append(evaluation_seconds(supernet, widths, data, loader, args.calibration_batches))
        epochs.append(epoch_seconds(spec, widths, data))
    epoch = median(epochs)
    print(
        f"{spec}, supernet {args.supernet_width}x ({supernet.reuses_one_skeleton=}), digits 16 px "
        f"({len(data.train_y)} train / {len(data.val_y)} val images), batch {BATCH_SIZE}, {THREADS} threads, "
        f"median of {args.candidates} random candidates"
    )
    print(f"{'one candidate':52s} {'seconds':>9s} {'/ epoch':>9s}")
    rows = [
        ("supernet evaluation, no BN recalibration", median(plain)),
        (f"supernet evaluation, BN recalibrated ({args.calibration_batches} batches)", median(recalibrated)),
        ("training it for one epoch (materialize + train)", epoch),
    ]
    for label, value in rows:
        print(f"{label:52s} {value:9.3f} {value / epoch:9.3f}")

    cost_model = CostModel.from_spec(spec)
    count = args.cost_candidates
    started = time.perf_counter()
    for _ in range(count):
        cost_model.cost(supernet.sample(rng), "macs")
    one_at_a_time = count / (time.perf_counter() - started)
    batch = np.array([supernet.sample(rng).values for _ in range(count)])
    started = time.perf_counter()
    cost_model.cost(batch, "macs")
    batched = count / (time.perf_counter() - started)
    print()
    print(
        f"cost model alone: {one_at_a_time:,.0f} candidates/s sampled and priced one at a time, "
        f"{batched:,.0f} candidates/s priced as one batch of {count}"
    )
    print(
        f"  = {one_at_a_time * median(recalibrated):,.0f} candidates priced per recalibrated supernet "
        f"evaluation, {one_at_a_time * epoch:,.0f} per training epoch"
    )

    upper = np.asarray(supernet.max_widths.values, dtype=np.int64)
    grid = BinGrid(
        upper, np.asarray(supernet.min_widths.values), bin_sizes(cost_model, supernet.max_widths, 1)
    )
    budget = 0.5 * float(cost_model.cost(supernet.max_widths, "macs"))
    weights = np.random.default_rng(SEED).random(len(upper))
    started = time.perf_counter()
    outcome = evolutionary_search(
        grid,
        lambda values: float(weights @ np.sqrt(values)),
        lambda values: np.asarray(cost_model.cost(np.asarray(values, dtype=np.float64), "macs")),
        budget,
        population=40,
        generations=args.generations,
        mutation=0.1,
        crossover=0.5,
        rng=np.random.default_rng(SEED),
    )
    evolution = len(outcome.scored) / (time.perf_counter() - started)
    print(
        f"evolutionary search on the cost model alone (population 40, {args.generations} generations, "
        f"{len(outcome.scored)} candidates): {evolution:,.0f} candidates/s, "
        f"= {evolution * median(recalibrated):,.0f} per recalibrated supernet evaluation"
    )

    x, y = next(iter(loader))
    widths = candidates[0]
    model = materialize(spec, widths, seed=SEED).train()
    supernet.train()
    subnet = supernet.subnet(widths)
    fixed, baseline, switches, builds = [], [], [], []
    for _ in range(args.steps):
        fixed.append(step_seconds(supernet, x, y, lambda images: supernet(images, subnet)))
        baseline.append(step_seconds(model, x, y))
        fresh = supernet.sample(rng)
        switches.append(seconds(lambda fresh=fresh: supernet._skeleton(supernet.subnet(fresh).widths)))
        builds.append(seconds(lambda fresh=fresh: materialize(spec, fresh)))
    step = median(baseline)
    print()
    print(f"{'one SGD step, batch ' + str(BATCH_SIZE):52s} {'seconds':>9s} {'/ plain':>9s}")
    for label, value in (
        ("plain model at the candidate's widths", step),
        ("supernet at the candidate", median(fixed)),
        ("+ moving to a new width vector (cuts, frame)", median(switches)),
        ("(building a model per width vector instead)", median(builds)),
    ):
        print(f"{label:52s} {value:9.4f} {value / step:9.3f}")
    if os.getloadavg()[0] > THREADS + BUSY_LOAD:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f} at the end; other processes skewed the timings"
        )


if __name__ == "__main__":
    main()
