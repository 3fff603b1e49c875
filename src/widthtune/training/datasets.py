"""Datasets: the embedded `digits`, procedural `shapes`, CIFAR and image folders (`imagefolder`, `imagenet`).

Every dataset keeps a class-balanced `fraction` of its training set and carves a seeded, stratified
validation split out of it (searches select on it, never on the test set). Data that fits in memory is
resized to `resolution`, set to `channels` and normalised with the training split's per-channel
statistics, as tensors (`DatasetSplits`); an image folder too large for that is streamed from disk
(`StreamedSplits`, the same splits as lists of files). `loader: auto` picks by the decoded size.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms

from widthtune.training.data_parallel import Shard, ShardedBatches
from widthtune.training.loader import DeviceLoader, tensor_batches
from widthtune.training.shapes import balanced_labels, render_shapes
from widthtune.training.streaming import (
    IMAGE_SUFFIXES,
    ClassFolder,
    FolderListing,
    SeededSamples,
    StreamedSplits,
    StreamLoader,
    is_image,
    list_folders,
)

TEST_SPLIT_SEED = 0  # the test split never moves with the experiment seed
LOADER_CHOICES = ("auto", "memory", "stream")
FOLDER_DATASETS = ("imagefolder", "imagenet")  # the only datasets that can be streamed
# folders (under data.root) a folder dataset's test split may be read from, in order of preference
TEST_FOLDERS = {"imagefolder": ("val", "test"), "imagenet": ("val",)}
FOLDER_RESOLUTION = 224
# `loader: auto` streams a folder whose decoded float32 tensors (train + test) would exceed this
MEMORY_LOADER_MAX_BYTES = 4 * 2**30


class DatasetNotFoundError(FileNotFoundError):
    """A dataset read from disk is not where the spec says; the message says which files must be where."""


@dataclass(frozen=True)
class DataSpec:
    """Which data, at which resolution and channels, how much of it, and how the validation split is drawn."""

    name: str = "digits"
    root: str | None = None
    resolution: int | None = None
    channels: int = 3
    fraction: float = 1.0
    val_fraction: float = 0.1
    seed: int = 0
    size: int | None = None
    num_classes: int = 10
    generator_seed: int = 0
    loader: str = "auto"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.name not in LOADERS:
            raise ValueError(
                f"data.name: {self.name!r} is not a dataset; choose one of: {', '.join(DATASET_NAMES)}"
            )
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 4):
            raise ValueError(f"data.resolution: {self.resolution!r} is not allowed; choose an integer >= 4")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels: {self.channels!r} is not allowed; choose 1 or 3")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"data.fraction: {self.fraction!r} is not allowed; choose a number in (0, 1]")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(
                f"data.val_fraction: {self.val_fraction!r} is not allowed; choose a number in [0, 1)"
            )
        if self.size is not None and (not isinstance(self.size, int) or self.size < 10):
            raise ValueError(f"data.size: {self.size!r} is not allowed; choose an integer >= 10")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"data.num_classes: {self.num_classes!r} is not allowed; choose an integer >= 2")
        if self.loader not in LOADER_CHOICES:
            raise ValueError(
                f"data.loader: {self.loader!r} is not allowed; choose one of: {', '.join(LOADER_CHOICES)}"
            )
        if self.loader == "stream" and self.name not in FOLDER_DATASETS:
            raise ValueError(
                f"data.loader: 'stream' reads image files from disk, which only {' and '.join(FOLDER_DATASETS)} "
                f"are; {self.name} is held in memory (choose auto or memory)"
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ValueError(
                f"data.workers: {self.workers!r} is not allowed; choose an integer >= 0 "
                "(0 reads in the training process; unset: the trial's CPUs)"
            )

    @property
    def scale(self) -> str:
        """`cifar` or `imagenet`: which of the papers' training budgets this dataset takes (DATASET_SCALE)."""
        return DATASET_SCALE[self.name]

    @property
    def worker_count(self) -> int:
        """Loader worker processes: `workers`, or as many as the CPUs this process trains with (a trial's)."""
        return self.workers if self.workers is not None else torch.get_num_threads()


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Normalised float32 NCHW tensors for train / validation / test, on the CPU, with their statistics."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        """Input channels."""
        return self.train_x.shape[1]

    @property
    def resolution(self) -> int:
        """Input height (= width)."""
        return self.train_x.shape[2]

    def train_batches(
        self,
        batch_size: int,
        *,
        augment: str,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shard: Shard | None = None,
    ) -> DeviceLoader | ShardedBatches:
        """Shuffled, augmented training batches from tensors on the device; a `shard`'s worker takes its own."""
        loader = DeviceLoader(
            self.train_x,
            self.train_y,
            batch_size,
            shuffle=True,
            augment=augment,
            drop_last=drop_last,
            seed=seed,
            device=device,
        )
        return ShardedBatches(loader, shard) if shard is not None and shard.parallel else loader

    def eval_batches(
        self, split: str, batch_size: int, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The `val` or `test` split in order (the caller moves each batch to its device)."""
        if split not in ("val", "test"):
            raise ValueError(f"split: {split!r} is not allowed; choose val or test")
        return tensor_batches(getattr(self, f"{split}_x"), getattr(self, f"{split}_y"), batch_size)


@dataclass(frozen=True)
class _Raw:
    """A dataset as read: float images in [0, 1] at their own size, integer labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    default_resolution: int


def _split(labels: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified split: indices taking `fraction` of each class (never its last image), and the rest."""
    taken, rest = [], []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        count = min(round(fraction * members.numel()), members.numel() - 1)
        taken.append(members[:count])
        rest.append(members[count:])
    return torch.cat(taken).sort().values, torch.cat(rest).sort().values


def class_balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Indices keeping the same fraction of every class (at least one image each)."""
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        count = max(1, round(fraction * members.numel()))
        kept.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    return torch.cat(kept).sort().values


def _digits(spec: DataSpec) -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    test, train = _split(labels, 0.2, torch.Generator().manual_seed(TEST_SPLIT_SEED))
    return _Raw(images[train], labels[train], images[test], labels[test], 10, 32)


def _shapes(spec: DataSpec) -> _Raw:
    resolution = spec.resolution or 32
    size = spec.size or 5000
    test_size = max(200, size // 5)
    generator = torch.Generator().manual_seed(spec.generator_seed)
    train_y = balanced_labels(size, 10, generator)
    train_x = render_shapes(train_y, resolution, generator)
    test_y = balanced_labels(test_size, 10, generator)
    test_x = render_shapes(test_y, resolution, generator)
    return _Raw(train_x, train_y, test_x, test_y, 10, 32)


def _synthetic(spec: DataSpec) -> _Raw:
    resolution = spec.resolution or 32
    size = spec.size or 1024
    generator = torch.Generator().manual_seed(spec.generator_seed)

    def draw(count: int) -> tuple[Tensor, Tensor]:
        images = torch.rand(count, spec.channels, resolution, resolution, generator=generator)
        return images, torch.randint(0, spec.num_classes, (count,), generator=generator)

    train_x, train_y = draw(size)
    test_x, test_y = draw(max(spec.num_classes, size // 5))
    return _Raw(train_x, train_y, test_x, test_y, spec.num_classes, resolution)


def _need_root(spec: DataSpec, expected: str) -> Path:
    if not spec.root:
        raise DatasetNotFoundError(
            f"data.root: {spec.name} is read from disk; set data.root to the folder holding {expected}"
        )
    return Path(spec.root).expanduser().resolve()


def _read_cifar_batch(path: Path, label_key: bytes) -> dict:
    with path.open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    shape = np.shape(batch.get(b"data")) if isinstance(batch, dict) else None
    if shape is None or len(shape) != 2 or shape[1] != 3072 or label_key not in batch:
        raise ValueError(
            f"data.root: {path} is not a CIFAR python batch; expected a dict with b'data' "
            f"(N x 3072 uint8, channel-major 3x32x32 rows) and {label_key!r}"
        )
    return batch


def _cifar_base(spec: DataSpec) -> Path:
    """The folder holding the dataset's python batches; the one-line error says what data.root must hold."""
    folder, files = CIFAR_FILES[spec.name]
    expected = (
        f"{folder}/ with {', '.join(files)} "
        "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html, extracted)"
    )
    root = _need_root(spec, expected)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data.root: {str(root)!r} is not a folder; it must hold {expected}")
    base = root if (root / files[-1]).is_file() else root / folder
    missing = [name for name in files if not (base / name).is_file()]
    if missing:
        which = "" if len(missing) == len(files) else f"; missing {', '.join(missing)} in {base}"
        raise DatasetNotFoundError(
            f"data.root: {str(root)!r} does not hold {spec.name}; it must hold {expected}{which}"
        )
    return base


def _cifar(
    spec: DataSpec,
    train_files: tuple[str, ...],
    test_file: str,
    label_key: bytes,
    num_classes: int,
) -> _Raw:
    base = _cifar_base(spec)

    def read(names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        batches = [_read_cifar_batch(base / name, label_key) for name in names]
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        return images, torch.from_numpy(labels)

    train_x, train_y = read(train_files)
    test_x, test_y = read((test_file,))
    return _Raw(train_x, train_y, test_x, test_y, num_classes, 32)


# dataset -> (folder, training files..., test file)
CIFAR_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    "cifar100": ("cifar-100-python", ("train", "test")),
}


def _cifar10(spec: DataSpec) -> _Raw:
    files = CIFAR_FILES["cifar10"][1]
    return _cifar(spec, files[:-1], files[-1], b"labels", 10)


def _cifar100(spec: DataSpec) -> _Raw:
    files = CIFAR_FILES["cifar100"][1]
    return _cifar(spec, files[:-1], files[-1], b"fine_labels", 100)


def _holds_image(folder: Path) -> bool:
    """Whether any image lies under `folder` (stops at the first)."""
    return any(is_image(name) for _, _, names in os.walk(folder, followlinks=True) for name in names)


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _folder_dirs(spec: DataSpec) -> tuple[Path, Path]:
    """The training and test folders of a folder dataset, their layout checked (nothing is decoded)."""
    tests = TEST_FOLDERS[spec.name]
    layout = f"train/<class>/ and {tests[0]}/<class>/" + "".join(f" (or {t}/<class>/)" for t in tests[1:])
    root = _need_root(spec, f"{layout} with images")
    wanted = f"{spec.name} needs {root}/{layout} holding images ({', '.join(IMAGE_SUFFIXES)})"
    if not root.is_dir():
        raise DatasetNotFoundError(f"data.root: {str(root)!r} is not a folder; {wanted}")
    train_dir = root / "train"
    test_dir = next((root / name for name in tests if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = [] if train_dir.is_dir() else ["train/"]
        missing += [] if test_dir else [" or ".join(f"{name}/" for name in tests)]
        raise DatasetNotFoundError(f"data.root: {wanted}; there is no {' and no '.join(missing)}")
    classes = _class_folders(train_dir)
    if len(classes) < 2:
        raise DatasetNotFoundError(
            f"data.root: {train_dir} holds {len(classes)} class folders, at least 2 are needed; {wanted}"
        )
    empty = [name for name in classes if not _holds_image(train_dir / name)]
    if empty:
        raise DatasetNotFoundError(
            f"data.root: {train_dir / empty[0]} holds no images ({len(empty)} of {len(classes)} class "
            f"folders are empty); {wanted}"
        )
    test_classes = _class_folders(test_dir)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise DatasetNotFoundError(
            f"data.root: {test_dir / unknown[0]} is not a class of {train_dir} ({len(unknown)} such "
            f"folders); the test classes must be training classes"
        )
    if not any(_holds_image(test_dir / name) for name in test_classes):
        flat = any(is_image(entry.name) for entry in os.scandir(test_dir) if entry.is_file())
        raise DatasetNotFoundError(
            f"data.root: {test_dir} holds "
            + ("images but no class folders (sort them into <class>/ folders)" if flat else "no images")
            + f"; {wanted}"
        )
    return train_dir, test_dir


def _decode_folders(spec: DataSpec, listing: FolderListing) -> _Raw:
    """Every image of both folders decoded at `resolution` (shorter side resized, centre-cropped), RGB in [0, 1]."""
    resolution = spec.resolution or FOLDER_RESOLUTION
    decode = transforms.Compose(
        [transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.ToTensor()]
    )

    def read(folder: ClassFolder, labels: Tensor) -> Tensor:
        samples = SeededSamples(folder, torch.arange(len(labels)), decode)
        loader = StreamLoader(samples, 256, shuffle=False, workers=spec.worker_count, persistent=False)
        return torch.cat([images for images, _ in loader])

    return _Raw(
        read(listing.train, listing.train_labels),
        listing.train_labels,
        read(listing.test, listing.test_labels),
        listing.test_labels,
        len(listing.classes),
        resolution,
    )


def _imagefolder(spec: DataSpec) -> _Raw:
    return _decode_folders(spec, list_folders(*_folder_dirs(spec)))


LOADERS: dict[str, Callable[[DataSpec], _Raw]] = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "digits": _digits,
    "imagefolder": _imagefolder,
    "imagenet": _imagefolder,
    "shapes": _shapes,
    "synthetic": _synthetic,
}
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)
# each dataset's scale, as the papers' budgets tell them apart: "imagenet" (folders of full-size images;
# Rethinking caps Scratch-B at 2x and fine-tunes 20 epochs) or "cifar" (small images; fine-tunes 40 epochs)
DATASET_SCALE: dict[str, str] = {
    "cifar10": "cifar",
    "cifar100": "cifar",
    "digits": "cifar",
    "imagefolder": "imagenet",
    "imagenet": "imagenet",
    "shapes": "cifar",
    "synthetic": "cifar",
}


def check_dataset(spec: DataSpec) -> None:
    """What is on disk can be read, checked before any experiment starts (nothing is loaded)."""
    if spec.name in CIFAR_FILES:
        _cifar_base(spec)
    elif spec.name in FOLDER_DATASETS:
        _folder_dirs(spec)


def decoded_bytes(spec: DataSpec, images: int) -> int:
    """What `images` take as float32 tensors at the spec's resolution and channels."""
    resolution = spec.resolution or FOLDER_RESOLUTION
    return images * spec.channels * resolution * resolution * 4


def chosen_loader(spec: DataSpec, images: int) -> str:
    """`memory` or `stream` for a folder of `images` files: the spec's choice, or by decoded size."""
    if spec.loader != "auto":
        return spec.loader
    return "stream" if decoded_bytes(spec, images) > MEMORY_LOADER_MAX_BYTES else "memory"


def _prepare(images: Tensor, resolution: int, channels: int) -> Tensor:
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        images = F.interpolate(
            images,
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=images.shape[-1] > resolution,
        )
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    return images.contiguous()


def _train_val(labels: Tensor, spec: DataSpec) -> tuple[Tensor, Tensor]:
    """Indices of the training and validation splits: the class-balanced fraction, then the stratified carve."""
    kept = class_balanced_subset(labels, spec.fraction, spec.seed) if spec.fraction < 1 else None
    subset = labels if kept is None else labels[kept]
    val, train = _split(subset, spec.val_fraction, torch.Generator().manual_seed(spec.seed + 1))
    return (train, val) if kept is None else (kept[train], kept[val])


def with_validation_in_training(data: DatasetSplits | StreamedSplits) -> DatasetSplits | StreamedSplits:
    """The splits with the validation images added to training (a final retraining on the whole training set,
    as the papers report); the test split is untouched, the normalisation stays the training split's."""
    if isinstance(data, StreamedSplits):
        return replace(data, train_index=torch.cat([data.train_index, data.val_index]))
    return replace(
        data,
        train_x=torch.cat([data.train_x, data.val_x]),
        train_y=torch.cat([data.train_y, data.val_y]),
    )


def load_dataset(spec: DataSpec) -> DatasetSplits | StreamedSplits:
    """Read (or draw) a dataset and split, subsample and normalise it as the spec says."""
    if spec.name in FOLDER_DATASETS:
        listing = list_folders(*_folder_dirs(spec))
        if chosen_loader(spec, len(listing.train_labels) + len(listing.test_labels)) == "stream":
            train, val = _train_val(listing.train_labels, spec)
            resolution = spec.resolution or FOLDER_RESOLUTION
            return StreamedSplits(
                spec.name, listing, train, val, resolution, spec.channels, spec.worker_count
            )
        raw = _decode_folders(spec, listing)
    else:
        raw = LOADERS[spec.name](spec)
    resolution = spec.resolution or raw.default_resolution
    train_x = _prepare(raw.train_x, resolution, spec.channels)
    test_x = _prepare(raw.test_x, resolution, spec.channels)
    train, val = _train_val(raw.train_y, spec)
    val_x, val_y = train_x[val], raw.train_y[val]
    train_x, train_y = train_x[train], raw.train_y[train]
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def normalise(images: Tensor) -> Tensor:
        return ((images - mean[:, None, None]) / std[:, None, None]).float()

    return DatasetSplits(
        spec.name,
        normalise(train_x),
        train_y,
        normalise(val_x),
        val_y,
        normalise(test_x),
        raw.test_y,
        raw.num_classes,
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )
