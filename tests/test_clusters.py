"""The files under clusters/ and the RayJob that `engine.submit.k8s` writes, checked offline.

Launcher configs are checked as `ray up` checks them (Ray's own schema, after Ray fills in its
defaults). KubeRay manifests are checked against the RayCluster and RayJob CRDs' OpenAPI
schemas from ../shared/kuberay-crds/, made strict: the API server refuses an unknown field
(kubectl's strict field validation), where jsonschema alone would let it through.
"""

from __future__ import annotations

import copy
import functools
import json
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.submit.k8s import kubernetes_name, rayjob_manifest, rayjob_yaml
from sweeps import SweepError, load_sweep

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = REPO / "clusters"
CRDS = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
DEMO = REPO / "sweeps" / "examples" / "demo.yaml"
PYTHON_SWEEP = REPO / "sweeps" / "examples" / "full_finetune.py"
STATIC_JOB = CLUSTERS / "kuberay" / "rayjob-gpu.yaml"
STATIC_CLUSTER = CLUSTERS / "kuberay" / "raycluster-gpu.yaml"
IMAGE = "ghcr.io/OWNER/raysoup:latest"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB of YAML each

# What validates each kind of document found under clusters/.
LAUNCHER, CHECKED_KINDS = "launcher config", {"RayCluster", "RayJob", "ConfigMap"}


def kind_of(doc) -> str:
    """A launcher config (it names a provider), or a Kubernetes object's kind."""
    if isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc:
        return LAUNCHER
    return doc.get("kind", "unknown") if isinstance(doc, dict) else "not a mapping"


def cluster_documents() -> list[tuple[str, dict]]:
    """(file and index, document) for every YAML document under clusters/."""
    files = sorted([*CLUSTERS.rglob("*.yaml"), *CLUSTERS.rglob("*.yml")])
    return [
        (f"{path.relative_to(CLUSTERS)}#{i}", doc)
        for path in files
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc is not None
    ]


def documents_of(*kinds: str) -> list:
    return [
        pytest.param(doc, id=name) for name, doc in cluster_documents() if kind_of(doc) in kinds
    ]


@functools.cache
def crd_schema(kind: str) -> dict:
    """The strict v1 OpenAPI schema of a KubeRay CRD (skips when the CRDs are absent)."""
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(f"no KubeRay CRD at {path} (../shared/kuberay-crds/ is absent)")
    crd = yaml.load(path.read_text(), Loader=LOADER)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def strict(node):
    """Forbid unknown keys wherever the schema lists its keys and keeps no unknown fields."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def check_kuberay(doc: dict) -> None:
    jsonschema.Draft7Validator(crd_schema(doc["kind"])).validate(doc)


def check_config_map(doc: dict) -> None:
    assert doc["apiVersion"] == "v1" and doc["kind"] == "ConfigMap"
    assert isinstance(doc["metadata"]["name"], str) and doc["metadata"]["name"]
    assert isinstance(doc["data"], dict)
    assert all(isinstance(value, str) for value in doc["data"].values())


def check_launcher(config: dict) -> None:
    """As `ray up` does: Ray's schema on the file, then on the config with Ray's defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # Ray loads slowly

    schema_file = Path(sys.modules["ray.autoscaler"].__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_file.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))


