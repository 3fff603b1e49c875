"""Shared artifacts through the platform (real Ray, MLflow, torch): trained once per recipe, handed to every
trial that needs it, recorded like a trial, never retrained on resume — and a user's own method file that
declares one."""

import json
import textwrap

import mlflow
import pytest

from widthtune.platform.config import validate_config
from widthtune.platform.runner import execute, read_state, run_experiment
from widthtune.results.store import read_artifacts, read_trials

SPEC = "resnet_cifar:depth=8"

pytestmark = pytest.mark.usefixtures("local_ray")


def config(tmp_path, name, methods, **fields):
    return {
        "name": name,
        "kind": "compare",
        "model": SPEC,
        "data": {"name": "digits", "resolution": 8, "fraction": 0.2},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "augment": "none"},
        "cost_target": {"ratio": {"grid": [0.5, 0.75]}},
        "methods": methods,
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


def test_a_teacher_for_two_targets_and_two_retrain_modes_is_trained_once(tmp_path):
    raw = config(
        tmp_path,
        "teacher-once",
        [{"name": "uniform", "distill": {"teacher": {"multiplier": 1.5}}}],
        retrain={"mode": {"grid": ["scratch-e", "scratch-b"]}},
    )
    directory = run_experiment(validate_config(raw), say=lambda line: None)
    rows = read_trials(directory / "results")
    teachers = [r for r in rows if r["role"] == "artifact"]
    students = [r for r in rows if r["role"] != "artifact"]
    assert len(teachers) == 1 and teachers[0]["status"] == "completed"
    assert len(students) == 4 and all(r["status"] == "completed" for r in students), [
        r["error"] for r in rows
    ]
    (record,) = read_artifacts(directory / "results")
    assert record["kind"] == "trained-model" and record["status"] == "done"
    model = json.loads(record["value_json"])["constants"]["distill.teacher"]
    assert {json.loads(r["params_json"])["distill.teacher"] for r in students} == {model}
    assert {r["retrain"] for r in students} == {"scratch-e", "scratch-b"}
    # recorded in MLflow like a trial, under the experiment's parent run
    state = read_state(directory)
    client = mlflow.MlflowClient(state["tracking"]["uri"])
    runs = client.search_runs(
        [state["tracking"]["experiment_id"]], filter_string="tags.`widthtune.role` = 'artifact'"
    )
    assert len(runs) == 2  # the teacher's training run and the artifact's record
    # resume never retrains a finished artifact
    execute(directory, say=lambda line: None)
    assert len([r for r in read_trials(directory / "results") if r["role"] == "artifact"]) == 1
    assert len(read_artifacts(directory / "results")) == 1


METHOD_FILE = '''
    """A user's method: halves every group of a model, after training a baseline it can read."""

    import torch

    from widthtune.models.widths import Widths
    from widthtune.trainables.artifacts import trained_model
    from widthtune.trainables.method import Method
    from widthtune.trainables.registry import register
    from widthtune.trainables.task import SearchResult


    def artifacts(params, context):
        return {"baseline": trained_model(context, multiplier=params["baseline_width"])}


    def search(task):
        state = torch.load(task.artifacts["baseline"], weights_only=True)
        widths = Widths.base(task.space).scale(0.5)
        return SearchResult(widths, match_target=False, info={"baseline_tensors": len(state)})


    def check(params):
        if not params["baseline_width"] > 0:
            raise ValueError(f"method.baseline_width: {params['baseline_width']!r} is not allowed; choose > 0")


    register(
        Method(
            name="halver",
            summary="half of every group, after a shared baseline",
            search=search,
            defaults={"baseline_width": 1.0},
            check=check,
            artifacts=artifacts,
        )
    )
'''


def test_a_method_file_declares_a_shared_baseline_and_runs_like_a_builtin(tmp_path):
    path = tmp_path / "halver.py"
    path.write_text(textwrap.dedent(METHOD_FILE))
    raw = config(tmp_path, "plugin", [{"name": f"python:{path}"}], seeds=[0, 1])
    with pytest.raises(ValueError, match=r"methods\[halver\]: method.baseline_width: 0 is not allowed"):
        validate_config({**raw, "methods": [{"name": f"python:{path}", "baseline_width": 0}]})
    directory = run_experiment(validate_config(raw), say=lambda line: None)
    rows = read_trials(directory / "results")
    students = [r for r in rows if r["role"] != "artifact"]
    # one baseline per seed (the recipe holds the seed), shared by both cost targets of that seed
    assert len([r for r in rows if r["role"] == "artifact"]) == 2
    assert len(students) == 4 and all(r["status"] == "completed" for r in students), [
        r["error"] for r in rows
    ]
    assert {r["label"] for r in students} == {"halver"}
    assert all(json.loads(r["params_json"])["artifact.baseline"].endswith("model.pt") for r in students)
    assert all(
        w * 2 in (b, b + 1) for r in students for w, b in zip(r["widths"], r["base_widths"], strict=True)
    )


def test_a_failed_artifact_fails_only_the_studies_that_need_it_with_its_reason(tmp_path):
    raw = config(
        tmp_path,
        "teacher-fails",
        [
            {"name": "uniform", "label": "plain"},
            {
                "name": "uniform",
                "label": "student",
                "distill": {"teacher": {"multiplier": 1.5, "train": {"lr": 1e12}}},
            },
        ],
        cost_target={"ratio": 0.5},
    )
    lines: list[str] = []
    directory = run_experiment(validate_config(raw), say=lines.append)
    state = read_state(directory)
    assert state["studies"]["plain"] == "done" and state["studies"]["student"] == "failed"
    (record,) = read_artifacts(directory)
    assert record["status"] == "failed" and "NonFiniteLossError" in record["reason"]
    rows = {r["label"]: r for r in read_trials(directory) if r["role"] != "artifact"}
    assert rows["plain"]["status"] == "completed"
    assert rows["student"]["status"] == "errored" and "NonFiniteLossError" in rows["student"]["error"]
    assert any("study student: not run" in line for line in lines)
    # resume does not try the failed artifact again, and leaves the rest as it is
    execute(directory, say=lambda line: None)
    assert len(read_artifacts(directory)) == 1 and read_state(directory)["studies"]["student"] == "failed"
