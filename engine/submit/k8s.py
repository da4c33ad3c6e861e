"""KubeRay manifests for a sweep: a ConfigMap that holds the sweep file, and a RayJob that runs
`raysoup run` on a Ray cluster made for it and deleted once the sweep ends.

The RayJob built here is the one in `clusters/kuberay/rayjob-gpu.yaml` (a test builds that
file's RayJob from the sweep in its ConfigMap and checks that the two are equal): a CPU head
that runs the sweep's driver, and a fixed group of GPU worker pods.

No secret goes into a manifest, and the job needs none from this machine: KubeRay's submitter
is a Kubernetes Job that runs `ray job submit` inside the cluster, against the head's service.
Ray's token authentication stays off in the pods unless `rayClusterSpec.authOptions` turns it
on (KubeRay 1.5.1+): `mode: token` has the operator create a Secret holding a random token and
give it to every Ray container and to the submitter; `secretName` names a Secret of the user's
own (key `auth_token`) instead. Tokens for the model hub or W&B reach the pods as environment
variables from an optional Secret, `raysoup-env`, that the user creates with kubectl.

Import-light on purpose (yaml and `sweeps`, no Ray): writing a manifest needs no cluster.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import yaml

from engine.submit.paths import local_paths
from sweeps import Sweep, SweepError, dump_sweep, load_sweep

RAY_VERSION = "2.60.0"  # the Ray raysoup pins; the image must hold the same
SWEEP_DIR = "/etc/raysoup"
RUNS_DIR = "/mnt/runs"
ENV_SECRET = "raysoup-env"
HEAD_RESOURCES = {"cpu": "4", "memory": "16Gi"}
CPUS_PER_GPU, GIB_PER_GPU = 8, 64
HEAD_PORTS = [
    {"containerPort": 6379, "name": "gcs-server"},
    {"containerPort": 8265, "name": "dashboard"},
    {"containerPort": 10001, "name": "client"},
]
# KubeRay names a RayJob's cluster `<job name>-xxxxx`, refuses cluster names over 53
# characters, and wants a job's name to be a DNS-1035 label (a letter first).
MAX_NAME = 47
JOB_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def rayjob_manifest(
    sweep_file: Path,
    *,
    image: str,
    storage: str | None = None,
    namespace: str | None = None,
    ttl_seconds: int = 600,
    gpu_workers: int = 1,
    gpus_per_worker: int = 1,
    pip: list[str] | None = None,
    runs_claim: str | None = None,
) -> list[dict]:
    """The ConfigMap that holds the sweep file (key `sweep.yaml`), then the RayJob that runs it.

    `image` must hold raysoup and Ray 2.60.0; `pip` adds packages through the job's runtime
    environment. `runs_claim` names a ReadWriteMany PersistentVolumeClaim mounted at
    /mnt/runs in every pod, where the run directory goes unless `storage` says otherwise: the
    nodes of a sweep must all see its run directory, and a pod's own disk goes with the cluster.

    Raises `SweepError` (naming the field) for a sweep file that does not validate, a name that
    KubeRay refuses, or a trial or evaluation actor larger than a worker pod; warns about paths
    relative to the sweep file, which the pod cannot follow.
    """
    sweep_file = Path(sweep_file)
    sweep = load_sweep(sweep_file)
    name = kubernetes_name(sweep.name)
    _check_options(image, namespace, runs_claim, ttl_seconds, gpu_workers, gpus_per_worker)
    _check_process_fits(sweep, gpus_per_worker)
    _check_group_fits(sweep, gpu_workers, gpus_per_worker)
    text = _sweep_text(sweep_file, sweep)
    _warn_relative_paths(sweep_file, sweep)
    sweep_map = f"{name}-sweep"
    cluster = _cluster_spec(image, gpu_workers, gpus_per_worker, runs_claim, sweep_map)
    entrypoint = _entrypoint(storage or (RUNS_DIR if runs_claim else None))
    named = sweep.submit
    runtime: dict[str, Any] = {}
    if (named and named.pip) or pip:
        runtime["pip"] = (named.pip if named else []) + list(pip or [])
    if named and named.env_vars:
        runtime["env_vars"] = dict(named.env_vars)
    job = _rayjob(name, namespace, entrypoint, ttl_seconds, runtime, cluster)
    return [_config_map(sweep_map, namespace, text), job]


def rayjob_yaml(sweep_file: Path, **options: Any) -> str:
    """`rayjob_manifest(sweep_file, **options)` as one YAML stream, `---` between documents,
    keys in the order the manifests are built (the sweep file as a `|` block)."""
    return yaml.dump_all(
        rayjob_manifest(sweep_file, **options), Dumper=_BlockDumper, sort_keys=False
    )


def kubernetes_name(sweep_name: str) -> str:
    """The sweep's name as a RayJob's name: lower case, with '_' and '.' made '-'.

    Raises `SweepError` naming the `name` field when KubeRay would still refuse it.
    """
    name = sweep_name.lower().replace("_", "-").replace(".", "-")
    if len(name) > MAX_NAME or not JOB_NAME.fullmatch(name):
        raise SweepError(
            f"name: {sweep_name!r} becomes {name!r}, which KubeRay refuses as a RayJob name: "
            f"at most {MAX_NAME} lower-case letters, digits and '-', starting with a letter "
            "and ending with a letter or a digit; rename the sweep"
        )
    return name


def _cluster_spec(
    image: str, gpu_workers: int, gpus_per_worker: int, runs_claim: str | None, sweep_map: str
) -> dict:
    """The RayJob's `rayClusterSpec`. No autoscaler: the cluster is the job's own, and KubeRay
    submits the job once every pod is ready, so raysoup, which sizes worker groups and
    evaluation actors from the GPUs present when each stage starts, sees all of them."""
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": _head_group(image, runs_claim, sweep_map),
        "workerGroupSpecs": [_worker_group(image, gpu_workers, gpus_per_worker, runs_claim)],
    }


def _check_options(
    image: str,
    namespace: str | None,
    runs_claim: str | None,
    ttl_seconds: int,
    gpu_workers: int,
    gpus_per_worker: int,
) -> None:
    if not image.strip():
        raise ValueError("image: empty; give an image that holds raysoup")
    for key, value in (("namespace", namespace), ("runs_claim", runs_claim)):
        if value is not None and (len(value) > 63 or not LABEL.fullmatch(value)):
            raise ValueError(f"{key}: {value!r} is not a Kubernetes name (RFC 1123 label)")
    for key, value, least in (
        ("ttl_seconds", ttl_seconds, 0),
        ("gpu_workers", gpu_workers, 1),
        ("gpus_per_worker", gpus_per_worker, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{key}: {value!r} is not a whole number >= {least}")


def _asks(sweep: Sweep) -> list[tuple[str, str, float]]:
    """(field, resource, amount) that one process of the sweep asks of one node: a trial (or
    one worker of a trial's group) and an evaluation actor."""
    res, ev = sweep.resources, sweep.evaluate
    cpu, gpu = "cpus_per_trial", "gpus_per_trial"
    if sweep.uses_worker_group():
        cpu = "cpus_per_worker" if res.cpus_per_worker is not None else cpu
        gpu = "gpus_per_worker" if res.gpus_per_worker is not None else gpu
    return [
        (f"resources.{cpu}", "CPU", getattr(res, cpu)),
        (f"resources.{gpu}", "GPU", getattr(res, gpu)),
        ("evaluate.cpus_per_actor", "CPU", ev.cpus_per_actor),
        ("evaluate.gpus_per_actor", "GPU", ev.gpus_per_actor),
    ]


def _check_process_fits(sweep: Sweep, gpus_per_worker: int) -> None:
    """A process larger than any pod is never placed: Ray would wait for it for ever while
    the GPU pods are billed."""
    pod = {"CPU": CPUS_PER_GPU * gpus_per_worker, "GPU": gpus_per_worker}
    for field, kind, amount in _asks(sweep):
        if amount > pod[kind]:
            raise SweepError(
                f"{field}: {amount:g} {kind} for one process, more than a worker pod holds "
                f"({pod['CPU']} CPU, {pod['GPU']} GPU with gpus_per_worker={gpus_per_worker})"
            )


def _check_group_fits(sweep: Sweep, gpu_workers: int, gpus_per_worker: int) -> None:
    """A trial's worker group larger than all the pods together fails before training."""
    if not sweep.uses_worker_group():
        return
    res = sweep.resources
    pods = {"CPU": CPUS_PER_GPU * gpus_per_worker, "GPU": gpus_per_worker}
    for kind, each in (("CPU", res.worker_cpus()), ("GPU", res.worker_gpus())):
        if res.workers * each > gpu_workers * pods[kind]:
            raise SweepError(
                f"resources.workers: a trial's {res.workers} workers need {res.workers * each:g}"
                f" {kind}, more than {gpu_workers} worker pod(s) of {pods[kind]} {kind} hold"
            )


def _sweep_text(sweep_file: Path, sweep: Sweep) -> str:
    """The YAML the pod reads: a YAML file as written (its comments kept); a Python file's
    sweep dumped, since the pod reads `sweep.yaml` and runs no code from a ConfigMap."""
    return dump_sweep(sweep) if sweep_file.suffix == ".py" else sweep_file.read_text()


def _warn_relative_paths(sweep_file: Path, sweep: Sweep) -> None:
    """Warn about paths written relative to the sweep file (data files, a DeepSpeed JSON
    file): in the pod the file is alone in /etc/raysoup/. (A Python sweep file goes into the
    ConfigMap dumped, its paths already absolute.)"""
    if sweep_file.suffix == ".py":
        return
    fields = [found.field for found in local_paths(sweep_file, sweep) if found.relative]
    if fields:
        warnings.warn(
            f"{sweep_file}: {', '.join(fields)}: relative to the sweep file, but in the pod the "
            f"file is alone in {SWEEP_DIR}/; use paths that exist in the image or on the runs "
            "volume, or hub names",
            UserWarning,
            stacklevel=3,
        )


def _entrypoint(storage: str | None) -> str:
    command = f"raysoup run {SWEEP_DIR}/sweep.yaml"
    return f"{command} --storage {shlex.quote(storage)}" if storage else command


def _metadata(name: str, namespace: str | None) -> dict:
    """The label finds the ConfigMap again: nothing owns it, so it outlives its RayJob."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/part-of": "raysoup"}
    return metadata


def _config_map(name: str, namespace: str | None, text: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace),
        "data": {"sweep.yaml": text},
    }


def _rayjob(
    name: str, namespace: str | None, entrypoint: str, ttl: int, runtime: dict, cluster
) -> dict:
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        # The cluster is the sweep's own: delete it, GPU pods included, `ttl` seconds after
        # the sweep ends (the run directory stays on the runs volume).
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl,
    }
    if runtime:  # the sweep's `submit` section (pip, env_vars) and `--pip`
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime, sort_keys=False)
    spec["rayClusterSpec"] = cluster
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(name, namespace),
        "spec": spec,
    }


def _head_group(image: str, runs_claim: str | None, sweep_map: str) -> dict:
    volumes, mounts = _volumes(runs_claim, sweep_map)
    container = _container("ray-head", image, HEAD_RESOURCES, mounts, ports=HEAD_PORTS)
    return {
        # No Ray task or actor on the head: its CPUs and memory are for Ray's control plane
        # and the sweep's driver, and trials, merges and evaluation go to the GPU pods.
        "rayStartParams": {"num-cpus": "0"},
        "template": {"spec": {"containers": [container], "volumes": volumes}},
    }


def _worker_group(image: str, replicas: int, gpus: int, runs_claim: str | None) -> dict:
    volumes, mounts = _volumes(runs_claim)
    resources = {
        "cpu": str(CPUS_PER_GPU * gpus),
        "memory": f"{GIB_PER_GPU * gpus}Gi",
        "nvidia.com/gpu": str(gpus),
    }
    spec = {
        # GPU node pools are often tainted so that only pods that ask for GPUs land there.
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [_container("ray-worker", image, resources, mounts)],
        "volumes": volumes,
    }
    return {
        "groupName": "gpu",
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        # KubeRay passes the container's CPU, memory and GPU limits to `ray start`.
        "rayStartParams": {},
        "template": {"spec": spec},
    }


def _container(
    name: str, image: str, resources: dict, mounts: list[dict], ports: list | None = None
) -> dict:
    container: dict[str, Any] = {"name": name, "image": image}
    if ports:
        container["ports"] = ports
    return container | {
        # HF_TOKEN, WANDB_API_KEY and the like, from a Secret the user makes; optional, so a
        # sweep that needs none starts without it.
        "envFrom": [{"secretRef": {"name": ENV_SECRET, "optional": True}}],
        # Requests equal to limits: Ray sizes itself from the limits, and the pod is never
        # squeezed below them.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": mounts,
    }


def _volumes(runs_claim: str | None, sweep_map: str | None = None) -> tuple[list, list]:
    """A pod's volumes and its container's mounts of them: /dev/shm in memory (a container's
    own is 64 MB, too small for NCCL and Ray's object store), the sweep file (head only) and
    the shared run directory."""
    volumes: list[dict] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict] = [{"name": "shm", "mountPath": "/dev/shm"}]
    if sweep_map:
        volumes.append({"name": "sweep", "configMap": {"name": sweep_map}})
        mounts.append({"name": "sweep", "mountPath": SWEEP_DIR, "readOnly": True})
    if runs_claim:
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": runs_claim}})
        mounts.append({"name": "runs", "mountPath": RUNS_DIR})
    return volumes, mounts


class _BlockDumper(yaml.SafeDumper):
    """yaml's safe dumper, with multi-line strings (the sweep file, the runtime environment)
    written as `|` blocks, as a person writes them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
