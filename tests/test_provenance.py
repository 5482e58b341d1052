"""The git_commit tag names the code that ran, wherever the sweep file lies."""
from __future__ import annotations

import subprocess

from orchestrator.run import provenance as tracking


def head(root) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_commit_is_the_codes_own_checkout(monkeypatch):
    monkeypatch.setenv("GIT_COMMIT", "from-the-environment")
    commit = tracking.code_commit()
    assert commit.removesuffix("-dirty") == head(tracking.CODE_ROOT)   # git wins over the env


def test_without_git_the_build_arg_is_used(tmp_path, monkeypatch):
    """The Docker image has no .git: $GIT_COMMIT (set from the build arg) names the commit."""
    (tmp_path / "orchestrator").mkdir()
    monkeypatch.setenv("GIT_COMMIT", "0123abcd")
    assert tracking.code_commit(tmp_path) == "0123abcd"
    monkeypatch.delenv("GIT_COMMIT")
    assert tracking.code_commit(tmp_path) == "unknown"


def test_a_folder_inside_another_repository_is_not_mistaken_for_the_code(tmp_path, monkeypatch):
    """Code installed inside some other git checkout must not take that checkout's commit."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-q", "--allow-empty", "-m", "other"], check=True)
    inner = tmp_path / "site-packages"
    inner.mkdir()
    monkeypatch.setenv("GIT_COMMIT", "image-commit")
    assert tracking.code_commit(inner) == "image-commit"
