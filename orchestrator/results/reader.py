"""The one MLflow reader: the runs of named experiments as a DataFrame, and run artifacts.

Every read goes through an `MlflowClient` on an explicit tracking URI; mlflow's
process-global tracking URI (`mlflow.set_tracking_uri`, the fluent API) is never touched,
so reading one store cannot redirect a writer elsewhere in the process. Reading never
creates a store: MLflow would create a missing SQLite file (or file-store folder) on
first use, so a missing one is an error naming the path.

`load_runs` returns the DataFrame shape `mlflow.search_runs(output_format="pandas")` has
(columns `run_id`, `experiment_id`, `status`, `artifact_uri`, `start_time`, `end_time`,
`params.*` (strings), `metrics.*` (latest value = final epoch), `tags.*`), plus
`experiment` (the name), passed through `cells.prepare` (params cast to Config types).
The cells' parent runs (results/seeds.py: one per configuration, above its seeds) are not
trials: `load_runs` leaves them out.
"""
from __future__ import annotations

import json
import pathlib
import tempfile

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator.results import ResultsError
from orchestrator.results.cells import prepare, usable
from orchestrator.results.seeds import CELL_TAG
from orchestrator.run.tracking import local_store

PAGE = 1000   # runs (and experiments) per search request
INFO = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")
FIX = ("pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the sweep logged to, "
       "e.g. sqlite:///path/to/mlflow.db")


def client(tracking_uri: str) -> MlflowClient:
    """A client on an existing store; raises ResultsError rather than create one."""
    if not tracking_uri:
        raise ResultsError(f"no MLflow tracking URI given; {FIX}")
    path = local_store(tracking_uri)
    if path is not None and not path.exists():
        raise ResultsError(f"no MLflow store at {path} (tracking URI {tracking_uri!r}); {FIX}")
    return MlflowClient(tracking_uri=tracking_uri)


def _pages(search) -> list:
    """Every item of a paginated MlflowClient search (`search(page_token)` -> PagedList)."""
    out, token = [], None
    while True:
        page = search(token)
        out += list(page)
        token = page.token
        if not token:
            return out


def runs_frame(runs: list) -> pd.DataFrame:
    """MLflow `Run`s as `mlflow.search_runs` would return them as pandas (unprepared)."""
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


def load_runs(experiment_names: list[str], tracking_uri: str) -> pd.DataFrame:
    """All trial runs of the named experiments (one per sweep), prepared (see module
    docstring); the cells' parent runs are left out (load_runs_and_cells has them).

    Unknown names raise ResultsError listing the experiments the store holds.
    """
    return load_runs_and_cells(experiment_names, tracking_uri)[0]


def load_runs_and_cells(experiment_names: list[str],
                        tracking_uri: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trial runs, prepared; the cells' parent runs, unprepared: results/seeds.py; trial
    runs left out because a param is unreadable, with `left_out` saying why: cells.usable)
    of the named experiments, in one search."""
    c = client(tracking_uri)
    known = {e.name: e.experiment_id
             for e in _pages(lambda t: c.search_experiments(max_results=PAGE, page_token=t))}
    missing = [n for n in experiment_names if n not in known]
    if missing:
        raise ResultsError(f"no MLflow experiment named {missing} at tracking URI {tracking_uri!r}; "
                           f"it holds {sorted(known)}. {FIX[0].upper()}{FIX[1:]}")
    ids = [known[n] for n in experiment_names]
    runs = runs_frame(_pages(lambda t: c.search_runs(ids, max_results=PAGE, page_token=t)))
    names = {v: k for k, v in known.items()}
    runs["experiment"] = runs["experiment_id"].map(names) if len(runs) else pd.Series(dtype=str)
    is_cell = runs[f"tags.{CELL_TAG}"].notna() if f"tags.{CELL_TAG}" in runs else pd.Series(False, index=runs.index)
    ok, odd = usable(prepare(runs[~is_cell]))
    return ok, runs[is_cell], odd


def metric_histories(run_ids, metrics, tracking_uri: str) -> dict[str, dict[str, dict[int, float]]]:
    """run id -> metric -> step (epoch) -> value, for each of `metrics` the run logged (the
    latest value where a step was logged twice)."""
    c = client(tracking_uri)
    out = {}
    for run_id in run_ids:
        out[run_id] = {}
        for metric in metrics:
            history = sorted(c.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
            if history:
                out[run_id][metric] = {m.step: m.value for m in history}
    return out


def load_artifact_json(run_id: str, artifact_path: str, tracking_uri: str) -> dict | None:
    """A run's JSON artifact (e.g. `memory_timeline.json`), or None if the run has none."""
    c = client(tracking_uri)
    if artifact_path not in {f.path for f in c.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(run_id, artifact_path, tmp)
        return json.loads(pathlib.Path(local).read_text())