def write_sweep(folder: Path, **changes) -> Path:
    """The demo sweep with absolute data paths (the pod can follow them), plus `changes`."""
    data = yaml.safe_load(DEMO.read_text())
    data["tasks"] = {
        task: {key: str((DEMO.parent / path).resolve()) for key, path in files.items()}
        for task, files in data["tasks"].items()
    }
    data.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def manifest(sweep_file: Path, **options) -> list[dict]:
    """`rayjob_manifest` with the image given, warnings about relative paths let through."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return rayjob_manifest(sweep_file, **{"image": IMAGE, **options})


# --- the files under clusters/ ---


def test_every_yaml_under_clusters_is_of_a_kind_that_a_test_validates():
    found = {name: kind_of(doc) for name, doc in cluster_documents()}
    unchecked = {
        name: kind for name, kind in found.items() if kind not in {LAUNCHER, *CHECKED_KINDS}
    }
    assert not unchecked, f"no test validates these documents under clusters/: {unchecked}"
    assert {LAUNCHER, "RayCluster", "RayJob"} <= set(found.values())


@pytest.mark.parametrize("config", documents_of(LAUNCHER))
def test_launcher_config_validates_against_rays_schema(config):
    check_launcher(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    types = config["available_node_types"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) > 0 and t["min_workers"] == 0 for t in workers)


@pytest.mark.parametrize("config", documents_of(LAUNCHER))
def test_launcher_check_refuses_a_misspelt_key(config):
    config = copy.deepcopy(config)
    node_type = config["available_node_types"][config["head_node_type"]]
    node_type["min_worker"] = node_type.pop("min_workers", 0)
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        check_launcher(config)


@pytest.mark.parametrize("doc", documents_of("RayCluster", "RayJob"))
def test_kuberay_manifest_validates_against_its_crd(doc):
    check_kuberay(doc)


@pytest.mark.parametrize("doc", documents_of("ConfigMap"))
def test_config_map_holds_a_valid_sweep(doc, tmp_path):
    check_config_map(doc)
    (tmp_path / "sweep.yaml").write_text(doc["data"]["sweep.yaml"])
    assert load_sweep(tmp_path / "sweep.yaml").name


def test_crd_check_refuses_a_misspelt_field():
    job = next(doc for _, doc in cluster_documents() if kind_of(doc) == "RayJob")
    job = copy.deepcopy(job)
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        check_kuberay(job)


def test_static_rayjob_is_the_one_the_generator_writes(tmp_path):
    """The generator, given the static file's sweep and sizes, writes the static file."""
    config_map, job = yaml.safe_load_all(STATIC_JOB.read_text())
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(config_map["data"]["sweep.yaml"])
    cluster, spec = job["spec"]["rayClusterSpec"], job["spec"]
    workers = cluster["workerGroupSpecs"][0]
    worker = workers["template"]["spec"]["containers"][0]
    claim = workers["template"]["spec"]["volumes"][-1]["persistentVolumeClaim"]["claimName"]
    options = {
        "image": worker["image"],
        "storage": shlex.split(spec["entrypoint"])[-1],
        "ttl_seconds": spec["ttlSecondsAfterFinished"],
        "gpu_workers": workers["replicas"],
        "gpus_per_worker": int(worker["resources"]["limits"]["nvidia.com/gpu"]),
        "runs_claim": claim,
    }
    assert manifest(sweep_file, **options) == [config_map, job], (
        "clusters/kuberay/rayjob-gpu.yaml and engine/submit/k8s.py differ; change both"
    )


def test_raycluster_pods_are_the_rayjobs_pods():
    cluster = yaml.safe_load(STATIC_CLUSTER.read_text())["spec"]
    job = list(yaml.safe_load_all(STATIC_JOB.read_text()))[1]["spec"]["rayClusterSpec"]
    assert cluster["workerGroupSpecs"][0]["template"] == job["workerGroupSpecs"][0]["template"]
    heads = [spec["headGroupSpec"] for spec in (cluster, job)]
    assert heads[0]["rayStartParams"] == heads[1]["rayStartParams"]
    containers = [head["template"]["spec"]["containers"][0] for head in heads]
    assert containers[0]["resources"] == containers[1]["resources"]
    assert cluster["enableInTreeAutoscaling"] is True


# --- the RayJob generator ---

OPTIONS = {
    "defaults": {},
    "storage and pip": {"storage": "/mnt/my runs", "pip": ["lm-eval==0.4.13", "rich>=14"]},
    "everything": {
        "storage": "/mnt/runs",
        "namespace": "ml-team",
        "ttl_seconds": 0,
        "gpu_workers": 3,
        "gpus_per_worker": 8,
        "pip": ["lm-eval==0.4.13"],
        "runs_claim": "raysoup-runs",
    },
}


