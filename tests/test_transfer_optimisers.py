"""Width transfer with the paper's optimisers: any width optimiser by declaration, at equal cost, end to end."""

import pytest

from widthtune.models.cost import CostModel
from widthtune.platform.config import ConfigError, validate_config
from widthtune.platform.runner import run_experiment
from widthtune.platform.transfer import plan_transfer
from widthtune.results.store import read_trials
from widthtune.search_spaces.projections import Projection
from widthtune.trainables.registry import registered

TARGET = "resnet_cifar:depth=14,resolution=8"
PROJECTION = {"width": 0.5, "depth": 0.5, "data_fraction": 0.5}
SETTINGS = {
    "dmcp": {"arch_lr": 0.1, "random_widths": 1},
    "morphnet": {"strength": 20.0, "lr": 0.2},
    "autoslim": {"n": 1, "calibration_batches": 1, "eval_batches": 1},
}


def transfer_config(tmp_path, method, **fields):
    return {
        "name": f"transfer-{method}",
        "kind": "transfer",
        "model": TARGET,
        "data": {"name": "digits", "resolution": 8, "fraction": 0.5},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "augment": "none"},
        "method": {"name": method, **SETTINGS.get(method, {})},
        "transfer": {"projections": [PROJECTION]},
        "resources": {"cpu": 1},
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


# `given` is left out: its own check asks for a widths vector before transfer's check is reached
@pytest.mark.parametrize("name", sorted(set(registered()) - {"given"}))
def test_every_width_optimiser_is_accepted_by_its_declaration(name, tmp_path):
    method = registered()[name]
    raw = transfer_config(tmp_path, name)
    if method.optimises_widths:
        validate_config(raw)
    else:
        with pytest.raises(ConfigError, match=f"methods: {name} does not optimise widths"):
            validate_config(raw)


def test_without_a_cost_target_every_study_runs_at_the_targets_own_cost(tmp_path):
    config = validate_config(transfer_config(tmp_path, "morphnet"))
    assert config.cost_target == {"ratio": 1.0}
    studies = plan_transfer(config)
    assert {s.constants["cost_target.ratio"] for s in studies} == {1.0}
    proxy = next(s for s in studies if s.constants["role"] == "proxy")
    projection = Projection.from_mapping(PROJECTION)
    built = projection.built_depth_ratio(TARGET)  # 2 blocks per stage -> 1
    assert proxy.constants["transfer.overhead_ratio"] == pytest.approx(0.25 * built * 0.5)


@pytest.mark.slow  # about two minutes each on two cores
@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("method", ["dmcp", "morphnet"])
def test_a_tiny_transfer_study_runs_each_optimiser_end_to_end(tmp_path, method):
    directory = run_experiment(validate_config(transfer_config(tmp_path, method)), say=lambda line: None)
    rows = read_trials(directory / "results")
    assert all(r["status"] == "completed" for r in rows), [r.get("error") for r in rows]
    by_role = {
        role: [r for r in rows if r["role"] == role] for role in ("proxy", "direct", "baseline", "target")
    }
    assert {k: len(v) for k, v in by_role.items()} == {"proxy": 1, "direct": 1, "baseline": 1, "target": 1}
    base = CostModel.from_spec(TARGET).base().macs
    for role in ("direct", "baseline", "target"):  # equal cost: the target's own MACs, within 0.5%
        (row,) = by_role[role]
        assert abs(row["macs"] - base) <= 0.005 * base, (role, row["macs"] / base)
    (proxy,) = by_role["proxy"]
    assert proxy["method"] == method and proxy["search_flops"] > 0
    proxy_base = CostModel.from_spec(proxy["model"]).base().macs
    assert abs(proxy["macs"] - proxy_base) <= 0.01 * proxy_base  # the proxy at its own cost too
    (target,) = by_role["target"]
    assert target["source_trial_key"] == proxy["trial_key"] and target["overhead_flops"] > 0
