"""Cluster definitions sized from an experiment's resources: a Ray cluster-launcher YAML (`ray up`, checked with
Ray's own cluster-config schema) and KubeRay `ray.io/v1` RayCluster / RayJob manifests (shared volume for Tune's
storage, the MLflow tracking URI in the environment, `widthtune run` as the entry point)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from widthtune.platform.config import ExperimentConfig

KINDS = ("ray-up", "kuberay-cluster", "kuberay-job")
RAY_VERSION = "2.60.0"
# where the shared volume is mounted in every pod, and the config inside the job's pods
SHARED_MOUNT = "/mnt/widthtune"
CONFIG_MOUNT = "/etc/widthtune"
CONFIG_NAME = "experiment.yaml"
VOLUME_CLAIM = "widthtune-storage"
# the head schedules no trials (it runs the driver, the dashboard and Tune's bookkeeping)
HEAD_CPUS = 4
HEAD_MEMORY = "16Gi"
# AWS instance types by GPUs per node (vCPUs, GPUs); the CPU-only type for trials without GPUs
AWS_GPU_TYPES = ((1, "g5.4xlarge", 16), (4, "g5.12xlarge", 48), (8, "g5.48xlarge", 192))
AWS_CPU_TYPE = ("m5.4xlarge", 16)
AWS_HEAD_TYPE = "m5.2xlarge"


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors: a manifest a person reads and kubectl applies as written."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlainDumper.add_representer(str, _text_block)


class TemplateError(ValueError):
    """A template option outside what is allowed."""


@dataclass(frozen=True)
class NodeShape:
    """One worker node: enough CPUs and GPUs for one trial (all its DDP workers), in whole units."""

    cpus: int
    gpus: int
    memory_gib: int


def node_shape(config: ExperimentConfig) -> NodeShape:
    """A worker node that holds one whole trial (fractional GPUs: several trials share the node's GPU)."""
    cpu, gpu = config.resources.per_trial()
    cpus, gpus = max(1, math.ceil(cpu)), math.ceil(gpu)
    return NodeShape(cpus, gpus, max(4, 4 * cpus))


def _image(image: str | None, gpus: int) -> str:
    return image or f"rayproject/ray:{RAY_VERSION}-py311{'-gpu' if gpus else ''}"


def _shared_storage(config: ExperimentConfig) -> str:
    """Tune's storage in the cluster: the config's URI, or a folder on the shared volume."""
    return config.storage if "://" in config.storage else f"{SHARED_MOUNT}/runs"


def cluster_config(config: ExperimentConfig, tracking_uri: str | None) -> dict[str, Any]:
    """The experiment as the cluster runs it: storage on the shared volume (or the URI), tracking on the server."""
    data = config.as_dict()
    data["storage"] = _shared_storage(config)
    if "://" in config.storage:
        data["local_dir"] = f"{SHARED_MOUNT}/runs"
    uri = tracking_uri or config.tracking_uri
    if uri:
        data["tracking_uri"] = uri
    return data


def ray_up(
    config: ExperimentConfig, nodes: int, image: str | None, tracking_uri: str | None, config_file: str
) -> dict[str, Any]:
    """A Ray cluster-launcher config (AWS; edit region and instance types) whose workers each hold one trial."""
    from ray.autoscaler._private.util import validate_config

    shape = node_shape(config)
    if shape.gpus:
        fitting = [t for t in AWS_GPU_TYPES if t[0] >= shape.gpus and t[2] >= shape.cpus]
        if not fitting:
            raise TemplateError(
                f"resources: one trial needs {shape.gpus} GPUs and {shape.cpus} CPUs, more than one AWS node "
                f"({AWS_GPU_TYPES[-1][1]}) has; lower resources.workers"
            )
        gpus, instance, vcpus = fitting[0]
    else:
        gpus, (instance, vcpus) = 0, AWS_CPU_TYPE
    storage = _shared_storage(config) if "://" in config.storage else config.storage
    env = f"MLFLOW_TRACKING_URI={tracking_uri} " if tracking_uri else ""
    launcher = {
        "cluster_name": f"widthtune-{config.name}".lower().replace("_", "-").replace(".", "-"),
        "max_workers": nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "docker": {"image": _image(image, gpus), "container_name": "ray_container", "pull_before_run": True},
        "provider": {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {
                "resources": {"CPU": 0},
                "node_config": {"InstanceType": AWS_HEAD_TYPE},
            },
            "trial_worker": {
                "min_workers": 0,
                "max_workers": nodes,
                "resources": {"CPU": vcpus, "GPU": gpus} if gpus else {"CPU": vcpus},
                "node_config": {"InstanceType": instance},
            },
        },
        "head_node_type": "head",
        "file_mounts": {f"/home/ray/{CONFIG_NAME}": config_file},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": ["pip install widthtune"],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            "ray start --head --port=6379 --dashboard-host=0.0.0.0 --autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"],
        "metadata": {
            "widthtune.experiment": config.name,
            "widthtune.storage": storage,
            "widthtune.run": f"{env}widthtune run /home/ray/{CONFIG_NAME}",
        },
    }
    validate_config(launcher)
    return launcher


def _env(tracking_uri: str | None) -> list[dict[str, str]]:
    return [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}] if tracking_uri else []


