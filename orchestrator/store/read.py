"""Every read of the MLflow store: experiments, runs and their tags, metric histories and
artifacts, for the driver (what is done, who holds the lease, what memory groups reached)
and for the results (the runs of named experiments as a DataFrame).

Reading never creates a store: MLflow would create a missing SQLite file (or file-store
folder) on first use, so here a missing local store holds nothing (the driver's reads) or
is an error naming the path (`experiment_runs`, whose caller asked for a sweep's results).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time

import pandas as pd

from orchestrator.store import (CELL_TAG, GROUP_SHAPE_TAG, GROUP_TAG, HEARTBEAT_TAG, MEASURED_PEAK,
                                TRIAL_KEY_TAG, NotInStore)
from orchestrator.store.client import client, retrying
from orchestrator.store.uri import local_store, not_created_yet

PAGE = 1000   # runs (and experiments) per search request
INFO = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")
FIX = ("pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the sweep logged to, "
       "e.g. sqlite:///path/to/mlflow.db")


def pages(search) -> list:
    """Every item of a paginated client search (`search(page_token)` -> PagedList)."""
    out, token = [], None
    while True:
        page = search(token)
        out += list(page)
        token = page.token
        if not token:
            return out


# --- the driver's reads ---------------------------------------------------------------

@dataclasses.dataclass
class RunState:
    """A trial's run as the driver sees it."""
    run_id: str
    status: str        # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    last_epoch: int    # last epoch logged (0 = none)
    metrics: dict      # latest value of each metric
    group: tuple = ()  # the member names of the fused group it last trained in (GROUP_TAG)
    name: str = ""     # its run name (the trial's name)
    params: dict = dataclasses.field(default_factory=dict)   # the config it ran with (strings)


@retrying
def runs_by_key(uri: str, experiment_name: str) -> dict[str, RunState]:
    """trial_key -> the newest run holding it (the driver's view of what is done). A local
    store that does not exist yet holds none (and is not created here)."""
    if not_created_yet(uri):
        return {}
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return {}
    out: dict[str, RunState] = {}
    for run in pages(lambda t: c.search_runs([exp.experiment_id], max_results=PAGE, page_token=t,
                                             order_by=["attributes.start_time ASC"])):
        key = run.data.tags.get(TRIAL_KEY_TAG)
        if key:
            last = int(run.data.metrics.get("last_epoch", 0))
            group = tuple(filter(None, run.data.tags.get(GROUP_TAG, "").split(",")))
            out[key] = RunState(run.info.run_id, run.info.status, last, run.data.metrics, group,
                                run.info.run_name or "", run.data.params)
    return out


@retrying
def heartbeat(uri: str, experiment_name: str) -> tuple[dict | None, float]:
    """The last driver heartbeat of the sweep and its age in seconds ((None, inf): none)."""
    if not_created_yet(uri):
        return None, float("inf")
    exp = client(uri).get_experiment_by_name(experiment_name)
    raw = exp.tags.get(HEARTBEAT_TAG) if exp is not None else None
    if not raw:
        return None, float("inf")
    holder = json.loads(raw)
    return holder, time.time() - float(holder.get("beat", 0))


@retrying
def measured_peaks(uri: str) -> dict[str, int]:
    """group shape -> the highest peak (bytes) any run of the store measured in a group of
    that shape, on a GPU (CPU runs measure none): `plan` and `run` size shares from the
    larger of it and the forecast."""
    if not_created_yet(uri):
        return {}
    c, out = client(uri), {}
    ids = [e.experiment_id for e in pages(lambda t: c.search_experiments(max_results=PAGE, page_token=t))]
    if not ids:
        return out
    for run in pages(lambda t: c.search_runs(ids, filter_string=f"metrics.{MEASURED_PEAK} > 0",
                                             max_results=PAGE, page_token=t)):
        shape = run.data.tags.get(GROUP_SHAPE_TAG)
        if shape:
            peak = int(run.data.metrics[MEASURED_PEAK] * 2 ** 20)
            out[shape] = max(out.get(shape, 0), peak)
    return out


@retrying
def run_status(uri: str, run_id: str) -> str:
    return client(uri).get_run(run_id).info.status


@retrying
def logged_epochs(uri: str, run_id: str) -> set[int]:
    """The epochs a trial's run already holds (every epoch logs train_loss)."""
    return {m.step for m in client(uri).get_metric_history(run_id, "train_loss")}


# --- the results' reads ---------------------------------------------------------------

def existing(uri: str):
    """A client on an existing store; NotInStore rather than create one."""
    if not uri:
        raise NotInStore(f"no MLflow tracking URI given; {FIX}")
    if not_created_yet(uri):
        raise NotInStore(f"no MLflow store at {local_store(uri)} (tracking URI {uri!r}); {FIX}")
    return client(uri)


def runs_frame(runs: list) -> pd.DataFrame:
    """MLflow `Run`s as `mlflow.search_runs` would return them as pandas: columns `run_id`,
    `experiment_id`, `status`, `artifact_uri`, `start_time`, `end_time`, `params.*`
    (strings), `metrics.*` (latest value = final epoch), `tags.*`."""
    rows = []
    for run in runs:
        info = run.info
        row = {"run_id": info.run_id, "experiment_id": info.experiment_id, "status": info.status,
               "artifact_uri": info.artifact_uri,
               "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
               "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True)}
        for prefix, values in (("metrics", run.data.metrics), ("params", run.data.params),
                               ("tags", run.data.tags)):
            row.update({f"{prefix}.{k}": v for k, v in values.items()})
        rows.append(row)
    extra = sorted({k for row in rows for k in row} - set(INFO))
    return pd.DataFrame(rows, columns=list(INFO) + extra)


def experiment_runs(experiment_names: list[str], uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trial runs, the cells' parent runs) of the named experiments, in one search, as
    runs_frame returns them plus `experiment` (the name). Unknown names raise NotInStore
    listing the experiments the store holds."""
    c = existing(uri)
    known = {e.name: e.experiment_id
             for e in pages(lambda t: c.search_experiments(max_results=PAGE, page_token=t))}
    missing = [n for n in experiment_names if n not in known]
    if missing:
        raise NotInStore(f"no MLflow experiment named {missing} at tracking URI {uri!r}; "
                         f"it holds {sorted(known)}. {FIX[0].upper()}{FIX[1:]}")
    ids = [known[n] for n in experiment_names]
    runs = runs_frame(pages(lambda t: c.search_runs(ids, max_results=PAGE, page_token=t)))
    names = {v: k for k, v in known.items()}
    runs["experiment"] = runs["experiment_id"].map(names) if len(runs) else pd.Series(dtype=str)
    is_cell = runs[f"tags.{CELL_TAG}"].notna() if f"tags.{CELL_TAG}" in runs else pd.Series(False, index=runs.index)
    return runs[~is_cell], runs[is_cell]


def metric_histories(run_ids, metrics, uri: str) -> dict[str, dict[str, dict[int, float]]]:
    """run id -> metric -> step (epoch) -> value, for each of `metrics` the run logged (the
    latest value where a step was logged twice)."""
    c = existing(uri)
    out = {}
    for run_id in run_ids:
        out[run_id] = {}
        for metric in metrics:
            history = sorted(c.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
            if history:
                out[run_id][metric] = {m.step: m.value for m in history}
    return out


def artifact_json(run_id: str, artifact_path: str, uri: str) -> dict | None:
    """A run's JSON artifact (e.g. `memory_timeline.json`), or None if the run has none."""
    c = existing(uri)
    if artifact_path not in {f.path for f in c.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(run_id, artifact_path, tmp)
        return json.loads(pathlib.Path(local).read_text())
