"""Image folders streamed from disk: torchvision's ImageFolder read by a DataLoader's worker processes.

For data that does not fit in memory (ImageNet). The training split gets the standard ImageNet pipeline
(RandomResizedCrop + horizontal flip), evaluation resizes to 256/224 of the resolution and centre-crops;
both normalise with ImageNet's mean and std. Every sample is transformed under its own seed, drawn with
the epoch's order from the loader's generator, so an epoch is the same for any number of workers and a
resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision import transforms
from torchvision.datasets import ImageFolder

from widthtune.training.data_parallel import Shard, ShardedOrder
from widthtune.training.loader import AUGMENTATIONS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMINANCE = (0.299, 0.587, 0.114)
EVAL_RESIZE = (
    256 / 224
)  # evaluation resizes the shorter side to this much of the resolution, then centre-crops
SEED_RANGE = 2**62


def is_image(path: str) -> bool:
    """A file the folder datasets read (by suffix, any case)."""
    return path.lower().endswith(IMAGE_SUFFIXES)


class ClassFolder(ImageFolder):
    """An ImageFolder whose classes are given: the test folder is labelled with the training folder's classes."""

    def __init__(self, root: str | Path, classes: Sequence[str], transform: transforms.Compose | None = None):
        self.given_classes = tuple(classes)
        super().__init__(str(root), transform=transform, is_valid_file=is_image, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """The given classes, in their given order."""
        return list(self.given_classes), {name: index for index, name in enumerate(self.given_classes)}


@dataclass(frozen=True, eq=False)
class FolderListing:
    """The files of a `train/<class>/` and a `val/<class>/` (or `test/`) folder, labelled by the training classes."""

    classes: tuple[str, ...]
    train: ClassFolder
    test: ClassFolder
    train_labels: Tensor
    test_labels: Tensor


def list_folders(train_dir: Path, test_dir: Path) -> FolderListing:
    """List both folders' images (nothing is decoded); classes are the training folder's sub-folders, sorted."""
    classes = tuple(sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir()))
    train, test = ClassFolder(train_dir, classes), ClassFolder(test_dir, classes)
    return FolderListing(
        classes,
        train,
        test,
        torch.tensor(train.targets, dtype=torch.long),
        torch.tensor(test.targets, dtype=torch.long),
    )


def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's per-channel mean and std (for one channel, their luminance-weighted average)."""
    if channels == 1:
        return (sum(w * m for w, m in zip(LUMINANCE, IMAGENET_MEAN, strict=True)),), (
            sum(w * s for w, s in zip(LUMINANCE, IMAGENET_STD, strict=True)),
        )
    return IMAGENET_MEAN, IMAGENET_STD


def folder_transform(resolution: int, channels: int, augment: str) -> transforms.Compose:
    """The ImageNet pipeline: `crop` is RandomResizedCrop, `flip` a horizontal flip; without `crop`, the
    evaluation resize (256/224 of the resolution, shorter side) and centre crop."""
    steps: list = (
        [transforms.RandomResizedCrop(resolution)]
        if "crop" in augment
        else [transforms.Resize(round(resolution * EVAL_RESIZE)), transforms.CenterCrop(resolution)]
    )
    if "flip" in augment:
        steps.append(transforms.RandomHorizontalFlip())
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    mean, std = normalisation(channels)
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


class SeededSamples(Dataset):
    """Some files of a folder, each read and transformed under the seed that comes with its key."""

    def __init__(self, folder: ClassFolder, indices: Tensor, transform: transforms.Compose) -> None:
        self.folder = folder
        self.indices = indices.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        position, seed = key
        if get_worker_info() is None:  # in the training process: leave its random stream as it was
            with torch.random.fork_rng(devices=[]):
                return self._read(position, seed)
        return self._read(position, seed)

    def _read(self, position: int, seed: int) -> tuple[Tensor, int]:
        path, label = self.folder.samples[self.indices[position]]
        torch.default_generator.manual_seed(seed)
        return self.transform(self.folder.loader(path)), label


