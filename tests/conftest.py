"""Shared test settings: small thread counts so the suite behaves on 2 cores."""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# under pytest-xdist (`make test` runs one test process per core) each process keeps to one thread
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True, scope="session")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(THREADS, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def local_ray():
    """A module's experiments share one local Ray, shut down after the module."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits when the two cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_task():
    """A method's task at its smallest: ResNet-8 on a fifth of digits at 8 px, one epoch, half the MACs."""
    from widthtune.models.cost import CostModel
    from widthtune.models.registry import canonical_spec
    from widthtune.trainables.task import Task
    from widthtune.training import DataSpec, TrainConfig, load_dataset

    spec = "resnet_cifar:depth=8"
    cost_model = CostModel.from_spec(spec)
    return Task(
        model=canonical_spec(spec),
        data=load_dataset(DataSpec("digits", resolution=8, fraction=0.2)),
        train=TrainConfig(epochs=1),
        cost_model=cost_model,
        cost_target=0.5 * cost_model.base().macs,
        seed=0,
    )
