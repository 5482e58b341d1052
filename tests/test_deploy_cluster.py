"""The cluster manifests (KubeRay in docker/k8s/, `ray up`'s docker/ray-cluster.yaml) and
what every deploy file names: sweeps, commands and flags that exist; Ray's own schema."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from deploy_files import (ROOT, RAYJOB, K8S_MLFLOW, RAY_CLUSTER, DEPLOY_FILES, k8s_docs)


# --- cross-references ------------------------------------------------------------------

def test_every_sweep_named_by_a_deploy_file_exists():
    named = set()
    for path in DEPLOY_FILES:
        named |= set(re.findall(r"\bsweeps/[\w.-]+\.ya?ml", path.read_text()))
    assert named, "the deploy files should name the sweeps they run"
    missing = sorted(s for s in named if not (ROOT / s).exists())
    assert not missing, f"named in docker/ but not in the repository: {missing}"


def test_orchestrator_commands_and_flags_used_exist():
    pytest.importorskip("orchestrator", reason="orchestrator package not written yet (issue 3)")
    def help_text(*args):
        out = subprocess.run([sys.executable, "-m", "orchestrator", *args, "--help"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout
    assert {"run", "tables", "plan", "status"} <= set(re.findall(r"\b(run|tables|plan|status)\b", help_text()))
    run_help = help_text("run")
    for flag in ("--yes", "--storage", "--tracking-uri", "--address", "--resources"):
        assert flag in run_help, f"`orchestrator run` has no {flag}, which docker/ uses"



# --- Kubernetes ------------------------------------------------------------------------

def test_k8s_manifests_parse_and_reference_each_other():
    docs = k8s_docs(K8S_MLFLOW) + k8s_docs(RAYJOB)
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    text = yaml.safe_dump_all(docs)
    for claim in re.findall(r"claimName: (\S+)", text):
        assert claim in claims, f"PVC {claim} is used but not defined"
    for host in re.findall(r"@([\w-]+):\d+/", text):          # postgresql://...@host:port/db
        assert host in services, f"no Service {host}"

    rayjob = next(d for d in docs if d["kind"] == "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    import ray
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert re.search(r"python -m orchestrator run sweeps/\S+\.yaml .*--yes", rayjob["spec"]["entrypoint"])

    uris = set(re.findall(r"MLFLOW_TRACKING_URI\W+(http://[\w.-]+:\d+)", text))
    assert uris, "the RayJob must set MLFLOW_TRACKING_URI"
    for uri in uris:
        host, port = re.match(r"http://([\w-]+)[\w.-]*:(\d+)", uri).groups()
        assert host in services, f"{uri}: no Service {host}"
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]

    cluster = rayjob["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu")
               for w in workers for c in w["template"]["spec"]["containers"])
    images = {c["image"] for spec in [cluster["headGroupSpec"]] + workers
              for c in spec["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers should run one image, got {images}"



# --- ray up ----------------------------------------------------------------------------

def ray_cluster_config() -> dict:
    return yaml.safe_load(RAY_CLUSTER.read_text())


def validate_ray_cluster(config: dict) -> None:
    """What `ray up` does before it contacts the cloud: fill defaults, then the schema."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_cluster_config_passes_rays_schema():
    validate_ray_cluster(ray_cluster_config())


def test_ray_schema_check_is_not_vacuous():
    import jsonschema
    config = ray_cluster_config()
    config["docker"]["imagee"] = config["docker"]["image"]
    with pytest.raises(jsonschema.ValidationError):
        validate_ray_cluster(config)


def test_ray_cluster_runs_the_image_on_gpu_workers():
    config = ray_cluster_config()
    assert config["docker"]["image"] == k8s_docs(RAYJOB)[-1]["spec"]["rayClusterSpec"][
        "headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    # The launcher starts the container as `IMAGE bash`: the orchestrator entrypoint must be reset.
    assert any(o.startswith("--entrypoint") for o in config["docker"]["run_options"])
    head = config["head_node_type"]
    gpu_types = [t for name, t in config["available_node_types"].items()
                 if name != head and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "MLFLOW_TRACKING_URI" in " ".join(config[key]), f"{key} must export MLFLOW_TRACKING_URI"
