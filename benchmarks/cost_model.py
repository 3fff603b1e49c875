"""How much faster the arithmetic cost model prices a width vector than materialising and tracing it.

Baseline (same run, same width vectors): materialise the model at the widths and count with
torch.utils.flop_counter.FlopCounterMode -- what a search would do without the cost model.
Printed as ratios; the target is > 1000x.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from widthtune.models import Widths, input_shape, materialize
from widthtune.models.cost import CostModel

SPECS = (
    "resnet_cifar:depth=56",
    "vgg_cifar:depth=19",
    "mobilenet_v2:stem=cifar",
    "resnet:depth=50,resolution=224",
    "torchvision:mobilenet_v2",
    "torchvision:efficientnet_b0",
)


def traced_cost(spec: str, widths: Widths) -> int:
    model = materialize(spec, widths)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(input_shape(spec)))
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=3, help="width vectors traced per model (baseline)")
    parser.add_argument("--repeats", type=int, default=2000, help="arithmetic evaluations per model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(0)
    print(
        f"{'model':34s} {'trace+count':>12s} {'arithmetic':>11s} {'batch/vec':>10s} {'speed-up':>9s} {'batched':>9s}"
    )
    for spec in SPECS:
        cost_model = CostModel.from_spec(spec)
        vectors = [
            Widths.from_mapping(
                cost_model.space,
                {g.name: g.base * rng.uniform(0.3, 1.5) for g in cost_model.space},
                round=True,
            )
            for _ in range(args.vectors)
        ]
        traced = []
        for widths in vectors:
            start = time.perf_counter()
            macs = traced_cost(spec, widths)
            traced.append(time.perf_counter() - start)
            assert macs == cost_model.evaluate(widths).macs, "cost model disagrees with FlopCounterMode"
        start = time.perf_counter()
        for i in range(args.repeats):
            cost_model.cost(vectors[i % len(vectors)])
        arithmetic = (time.perf_counter() - start) / args.repeats
        batch = torch.tensor([w.values for w in vectors] * (args.repeats // len(vectors))).numpy()
        start = time.perf_counter()
        cost_model.cost(batch)
        batched = (time.perf_counter() - start) / len(batch)
        base = statistics.median(traced)
        print(
            f"{spec:34s} {base * 1e3:10.1f}ms {arithmetic * 1e6:9.1f}us {batched * 1e6:8.2f}us "
            f"{base / arithmetic:8.0f}x {base / batched:8.0f}x"
        )


if __name__ == "__main__":
    main()
