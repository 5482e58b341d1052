"""The Ray Tune driver: one Tune trial per fused group of pending trials (a group of one
for a trial alone), each one `trainer.train_group` whose members log to their own MLflow
runs.

Recovery does not use Tuner.restore (it cannot change a search space, so a grid that grew
could not run): every `run` builds a fresh Tuner over the trials MLflow does not hold as
FINISHED, and every trial resumes from its own checkpoint folder,
`<storage>/<sweep>/<trial_key>/`, which survives the driver. Within one `run`, Tune's
`max_failures` restarts a failed group, whose members resume from the same folders.

A group that runs out of CUDA memory is not one of those failures: its process is capped
at its share (packing.allocator_cap), so it fails alone; it ends its Tune trial with an
`oom` result, and the JobQueue (the Tune searcher that hands out the jobs) queues it again
re-packed (packing.repacked: a doubled share, or split in halves), at most MAX_REPACKS
times, after which its trials are FAILED with the error line.

A full disk (the storage folder, the tracking store, Tune's own files: disk.py) is not
retried either: the group that meets it ends with a `disk_full` result, the JobQueue hands
out nothing more and the sweep stops (Tune's stopper), and `run` says what filled up.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

from . import disk, packing, tracking
from .packing import GB, MAX_REPACKS, Node, PackingError
from .plan import group_name

RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0",       # trials keep the driver's folder; paths are absolute anyway
           "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AIR_NEW_OUTPUT": "0"}
# The driver's settings for talking to MLflow, handed to every trial process.
PASSED_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "SWEEP_TRACKING_RETRY_S")


@dataclass
class Member:
    """One trial of a group, as plain data (a Job is pickled to a worker)."""
    key: str
    name: str
    config: dict
    run_id: str
    checkpoint_dir: str


@dataclass
class Job:
    """What one Tune trial needs: a fused group of trials (a group of one: a solo trial)."""
    name: str
    members: list
    tracking_uri: str
    threads: int
    tags: dict
    resources: dict          # what it asks of the cluster, {"cpu": n, "gpu": share}
    gpu_memory: int = 0      # bytes of the GPU its share is of (0: no GPU)
    forecast_peak: int = 0   # bytes: the memory forecast of its step (trainer/forecast.py)
    shape: str = ""          # trainer.estimates.shape_id of its members' configs
    repacks: list = dataclasses.field(default_factory=list)   # what each re-pack after an OOM changed

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{**d, "members": [Member(**m) for m in d["members"]]})

    @property
    def memory_cap(self) -> int | None:
        return packing.allocator_cap(self.resources, self.gpu_memory)

    def placement_tags(self) -> dict:
        """What each member's run records of the placement it trains in."""
        cap = self.memory_cap
        return {"gpu_share": self.resources.get("gpu", 0), "cpus": self.resources.get("cpu", 1),
                "memory_cap_mb": "none" if cap is None else round(cap / 2 ** 20),
                "forecast_peak_mb": round(self.forecast_peak / 2 ** 20),
                tracking.GROUP_SHAPE_TAG: self.shape,
                "repacked": "; ".join(self.repacks) or "no"}


def start_ray(address: str | None) -> dict:
    """Join `address` (or RAY_ADDRESS) if given, else start a local Ray without a dashboard.
    Returns the cluster's total resources."""
    os.environ.update(RAY_ENV)
    env = {**RAY_ENV, **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
                 include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                 runtime_env={"env_vars": env})
    return ray.cluster_resources()


def cluster_nodes(gpu_memory_gb: float | None = None) -> list[Node]:
    """The alive nodes of the Ray cluster, with the memory of their GPUs: `gpu_memory_gb`
    when given, else read on each GPU node by a tiny task (a 1/10,000 GPU share, so it
    runs beside whatever holds the cards)."""
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        gpus = res.get("GPU", 0)
        memory = int(gpu_memory_gb * GB) if gpu_memory_gb else 0
        if gpus and not memory:
            memory = _probe_gpu_memory(n["NodeID"])
        nodes.append(Node(res.get("CPU", 0), gpus, memory, n.get("NodeManagerAddress", "")))
    return nodes