def _container(
    name: str,
    image: str,
    cpus: int,
    gpus: int,
    memory: str,
    env: list,
    mounts: list,
    ports: list | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": dict(limits)},
        "env": env,
        "volumeMounts": mounts,
    }
    if ports:
        container["ports"] = ports
    return container


def ray_cluster_spec(
    config: ExperimentConfig, nodes: int, image: str | None, tracking_uri: str | None, config_map: str | None
) -> dict[str, Any]:
    """The `rayClusterSpec` of a RayCluster or RayJob: a head that runs no trials, a worker group that holds one
    trial per pod, every pod on the shared volume."""
    shape = node_shape(config)
    picture = _image(image, shape.gpus)
    volumes: list[dict[str, Any]] = [
        {"name": "storage", "persistentVolumeClaim": {"claimName": VOLUME_CLAIM}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "storage", "mountPath": SHARED_MOUNT}]
    head_mounts = list(mounts)
    if config_map is not None:
        volumes.append({"name": "experiment", "configMap": {"name": config_map}})
        head_mounts.append({"name": "experiment", "mountPath": CONFIG_MOUNT, "readOnly": True})
    env = _env(tracking_uri)
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    worker_params = {"num-cpus": str(shape.cpus)}
    if shape.gpus:
        worker_params["num-gpus"] = str(shape.gpus)
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {
                "spec": {
                    "containers": [
                        _container(
                            "ray-head", picture, HEAD_CPUS, 0, HEAD_MEMORY, env, head_mounts, head_ports
                        )
                    ],
                    "volumes": volumes,
                }
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu-trials" if shape.gpus else "cpu-trials",
                "replicas": nodes,
                "minReplicas": 0,
                "maxReplicas": nodes,
                "rayStartParams": worker_params,
                "template": {
                    "spec": {
                        "containers": [
                            _container(
                                "ray-worker",
                                picture,
                                shape.cpus,
                                shape.gpus,
                                f"{shape.memory_gib}Gi",
                                env,
                                mounts,
                            )
                        ],
                        "volumes": volumes[:1],
                    }
                },
            }
        ],
    }


def _volume_claim(size: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": VOLUME_CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }


def _kube_name(config: ExperimentConfig) -> str:
    return f"widthtune-{config.name}".lower().replace("_", "-").replace(".", "-")[:50].rstrip("-")


def kuberay_cluster(
    config: ExperimentConfig, nodes: int, image: str | None, tracking_uri: str | None
) -> list[dict[str, Any]]:
    """A shared volume claim and a long-lived RayCluster to `widthtune submit` experiments to."""
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": _kube_name(config)},
        "spec": ray_cluster_spec(config, nodes, image, tracking_uri, None),
    }
    return [_volume_claim("100Gi"), cluster]


def kuberay_job(
    config: ExperimentConfig, nodes: int, image: str | None, tracking_uri: str | None
) -> list[dict[str, Any]]:
    """A shared volume claim, the config as a ConfigMap, and a RayJob that runs `widthtune run` on its own cluster."""
    name = _kube_name(config)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config"},
        "data": {CONFIG_NAME: yaml.safe_dump(cluster_config(config, tracking_uri), sort_keys=False)},
    }
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": f"widthtune run {CONFIG_MOUNT}/{CONFIG_NAME}",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": ray_cluster_spec(config, nodes, image, tracking_uri, f"{name}-config"),
        },
    }
    return [_volume_claim("100Gi"), config_map, job]


def render(
    kind: str,
    config: ExperimentConfig,
    config_file: str,
    nodes: int = 2,
    image: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """The template of `kind` as YAML text (KubeRay: several documents); `config_file` is what `ray up` copies."""
    if kind not in KINDS:
        raise TemplateError(f"--kind {kind!r} is not one of: {', '.join(KINDS)}")
    if nodes < 1:
        raise TemplateError(f"--nodes: {nodes} is not allowed; choose 1 or more")
    uri = tracking_uri or config.tracking_uri
    if kind == "ray-up":
        return yaml.dump(ray_up(config, nodes, image, uri, config_file), Dumper=_PlainDumper, sort_keys=False)
    documents = (kuberay_cluster if kind == "kuberay-cluster" else kuberay_job)(config, nodes, image, uri)
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False)
