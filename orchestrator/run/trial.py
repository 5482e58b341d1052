"""One Tune trial: a fused group of trials (a group of one for a trial alone) trained by
`trainer.train_group`, each member logging to its own MLflow run.

    Job, JobTrial      what the driver hands a Tune trial (plain data, pickled to a worker)
    run_group(job)     the trainable: start the members' runs, train, end each run
    oom_line(job, ..)  the line that says a group ran out of CUDA memory

A member that fails alone is FAILED and the others go on; the group's inputs failing is
not retried; an out-of-memory group goes back to SCHEDULED for the JobQueue to re-pack
(queue.py); a full disk ends the trial with a `disk_full` result, which stops the sweep;
anything else (a killed worker) fails the group and Tune retries it (max_failures), each
member resuming from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from orchestrator import disk
from orchestrator.store import GROUP_SHAPE_TAG, GROUP_TAG, MEASURED_PEAK, write

from . import packing

FAILED_TRIALS = "failed_trials"   # a Tune result's "name: why" of each member that failed alone
DISK_FULL = "disk_full"           # a Tune result's line naming the full disk (disk.describe)
OOM = "oom"                       # a Tune result's flag: the group ran out of CUDA memory


@dataclass
class JobTrial:
    """One trial of a job's group, as plain data (a Job is pickled to a worker); its config
    is what it runs with (absolute paths, the threads of its placement)."""
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
    tags: dict
    resources: dict          # what it asks of the cluster, {"cpu": n, "gpu": share}
    gpu_memory: int = 0      # bytes of the GPU its share is of (0: no GPU)
    forecast_peak: int = 0   # bytes: the memory forecast of its step (trainer/forecast.py)
    shape: str = ""          # trainer.estimates.shape_id of its members' configs
    repacks: list = dataclasses.field(default_factory=list)   # what each re-pack after an OOM changed

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{**d, "members": [JobTrial(**m) for m in d["members"]]})

    @property
    def memory_cap(self) -> int | None:
        return packing.allocator_cap(self.resources, self.gpu_memory)

    def placement_tags(self) -> dict:
        """What each member's run records of the placement it trains in."""
        cap = self.memory_cap
        return {"gpu_share": self.resources.get("gpu", 0), "cpus": self.resources.get("cpu", 1),
                "memory_cap_mb": "none" if cap is None else round(cap / 2 ** 20),
                "forecast_peak_mb": round(self.forecast_peak / 2 ** 20),
                GROUP_SHAPE_TAG: self.shape,
                "repacked": "; ".join(self.repacks) or "no"}


def run_group(job: Job) -> None:
    """The Tune trainable: train the group's trials together, each logging every epoch to
    its own MLflow run; report the group's progress to Tune once per epoch. A member
    FINISHED by an earlier attempt is not trained again; a stopped sweep (Ctrl-C) leaves
    KILLED runs. How each failure ends: the module docstring."""
    import torch

    from trainer.errors import TrialError

    loggers: dict = {}          # member name -> its run's TrialLogger, once started
    running: set[str] = set()   # the members started and not ended
    try:
        members = _start_runs(job, loggers, running)
        if members:
            _train(job, members, loggers, running)
    except TrialError as err:                 # the group's inputs: a retry would repeat it
        _end_runs(loggers, running, "FAILED", _error_text(err))
        tune.report({"members_running": 0, FAILED_TRIALS: [_failure(n, err) for n in sorted(running)]})
    except (KeyboardInterrupt, SystemExit):   # Tune stopping the sweep
        _end_runs(loggers, running, "KILLED")
        raise
    except torch.cuda.OutOfMemoryError as err:   # the JobQueue re-packs it: not a Tune retry
        _requeue(loggers, running, err)
    except BaseException as err:
        path = disk.no_space(err)
        if path is None:                       # a killed worker, a bug: Tune retries the group
            _end_runs(loggers, running, "FAILED", _error_text(err))
            raise
        line = disk.describe(path, Path(job.members[0].checkpoint_dir).parent.parent, job.tracking_uri)
        _end_runs(loggers, running, "FAILED", line, store_may_be_full=True)
        tune.report({"members_running": 0, DISK_FULL: line})


def _start_runs(job: Job, loggers: dict, running: set) -> list[JobTrial]:
    """Mark each member's run RUNNING with this attempt's tags (those FINISHED before are
    left out); returns the members to train."""
    names = [m.name for m in job.members]
    members = []
    for m in job.members:
        logger = write.TrialLogger(job.tracking_uri, m.run_id)
        if logger.status() == "FINISHED":
            continue
        others = [n for n in names if n != m.name]
        logger.start({**job.tags, **where_am_i(), **job.placement_tags(),
                      "fused_with": ",".join(others) or "none", "fused_group_size": len(job.members),
                      GROUP_TAG: ",".join(names)})
        loggers[m.name] = logger
        members.append(m)
        running.add(m.name)
    return members


def _end_runs(loggers: dict, running: set, status: str, error: str | None = None,
              store_may_be_full: bool = False) -> None:
    """End the runs of the members still running (a full tracking store takes no tag either:
    with `store_may_be_full`, a run it refuses is left for the next `run` to resume)."""
    for name in running:
        try:
            loggers[name].finish(status, error=error)
        except Exception:
            if not store_may_be_full:
                raise


def _requeue(loggers: dict, running: set, err: BaseException) -> None:
    """Out of CUDA memory: the members go back to SCHEDULED and the trial ends with an `oom`
    result, which the JobQueue re-packs."""
    import torch

    reached = 0
    if torch.cuda.is_available():
        reached = torch.cuda.max_memory_reserved()
        torch.cuda.empty_cache()       # for the next job this worker process runs
    for name in running:
        loggers[name].requeue(_error_text(err))
    tune.report({OOM: 1, "oom_reached_mb": reached / 2 ** 20, "oom_error": str(err).splitlines()[0][:300],
                 "members_running": 0})


def _train(job: Job, members: list[JobTrial], loggers: dict, running: set) -> None:
    """Train the members (not FINISHED yet) together, logging each event to its run."""
    from trainer.config import Config
    from trainer.train import MemberFailed, train_group

    cfgs = [Config.from_dict(m.config, source=m.name) for m in members]
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
        _report_epoch(events, len(running), failed)            # Tune hears only repeats it


def _against_forecast(metrics: dict, job: Job) -> dict:
    """The group's measured peak beside its forecast (on a GPU: a CPU measures none)."""
    measured = metrics.get(MEASURED_PEAK)
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


def _failure(name: str, err: BaseException) -> str:
    """"w16-b5-reg-s0: <the error's first line>" for the progress line (MLflow has the rest)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{name}: {first[:300]}"


def _report_epoch(events: list, running: int, failed: list[str]) -> None:
    """One Tune result per epoch of the group: the lowest epoch reached, the test
    accuracies measured and the members that failed (queue.SweepProgress prints them)."""
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
    """What Tune calls: the job its searcher (queue.JobQueue) handed out, trained."""
    run_group(Job.from_dict(params["job"]))
