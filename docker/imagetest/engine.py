"""The plumbing: progress lines, every command the test runs (each one's output in a log
file), the tools (apt), the Docker engine (dockerd), images and one compose project."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from .checks import Failed

T0 = time.monotonic()
QUICK = 120                  # s: the limit for a command that only asks the engine something
PROJECT_LABEL = "com.docker.compose.project"
TOOLS = {"docker.io": lambda: shutil.which("dockerd") or os.access("/usr/bin/docker", os.X_OK),
         "docker-compose": lambda: shutil.which("docker-compose"),
         "debootstrap": lambda: shutil.which("debootstrap")}     # apt package: is it there


# --- progress lines ---------------------------------------------------------------------

def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


def step(message: str) -> None:
    print(f"\n==> [{clock(time.monotonic() - T0)}] {message}", flush=True)


def info(message: str) -> None:
    print(f"    {message}", flush=True)


def print_tail(log: Path, n: int = 40) -> None:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    print("\n".join(lines[-n:]), flush=True)


# --- commands ---------------------------------------------------------------------------

def output(*argv: str, quiet_fail: bool = False) -> str | None:
    """A quick command's stdout, stripped. Failed if it fails, or None with quiet_fail."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=QUICK)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{' '.join(argv)}` did not answer within {QUICK} s")
    if r.returncode != 0:
        if quiet_fail:
            return None
        raise Failed(f"`{' '.join(argv)}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip()


def answers(*argv: str) -> bool:
    """Whether a quick command succeeds (e.g. `docker info`: an engine answers)."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=QUICK).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def logged(argv: list[str], log: Path, what: str, *, timeout: float | None = None,
           limit: str = "", tail: int = 40, stdout: bool = False, **kw) -> str:
    """Run a long command with its output in `log` (only its stderr with stdout=True, whose
    stdout is returned). On a failure or past `timeout` s print the log's last `tail` lines
    and raise Failed: `what` failed; `limit` names the setting that sets the timeout."""
    with open(log, "w") as f:
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE if stdout else f, stderr=f, text=True,
                               timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            print_tail(log, tail)
            raise Failed(f"{what}: not done within {timeout:.0f} s ({limit}; log above: {log})")
    if r.returncode != 0:
        print_tail(log, tail)
        raise Failed(f"{what} failed (exit {r.returncode}; log above: {log})")
    return r.stdout if stdout else ""


def streamed(argv: list[str], log: Path, what: str, timeout: float, limit: str) -> str:
    """Run a command showing its output as it goes (indented, `| `) and keeping it in `log`;
    Failed on a non-zero exit or past `timeout` s. Returns the output."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        with open(log, "w") as f:
            for line in proc.stdout:
                f.write(line)
                print(f"    | {line}", end="", flush=True)
        rc = proc.wait()
    finally:
        timed_out = timer.finished.is_set()    # before cancel(): only if the timer fired
        timer.cancel()
        if proc.poll() is None:      # interrupted: do not leave it running
            proc.kill()
    if timed_out:
        raise Failed(f"{what}: not done within {timeout:.0f} s ({limit}; its output is above and in {log})")
    if rc != 0:
        raise Failed(f"{what} exited {rc} (its output is above and in {log})")
    return log.read_text()


# --- the tools and the engine -----------------------------------------------------------

def missing_tools() -> list[str]:
    return [package for package, present in TOOLS.items() if not present()]


def apt_install(packages: list[str], log: Path) -> None:
    if os.geteuid() != 0:
        raise Failed(f"missing {' '.join(packages)}; run as root (it apt-get installs them) or install them")
    if not shutil.which("apt-get"):
        raise Failed(f"missing {' '.join(packages)} and no apt-get: install them by hand")
    logged(["apt-get", "update", "-qq"], log.with_suffix(".update.log"), "apt-get update")
    logged(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], log,
           f"apt-get install {' '.join(packages)}",
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def start_dockerd(log: Path, wait: float = 120) -> subprocess.Popen:
    """Start dockerd in the background (its own session: a Ctrl-C of the test must not stop
    it before the teardown) and wait until it answers."""
    if os.geteuid() != 0:
        raise Failed("no Docker engine answers and this is not root: start dockerd, or run as root")
    if not shutil.which("dockerd"):
        raise Failed("no Docker engine answers and no dockerd: apt-get install docker.io")
    proc = subprocess.Popen(["dockerd"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + wait
    while not answers("docker", "info"):
        if proc.poll() is not None:
            print_tail(log, 20)
            raise Failed(f"dockerd exited (log above: {log})")
        if time.monotonic() > deadline:
            print_tail(log, 20)
            raise Failed(f"dockerd did not answer within {wait:.0f} s (log above: {log})")
        time.sleep(1)
    return proc


def stop_dockerd(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        info(f"dockerd (pid {proc.pid}) still runs 60 s after SIGTERM; leaving it")


def git_commit(root: Path) -> str:
    """HEAD of the checkout, -dirty if tracked files changed (as orchestrator/ tags a checkout)."""
    head = output("git", "-C", str(root), "rev-parse", "HEAD", quiet_fail=True)
    if head is None:
        raise Failed(f"{root} is not a git checkout: set GIT_COMMIT to the commit this code is")
    changed = output("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if changed else head


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status


# --- images -----------------------------------------------------------------------------

def inspect(*names: str) -> list[dict]:
    """`docker inspect` of containers or images, as JSON."""
    return json.loads(output("docker", "inspect", *names))


def image_id(tag: str) -> str | None:
    return output("docker", "image", "inspect", "-f", "{{.Id}}", tag, quiet_fail=True)


def image_size(tag: str) -> str:
    size = inspect(tag)[0]["Size"]
    return f"{size / 1e9:.2f} GB ({size} bytes)"


def drop_replaced(old_id: str | None, tag: str) -> None:
    """Remove the image a rebuild of `tag` left untagged."""
    if old_id and old_id != image_id(tag) and answers("docker", "rmi", old_id):
        info(f"removed the previous {tag} ({old_id[7:19]}), which this build replaced")


# --- one compose project ----------------------------------------------------------------

class Project:
    """A compose project: `docker-compose --ansi never -p NAME -f FILE ...`, and what
    carries its label (containers, networks, volumes)."""

    def __init__(self, name: str, file: Path):
        self.name, self.file = name, file

    def argv(self, *args: str) -> list[str]:
        return ["docker-compose", "--ansi", "never", "-p", self.name, "-f", str(self.file), *args]

    def container(self, service: str) -> str:
        cid = output(*self.argv("ps", "-q", service))
        if not cid:
            raise Failed(f"no container for service {service} (see docker-compose up's log)")
        return cid

    def port(self, service: str, port: int) -> int:
        return int(output(*self.argv("port", service, str(port))).rsplit(":", 1)[1])

    def labelled(self) -> dict[str, list[str]]:
        """The ids of the containers, networks and volumes that carry the project's label."""
        label = f"label={PROJECT_LABEL}={self.name}"
        return {kind: (output("docker", *cmd, "-q", "--filter", label) or "").split()
                for kind, cmd in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]),
                                  ("volumes", ["volume", "ls"]))}

    def print_logs(self) -> None:
        """Each container's status, last 80 lines of log and health check output (on a failure)."""
        containers = self.labelled()["containers"]
        for c in inspect(*containers) if containers else []:
            health = c["State"].get("Health") or {}
            print(f"\n----- {c['Name'].lstrip('/')}: {c['State']['Status']} {health.get('Status', '')}"
                  " (last 80 lines) -----", flush=True)
            subprocess.run(["docker", "logs", "--tail", "80", c["Id"]], stderr=subprocess.STDOUT,
                           timeout=QUICK)
            said = [h["Output"].strip() for h in health.get("Log") or [] if h["Output"].strip()]
            if said:
                print("--- health check output:\n" + "\n".join(said[-5:]), flush=True)

    def down(self, log: Path) -> None:
        """`docker-compose down`, then anything still labelled (a killed `run`'s container)."""
        try:
            logged(self.argv("down", "--volumes", "--remove-orphans", "--timeout", "20"), log,
                   "docker-compose down", timeout=300, limit="the teardown's own limit")
        except Failed as e:
            info(f"{e}; removing by label")
        left = self.labelled()
        for kind, cmd in (("containers", ["rm", "-f"]), ("networks", ["network", "rm"]),
                          ("volumes", ["volume", "rm"])):
            if left[kind]:
                answers("docker", *cmd, *left[kind])