def test_the_sweeps_submit_section_reaches_the_rayjobs_runtime_env(tmp_path):
    submit = {"pip": ["rich>=14"], "env_vars": {"HF_HOME": "/mnt/runs/hf"}}
    sweep_file = write_sweep(tmp_path, submit=submit)
    job = manifest(sweep_file, pip=["lm-eval==0.4.13"])[1]
    check_kuberay(job)
    runtime = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime == {"pip": ["rich>=14", "lm-eval==0.4.13"], "env_vars": submit["env_vars"]}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_generated_rayjob_for_the_demo_validates(options):
    config_map, job = manifest(DEMO, **options)
    check_config_map(config_map)
    check_kuberay(job)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == options.get("ttl_seconds", 600)
    assert ("runtimeEnvYAML" in spec) == ("pip" in options)
    if "pip" in options:
        assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"pip": options["pip"]}
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    sweep_volume = next(v for v in head["volumes"] if "configMap" in v)
    assert sweep_volume["configMap"]["name"] == config_map["metadata"]["name"]
    for doc in (config_map, job):
        assert doc["metadata"].get("namespace") == options.get("namespace")


@pytest.mark.parametrize(
    ("options", "command"),
    [
        ({}, ["raysoup", "run", "/etc/raysoup/sweep.yaml"]),
        (
            {"runs_claim": "runs"},
            ["raysoup", "run", "/etc/raysoup/sweep.yaml", "--storage", "/mnt/runs"],
        ),
        (
            {"storage": "/mnt/my runs; rm -rf /"},
            ["raysoup", "run", "/etc/raysoup/sweep.yaml", "--storage", "/mnt/my runs; rm -rf /"],
        ),
    ],
)
def test_entrypoint_runs_the_mounted_sweep(options, command):
    job = manifest(DEMO, **options)[1]
    assert shlex.split(job["spec"]["entrypoint"]) == command


@pytest.mark.parametrize("gpus", [1, 4])
def test_worker_pods_get_the_gpus_and_the_head_none(gpus):
    cluster = manifest(DEMO, gpu_workers=2, gpus_per_worker=gpus)[1]["spec"]["rayClusterSpec"]
    group = cluster["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(gpus)
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head


@pytest.mark.parametrize(
    ("sweep_name", "expected"),
    [("demo", "demo"), ("My_Sweep.v2", "my-sweep-v2"), ("a" * 47, "a" * 47)],
)
def test_sweep_names_become_kubernetes_names(sweep_name, expected, tmp_path):
    config_map, job = manifest(write_sweep(tmp_path, name=sweep_name))
    assert kubernetes_name(sweep_name) == expected
    assert job["metadata"]["name"] == expected
    assert config_map["metadata"]["name"].startswith(expected)


@pytest.mark.parametrize("sweep_name", ["2024-run", "run_", "a" * 48])
def test_names_kuberay_refuses_are_refused_naming_the_field(sweep_name, tmp_path):
    with pytest.raises(SweepError, match=r"^name: .*rename the sweep"):
        manifest(write_sweep(tmp_path, name=sweep_name))


@pytest.mark.parametrize("kind", ["yaml", "python"])
def test_sweep_in_the_config_map_loads_as_the_original(kind, tmp_path):
    sweep_file = write_sweep(tmp_path) if kind == "yaml" else PYTHON_SWEEP
    text = manifest(sweep_file)[0]["data"]["sweep.yaml"]
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "sweep.yaml").write_text(text)
    assert load_sweep(pod / "sweep.yaml") == load_sweep(sweep_file)


def test_a_yaml_sweep_goes_in_as_written():
    assert manifest(DEMO)[0]["data"]["sweep.yaml"] == DEMO.read_text()


