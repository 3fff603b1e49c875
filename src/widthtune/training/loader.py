"""A loader for data that fits in memory: tensors live on the trial's device, augmentation runs there too."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "crop", "flip", "crop+flip")


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad, then cut each image back to size at its own random offset (one gather for the batch)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, :, None]
    cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None]
    # contiguous: CPU conv backward on this channels-last-strided view corrupts the heap (torch 2.14)
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of the batch left-right."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def tensor_batches(images: Tensor, labels: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices of a split, in order (evaluation)."""
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


class DeviceLoader:
    """Shuffled minibatches of tensors already on the device; no worker processes, seeded per epoch."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: str = "none",
        padding: int = 4,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(
                f"train.augment: {augment!r} is not allowed; choose one of: {', '.join(AUGMENTATIONS)}"
            )
        if batch_size < 1:
            raise ValueError(f"train.batch_size: {batch_size!r} is not allowed; choose an integer >= 1")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        order = order.to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if "crop" in self.augment:
                images = random_crop(images, self.padding, self.generator)
            if "flip" in self.augment:
                images = random_flip(images, self.generator)
            yield images, self.labels[index]
