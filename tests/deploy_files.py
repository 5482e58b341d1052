"""The deployment files (docker/) and small parsers of them, for the tests of docker/
(tests/test_deploy_*.py): no Docker engine or GPU needed. The Dockerfile's parser is the
image test's own (docker/imagetest/dockerfile.py), so docker/ goes on sys.path."""
from __future__ import annotations

import configparser
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
sys.path.insert(0, str(DOCKER))
from imagetest import dockerfile  # noqa: E402  (docker/imagetest: the image test's package)

DOCKERFILE = dockerfile.DOCKERFILE
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "k8s" / "rayjob.yaml"
K8S_MLFLOW = DOCKER / "k8s" / "mlflow.yaml"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
DEPLOY_FILES = [DOCKERFILE, COMPOSE, RAYJOB, K8S_MLFLOW, RAY_CLUSTER, DOCKER / "README.md"]


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
    return dockerfile.stages()[-1]