def test_paths_relative_to_the_sweep_file_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match=r"tasks\.add\.train.*alone in /etc/raysoup/"):
        rayjob_manifest(DEMO, image=IMAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rayjob_manifest(write_sweep(tmp_path), image=IMAGE)


def test_no_environment_value_reaches_the_manifest(monkeypatch, tmp_path):
    secrets = {
        "RAY_AUTH_TOKEN": "secret-123",
        "WANDB_API_KEY": "wandb-secret-456",
        "HF_TOKEN": "hf_secret789",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-000",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    options = OPTIONS["everything"]
    text = rayjob_yaml(write_sweep(tmp_path), image=IMAGE, **options)
    assert not [key for key, value in secrets.items() if value in text]


def test_yaml_stream_is_the_manifest(tmp_path):
    sweep_file = write_sweep(tmp_path)
    text = rayjob_yaml(sweep_file, image=IMAGE, pip=["rich>=14"])
    assert list(yaml.safe_load_all(text)) == manifest(sweep_file, pip=["rich>=14"])
    assert text.count("\n---\n") == 1
    assert text == rayjob_yaml(sweep_file, image=IMAGE, pip=["rich>=14"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"trian": {"lr": 0.1}}, "trian"),
        ({"resources": {"gpus_per_trial": -1}}, "resources.gpus_per_trial"),
        ({"train": {"lr": "fast"}}, "train.lr"),
    ],
)
def test_a_wrong_sweep_file_fails_naming_the_field(changes, field, tmp_path):
    with pytest.raises(SweepError, match=rf"\n  {field}: "):
        manifest(write_sweep(tmp_path, **changes))


def test_a_missing_sweep_file_fails(tmp_path):
    with pytest.raises(SweepError, match="no such sweep file"):
        manifest(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("changes", "options", "field"),
    [
        ({"resources": {"gpus_per_trial": 2}}, {}, "resources.gpus_per_trial"),
        ({"resources": {"cpus_per_trial": 9}}, {}, "resources.cpus_per_trial"),
        ({"evaluate": {"gpus_per_actor": 2}}, {}, "evaluate.gpus_per_actor"),
        ({"resources": {"workers": 2, "gpus_per_worker": 2}}, {}, "resources.gpus_per_worker"),
        (
            {"resources": {"workers": 4, "gpus_per_trial": 1}},
            {"gpu_workers": 2},
            "resources.workers",
        ),
    ],
)
def test_a_process_larger_than_the_pods_is_refused(changes, options, field, tmp_path):
    with pytest.raises(SweepError, match=rf"^{field}: "):
        manifest(write_sweep(tmp_path, **changes), **options)


def test_a_process_that_fits_is_accepted(tmp_path):
    sweep = write_sweep(tmp_path, resources={"workers": 4, "gpus_per_trial": 1})
    assert manifest(sweep, gpu_workers=2, gpus_per_worker=2)[1]["kind"] == "RayJob"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"gpu_workers": 0}, "gpu_workers"),
        ({"gpus_per_worker": 1.5}, "gpus_per_worker"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"namespace": "ML_team"}, "namespace"),
        ({"runs_claim": "runs/claim"}, "runs_claim"),
        ({"image": " "}, "image"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, option):
    with pytest.raises(ValueError, match=rf"^{option}: "):
        manifest(DEMO, **options)


def test_the_generator_imports_no_ray():
    code = "import sys, engine.submit.k8s; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_cli_writes_a_rayjob_and_names_a_bad_option(tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    out = tmp_path / "job.yaml"
    runner = CliRunner()
    args = ["k8s", "rayjob", str(DEMO), "--image", "registry.example/raysoup:1", "--out", str(out)]
    done = runner.invoke(app, [*args, "--runs-claim", "runs", "--gpu-workers", "2"])
    assert done.exit_code == 0, done.output
    # The demo names its data relative to its file: the command says so, as a warning line.
    assert "warning:" in done.output and "relative to the sweep file" in done.output
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out.read_text())]
    assert kinds == ["ConfigMap", "RayJob"]
    job = list(yaml.safe_load_all(out.read_text()))[1]
    assert "--storage /mnt/runs" in job["spec"]["entrypoint"]
    refused = runner.invoke(app, [*args, "--gpu-workers", "0"])
    assert refused.exit_code == 2
    assert "gpu_workers" in refused.output