def _probe_gpu_memory(node_id: str, timeout: float = 180) -> int:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_gpus=0.0001, num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    def memory() -> int:
        import torch
        return torch.cuda.get_device_properties(0).total_memory
    try:
        return ray.get(memory.remote(), timeout=timeout)
    except Exception as err:  # GetTimeoutError, a node without a working CUDA
        raise PackingError(f"could not read the GPU memory of node {node_id[:12]} within "
                           f"{timeout:.0f} s ({type(err).__name__}); pass --gpu-memory GB "
                           f"(the memory of each GPU) to run without asking") from None


def run_group(job: Job) -> None:
    """The Tune trainable: train the group's trials together, each logging every epoch to
    its own MLflow run; report the group's progress to Tune once per epoch.

    A member that fails alone (a non-finite loss, an unusable checkpoint: trainer.errors)
    is marked FAILED and the others go on; such a failure, or one of the whole group's
    inputs (a bad dataset or config), is not retried, since a retry would repeat it. A CUDA
    out-of-memory error puts the unfinished members back to SCHEDULED and ends the trial
    with an `oom` result, for the JobQueue to re-pack. Anything else (a killed worker) fails
    the group, and Tune retries it (max_failures): each member resumes from its checkpoint.
    A full disk is not retried: the members are FAILED with a line naming what filled up
    (if the store takes it) and the trial ends with a `disk_full` result, which stops the
    sweep. A member FINISHED by an earlier attempt is not trained again. A stopped sweep
    (Ctrl-C) leaves KILLED runs.
    """
    import torch

    from trainer.errors import TrialError

    names = [m.name for m in job.members]
    loggers, members, running = {}, [], set()
    try:
        for m in job.members:
            logger = tracking.TrialLogger(job.tracking_uri, m.run_id)
            if logger.status() == "FINISHED":
                continue
            others = [n for n in names if n != m.name]
            logger.start({**job.tags, **where_am_i(), **job.placement_tags(),
                          "fused_with": ",".join(others) or "none", "fused_group_size": len(job.members),
                          tracking.GROUP_TAG: ",".join(names)})
            loggers[m.name] = logger
            members.append(m)
            running.add(m.name)
        if members:
            _train(job, members, loggers, running)
    except TrialError as err:                 # the group's inputs: a retry would repeat it
        for name in running:
            loggers[name].finish("FAILED", error=_error_text(err))
        tune.report({"members_running": 0, FAILED_TRIALS: [_failure(n, err) for n in sorted(running)]})
    except (KeyboardInterrupt, SystemExit):   # Tune stopping the sweep
        for name in running:
            loggers[name].finish("KILLED")
        raise
    except torch.cuda.OutOfMemoryError as err:   # the JobQueue re-packs it: not a Tune retry
        reached = 0
        if torch.cuda.is_available():
            reached = torch.cuda.max_memory_reserved()
            torch.cuda.empty_cache()       # for the next job this worker process runs
        for name in running:
            loggers[name].requeue(_error_text(err))
        tune.report({"oom": 1, "oom_reached_mb": reached / 2 ** 20, "oom_error": str(err).splitlines()[0][:300],
                     "members_running": 0})
    except BaseException as err:
        path = disk.no_space(err)
        if path is None:                       # a killed worker, a bug: Tune retries the group
            for name in running:
                loggers[name].finish("FAILED", error=_error_text(err))
            raise
        line = disk.describe(path, Path(job.members[0].checkpoint_dir).parent.parent, job.tracking_uri)
        for name in running:                   # a retry cannot succeed: stop the sweep instead
            try:
                loggers[name].finish("FAILED", error=line)
            except Exception:                  # a full tracking store takes no tag either
                pass
        tune.report({"members_running": 0, DISK_FULL: line})


