"""Where a run's code comes from: the git commit of the code that runs, and the versions
that matter (torch, Ray, MLflow, Python), as MLflow tags on every run."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]   # the checkout (or install) this code runs from


def code_commit(root: Path = CODE_ROOT) -> str:
    """The commit of the code that runs: its own git checkout (not the sweep file's folder,
    which may lie anywhere), else $GIT_COMMIT (the Docker image has no .git; its build
    passes the commit, see docker/Dockerfile), else "unknown". "-dirty" marks tracked
    files changed since that commit."""
    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""
    top = git("rev-parse", "--show-toplevel")
    if top and Path(top).resolve() == root.resolve():
        commit = git("rev-parse", "HEAD")
        if commit:
            dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
            return commit + ("-dirty" if dirty else "")
    return os.environ.get("GIT_COMMIT", "").strip() or "unknown"


def provenance_tags() -> dict:
    """git commit of the code that runs, and the versions that matter."""
    import mlflow
    import ray
    import torch

    return {"git_commit": code_commit(),
            "version.torch": torch.__version__, "version.ray": ray.__version__,
            "version.mlflow": mlflow.__version__, "version.python": platform.python_version()}
