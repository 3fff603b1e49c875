"""Shared test settings: small thread counts so the suite behaves on 2 cores."""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
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