def _train(job: Job, members: list, loggers: dict, running: set) -> None:
    """Train the members (not FINISHED yet) together, logging each event to its run."""
    from trainer.config import Config
    from trainer.train import MemberFailed, train_group

    cfgs = [Config.from_dict({**m.config, "threads": job.threads}, source=m.name) for m in members]
    started: set[str] = set()
    for events in train_group(cfgs, [m.checkpoint_dir for m in members], memory_cap=job.memory_cap):
        failed = []
        for event in events:
            m = members[event.member]
            logger = loggers[m.name]
            if isinstance(event, MemberFailed):
                logger.finish("FAILED", error=_error_text(event.error))
                running.discard(m.name)
                failed.append(_failure(m.name, event.error))
                continue
            if m.name not in started and not event.replayed:
                started.add(m.name)      # whether this attempt resumed, and from where
                logger.tag("resumed_from_epoch", event.epoch - 1 if not event.final else event.epoch)
            for name, obj in event.artifacts.items():
                logger.log_json(name, obj)
            if event.final:
                logger.log_final(event.epoch, event.metrics)
                logger.finish("FINISHED")
                running.discard(m.name)
            else:                                              # MLflow first: a crash before
                logger.log_epoch(event.epoch, {**event.metrics, **_against_forecast(event.metrics, job)})
        _report(events, len(running), failed)                  # Tune hears only repeats it


def _against_forecast(metrics: dict, job: Job) -> dict:
    """The group's measured peak beside its forecast (on a GPU: a CPU measures none)."""
    measured = metrics.get(tracking.MEASURED_PEAK)
    if measured is None or not job.forecast_peak:
        return {}
    forecast = job.forecast_peak / 2 ** 20
    return {"forecast_peak_mb": forecast, "peak_over_forecast": measured / forecast}


def oom_line(job: Job, reached_mb: float, outcome: str) -> str:
    """The one line that says a group ran out of CUDA memory, and what happens next."""
    cap = job.memory_cap
    share = job.resources.get("gpu")
    where = (f"at share {share:g} GPU (allocator cap {cap / 2 ** 20:,.0f} MB)" if cap
             else f"at share {share:g} GPU" if share else "on CPU (an injected or host-side OOM)")
    reached = f"{reached_mb:,.0f} MB" if reached_mb > 0 else "not measured (no CUDA)"
    return (f"out of memory: group {job.name} ({len(job.members)} trial(s): "
            f"{', '.join(m.name for m in job.members)}) {where}, forecast peak "
            f"{job.forecast_peak / 2 ** 20:,.0f} MB, reached {reached}; {outcome}")


def _error_text(err: BaseException) -> str:
    return "".join(traceback.format_exception(err))


FAILED_TRIALS = "failed_trials"   # a Tune result's "name: why" of each member that failed alone
DISK_FULL = "disk_full"           # a Tune result's line naming the full disk (disk.describe)


