"""MLflow tracking: the one place the orchestrator writes to MLflow (orchestrator/results/reader.py reads it).

The driver creates the experiment and one run per trial (found again by its `trial_key`
tag); each trial process opens a `TrialLogger` on its run id and logs per-epoch metrics
with step=epoch, skipping epochs the run already holds, so a resumed trial never
duplicates a step.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# Metrics the trial logs once, at the end (step = last epoch).
FINAL_ONLY = ("model_param_bytes", "model_buffer_bytes")
MAX_PARAM_BATCH = 100   # MLflow's log_batch limit on params per call


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """MLflow's own default store, mlflow.db in the folder `run` starts from, as an absolute
    URI: trials run in other processes and folders, and `mlflow ui` there shows the runs."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None, sweep_uri: str | None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the sweep file's, then mlflow.db here.
    A relative sqlite path is made absolute against the current folder."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or sweep_uri
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _retry(fn):
    """SQLite allows one writer at a time: concurrent trials see "database is locked".
    Retry such transient errors with jittered backoff (about 60 s in all) instead of failing."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(12):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MlflowException or sqlalchemy OperationalError
                text = str(err).lower()
                transient = "locked" in text or "busy" in text or "connection" in text
                if not transient or attempt == 11:
                    raise
                time.sleep(min(8.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))
    return wrapper


@dataclass
class RunState:
    run_id: str
    status: str        # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    last_epoch: int    # last epoch logged (0 = none)
    metrics: dict      # latest value of each metric


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@_retry
def ensure_experiment(uri: str, name: str) -> str:
    """Create the sweep's experiment once, on the driver; returns its id."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise MlflowException(f"experiment {name!r} is deleted in {uri}; restore it "
                                  f"(mlflow experiments restore) or rename the sweep")
        return exp.experiment_id
    return c.create_experiment(name)


@_retry
def runs_by_key(uri: str, experiment_name: str) -> dict[str, RunState]:
    """trial_key -> the newest run holding it (the driver's view of what is done)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return {}
    out: dict[str, RunState] = {}
    token = None
    while True:
        page = c.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                             order_by=["attributes.start_time ASC"])
        for run in page:
            key = run.data.tags.get("trial_key")
            if key:
                last = int(run.data.metrics.get("last_epoch", 0))
                out[key] = RunState(run.info.run_id, run.info.status, last, run.data.metrics)
        token = page.token
        if not token:
            return out


@_retry
def create_run(uri: str, experiment_id: str, trial, sweep, tags: dict) -> str:
    """One MLflow run per trial: params = the full config, tags = provenance, artifacts =
    the trial config and the sweep file."""
    c = client(uri)
    run = c.create_run(experiment_id, run_name=trial.name,
                       tags={"trial_key": trial.key, "sweep": sweep.name, **tags})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in sorted(trial.config.items())]
    for i in range(0, len(params), MAX_PARAM_BATCH):
        c.log_batch(run_id, params=params[i:i + MAX_PARAM_BATCH])
    c.log_text(run_id, json.dumps(trial.config, indent=2, sort_keys=True), "trial_config.json")
    c.log_text(run_id, sweep.text, f"sweep/{sweep.path.name}")
    c.update_run(run_id, status="SCHEDULED")
    return run_id


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


@_retry
def log_figures(uri: str | None, pairs: list[tuple[str, Path]]) -> None:
    """Attach each (run id, PNG) to its run under `figures/`; a rebuilt figure overwrites."""
    c = client(uri)
    for run_id, png in pairs:
        c.log_artifact(run_id, str(png), artifact_path="figures")


class TrialLogger:
    """Used inside a trial process: everything one trial writes to its MLflow run."""

    def __init__(self, uri: str, run_id: str):
        self.c, self.run_id = client(uri), run_id
        self.logged = self._logged_epochs()

    @_retry
    def _logged_epochs(self) -> set[int]:
        """The epochs this run already holds (every epoch logs train_loss)."""
        return {m.step for m in self.c.get_metric_history(self.run_id, "train_loss")}

    @_retry
    def status(self) -> str:
        return self.c.get_run(self.run_id).info.status

    @_retry
    def start(self, tags: dict) -> None:
        self.c.update_run(self.run_id, status="RUNNING")
        self.c.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_retry
    def tag(self, key: str, value) -> None:
        self.c.set_tag(self.run_id, key, str(value))

    @_retry
    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """Per-epoch metrics at step=epoch, unless this run already holds that epoch (a
        resumed trial re-yields the epochs in its checkpoint, so one that never reached
        MLflow is logged now: no gap, and no duplicate)."""
        if epoch in self.logged:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        batch.append(Metric("last_epoch", float(epoch), now, epoch))
        self.c.log_batch(self.run_id, metrics=batch)
        self.logged.add(epoch)

    @_retry
    def log_final(self, epoch: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.c.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), now, epoch)
                                               for k in FINAL_ONLY if k in metrics])

    @_retry
    def log_json(self, name: str, obj: dict) -> None:
        self.c.log_text(self.run_id, json.dumps(obj), name)

    @_retry
    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.c.set_tag(self.run_id, "error", error[-5000:])
        self.c.set_terminated(self.run_id, status=status)
