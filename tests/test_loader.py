"""The device-resident loader: every sample once per epoch, seeded shuffles, augmentation on the batch."""

import pytest
import torch

from widthtune.training import DeviceLoader


@pytest.fixture
def images():
    return torch.arange(10 * 3 * 8 * 8, dtype=torch.float32).reshape(10, 3, 8, 8)


def test_every_sample_once_per_epoch_with_seeded_order(images):
    labels = torch.arange(10)
    loader = DeviceLoader(images, labels, 4, seed=3)
    assert len(loader) == 3
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    again = torch.cat([y for _, y in DeviceLoader(images, labels, 4, seed=3)])
    assert torch.equal(first, again)
    assert len(DeviceLoader(images, labels, 4, drop_last=True)) == 2


def test_crop_and_flip_keep_shapes_and_change_images(images):
    labels = torch.arange(10)
    x, y = next(iter(DeviceLoader(images, labels, 10, seed=0, augment="crop+flip")))
    assert x.shape == (10, 3, 8, 8)
    changed = sum(not torch.equal(x[i], images[y[i]]) for i in range(10))  # labels index the images
    assert changed >= 5


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    loader = DeviceLoader(
        image.repeat(50, 1, 1, 1), torch.zeros(50, dtype=torch.long), 50, augment="crop", padding=1
    )
    crops, _ = next(iter(loader))
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))[0, 0]
    windows = {tuple(padded[r : r + 4, c : c + 4].flatten().tolist()) for r in range(3) for c in range(3)}
    seen = {tuple(crop[0].flatten().tolist()) for crop in crops}
    assert seen <= windows and len(seen) > 3


def test_flip_mirrors_left_right():
    image = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(40, 1, 1, 1)
    flipped, _ = next(iter(DeviceLoader(image, torch.zeros(40, dtype=torch.long), 40, augment="flip")))
    rows = {tuple(f.flatten().tolist()) for f in flipped}
    assert rows == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}


def test_bad_augment_names_the_choices(images):
    with pytest.raises(ValueError, match=r"train\.augment: 'rotate'"):
        DeviceLoader(images, torch.arange(10), 4, augment="rotate")


def test_augmented_batches_are_contiguous_nchw():
    # torch 2.14.1's CPU conv backward corrupts the heap on channels-last batches of some sizes (e.g. 15 images
    # into an 8-channel stem); the loader must hand out plain NCHW tensors.
    images = torch.randn(15, 3, 16, 16)
    x, _ = next(iter(DeviceLoader(images, torch.zeros(15, dtype=torch.long), 15, augment="crop+flip")))
    assert x.is_contiguous()
