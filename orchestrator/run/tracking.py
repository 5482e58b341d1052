"""MLflow tracking: the one place the orchestrator writes to MLflow (orchestrator/results/reader.py reads it).

The driver creates the experiment and one run per trial (found again by its `trial_key`
tag); each trial process opens a `TrialLogger` on its run id and logs per-epoch metrics
with step=epoch, skipping epochs the run already holds, so a resumed trial never
duplicates a step. After a sweep, each cell (a configuration without its seed) gets one
parent run above its seeds (write_cell_runs; results/seeds.py decides what to write):
it has no `trial_key`, so it is never taken for a trial.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import disk

disk.quiet("mlflow")     # MLflow's traceback of a full SQLite store: `run` says it in one line

# Metrics the trial logs once, at the end (step = last epoch).
FINAL_ONLY = ("model_param_bytes", "model_buffer_bytes")
MAX_PARAM_BATCH = 100   # MLflow's log_batch limit on params per call


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """MLflow's own default store, mlflow.db in the folder `run` starts from, as an absolute
    URI: trials run in other processes and folders, and `mlflow ui` there shows the runs."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


DATABASES = ("postgresql://", "mysql://", "mssql://")
SCHEMES = ("", "file", "sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def resolve_tracking_uri(flag: str | None, sweep_uri: str | None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the sweep file's, then mlflow.db here.
    A relative sqlite path is made absolute against the current folder."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or sweep_uri
    if not uri:
        return default_tracking_uri()
    scheme = urllib.parse.urlparse(uri).scheme.split("+", 1)[0]
    if scheme not in SCHEMES and not (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):   # C:\ is a path
        raise StoreUnreachable(f"tracking URI {uri!r}: MLflow has no store for scheme {scheme!r}; "
                               f"use sqlite:///path/to/mlflow.db, a folder, http(s)://host:port (a "
                               f"tracking server) or a database URL ({', '.join(DATABASES)})")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


class StoreUnreachable(RuntimeError):
    """The tracking store cannot be used (it does not answer, or no MLflow store has that
    URI); the message names the URI and what to do."""


def retry_seconds() -> float:
    """How long a write keeps retrying a store that does not answer ($SWEEP_TRACKING_RETRY_S,
    default 60 s): long enough for a SQLite lock or a server restart, not for an outage."""
    return float(os.environ.get("SWEEP_TRACKING_RETRY_S", "60"))


def _transient(err: Exception) -> bool:
    if disk.no_space(err) is not None:       # a full disk: waiting does not free it
        return False
    text = str(err).lower()
    return any(w in text for w in ("locked", "busy", "connection", "timed out", "timeout",
                                   "temporarily", "503", "502",
                                   # another process is creating the same new store
                                   "already exists", "no such table", "no such column", "alembic"))


def is_store_error(err: Exception) -> bool:
    """Whether `err` came from the tracking store (unreachable, locked, refused), not from
    the code that used what it returned."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(err, (MlflowException, SQLAlchemyError, OSError, StoreUnreachable)) or _transient(err)


def _retry(fn):
    """SQLite allows one writer at a time (concurrent trials see "database is locked"), a
    server can restart, and two drivers can create a new store at once: retry such
    transient errors with jittered backoff for retry_seconds(), saying what it waits for."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline, attempt = time.monotonic() + retry_seconds(), 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MlflowException, sqlalchemy OperationalError, requests
                wait = min(8.0, 0.1 * 2 ** attempt) * (0.5 + random.random())
                if not _transient(err) or time.monotonic() + wait > deadline:
                    raise
                attempt += 1
                if attempt >= 3:
                    print(f"tracking: {fn.__name__} waits for the store ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); retry {attempt} in {wait:.1f} s",
                          file=sys.stderr, flush=True)
                time.sleep(wait)
    return wrapper


def local_store(uri: str) -> Path | None:
    """The file or folder a local store lives in (a SQLite file, a file store), else None
    (a server, another database, an in-memory SQLite)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    # A bare path is a file store; "databricks" is MLflow's name for a remote workspace.
    return Path(uri) if parsed.scheme == "" and uri != "databricks" else None


def _not_created_yet(uri: str) -> bool:
    """A local store whose file does not exist yet: it holds nothing, and reading it must
    not create it."""
    path = local_store(uri)
    return path is not None and not path.exists()


def ensure_store(uri: str) -> bool:
    """Create a new local SQLite store whole, or not at all: its tables are made in a
    private file which is then linked into place (atomic; it never replaces a store). A
    process that opens the path sees a complete schema, never one half migrated by the
    driver (two processes migrating one new file at once can wreck it). True if created."""
    path = local_store(uri)
    if not uri.startswith("sqlite:///") or path is None or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False                       # another driver made it meanwhile: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def check_store(uri: str, timeout: float = 5.0) -> bool:
    """Whether the store exists, within seconds: a local store's file or folder is looked
    for (never created here), a server is asked for /health. An unreachable server is an
    error."""
    path = local_store(uri)
    if path is not None:
        return path.exists()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return True
        except (OSError, ValueError) as err:
            raise StoreUnreachable(f"the MLflow tracking server at {uri} does not answer "
                                   f"({type(err).__name__}: {err}); start it, or pass --tracking-uri "
                                   f"(or set MLFLOW_TRACKING_URI) to a store that answers") from None
    return True     # another database (postgresql://, ...): its first query tells


GROUP_TAG = "fused_group"             # its group's member names, in order (a resume keeps it)


@dataclass
class RunState:
    run_id: str
    status: str        # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    last_epoch: int    # last epoch logged (0 = none)
    metrics: dict      # latest value of each metric
    group: tuple = ()  # the member names of the fused group it last trained in (GROUP_TAG)
    name: str = ""     # its run name (the trial's name)
    params: dict = dataclasses.field(default_factory=dict)   # the config it ran with (strings)


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@_retry
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


HEARTBEAT_TAG = "driver_heartbeat"     # JSON of the driver's lease (orchestrator/run/lease.py)


@_retry
def set_heartbeat(uri: str, experiment_id: str, holder: dict) -> None:
    client(uri).set_experiment_tag(experiment_id, HEARTBEAT_TAG, json.dumps(holder))


@_retry
def heartbeat(uri: str, experiment_name: str) -> tuple[dict | None, float]:
    """The last driver heartbeat of the sweep and its age in seconds ((None, inf): none)."""
    if _not_created_yet(uri):
        return None, float("inf")
    exp = client(uri).get_experiment_by_name(experiment_name)
    raw = exp.tags.get(HEARTBEAT_TAG) if exp is not None else None
    if not raw:
        return None, float("inf")
    holder = json.loads(raw)
    return holder, time.time() - float(holder.get("beat", 0))


@_retry
def mark_killed(uri: str, run_ids: list[str]) -> list[str]:
    """End the runs still RUNNING or SCHEDULED as KILLED (an interrupted sweep); returns them."""
    c, killed = client(uri), []
    for run_id in run_ids:
        if c.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            c.set_tag(run_id, "interrupted", time.strftime("%Y-%m-%d %H:%M:%S"))
            c.set_terminated(run_id, status="KILLED")
            killed.append(run_id)
    return killed


@_retry
def runs_by_key(uri: str, experiment_name: str) -> dict[str, RunState]:
    """trial_key -> the newest run holding it (the driver's view of what is done). A local
    store that does not exist yet holds none (and is not created here)."""
    if _not_created_yet(uri):
        return {}
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
                group = tuple(filter(None, run.data.tags.get(GROUP_TAG, "").split(",")))
                out[key] = RunState(run.info.run_id, run.info.status, last, run.data.metrics, group,
                                    run.info.run_name or "", run.data.params)
        token = page.token
        if not token:
            return out


GROUP_SHAPE_TAG = "group_shape"        # trainer.estimates.shape_id of the group a run trained in
MEASURED_PEAK = "group_peak_memory_mb"  # the trainer's per-epoch CUDA peak of the whole group


@_retry
def measured_peaks(uri: str) -> dict[str, int]:
    """group shape -> the highest peak (bytes) any run of the store measured in a group of
    that shape, on a GPU (CPU runs measure none): `plan` and `run` size shares from the
    larger of it and the forecast."""
    if _not_created_yet(uri):
        return {}
    c, out = client(uri), {}
    ids = [e.experiment_id for e in c.search_experiments(max_results=1000)]
    token = None
    while ids:
        page = c.search_runs(ids, filter_string=f"metrics.{MEASURED_PEAK} > 0", max_results=1000,
                             page_token=token)
        for run in page:
            shape = run.data.tags.get(GROUP_SHAPE_TAG)
            if shape:
                peak = int(run.data.metrics[MEASURED_PEAK] * 2 ** 20)
                out[shape] = max(out.get(shape, 0), peak)
        token = page.token
        if not token:
            break
    return out


CELL_TAG = "cell_key"                 # on a cell's parent run only (results/seeds.py): marks it
DIGEST_TAG = "cell_digest"            # of the FINISHED seeds (and last epochs) a parent summarizes
PARENT_TAG = "mlflow.parentRunId"     # MLflow's own: nests a seed run under its cell in the UI
MAX_METRIC_BATCH = 1000               # MLflow's log_batch limit on metrics per call


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


@_retry
def _write_cell(c: MlflowClient, w, summary) -> str:
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


@_retry
def fail_runs(uri: str, run_ids: list[str], error: str) -> None:
    """End runs as FAILED with `error` as their error tag (the driver's verdict on a group
    it will not run again, e.g. out of memory after its last re-pack)."""
    c = client(uri)
    for run_id in run_ids:
        c.set_tag(run_id, "error", error[-5000:])
        c.set_terminated(run_id, status="FAILED")


@_retry
def create_run(uri: str, experiment_id: str, trial, sweep, tags: dict, config: dict) -> str:
    """One MLflow run per trial: params = the config it runs with (`config`: the trial's,
    with the paths and threads of this launch), tags = provenance, artifacts = that
    config and the sweep file. (Params cannot change later: a resumed attempt that runs
    with other paths or threads says so in its `ran_with` tag.)"""
    c = client(uri)
    run = c.create_run(experiment_id, run_name=trial.name,
                       tags={"trial_key": trial.key, "sweep": sweep.name, **tags})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in sorted(config.items())]
    for i in range(0, len(params), MAX_PARAM_BATCH):
        c.log_batch(run_id, params=params[i:i + MAX_PARAM_BATCH])
    c.log_text(run_id, json.dumps(config, indent=2, sort_keys=True), "trial_config.json")
    c.log_text(run_id, sweep.text, f"sweep/{sweep.path.name}")
    c.update_run(run_id, status="SCHEDULED")
    return run_id


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
        """RUNNING, with this attempt's tags; an error tag of an earlier attempt goes."""
        run = self.c.get_run(self.run_id)
        for stale in ("error", "interrupted"):
            if stale in run.data.tags:
                self.c.delete_tag(self.run_id, stale)
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
    def requeue(self, error: str) -> None:
        """Back to SCHEDULED with `error` tagged `oom`: the driver runs it again, re-packed
        (a driver that dies meanwhile leaves it for the next `run`, like any unfinished run)."""
        self.c.set_tag(self.run_id, "oom", error[-5000:])
        self.c.update_run(self.run_id, status="SCHEDULED")

    @_retry
    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.c.set_tag(self.run_id, "error", error[-5000:])
        self.c.set_terminated(self.run_id, status=status)