def _failure(name: str, err: BaseException) -> str:
    """"w16-b5-reg-s0: <the error's first line>" for the progress line (MLflow has the rest)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{name}: {first[:300]}"


def _report(events: list, running: int, failed: list[str]) -> None:
    """One Tune result per epoch of the group: the lowest epoch reached, the test
    accuracies measured and the members that failed (Progress prints them)."""
    from trainer.train import Measurement

    trained = [e for e in events if isinstance(e, Measurement) and not e.replayed]
    if not trained and not failed:
        return
    result = {"members_running": running}
    if trained:
        result["epoch"] = min(e.epoch for e in trained)
    accs = [e.metrics["test_accuracy"] for e in trained if not e.final and "test_accuracy" in e.metrics]
    if accs:
        result.update(test_accuracy_min=min(accs), test_accuracy_max=max(accs))
    if failed:
        result[FAILED_TRIALS] = failed
    tune.report(result)


def where_am_i() -> dict:
    """Run tags that say where a trial ran: node, GPU model and its memory."""
    tags = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        ctx = ray.get_runtime_context()
        tags.update(ray_node_id=ctx.get_node_id(), node_ip=ray.util.get_node_ip_address())
    except Exception:  # called outside a Ray worker
        pass
    import torch
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        tags.update(gpu_model=props.name, gpu_memory_mb=props.total_memory // 2 ** 20)
    else:
        tags.update(gpu_model="none")
    return tags


def tune_trial(params: dict) -> None:
    run_group(Job.from_dict(params["job"]))


class JobQueue(Searcher):
    """The Tune searcher that hands out the jobs in the order given, and takes back a
    group that ran out of CUDA memory: re-packed (packing.repacked) at the front of the
    queue, or, after MAX_REPACKS or with nothing left to change, its trials FAILED in MLflow
    with the out-of-memory line. `outcome[trial_id]` is ("re-packed" or "failed", that
    line), for Progress to print. After a group meets a full disk (`full`: its line) it
    hands out nothing more."""

    def __init__(self, jobs: list[Job], uri: str):
        super().__init__()
        self.uri = uri
        self.pending = collections.deque(dataclasses.asdict(j) for j in jobs)
        self.live: dict[str, dict] = {}
        self.total = len(jobs)
        self.outcome: dict[str, str] = {}
        self.full: str | None = None

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a new `run` builds its queue from MLflow (Tuner.restore is not used)."""

    def restore(self, checkpoint_path: str) -> None:
        """See save."""

    def suggest(self, trial_id: str):
        if self.full:
            return Searcher.FINISHED
        if self.pending:
            self.live[trial_id] = self.pending.popleft()
            return {"job": self.live[trial_id]}
        return None if self.live else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.live.pop(trial_id, None)
        if job is not None and (result or {}).get(DISK_FULL):
            self.full = self.full or result[DISK_FULL]
            self.outcome[trial_id] = ("disk full", "")
            return
        if job is None or error or not (result or {}).get("oom"):
            return
        job = Job.from_dict(job)
        plan = packing.repacked(job.resources, job.members) if len(job.repacks) < MAX_REPACKS else None
        reached = float(result.get("oom_reached_mb", 0))
        if plan is None:
            why = (f"{MAX_REPACKS} re-packs already" if len(job.repacks) >= MAX_REPACKS
                   else ("one trial on a whole GPU" if job.resources.get("gpu") else "one trial alone")
                   + ": nothing left to change")
            line = oom_line(job, reached, f"FAILED ({why}): lower its batch_size or image_size, "
                                          f"or run it on a larger GPU")
            tracking.fail_runs(self.uri, [m.run_id for m in job.members], line)
            self.outcome[trial_id] = ("failed", line)
            return
        how, parts = plan
        jobs = [dataclasses.replace(job, name=group_name(members), members=members, resources=res,
                                    repacks=[*job.repacks, f"{how} after an OOM in {job.name}"])
                for members, res in parts]
        self.pending.extendleft(dataclasses.asdict(j) for j in reversed(jobs))
        self.total += len(jobs)
        self.outcome[trial_id] = ("re-packed", oom_line(
            job, reached, f"re-packed: {how} -> " + ", ".join(f"{j.name} {j.resources}" for j in jobs)))


class StopOnFullDisk(tune.Stopper):
    """Stop every trial once a group met a full disk: the others would only meet it too."""

    def __init__(self):
        self.line: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(DISK_FULL):
            self.line = self.line or result[DISK_FULL]
        return self.line is not None

    def stop_all(self) -> bool:
        return self.line is not None


