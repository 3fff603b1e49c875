"""Data that cannot be read is refused before an experiment starts, in one line that says what must be where."""

import re

import pytest
import torch
from PIL import Image

from widthtune.training import DatasetNotFoundError, DatasetSplits, DataSpec, TrainConfig, check_dataset


def refusal(spec: DataSpec) -> str:
    with pytest.raises(DatasetNotFoundError) as error:
        check_dataset(spec)
    message = str(error.value)
    assert "\n" not in message and message.startswith("data.root: ")
    return message


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def folders(root, train=("a", "b"), val=("a", "b"), test_folder="val"):
    for name in train:
        image(root / "train" / name / "0.png")
    for name in val:
        image(root / test_folder / name / "0.jpg")
    return root


@pytest.mark.parametrize(
    ("name", "holds"),
    [
        (
            "cifar10",
            "cifar-10-batches-py/ with data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
            "data_batch_5, test_batch",
        ),
        ("cifar100", "cifar-100-python/ with train, test"),
    ],
)
def test_cifar_root_that_is_an_empty_folder(tmp_path, name, holds):
    message = refusal(DataSpec(name, root=str(tmp_path)))
    assert f"{str(tmp_path)!r} does not hold {name}; it must hold {holds}" in message
    (tmp_path / holds.split("/")[0]).mkdir()
    (tmp_path / holds.split("/")[0] / "test_batch").write_bytes(b"x")
    if name == "cifar10":
        assert "missing data_batch_1" in refusal(DataSpec(name, root=str(tmp_path)))


def test_cifar_root_that_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is not a folder" in refusal(DataSpec("cifar10", root=str(tmp_path / "file")))


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_empty_train_folder(tmp_path, name):
    (tmp_path / "train").mkdir()
    folders(tmp_path, train=())
    message = refusal(DataSpec(name, root=str(tmp_path)))
    assert f"{tmp_path / 'train'} holds 0 class folders" in message and "train/<class>/" in message


def test_class_folders_without_images(tmp_path):
    folders(tmp_path)
    (tmp_path / "train" / "c").mkdir()
    assert f"{tmp_path / 'train' / 'c'} holds no images (1 of 3 class folders are empty)" in refusal(
        DataSpec("imagefolder", root=str(tmp_path))
    )


def test_imagenet_without_val(tmp_path):
    folders(tmp_path, test_folder="test")  # imagefolder takes test/, the ImageNet layout is val/
    check_dataset(DataSpec("imagefolder", root=str(tmp_path)))
    message = refusal(DataSpec("imagenet", root=str(tmp_path)))
    assert message.endswith("there is no val/") and f"{tmp_path}/train/<class>/ and val/<class>/" in message


def test_neither_folder(tmp_path):
    assert refusal(DataSpec("imagefolder", root=str(tmp_path))).endswith(
        "there is no train/ and no val/ or test/"
    )


def test_flat_val_folder_and_unknown_classes(tmp_path):
    folders(tmp_path, val=())
    image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    assert "images but no class folders" in refusal(DataSpec("imagenet", root=str(tmp_path)))
    image(tmp_path / "val" / "z" / "0.png")
    assert re.search(r"val/z is not a class of .*train", refusal(DataSpec("imagenet", root=str(tmp_path))))


def test_a_readable_layout_passes(tmp_path):
    check_dataset(DataSpec("imagenet", root=str(folders(tmp_path))))
    check_dataset(DataSpec("digits"))


def test_loader_and_workers_are_checked():
    with pytest.raises(ValueError, match=r"data\.loader: 'disk' is not allowed; choose one of: auto, memory"):
        DataSpec(loader="disk")
    with pytest.raises(
        ValueError, match=r"data\.loader: 'stream' reads image files .* digits is held in memory"
    ):
        DataSpec("digits", loader="stream")
    with pytest.raises(ValueError, match=r"data\.workers: -1 is not allowed"):
        DataSpec(workers=-1)


def test_cifar_default_augmentation_is_pad4_crop_and_flip():
    """The standard CIFAR pipeline is what the device-resident loader does by default."""
    splits = DatasetSplits(
        "cifar10", *(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)) * 3, 10, (0.0,), (1.0,)
    )
    loader = splits.train_batches(2, augment=TrainConfig().augment)
    assert loader.augment == "crop+flip" and loader.padding == 4
