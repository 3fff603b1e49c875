"""Cluster templates sized from an experiment's resources: the `ray up` YAML passes Ray's own cluster-config
schema, the KubeRay manifests are `ray.io/v1` RayCluster / RayJob with GPU workers, the shared volume and the
`widthtune run` entry point; bad options are one line and exit status 2."""

import subprocess
import sys

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import validate_config

from widthtune.cluster.templates import TemplateError, render
from widthtune.platform.config import validate_config as validate_experiment

COMMAND = [sys.executable, "-m", "widthtune.cli"]


def experiment(**resources):
    return validate_experiment(
        {
            "name": "wide_run",
            "model": "resnet_cifar:depth=8",
            "data": {"name": "digits", "resolution": 8},
            "method": "uniform",
            "cost_target": {"ratio": 0.5},
            "resources": resources,
            "tracking_uri": "http://mlflow.internal:5000",
        }
    )


def test_ray_up_yaml_passes_rays_cluster_schema_and_holds_one_ddp_trial_per_node():
    text = render("ray-up", experiment(workers=4, cpu_per_worker=2, gpu_per_worker=1), "/abs/exp.yaml")
    launcher = yaml.safe_load(text)
    validate_config(launcher)  # Ray's own check, as `ray up` runs it
    worker = launcher["available_node_types"]["trial_worker"]
    assert worker["resources"]["GPU"] >= 4 and worker["resources"]["CPU"] >= 8
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert launcher["file_mounts"] == {"/home/ray/experiment.yaml": "/abs/exp.yaml"}
    assert "-gpu" in launcher["docker"]["image"]
    assert (
        "MLFLOW_TRACKING_URI=http://mlflow.internal:5000 widthtune run"
        in launcher["metadata"]["widthtune.run"]
    )
    # the schema check is real: a field Ray does not know is refused
    with pytest.raises(jsonschema.ValidationError):
        validate_config({**launcher, "max_workerz": 2})


def test_kuberay_job_mounts_shared_storage_and_runs_the_config():
    documents = list(yaml.safe_load_all(render("kuberay-job", experiment(workers=2, gpu_per_worker=1), "x")))
    claim, config_map, job = documents
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"] == "widthtune run /etc/widthtune/experiment.yaml"
    shipped = yaml.safe_load(config_map["data"]["experiment.yaml"])
    assert (
        shipped["storage"] == "/mnt/widthtune/runs"
        and shipped["tracking_uri"] == "http://mlflow.internal:5000"
    )
    validate_experiment(shipped)  # what the job runs is a valid experiment
    spec = job["spec"]["rayClusterSpec"]
    (group,) = spec["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert group["rayStartParams"] == {"num-cpus": "2", "num-gpus": "2"}
    assert {"name": "storage", "mountPath": "/mnt/widthtune"} in container["volumeMounts"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.internal:5000"} in container["env"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert {"name": "experiment", "configMap": {"name": config_map["metadata"]["name"]}} in head["volumes"]


def test_kuberay_cluster_is_cpu_only_for_a_cpu_trial_and_shares_a_fractional_gpu():
    _, cluster = yaml.safe_load_all(render("kuberay-cluster", experiment(cpu=2), "x", nodes=3))
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu-trials" and group["replicas"] == 3
    assert "nvidia.com/gpu" not in group["template"]["spec"]["containers"][0]["resources"]["limits"]
    _, shared = yaml.safe_load_all(render("kuberay-cluster", experiment(gpu=0.25), "x"))
    assert shared["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] == "1"


def test_template_refuses_an_unknown_kind_and_a_trial_no_node_can_hold(tmp_path):
    with pytest.raises(
        TemplateError, match="--kind 'helm' is not one of: ray-up, kuberay-cluster, kuberay-job"
    ):
        render("helm", experiment(), "x")
    with pytest.raises(TemplateError, match="one trial needs 16 GPUs"):
        render("ray-up", experiment(workers=16, gpu_per_worker=1), "x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(experiment().as_dict()))
    done = subprocess.run(
        [*COMMAND, "cluster", "template", str(path), "--kind", "helm"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        == "widthtune: error: --kind 'helm' is not one of: ray-up, kuberay-cluster, kuberay-job"
    )
    out = tmp_path / "job.yaml"
    done = subprocess.run(
        [*COMMAND, "cluster", "template", str(path), "--kind", "kuberay-job", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())] == [
        "PersistentVolumeClaim",
        "ConfigMap",
        "RayJob",
    ]