class SeededOrder(Sampler):
    """Keys `(position, seed)`: a shuffled (or sequential) order and one seed per sample, drawn per epoch."""

    def __init__(self, count: int, shuffle: bool, generator: torch.Generator) -> None:
        self.count = count
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            return iter([(position, 0) for position in range(self.count)])
        order = torch.randperm(self.count, generator=self.generator)
        seeds = torch.randint(0, SEED_RANGE, (self.count,), generator=self.generator)
        return zip(order.tolist(), seeds.tolist(), strict=True)


class StreamLoader:
    """Minibatches read by worker processes (pinned memory on CUDA), moved to the device as they come.

    `generator` is the loader's whole random state (order and augmentation), as for `DeviceLoader`. With a
    `shard` of several workers, this worker reads only its own batches of each epoch (`ShardedOrder`).
    """

    def __init__(
        self,
        samples: SeededSamples,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        workers: int = 0,
        persistent: bool = True,
        device: str | torch.device = "cpu",
        shard: Shard | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"train.batch_size: {batch_size!r} is not allowed; choose an integer >= 1")
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        order: Sampler = SeededOrder(len(samples), shuffle, self.generator)
        if shard is not None and shard.parallel:
            order = ShardedOrder(order, batch_size, drop_last, shard)
        self.batches = DataLoader(
            samples,
            batch_size=batch_size,
            sampler=order,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=persistent and workers > 0,
            generator=torch.Generator().manual_seed(seed),  # the workers' base seed; never the global stream
        )

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.batches:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


@dataclass(frozen=True, eq=False)
class StreamedSplits:
    """Train / validation / test as lists of files with their labels, read from disk batch by batch."""

    name: str
    listing: FolderListing
    train_index: Tensor
    val_index: Tensor
    resolution: int
    channels: int
    workers: int

    @property
    def num_classes(self) -> int:
        """Classes (the training folder's sub-folders)."""
        return len(self.listing.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        """The normalisation mean (ImageNet's)."""
        return normalisation(self.channels)[0]

    @property
    def std(self) -> tuple[float, ...]:
        """The normalisation std (ImageNet's)."""
        return normalisation(self.channels)[1]

    @property
    def train_y(self) -> Tensor:
        """Training labels, in listing order."""
        return self.listing.train_labels[self.train_index]

    @property
    def val_y(self) -> Tensor:
        """Validation labels (carved from the training folder), in listing order."""
        return self.listing.train_labels[self.val_index]

    @property
    def test_y(self) -> Tensor:
        """Test labels (the `val/` or `test/` folder)."""
        return self.listing.test_labels

    def train_batches(
        self,
        batch_size: int,
        *,
        augment: str,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shard: Shard | None = None,
    ) -> StreamLoader:
        """Shuffled, augmented training batches (persistent workers); a `shard`'s worker reads only its own."""
        if augment not in AUGMENTATIONS:
            raise ValueError(
                f"train.augment: {augment!r} is not allowed; choose one of: {', '.join(AUGMENTATIONS)}"
            )
        transform = folder_transform(self.resolution, self.channels, augment)
        samples = SeededSamples(self.listing.train, self.train_index, transform)
        return StreamLoader(
            samples,
            batch_size,
            shuffle=True,
            drop_last=drop_last,
            seed=seed,
            workers=self.workers,
            device=device,
            shard=shard,
        )

    def eval_batches(self, split: str, batch_size: int, device: str | torch.device = "cpu") -> StreamLoader:
        """The `val` or `test` split in order, through the evaluation pipeline (deterministic)."""
        transform = folder_transform(self.resolution, self.channels, "none")
        if split == "val":
            samples = SeededSamples(self.listing.train, self.val_index, transform)
        elif split == "test":
            samples = SeededSamples(self.listing.test, torch.arange(len(self.listing.test)), transform)
        else:
            raise ValueError(f"split: {split!r} is not allowed; choose val or test")
        # evaluation workers start per pass: they sit idle between epochs otherwise
        return StreamLoader(
            samples, batch_size, shuffle=False, workers=self.workers, persistent=False, device=device
        )
