"""A small CIFAR ResNet learns the real handwritten digits to at least 95% test accuracy on the CPU."""

import pytest

from widthtune.models import create_model
from widthtune.training import DataSpec, TrainConfig, load_dataset, train


@pytest.mark.slow
def test_resnet_cifar_reaches_95_percent_on_digits():
    data = load_dataset(DataSpec("digits", resolution=16))
    model = create_model("resnet_cifar:depth=8,num_classes=10", seed=0)
    history = train(
        model, data, TrainConfig(epochs=30, batch_size=64, lr=0.1, schedule="cosine", augment="crop")
    )
    assert history.final.test_acc >= 0.95
    assert history.best("val_acc").val_acc >= 0.95
