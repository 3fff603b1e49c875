"""Datasets as in-memory tensors: the embedded `digits`, procedural `shapes`, CIFAR and image folders from disk.

Every dataset goes through one pipeline: resize to `resolution`, set `channels`, keep a class-balanced
`fraction` of the training set, carve a seeded, stratified validation split out of it (searches select
on it, never on the test set), and normalise with the training split's per-channel statistics.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from widthtune.training.shapes import balanced_labels, render_shapes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TEST_SPLIT_SEED = 0  # the test split never moves with the experiment seed


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


def _cifar(
    spec: DataSpec,
    folder: str,
    train_files: tuple[str, ...],
    test_file: str,
    label_key: bytes,
    num_classes: int,
) -> _Raw:
    files = ", ".join((*train_files, test_file))
    expected = f"{folder}/ ({files}) -- the python version from https://www.cs.toronto.edu/~kriz/cifar.html, extracted"
    root = _need_root(spec, expected)
    base = root if (root / test_file).is_file() else root / folder
    missing = [name for name in (*train_files, test_file) if not (base / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"data.root: {spec.name} needs {base}/{{{files}}}; missing {', '.join(missing)} "
            f"(extract cifar's python version so that {root}/{folder}/ holds them)"
        )

    def read(names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        batches = [_read_cifar_batch(base / name, label_key) for name in names]
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        return images, torch.from_numpy(labels)

    train_x, train_y = read(train_files)
    test_x, test_y = read((test_file,))
    return _Raw(train_x, train_y, test_x, test_y, num_classes, 32)


# datasets read from data.root
DISK_DATASETS = ("cifar10", "cifar100", "imagefolder")
# dataset -> (folder, training files..., test file)
CIFAR_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    "cifar100": ("cifar-100-python", ("train", "test")),
}


def _cifar10(spec: DataSpec) -> _Raw:
    folder, files = CIFAR_FILES["cifar10"]
    return _cifar(spec, folder, files[:-1], files[-1], b"labels", 10)


def _cifar100(spec: DataSpec) -> _Raw:
    folder, files = CIFAR_FILES["cifar100"]
    return _cifar(spec, folder, files[:-1], files[-1], b"fine_labels", 100)


def _imagefolder(spec: DataSpec) -> _Raw:
    from PIL import Image

    root = _need_root(spec, "train/<class>/*.png|jpg and val/<class>/ (or test/<class>/)")
    train_dir = root / "train"
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"data.root: imagefolder needs {root}/train/<class>/ and {root}/val/<class>/ "
            f"(or test/<class>/) with images ({', '.join(IMAGE_SUFFIXES)})"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetNotFoundError(
            f"data.root: {train_dir} must hold one folder per class (found {len(classes)})"
        )
    resolution = spec.resolution or 224

    def read(folder: Path) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for index, name in enumerate(classes):
            for path in sorted((folder / name).glob("*")) if (folder / name).is_dir() else []:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    with Image.open(path) as opened:
                        picture = opened.convert("RGB").resize(
                            (resolution, resolution), Image.Resampling.BILINEAR
                        )
                    images.append(
                        torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
                    )
                    labels.append(index)
        if not images:
            raise DatasetNotFoundError(
                f"data.root: no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}/<class>/"
            )
        return torch.stack(images), torch.tensor(labels)

    train_x, train_y = read(train_dir)
    test_x, test_y = read(test_dir)
    return _Raw(train_x, train_y, test_x, test_y, len(classes), resolution)


LOADERS: dict[str, Callable[[DataSpec], _Raw]] = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "digits": _digits,
    "imagefolder": _imagefolder,
    "shapes": _shapes,
    "synthetic": _synthetic,
}
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)


def check_dataset(spec: DataSpec) -> None:
    """What is on disk can be read, checked before any experiment starts (nothing is loaded)."""
    if spec.name in DISK_DATASETS:
        root = _need_root(spec, "the dataset")
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"data.root: {str(spec.root)!r} is not a folder; {spec.name} cannot be read from it"
            )
    if spec.name in ("cifar10", "cifar100"):
        folder, files = CIFAR_FILES[spec.name]
        root = _need_root(spec, f"{folder}/")
        base = root if (root / files[-1]).is_file() else root / folder
        missing = [name for name in files if not (base / name).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"data.root: {str(root)!r} does not hold {spec.name} ({folder}/ with {', '.join(files)}); "
                f"missing {', '.join(missing)}"
            )
    elif spec.name == "imagefolder":
        root = _need_root(spec, "train/<class>/ and val/<class>/")
        for name in ("train", "val|test"):
            folder = next((root / n for n in name.split("|") if (root / n).is_dir()), None)
            classes = [p for p in folder.iterdir() if p.is_dir()] if folder else []
            if len(classes) < 2 or not any(
                f.suffix.lower() in IMAGE_SUFFIXES for c in classes for f in c.iterdir()
            ):
                raise DatasetNotFoundError(
                    f"data.root: {str(root)!r} needs {name.replace('|', ' or ')}/<class>/ folders (at least 2) "
                    f"holding images ({', '.join(IMAGE_SUFFIXES)})"
                )


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


def load_dataset(spec: DataSpec) -> DatasetSplits:
    """Read (or draw) a dataset and split, subsample and normalise it as the spec says."""
    raw = LOADERS[spec.name](spec)
    resolution = spec.resolution or raw.default_resolution
    train_x = _prepare(raw.train_x, resolution, spec.channels)
    test_x = _prepare(raw.test_x, resolution, spec.channels)
    train_y, test_y = raw.train_y, raw.test_y
    if spec.fraction < 1:
        kept = class_balanced_subset(train_y, spec.fraction, spec.seed)
        train_x, train_y = train_x[kept], train_y[kept]
    val, train = _split(train_y, spec.val_fraction, torch.Generator().manual_seed(spec.seed + 1))
    val_x, val_y = train_x[val], train_y[val]
    train_x, train_y = train_x[train], train_y[train]
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
        test_y,
        raw.num_classes,
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )
