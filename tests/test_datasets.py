"""Datasets: real digits, procedural shapes, CIFAR/image folders from disk, and the shared split pipeline."""

import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from widthtune.training import DATASET_NAMES, DatasetNotFoundError, DataSpec, load_dataset


def test_digits_splits_are_disjoint_stratified_and_normalised():
    data = load_dataset(DataSpec("digits", resolution=16))
    assert data.train_x.shape[1:] == (3, 16, 16) and data.num_classes == 10
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 1797
    assert len(data.test_y) == 359
    # stratified: every class is in every split, in proportion
    for split in (data.train_y, data.val_y, data.test_y):
        counts = torch.bincount(split, minlength=10).float()
        assert counts.min() > 0 and counts.max() / counts.min() < 1.3
    assert data.train_x.mean().abs() < 1e-3 and (data.train_x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    # no image in two splits
    train = {tuple(x.flatten()[:64].tolist()) for x in data.train_x}
    assert not any(tuple(x.flatten()[:64].tolist()) in train for x in data.val_x)


def test_validation_split_is_seeded_and_test_split_is_fixed():
    a, b, c = (load_dataset(DataSpec("digits", resolution=8, seed=s)) for s in (1, 1, 2))
    assert torch.equal(a.val_x, b.val_x)
    assert not torch.equal(a.val_x, c.val_x)
    assert torch.equal(a.test_y, c.test_y)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_fraction_is_class_balanced(fraction):
    full = load_dataset(DataSpec("shapes", size=1000, val_fraction=0.0))
    part = load_dataset(DataSpec("shapes", size=1000, val_fraction=0.0, fraction=fraction))
    assert torch.equal(torch.bincount(part.train_y), (torch.bincount(full.train_y) * fraction).round().long())
    assert len(part.val_y) == 0


def test_channels_and_resolution_options():
    grey = load_dataset(DataSpec("digits", channels=1, resolution=24))
    assert grey.train_x.shape[1:] == (1, 24, 24) and grey.channels == 1 and grey.resolution == 24
    luminance = load_dataset(DataSpec("shapes", size=100, channels=1))
    assert luminance.train_x.shape[1] == 1


def test_shapes_are_deterministic_per_seed_balanced_and_sane():
    a = load_dataset(DataSpec("shapes", size=500, val_fraction=0.0))
    b = load_dataset(DataSpec("shapes", size=500, val_fraction=0.0))
    c = load_dataset(DataSpec("shapes", size=500, val_fraction=0.0, generator_seed=1))
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (500, 3, 32, 32) and a.test_x.shape[0] == 200
    assert torch.bincount(a.train_y).tolist() == [50] * 10
    raw = a.train_x * torch.tensor(a.std)[:, None, None] + torch.tensor(a.mean)[:, None, None]
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4


def test_synthetic_has_the_requested_shape():
    data = load_dataset(DataSpec("synthetic", size=200, resolution=8, num_classes=4, val_fraction=0.0))
    assert data.train_x.shape == (200, 3, 8, 8) and data.num_classes == 4


def _write_cifar(folder, files, label_key, count=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in files:
        batch = {
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            label_key: list(rng.integers(0, 10, count)),
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_is_read_from_its_python_batches(tmp_path):
    _write_cifar(
        tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    )
    data = load_dataset(DataSpec("cifar10", root=str(tmp_path), val_fraction=0.0))
    assert (
        data.train_x.shape == (100, 3, 32, 32)
        and data.test_x.shape == (20, 3, 32, 32)
        and data.num_classes == 10
    )


def test_cifar100_reads_fine_labels(tmp_path):
    _write_cifar(tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels")
    data = load_dataset(DataSpec("cifar100", root=str(tmp_path), val_fraction=0.0))
    assert data.num_classes == 100 and data.train_x.shape[0] == 20


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_data_on_disk_says_where_it_must_be(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match=r"data\.root"):
        load_dataset(DataSpec(name))
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(DataSpec(name, root=str(tmp_path)))
    assert str(tmp_path) in str(error.value)
    assert {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "imagefolder": "train/<class>"}[
        name
    ] in str(error.value)


def test_imagefolder_reads_class_folders(tmp_path):
    for split in ("train", "val"):
        for label, colour in enumerate(((255, 0, 0), (0, 0, 255))):
            folder = tmp_path / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 12), colour).save(folder / f"{i}.png")
    data = load_dataset(DataSpec("imagefolder", root=str(tmp_path), resolution=16, val_fraction=0.0))
    assert (
        data.train_x.shape == (6, 3, 16, 16)
        and data.num_classes == 2
        and data.test_y.tolist() == [0, 0, 0, 1, 1, 1]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "cifar"},
            "data.name: 'cifar' is not a dataset; choose one of: " + ", ".join(DATASET_NAMES),
        ),
        ({"resolution": 2}, "data.resolution"),
        ({"channels": 2}, "data.channels"),
        ({"fraction": 0.0}, "data.fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
    ],
)
def test_bad_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DataSpec(**kwargs)


def test_validation_carve_never_takes_the_last_image_of_a_class():
    data = load_dataset(DataSpec("shapes", size=20, val_fraction=0.9))
    assert torch.bincount(data.train_y, minlength=10).tolist() == [1] * 10
    assert torch.bincount(data.val_y, minlength=10).tolist() == [1] * 10


def test_a_file_that_is_not_a_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": np.zeros((4, 100), dtype=np.uint8), b"fine_labels": [0] * 4}, handle)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'train'} is not a CIFAR python batch")):
        load_dataset(DataSpec("cifar100", root=str(tmp_path)))
