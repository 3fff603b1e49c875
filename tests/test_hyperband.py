"""HyperBand goes on when a trial leaves a bracket after its first halving (Tune's own waits forever there)."""

import sys
import threading
import time

import pytest
import ray
from ray import cloudpickle, tune

from widthtune.platform.hyperband import HyperBand

pytestmark = pytest.mark.usefixtures("local_ray")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module

# nine trials over HyperBand's brackets (max_t 9, eta 3: milestones at epochs 1, 3 and 9)
QUALITY = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.15, 0.25, 0.05]


def trainable(config):
    for epoch in range(1, 10):
        if epoch == config["leave_at"]:
            time.sleep(3)  # the others reach the next milestone first and wait there, paused
            tune.report({"epoch": 0, "score": -1.0})  # how a widthtune trial ends on an error of its config
            return
        time.sleep(0.05)
        tune.report({"epoch": epoch, "score": config["q"] + 0.001 * epoch})


def sweep(tmp_path, scheduler, leave_at, timeout=120.0):
    """Each trial's last epoch, by quality; fails the test instead of hanging when the sweep does not end."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={
            "q": tune.grid_search(QUALITY),
            "leave_at": tune.sample_from(lambda spec: leave_at if spec.config.q == QUALITY[0] else 0),
        },
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=None),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    if not ray.is_initialized():  # here: Ray's processes die with the thread that starts them
        ray.init(include_dashboard=False)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(grid=tuner.fit()), daemon=True)
    runner.start()
    runner.join(timeout)
    assert not runner.is_alive(), f"the sweep hung: no end within {timeout:.0f} s"
    grid = outcome["grid"]
    assert all(r.error is None for r in grid)
    return {r.config["q"]: (r.metrics or {}).get("epoch") for r in grid}


def hyperband(cls=HyperBand):
    return cls(time_attr="epoch", metric="score", mode="max", max_t=9, reduction_factor=3)


def test_a_trial_leaving_after_the_first_halving_does_not_leave_the_others_paused(tmp_path):
    epochs = sweep(tmp_path, hyperband(), leave_at=2)
    assert epochs.pop(QUALITY[0]) == 0  # left after its first milestone, while the others went on to the next
    assert set(epochs.values()) == {3, 9}  # every other trial ended at a milestone: stopped, or at max_t


def test_without_a_leaving_trial_it_halves_as_tunes_hyperband_does(tmp_path):
    ours = sweep(tmp_path / "ours", hyperband(), leave_at=0)
    tunes = sweep(tmp_path / "tunes", hyperband(tune.schedulers.HyperBandScheduler), leave_at=0)
    assert ours == tunes
    assert ours[QUALITY[0]] == 9 and min(ours.values()) < 9  # the strongest to max_t; halvings stopped some
