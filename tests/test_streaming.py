"""Image folders streamed from disk: the same splits as in memory, the ImageNet pipeline, training from files."""

import pytest
import torch
from PIL import Image
from torch import nn

from jpeg_tree import CLASSES, PER_CLASS, TEST_PER_CLASS, write_jpeg_tree
from widthtune.training import (
    DatasetSplits,
    DataSpec,
    StreamedSplits,
    TrainConfig,
    load_dataset,
    train,
)
from widthtune.training.data_parallel import Shard, ShardedBatches
from widthtune.training.datasets import MEMORY_LOADER_MAX_BYTES, chosen_loader, decoded_bytes
from widthtune.training.streaming import EVAL_RESIZE, IMAGENET_MEAN, folder_transform


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_jpeg_tree(tmp_path_factory.mktemp("jpegs"))


def stream(tree, **changes):
    spec = {"name": "imagefolder", "root": str(tree), "resolution": 32, "loader": "stream", "workers": 2}
    return load_dataset(DataSpec(**{**spec, **changes}))


def small_model(channels=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def recipe(**changes):
    return TrainConfig(**{"epochs": 1, "batch_size": 32, "lr": 0.1, "device": "cpu", **changes})


def test_one_epoch_trains_from_the_files(tree):
    data = stream(tree)
    assert isinstance(data, StreamedSplits) and data.num_classes == CLASSES
    assert len(data.train_y) + len(data.val_y) == CLASSES * PER_CLASS
    assert len(data.test_y) == CLASSES * TEST_PER_CLASS
    history = train(small_model(), data, recipe(epochs=2))
    assert [r.epoch for r in history.records] == [1, 2]
    assert history.final.images_seen == 2 * len(data.train_y)
    assert history.final.val_acc > 0.3 and history.final.test_acc > 0.3  # hues are learnable; chance is 0.1


def test_auto_streams_only_what_does_not_fit(tree):
    small = DataSpec("imagenet", root=str(tree), resolution=32)
    assert isinstance(load_dataset(small), DatasetSplits)
    assert decoded_bytes(small, 500) == 500 * 3 * 32 * 32 * 4
    large = DataSpec("imagenet", root=str(tree), resolution=2048)  # 500 files x 48 MiB decoded
    assert chosen_loader(large, 500) == "stream" and decoded_bytes(large, 500) > MEMORY_LOADER_MAX_BYTES
    assert isinstance(load_dataset(large), StreamedSplits)  # listed, not decoded
    assert (
        chosen_loader(DataSpec("imagenet", root=str(tree), resolution=2048, loader="memory"), 500) == "memory"
    )


def test_split_is_the_memory_split_stratified_and_seeded(tree):
    streamed = stream(tree, seed=1)
    in_memory = load_dataset(DataSpec("imagefolder", root=str(tree), resolution=16, seed=1, loader="memory"))
    assert torch.equal(streamed.train_y, in_memory.train_y) and torch.equal(streamed.val_y, in_memory.val_y)
    assert torch.equal(streamed.test_y, in_memory.test_y)
    assert torch.bincount(streamed.val_y).tolist() == [PER_CLASS // 10] * CLASSES
    assert not set(streamed.train_index.tolist()) & set(streamed.val_index.tolist())
    assert torch.equal(stream(tree, seed=1).val_index, streamed.val_index)
    assert not torch.equal(stream(tree, seed=2).val_index, streamed.val_index)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_fraction_keeps_the_same_share_of_every_class(tree, fraction):
    data = stream(tree, fraction=fraction, val_fraction=0.0)
    assert torch.bincount(data.train_y).tolist() == [round(PER_CLASS * fraction)] * CLASSES
    assert len(data.val_y) == 0 and len(data.test_y) == CLASSES * TEST_PER_CLASS


def test_evaluation_batches_are_deterministic_for_any_worker_count(tree):
    def images(workers):
        return torch.cat([x for x, _ in stream(tree, workers=workers).eval_batches("val", 64)])

    first = images(2)
    assert first.shape == (40, 3, 32, 32)
    assert torch.equal(first, images(2)) and torch.equal(first, images(0))
    labels = torch.cat([y for _, y in stream(tree).eval_batches("test", 64)])
    assert torch.equal(labels, torch.arange(CLASSES).repeat_interleave(TEST_PER_CLASS))


def test_training_batches_are_seeded_per_sample_and_every_file_comes_once(tree):
    def epoch(workers, seed):
        loader = stream(tree, workers=workers).train_batches(50, augment="crop+flip", seed=seed)
        return [(x, y) for x, y in loader]

    a, b, c = epoch(2, 3), epoch(0, 3), epoch(2, 4)
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    labels = torch.cat([y for _, y in a])
    assert torch.equal(labels.sort().values, stream(tree).train_y.sort().values)
    rng = torch.get_rng_state()
    epoch(0, 3)  # read in this process: the training process's random stream is untouched
    assert torch.equal(rng, torch.get_rng_state())


def test_the_imagenet_pipeline():
    train_steps = [type(t).__name__ for t in folder_transform(224, 3, "crop+flip").transforms]
    assert train_steps == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    resize, crop, *_ = folder_transform(224, 3, "none").transforms
    assert resize.size == 256 and round(96 * EVAL_RESIZE) == 110 and crop.size == (224, 224)
    # a white image comes out as ImageNet's normalised white
    white = folder_transform(32, 3, "none")(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert white.shape == (3, 32, 32)
    assert torch.allclose(
        white[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_resume_on_streamed_data_matches_uninterrupted_training(tree):
    data = stream(tree, fraction=0.25, workers=0)  # per-sample seeds: the worker count does not matter
    config = recipe(epochs=2, seed=5)
    straight = train(small_model(), data, config)
    states = []
    train(small_model(), data, config, on_checkpoint=states.append)
    resumed = train(small_model(), data, config, resume=states[0])
    assert resumed.final.train_loss == straight.final.train_loss


def test_one_channel_streamed(tree):
    x, _ = next(iter(stream(tree, channels=1).train_batches(8, augment="crop", seed=0)))
    assert x.shape == (8, 1, 32, 32)


def decoding(data):
    """The files `data`'s training folder decodes, in the order it decodes them (read in this process)."""
    folder, opened = data.listing.train, []
    read = folder.loader

    def recording(path):
        opened.append(path)
        return read(path)

    folder.loader = recording
    return opened


def sharded_epoch(tree, batch_size, shard, sharded_reader=True):
    """One epoch of one DDP worker: the files it decoded, its batches, and its generator's state after."""
    data = stream(tree, workers=0)
    opened = decoding(data)
    if sharded_reader:
        loader = data.train_batches(batch_size, augment="crop+flip", seed=7, shard=shard)
    else:  # the whole epoch read, the other workers' batches skipped (the in-memory rule)
        loader = ShardedBatches(data.train_batches(batch_size, augment="crop+flip", seed=7), shard)
    batches = [(x, y) for x, y in loader]
    assert len(batches) == len(loader)
    return opened, batches, loader.generator.get_state()


@pytest.mark.parametrize("batch_size", [18, 40])
def test_each_ddp_worker_decodes_only_its_own_share_of_the_epoch(tree, batch_size):
    """The two workers' decoded files are disjoint and together the epoch's whole rounds of batches; each worker
    gets the very batches (order and per-sample augmentation) that skipping the other's batches gives."""
    files = {path for path, _ in stream(tree).listing.train.samples}
    epoch_files = len(stream(tree).train_y)  # 360: 20 batches of 18, or 9 of 40 (the 9th in no whole round)
    steps = -(-epoch_files // batch_size) // 2
    (first, first_batches, first_state), (second, second_batches, second_state) = (
        sharded_epoch(tree, batch_size, Shard(rank, 2)) for rank in (0, 1)
    )
    assert len(first_batches) == len(second_batches) == steps
    assert len(first) == len(second) == steps * batch_size  # each decoded its own share, no more
    assert not set(first) & set(second) and len(set(first)) == len(first)
    shared = set(first) | set(second)
    assert shared <= files and len(shared) == min(epoch_files, 2 * steps * batch_size)
    for rank, got in enumerate((first_batches, second_batches)):
        opened, want, state = sharded_epoch(tree, batch_size, Shard(rank, 2), sharded_reader=False)
        assert len(opened) == epoch_files  # the rule it replaces decodes the whole epoch on every worker
        assert all(
            torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(got, want, strict=True)
        )
        assert torch.equal(state, first_state)  # the next epoch's draw is the same on every rank
    assert torch.equal(first_state, second_state)
