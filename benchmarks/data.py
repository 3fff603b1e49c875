"""How fast widthtune's loaders deliver training batches, against a bare torchvision DataLoader.

One JPEG tree is written to a temporary folder (`--classes` x `--per-class` training images of
`--size` px, ImageNet-like photos' aspect ratio 4:3, quality 90). Three loaders read its training split
with the ImageNet training pipeline at `--resolution` (RandomResizedCrop + horizontal flip, ImageNet
normalisation), in batches of `--batch`, each batch moved to the device (CUDA when there is one, with
pinned memory; else the CPU):

- bare: `torchvision.datasets.ImageFolder(train/, transform)` and `torch.utils.data.DataLoader(shuffle=True,
  num_workers=W, pin_memory, persistent_workers=True)` -- the transforms written out here, not taken from
  widthtune.
- streamed: `load_dataset(DataSpec("imagefolder", loader="stream", workers=W, val_fraction=0))` and
  its `train_batches(augment="crop+flip")`, as the training loop reads it (per-sample seeded transforms).
- in memory: the same tree decoded once into tensors (`loader="memory"`, timed apart) and the
  device-resident `DeviceLoader` with its on-device pad-and-crop + flip (what small data gets).

No model runs: the figure is the loader's images/s. Each loader first runs one untimed epoch (workers
start), then `--epochs` timed epochs; bare and streamed alternate (which goes first alternates too),
`--repeats` times each. Reported: the best run (the one other processes disturbed least), the median, and
images per CPU-second (this process and its workers, from /proc; what contention changes least). The
target is streamed / bare >= 0.95 on the best runs. The script exits 0 either way and prints PASS or FAIL.
On a shared 2-core machine other processes move single runs by a factor of two; use more `--repeats`.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from widthtune.training import DataSpec, load_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_tree(root: Path, classes: int, per_class: int, size: int) -> None:
    """`train/<class>/` and a small `val/<class>/` of noisy single-hue JPEGs, `size` x 3/4 `size` px."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for label in range(classes):
            folder = root / split / f"class{label:03d}"
            folder.mkdir(parents=True)
            hue = np.array(colorsys.hsv_to_rgb(label / classes, 0.7, 0.9)) * 255
            for index in range(count):
                noise = rng.normal(0, 40, (size * 3 // 4, size, 3))
                Image.fromarray(np.clip(hue + noise, 0, 255).astype(np.uint8)).save(
                    folder / f"{index:04d}.jpg", quality=90
                )


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the loader's workers), from /proc (Linux)."""
    total, me, tick = sum(os.times()[:2]), os.getpid(), os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(batches: Iterable, epochs: int, device: torch.device) -> tuple[float, float]:
    """Images per second and images per CPU-second over `epochs` passes, after one untimed pass."""
    for _ in batches:
        pass
    count, started, cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for _, labels in batches:
            count += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started), count / max(1e-9, cpu_seconds() - cpu)


class BareLoader:
    """A plain torchvision DataLoader whose batches are moved to the device as the training loop would."""

    def __init__(self, root: Path, resolution: int, batch: int, workers: int, device: torch.device) -> None:
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(resolution),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        self.device = device
        self.batches = DataLoader(
            ImageFolder(str(root / "train"), transform=transform),
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def __iter__(self):
        for images, labels in self.batches:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=160, help="JPEG width in px (height 3/4 of it)")
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # the workers decode; the main process only collects

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_tree(root, args.classes, args.per_class, args.size)
        spec = {
            "name": "imagefolder",
            "root": str(root),
            "resolution": args.resolution,
            "val_fraction": 0.0,
            "workers": args.workers,
        }
        bare = BareLoader(root, args.resolution, args.batch, args.workers, device)
        streamed = load_dataset(DataSpec(**spec, loader="stream")).train_batches(
            args.batch, augment="crop+flip", device=device
        )
        figures: dict[str, list[tuple[float, float]]] = {"bare": [], "streamed": [], "in memory": []}
        loaders = {"bare": bare, "streamed": streamed}
        for repeat in range(args.repeats):
            for name in ("bare", "streamed") if repeat % 2 == 0 else ("streamed", "bare"):
                figures[name].append(measure(loaders[name], args.epochs, device))
        started = time.perf_counter()
        in_memory = load_dataset(DataSpec(**spec, loader="memory"))
        decode_seconds = time.perf_counter() - started
        memory = in_memory.train_batches(args.batch, augment="crop+flip", device=device)
        figures["in memory"] = [measure(memory, args.epochs, device) for _ in range(args.repeats)]

    best = {name: max(rate for rate, _ in runs) for name, runs in figures.items()}
    median = {name: statistics.median(rate for rate, _ in runs) for name, runs in figures.items()}
    per_cpu = {name: statistics.median(cpu for _, cpu in runs) for name, runs in figures.items()}
    print(
        f"{args.classes * args.per_class} JPEGs at {args.size}x{args.size * 3 // 4} -> {args.resolution} px, "
        f"batch {args.batch}, {args.workers} workers, device {device}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  {'':9s} {'best':>8s} {'median':>8s} images/s {'per CPU-second':>15s}")
    for name, runs in figures.items():
        print(f"  {name:9s} {best[name]:8.0f} {median[name]:8.0f}          {per_cpu[name]:15.0f}")
        print(f"  {'':9s} runs: {', '.join(f'{rate:.0f}' for rate, _ in runs)}")
    print(f"  (decoding the tree into memory first: {decode_seconds:.2f} s)")
    ratio = best["streamed"] / best["bare"]
    print(
        f"streamed / bare = {ratio:.3f} best, {median['streamed'] / median['bare']:.3f} median, "
        f"{per_cpu['streamed'] / per_cpu['bare']:.3f} per CPU-second (target >= 0.95 on the best runs): "
        + ("PASS" if ratio >= 0.95 else "FAIL")
    )
    print(f"in memory / bare = {best['in memory'] / best['bare']:.1f} best")


if __name__ == "__main__":
    main()
