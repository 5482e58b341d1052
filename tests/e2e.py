"""Helpers of the end-to-end tests: a sweep file, the CLI as a process, MLflow reads, and
waits that poll for an event with a generous limit (never a fixed sleep)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(dataset="synthetic", train_samples=120, test_samples=60, vgg_width_divisor=16,
            augment=False, device="cpu", epochs=2, batch_size=6, lr=0.01,
            alpha_first=0.0001, alpha_second=0.001, reg_lambda=0.001)


def write_sweep(path: Path, name: str, grid: dict, base: dict | None = None, **top) -> Path:
    doc = {"name": name, "description": "test sweep", "base": {**BASE, **(base or {})},
           "grid": grid, "seeds": [0], "max_failures": 2, "reproduces": ["table1", "table2"],
           **top}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def runs(uri: str, name: str, cells: bool = False) -> list:
    """The trial runs of experiment `name` (with cells=True: the cells' parent runs
    instead); none while the SQLite store does not exist yet (the test must not create it
    under the driver's feet)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    try:
        c = MlflowClient(uri)
    except Exception:       # the driver is creating the store's tables this very moment
        return []
    exp = c.get_experiment_by_name(name)
    found = [] if exp is None else c.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in found if ("cell_key" in r.data.tags) == cells]


def steps(uri: str, run_id: str, metric: str = "train_loss") -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def cli(cwd: Path, *args, env: dict | None = None) -> subprocess.Popen:
    """`python -m orchestrator ...` as its own process group, so a test can kill it whole;
    `env` adds to (or overrides) this process's environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll until `predicate()` is truthy; fail at once if `proc` ends first (with its
    output), else after a generous `timeout` (a loaded 2-core machine is slow, not stuck)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (rc {proc.returncode}) before {what}:\n"
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port over a SQLite store in `folder`; waits until
    it answers /health. Stop it with stop(server)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job workers
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False
    wait_for(up, 180, "mlflow server", server)
    return server


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    proc.wait(timeout=60)


# Epochs of the trials the kill tests interrupt: enough that a trial is still running a
# few seconds after its first epoch, even on an idle machine (an epoch here: ~0.5 s).
EPOCHS = 12


