"""A tiny transfer study end to end (real Ray, MLflow, torch): proxies, baselines, transferred trials, links."""

import pytest
from mlflow.tracking import MlflowClient

from widthtune.models.cost import CostModel
from widthtune.models.registry import channel_space
from widthtune.models.widths import Widths
from widthtune.platform.config import ConfigError, validate_config
from widthtune.platform.runner import execute, read_state, run_experiment
from widthtune.platform.transfer import plan_transfer
from widthtune.results.store import read_trials
from widthtune.search_spaces.projections import Projection, transfer_widths

TARGET = "resnet_cifar:depth=14,resolution=8"
PROJECTION = {"width": 0.5, "depth": 0.5, "data_fraction": 0.5}


pytestmark = pytest.mark.usefixtures("local_ray")


def transfer_config(tmp_path, **fields):
    return {
        "name": "transfer",
        "kind": "transfer",
        "model": TARGET,
        "data": {"name": "digits", "resolution": 8, "fraction": 0.5},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "augment": "none"},
        "method": {"name": "direct", "space": "stage", "num_samples": 2},
        "cost_target": {"ratio": 0.5},
        "transfer": {"projections": [PROJECTION]},
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


def test_transfer_plan_runs_proxies_then_baselines_then_transfers_on_the_target(tmp_path):
    config = validate_config(transfer_config(tmp_path, transfer={"grid": {"width": [0.25, 0.5]}}))
    studies = plan_transfer(config)
    assert [s.key for s in studies] == [
        "direct-proxy-w0.25",
        "direct-proxy-w0.5",
        "direct-direct",
        "uniform-baseline",
        "direct-transfer",
    ]
    proxy = studies[0].constants
    assert proxy["role"] == "proxy" and "width=0.25" in proxy["model"]
    assert proxy["cost_target.ratio"] == pytest.approx(0.5) and proxy["transfer.overhead_ratio"] == 0.0625
    assert studies[2].constants["model"] == studies[3].constants["model"] != proxy["model"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transfer": None}, "transfer.projections: a transfer experiment needs projections"),
        ({"transfer": {"projections": [{"height": 2}]}}, r"transfer.projections\[0\]: projection.height"),
        (
            {
                "transfer": {"grid": {"depth": [0.5]}},
                "model": "vgg_cifar:depth=11",
                "data": {"name": "digits", "resolution": 32},  # VGG pools 32 px down to 1
            },
            "vgg_cifar models have no depth",
        ),
        (
            {"transfer": {"projections": [PROJECTION], "extrapolation": "stack-first"}},
            "'stack-first' is not allowed",
        ),
        ({"transfer": {"projections": [PROJECTION, PROJECTION]}}, "projections repeat"),
        ({"transfer": {"projections": [PROJECTION], "proxy_train": {"epochs": 0}}}, "train.epochs: 0"),
        ({"method": "uniform"}, "uniform does not optimise widths"),
        (
            {"data": {"name": "digits", "resolution": 16}},
            "data.resolution: 16 differs from the model's resolution=8",
        ),
        ({"kind": "compare"}, "only a kind: transfer experiment takes a transfer section"),
        ({"cost_target": {"ratio": {"grid": [0.3, 0.5]}}}, "cost_target.ratio: a transfer experiment fixes"),
    ],
)
def test_malformed_transfer_configs_name_the_field(tmp_path, changes, message):
    raw = transfer_config(tmp_path)
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_tiny_transfer_study_links_every_target_trial_to_its_proxy(tmp_path):
    directory = run_experiment(validate_config(transfer_config(tmp_path)), say=lambda line: None)
    rows = read_trials(directory / "results")
    by_role = {
        role: [r for r in rows if r["role"] == role] for role in ("proxy", "direct", "baseline", "target")
    }
    assert {k: len(v) for k, v in by_role.items()} == {"proxy": 2, "direct": 2, "baseline": 1, "target": 1}
    assert all(r["status"] == "completed" for r in rows)
    (target,) = by_role["target"]
    proxies = {r["trial_key"]: r for r in by_role["proxy"]}
    source = proxies[target["source_trial_key"]]
    assert source["final_val_acc"] == max(r["final_val_acc"] for r in proxies.values())  # the one handed in
    assert target["source_run_id"] == source["mlflow_run_id"]
    projection = Projection.from_mapping(PROJECTION)
    assert target["projection"] == projection.label == "w0.5-d0.5-f0.5"
    assert target["extrapolation"] == "stack-average-block"
    assert source["projection"] == projection.label and source["model"] == str(projection.model(TARGET))
    assert target["overhead_ratio"] == pytest.approx(projection.overhead_ratio(8)) == 0.0625
    spent = sum(r["train_flops"] + r["search_flops"] for r in proxies.values())
    assert target["overhead_flops"] == pytest.approx(spent) and target["overhead_seconds"] > 0
    # the trained widths are the proxy's, extrapolated and matched to the target's cost
    cost_model = CostModel.from_spec(TARGET)
    proxy_widths = Widths.from_mapping(
        channel_space(source["model"]), dict(zip(source["group_names"], source["widths"], strict=True))
    )
    expected = transfer_widths(proxy_widths, cost_model, 0.5 * cost_model.base().macs)
    assert (
        target["widths"] == list(expected.widths.values) and target["model"] == by_role["direct"][0]["model"]
    )
    assert abs(target["macs"] - 0.5 * cost_model.base().macs) <= 0.005 * 0.5 * cost_model.base().macs

    state = read_state(directory)
    client = MlflowClient(state["tracking"]["uri"])
    runs = {
        r.info.run_id: r for r in client.search_runs([state["tracking"]["experiment_id"]], max_results=100)
    }
    child = runs[target["mlflow_run_id"]]
    assert child.data.tags["mlflow.parentRunId"] == state["tracking"]["parent_run_id"]
    assert child.data.tags["widthtune.role"] == "target"
    assert child.data.tags["widthtune.transfer.source_run_id"] == source["mlflow_run_id"]
    assert child.data.tags["widthtune.transfer.projection"] == "w0.5-d0.5-f0.5"
    assert child.data.tags["widthtune.transfer.extrapolation"] == "stack-average-block"
    source_run = runs[source["mlflow_run_id"]]
    assert source_run.data.tags["widthtune.role"] == "proxy"
    assert source_run.data.tags["mlflow.parentRunId"] == state["tracking"]["parent_run_id"]

    report = (directory / "report" / "report.md").read_text()
    assert "## Width transfer" in report and "w0.5-d0.5-f0.5" in report
    assert (directory / "report" / "transfer_curve.png").is_file()

    # resuming a finished transfer study recomputes nothing: same points, no new trials
    before = state["artifacts"]
    assert [a["recipe"]["kind"] for a in before.values()] == ["transfer-points"]
    after = execute(directory, say=lambda line: None)
    assert after["artifacts"] == before and all(v == "done" for v in after["studies"].values())
    assert sorted(r["trial_key"] for r in read_trials(directory / "results")) == sorted(
        r["trial_key"] for r in rows
    )