class Progress(tune.Callback):
    """One line per event: groups done/running/failed, and the reporting group's epoch and
    its members' test accuracies; an out-of-memory group's line and its re-pack (from the
    JobQueue). Tune's own table is switched off (verbose=0)."""

    def __init__(self, queue: JobQueue, out=sys.stderr):
        self.queue, self.out = queue, out
        self.done = self.failed = self.repacked = 0     # groups; `failed` counts trials
        self.running: dict[str, str] = {}
        self.t0 = time.time()

    def _line(self, text: str) -> None:
        elapsed = time.time() - self.t0
        print(f"[{elapsed:6.0f}s] {self.done}/{self.queue.total - self.repacked} groups done, "
              f"{len(self.running)} running, {self.failed} trial(s) failed | {text}", file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        job = trial.config["job"]
        self.running[trial.trial_id] = job["name"]
        size = len(job["members"])
        self._line(f"{job['name']} started" + (f" ({size} trials fused)" if size > 1 else "")
                   + (f", re-packed: {job['repacks'][-1]}" if job["repacks"] else ""))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("oom"):
            return
        job = trial.config["job"]
        for failure in result.get(FAILED_TRIALS) or []:
            self.failed += 1
            self._line(f"{failure.replace(': ', ' FAILED: ', 1)} (the traceback: its MLflow run's "
                       f"'error' tag)")
        if "epoch" not in result:
            return
        lo, hi = result.get("test_accuracy_min"), result.get("test_accuracy_max")
        shown = "" if lo is None else f", test {lo:.1f}%" if lo == hi else f", test {lo:.1f}-{hi:.1f}%"
        self._line(f"{job['name']} epoch {result.get('epoch')}/{job['members'][0]['config']['epochs']}{shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        kind, line = self.queue.outcome.pop(trial.trial_id, (None, None))
        if kind is None:
            self.done += 1
            self._line(f"{trial.config['job']['name']} finished")
            return
        self.repacked += kind == "re-packed"
        self.failed += len(trial.config["job"]["members"]) if kind in ("failed", "disk full") else 0
        self._line(line if kind != "disk full" else f"{trial.config['job']['name']} FAILED: a disk is "
                   f"full; stopping the sweep")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.failed += len(trial.config["job"]["members"])
        runs = ", ".join(m["run_id"] for m in trial.config["job"]["members"])
        self._line(f"{trial.config['job']['name']} FAILED: the error is the 'error' tag of MLflow "
                   f"run(s) {runs}")


def _resources(config: dict) -> tune.PlacementGroupFactory:
    res = config["job"]["resources"]
    return tune.PlacementGroupFactory([{"CPU": res.get("cpu", 1), "GPU": res.get("gpu", 0)}])


def _dirname(trial) -> str:
    job = trial.config["job"]
    return job["name"] + (f"-repack{len(job['repacks'])}" if job["repacks"] else "")


def run_jobs(jobs: list[Job], sweep_name: str, storage: str, max_failures: int,
             max_concurrent: int) -> str | None:
    """Run the jobs (one Tune trial each, with its own resources) on Ray Tune, handed out by
    a JobQueue. Each member's outcome is in its MLflow run; the caller reads it from there.
    Returns None, or the line naming a full disk that stopped the sweep (a group met it,
    or Tune failed writing its own files to a storage folder with no space left)."""
    if not jobs:
        return None
    # Tune asks a custom searcher for one pending trial at a time; let every job wait for
    # its resources at once, as a grid would, so no device idles while jobs start.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(min(len(jobs), 200)))
    queue, stopper = JobQueue(jobs, jobs[0].tracking_uri), StopOnFullDisk()
    trainable = tune.with_resources(tune_trial, _resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=queue, num_samples=-1,
                                    max_concurrent_trials=max_concurrent or None,
                                    reuse_actors=True,   # no new worker process (imports: ~10 s) per trial
                                    trial_name_creator=lambda t: t.config["job"]["name"],
                                    trial_dirname_creator=_dirname),
        run_config=tune.RunConfig(
            name=f"{sweep_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(storage) / "tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[Progress(queue)],
            stop=stopper,
            verbose=0),
    )
    disk.quiet("ray")
    try:
        tuner.fit()
    except Exception as err:     # Tune's own writes: its storage may be the disk that is full
        path = disk.no_space(err)
        full = [str(f) for f in disk.full_folders([Path(storage)])] if path is None else [path]
        if not full:
            raise
        return disk.describe(full[0], Path(storage), jobs[0].tracking_uri)
    return stopper.line or queue.full


def default_storage() -> str:
    return str(Path(os.environ.get("SWEEP_STORAGE", Path.cwd() / "ray_results")).resolve())
