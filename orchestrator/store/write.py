"""Every write to the MLflow store (store/read.py reads it).

The driver creates the experiment and one run per trial (found again by its `trial_key`
tag); each trial process opens a `TrialLogger` on its run id and logs per-epoch metrics
with step=epoch, skipping epochs the run already holds, so a resumed trial never
duplicates a step. After a sweep, each cell (a configuration without its seed) gets one
parent run above its seeds (write_cell_runs; results/seeds.py decides what to write):
it has no `trial_key`, so it is never taken for a trial.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from orchestrator.store import CELL_TAG, DIGEST_TAG, FINAL_ONLY, HEARTBEAT_TAG, PARENT_TAG, TRIAL_KEY_TAG, read
from orchestrator.store.client import client, retrying

MAX_PARAM_BATCH = 100    # MLflow's log_batch limit on params per call
MAX_METRIC_BATCH = 1000  # MLflow's log_batch limit on metrics per call


@retrying
def ensure_experiment(uri: str, name: str, description: str = "") -> str:
    """Create the sweep's experiment once, on the driver; returns its id. The sweep's
    description becomes the experiment's note (what the MLflow UI shows on its page)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise MlflowException(f"experiment {name!r} is deleted in {uri}; restore it "
                              f"(mlflow experiments restore) or rename the sweep")
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(name)
    if description:
        c.set_experiment_tag(exp_id, "mlflow.note.content", description.strip())
    return exp_id


@retrying
def set_heartbeat(uri: str, experiment_id: str, holder: dict) -> None:
    client(uri).set_experiment_tag(experiment_id, HEARTBEAT_TAG, json.dumps(holder))


@retrying
def mark_killed(uri: str, run_ids: list[str]) -> list[str]:
    """End the runs still RUNNING or SCHEDULED as KILLED (an interrupted sweep); returns them."""
    c, killed = client(uri), []
    for run_id in run_ids:
        if c.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            c.set_tag(run_id, "interrupted", time.strftime("%Y-%m-%d %H:%M:%S"))
            c.set_terminated(run_id, status="KILLED")
            killed.append(run_id)
    return killed


def write_cell_runs(uri: str, writes: list, summaries: dict) -> list[str]:
    """Carry out results/seeds.plan_writes: per cell, create its parent run (FINISHED, with
    the cell's params, tags and per-epoch summary metrics) unless one is kept, nest every
    seed under it, then delete the stale parents. Returns the parent run ids.

    writes: seeds.CellWrite; summaries: (experiment id, cell key) -> seeds.CellSummary,
    for the cells whose parent is created. A parent is complete before any seed points at
    it, and the old one goes last; an interrupted write (or a retried one) leaves at worst
    an extra parent of the same cell, which the next write deletes.
    """
    return [_write_cell(client(uri), w, summaries.get((w.cell.experiment_id, w.cell.key)))
            for w in writes]


@retrying
def _write_cell(c, w, summary) -> str:
    cell, parent = w.cell, w.keep
    if parent is None:
        parent = c.create_run(cell.experiment_id, run_name=cell.name, tags={
            CELL_TAG: cell.key, DIGEST_TAG: cell.digest,
            "seed_runs": ",".join(cell.names), "finished_seeds": str(len(cell.finished)),
            "mlflow.note.content": f"Cell {cell.name}: mean, std and n over its {len(cell.finished)} "
                                   f"FINISHED seed run(s), per epoch (<metric>_mean, _std, _n) "
                                   f"and at each seed's best epoch (best_<metric>_mean, _std). "
                                   f"Its seeds are nested below it."}).info.run_id
        params = [Param(k, v) for k, v in cell.params.items()]
        for i in range(0, len(params), MAX_PARAM_BATCH):
            c.log_batch(parent, params=params[i:i + MAX_PARAM_BATCH])
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v, step in summary.metrics()]
        for i in range(0, len(metrics), MAX_METRIC_BATCH):
            c.log_batch(parent, metrics=metrics[i:i + MAX_METRIC_BATCH])
        c.set_terminated(parent, status="FINISHED")
    for run_id, current in zip(cell.seeds, cell.parents):
        if current != parent:
            c.set_tag(run_id, PARENT_TAG, parent)
    for stale in w.delete:
        c.delete_run(stale)
    return parent


@retrying
def fail_runs(uri: str, run_ids: list[str], error: str) -> None:
    """End runs as FAILED with `error` as their error tag (the driver's verdict on a group
    it will not run again, e.g. out of memory after its last re-pack)."""
    c = client(uri)
    for run_id in run_ids:
        c.set_tag(run_id, "error", error[-5000:])
        c.set_terminated(run_id, status="FAILED")


@retrying
def create_run(uri: str, experiment_id: str, trial, sweep, tags: dict, config: dict) -> str:
    """One MLflow run per trial: params = the config it runs with (`config`: the trial's,
    with the paths and threads of this launch), tags = provenance, artifacts = that
    config and the sweep file. (Params cannot change later: a resumed attempt that runs
    with other paths or threads says so in its `ran_with` tag.)"""
    c = client(uri)
    run = c.create_run(experiment_id, run_name=trial.name,
                       tags={TRIAL_KEY_TAG: trial.key, "sweep": sweep.name, **tags})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in sorted(config.items())]
    for i in range(0, len(params), MAX_PARAM_BATCH):
        c.log_batch(run_id, params=params[i:i + MAX_PARAM_BATCH])
    c.log_text(run_id, json.dumps(config, indent=2, sort_keys=True), "trial_config.json")
    c.log_text(run_id, sweep.text, f"sweep/{sweep.path.name}")
    c.update_run(run_id, status="SCHEDULED")
    return run_id


@retrying
def log_figures(uri: str | None, pairs: list[tuple[str, Path]]) -> None:
    """Attach each (run id, PNG) to its run under `figures/`; a rebuilt figure overwrites."""
    c = client(uri)
    for run_id, png in pairs:
        c.log_artifact(run_id, str(png), artifact_path="figures")


class TrialLogger:
    """Used inside a trial process: everything one trial writes to its MLflow run."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.c, self.run_id = uri, client(uri), run_id
        self.logged = read.logged_epochs(uri, run_id)

    def status(self) -> str:
        return read.run_status(self.uri, self.run_id)

    @retrying
    def start(self, tags: dict) -> None:
        """RUNNING, with this attempt's tags; an error tag of an earlier attempt goes."""
        run = self.c.get_run(self.run_id)
        for stale in ("error", "interrupted"):
            if stale in run.data.tags:
                self.c.delete_tag(self.run_id, stale)
        self.c.update_run(self.run_id, status="RUNNING")
        self.c.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @retrying
    def tag(self, key: str, value) -> None:
        self.c.set_tag(self.run_id, key, str(value))

    @retrying
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

    @retrying
    def log_final(self, epoch: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.c.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), now, epoch)
                                               for k in FINAL_ONLY if k in metrics])

    @retrying
    def log_json(self, name: str, obj: dict) -> None:
        self.c.log_text(self.run_id, json.dumps(obj), name)

    @retrying
    def requeue(self, error: str) -> None:
        """Back to SCHEDULED with `error` tagged `oom`: the driver runs it again, re-packed
        (a driver that dies meanwhile leaves it for the next `run`, like any unfinished run)."""
        self.c.set_tag(self.run_id, "oom", error[-5000:])
        self.c.update_run(self.run_id, status="SCHEDULED")

    @retrying
    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.c.set_tag(self.run_id, "error", error[-5000:])
        self.c.set_terminated(self.run_id, status=status)
