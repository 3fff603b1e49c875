"""Resuming training from a saved state gives exactly what an uninterrupted run gives."""

import torch

from widthtune.models import create_model
from widthtune.training import DataSpec, TrainConfig, load_dataset, train


def test_resume_from_state_matches_uninterrupted_training():
    data = load_dataset(DataSpec("digits", resolution=8, fraction=0.3))
    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, device="cpu", seed=3)
    straight = create_model("resnet_cifar:depth=8", seed=1)
    full = train(straight, data, config)

    states = []
    first = create_model("resnet_cifar:depth=8", seed=1)
    train(
        first,
        data,
        TrainConfig(**{**config.__dict__, "epochs": 4}),
        on_checkpoint=states.append,
        on_epoch=None,
    )
    halfway = states[1]
    assert halfway.epoch == 2
    resumed_model = create_model("resnet_cifar:depth=8", seed=99)  # weights come from the state
    resumed = train(resumed_model, data, config, resume=halfway)
    assert [r.epoch for r in resumed.records] == [1, 2, 3, 4]
    assert resumed.final.train_loss == full.final.train_loss
    for a, b in zip(straight.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_after_last_epoch_trains_nothing():
    data = load_dataset(DataSpec("digits", resolution=8, fraction=0.2))
    config = TrainConfig(epochs=2, batch_size=64, device="cpu")
    states = []
    train(create_model("resnet_cifar:depth=8"), data, config, on_checkpoint=states.append)
    history = train(create_model("resnet_cifar:depth=8"), data, config, resume=states[-1])
    assert len(history.records) == 2 and history.final == states[-1].records[-1]
