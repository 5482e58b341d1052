"""`run`, step by step: plan, check everything that can fail before Ray starts, take the
sweep's lease, launch the fused groups on Tune, then say how each trial ended.

    plan = make_plan(sweep, uri, local_nodes())    # pure reads: MLflow states, groups
    preflight(plan, storage)                       # storage writable, datasets readable
    code = launch(plan, storage, options)          # Ray, runs, Tune; 130 when interrupted

Nothing is written before `launch` (so `--dry-run` and a failed preflight leave the folder
and the store as they were). Ctrl-C or SIGTERM stops the sweep: its unfinished runs are
marked KILLED, the command to resume is printed, and `run` exits 130.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrialError

from orchestrator import disk
from orchestrator.store import StoreUnreachable, read, write
from orchestrator.store.client import ensure_store, is_store_error
from orchestrator.store.uri import local_store

from . import costs, packing, provenance
from .lease import Lease, alive
from .packing import Devices, devices, pack
from .groups import group_forecast, group_name, group_shape, plan_groups, sizing_forecast
from .sweep import Sweep, SweepError, Trial

# A sweep forecast (orchestrator/run/costs.py) to take longer than this on a CPU-only
# cluster needs --yes: it was meant for GPUs.
CPU_HOURS_NEEDING_YES = 2.0
INTERRUPTED = 130           # the shell's exit code for a command stopped by Ctrl-C
NO_SPACE = 3                # `run` stopped because a disk (storage, tracking store) is full


@dataclass
class RunPlan:
    """What `run` will do: the sweep, where it logs, and the groups of trials still to run."""
    sweep: Sweep
    uri: str
    states: dict                     # trial_key -> read.RunState
    groups: list[list[Trial]]        # fused groups of the trials to run (new or resuming)
    at_once: Devices                 # how many groups run at once, and why (packing.devices)
    measured: dict                   # group shape -> peak bytes measured before (tracking)

    @property
    def trials(self) -> list[Trial]:
        return self.sweep.trials

    @property
    def todo(self) -> list[Trial]:
        return [t for g in self.groups for t in g]


@dataclass
class Options:
    address: str | None = None       # Ray cluster to join
    gpu_memory: float | None = None  # GB per GPU, instead of asking the cluster
    yes: bool = False                # start a paper-size sweep on CPUs
    command: str = ""                # how the user ran it: printed to resume


def make_plan(sweep: Sweep, uri: str, nodes: list) -> RunPlan:
    """What `run` would do on a cluster of `nodes` (packing.Node): the trials MLflow does
    not hold as FINISHED, in groups formed for the devices the cluster runs at once."""
    states = read.runs_by_key(uri, sweep.name)
    todo = [t for t in sweep.trials if t.key not in states or states[t.key].status != "FINISHED"]
    at_once = devices(nodes, sweep.resources, sweep.max_concurrent)
    return RunPlan(sweep, uri, states, plan_groups(todo, states, sweep.fuse, at_once.count), at_once,
                   read.measured_peaks(uri) if todo else {})


def local_nodes(gpus: int | None = None) -> list:
    """This machine as a cluster (what `plan` and `--dry-run` assume; they start no Ray):
    its cores, and `gpus` GPUs (default: those torch sees here)."""
    from trainer.config import available_cpus

    return [packing.Node(cpus=available_cpus(), gpus=costs.local_gpus() if gpus is None else gpus)]


def preflight(plan: RunPlan, storage: Path) -> None:
    """What would otherwise fail inside every trial, checked once, within seconds, before
    Ray starts: the storage folder and a local tracking store can be written (a full disk
    or a read-only mount is caught here, not after the first epoch), and the CIFAR files
    the trials read are whole. A tracking server was asked for /health by `plan`."""
    from trainer.cifar import check_cifar

    blocking = next((p for p in (storage, *storage.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SweepError(f"storage {storage}: {blocking} is a file, not a folder; pass --storage "
                         f"(or storage_path:) a folder every node can write")
    err = disk.write_probe(storage)
    if err is not None:
        raise SweepError(f"storage {storage}: cannot write in {err.filename} ({err.strerror}); "
                         f"pass --storage (or storage_path:) a folder every node can write"
                         + (", or free space there" if err.errno in disk.NO_SPACE else ""))
    store = local_store(plan.uri)
    if store is not None:
        folder = store.parent if plan.uri.startswith("sqlite:") else store   # else a file store
        err = disk.write_probe(folder) or (disk.open_for_writing(store) if store.is_file() else None)
        if err is not None:
            raise StoreUnreachable(
                f"tracking store {plan.uri}: cannot write {err.filename} ({err.strerror}); "
                + ("free space there, or " if err.errno in disk.NO_SPACE else "")
                + "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a store this machine can write")
    for dataset, data_dir in sorted({(t.config["dataset"], t.config["data_dir"]) for t in plan.todo}):
        if dataset != "synthetic":
            try:
                check_cifar(dataset, Path(data_dir).resolve())
            except TrialError as err:
                raise SweepError(str(err)) from None


def launch(plan: RunPlan, storage: Path, options: Options) -> int:
    """Take the lease, start (or join) Ray, create the runs of new trials, run every group
    on Tune; then say how each trial ended, and build the tables."""
    from . import driver              # Ray (~1 s to import): only when a sweep launches

    sweep, uri = plan.sweep, plan.uri
    lease = Lease(storage / sweep.name)
    note = lease.acquire()
    if note:
        print(f"note: {note}")
    try:
        holder, age = read.heartbeat(uri, sweep.name)
        if alive(holder, age) and holder.get("id") != lease.me["id"]:
            raise SweepError(f"another `run` of sweep {sweep.name} is active with another storage "
                             f"folder (pid {holder.get('pid')} on {holder.get('host')}, heartbeat "
                             f"{age:.0f} s ago in {uri}); wait for it, or stop it")
        cluster = driver.start_ray(options.address)
        nodes = driver.cluster_nodes(options.gpu_memory)
        plan = make_plan(sweep, uri, nodes)   # again, now that no other driver can change it,
        if not plan.todo:                     # for the cluster Ray sees
            print("nothing to run: every trial is FINISHED in MLflow (another run finished them).")
            return 0
        return _launch(plan, storage, options, lease, cluster, nodes)
    except Exception as err:            # the driver's own writes (new runs, the experiment)
        path = disk.no_space(err)
        if path is None:
            raise
        print(f"\nerror: {disk.describe(path, storage, uri)}; the sweep stopped. Free space there, "
              f"then this resumes every unfinished trial:\n  {options.command}", file=sys.stderr)
        return NO_SPACE
    finally:
        lease.release()


def _launch(plan: RunPlan, storage: Path, options: Options, lease: Lease, cluster: dict,
            nodes: list) -> int:
    from . import driver              # Ray (~1 s to import): only when a sweep launches

    sweep, uri = plan.sweep, plan.uri
    placements, warnings = pack(plan.groups, sizing_forecast(plan.measured), nodes, sweep.resources)
    asks = sorted({json.dumps(p.resources, sort_keys=True) for p in placements})
    print(f"on: Ray cluster with {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{len(placements)} group(s), each asking for {' or '.join(asks)}; "
          f"{min(plan.at_once.count, len(placements))} at once ({plan.at_once.why})")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    first = placements[0].resources
    groups = [p.group for p in placements]              # as packed: a group may be split
    if first.get("gpu"):
        for line in costs.forecast_lines(costs.group_costs(groups, plan.states, measured=plan.measured),
                                         int(cluster.get("GPU", 0)), memory=False):
            print(line)
    else:
        from trainer.calibration import rates

        threads = packing.threads(first)
        rows = costs.group_costs(groups, plan.states, "cpu", threads)
        hours = costs.cpu_wall_hours(rows, first.get("cpu", 1), cluster.get("CPU", 1))
        print(f"forecast on these CPUs (no GPU): {hours:,.1f} h wall, "
              f"{costs.total_hours(rows):,.1f} group-hours at {threads} thread(s) each; "
              + rates("cpu").note())
        if hours > CPU_HOURS_NEEDING_YES and not options.yes:
            print(f"error: this sweep would take about {hours:,.0f} hours on these CPUs "
                  f"(no GPU). Run it on a GPU cluster (README: 'Run on a GPU cluster'), or "
                  f"pass --yes to start anyway.", file=sys.stderr)
            return 2
    if ensure_store(uri):
        print(f"new MLflow store: {local_store(uri)}")
    experiment_id = write.ensure_experiment(uri, sweep.name, sweep.description)
    lease.beat(lambda me: write.set_heartbeat(uri, experiment_id, me))
    gpu_memory = min((n.gpu_memory for n in nodes if n.gpus), default=0)
    jobs = _jobs(plan, placements, storage, experiment_id, gpu_memory)
    with interrupt_guard() as interrupted:
        full = driver.run_jobs(jobs, sweep.name, str(storage), sweep.max_failures, sweep.max_concurrent)
    return _outcome(plan, experiment_id, interrupted, options, full)


def _jobs(plan: RunPlan, placements, storage: Path, experiment_id: str, gpu_memory: int) -> list:
    """One trial.Job per placement; a new trial's MLflow run is created here."""
    from .trial import Job, JobTrial

    sweep, uri = plan.sweep, plan.uri
    tags = provenance.provenance_tags()
    jobs = []
    for placement in placements:
        threads = packing.threads(placement.resources)
        members = []
        for t in placement.group:
            # What the trial runs with: absolute paths (trials run in other folders) and
            # the threads its placement gives it.
            config = {**t.config, "data_dir": str(Path(t.config["data_dir"]).resolve()), "threads": threads}
            run_id = (plan.states[t.key].run_id if t.key in plan.states
                      else write.create_run(uri, experiment_id, t, sweep, tags, config))
            members.append(JobTrial(t.key, t.name, config, run_id, str(storage / sweep.name / t.key)))
        jobs.append(Job(group_name(placement.group), members, uri, tags, placement.resources, gpu_memory,
                        group_forecast(placement.group).peak, group_shape(placement.group)))
    return jobs


def _outcome(plan: RunPlan, experiment_id: str, interrupted: dict, options: Options,
            full: str | None = None) -> int:
    uri, todo = plan.uri, plan.todo
    try:
        after = read.runs_by_key(uri, plan.sweep.name)
    except Exception as err:     # the store went away during the sweep
        print(f"\nerror: the tracking store {uri} does not answer ({type(err).__name__}: "
              f"{str(err).splitlines()[0][:200]}), so how the trials ended is unknown. When it "
              f"answers again, this resumes every unfinished trial:\n  {options.command}",
              file=sys.stderr)
        return 1
    unfinished = [t for t in todo if after.get(t.key) is None or after[t.key].status != "FINISHED"]
    if interrupted["signal"]:
        killed = write.mark_killed(uri, [after[t.key].run_id for t in unfinished if t.key in after])
        print(f"\ninterrupted ({interrupted['signal']}): {len(todo) - len(unfinished)} of {len(todo)} "
              f"trials finished, {len(killed)} marked KILLED. To resume them from their last "
              f"checkpoints, run again:\n  {options.command}", file=sys.stderr)
        return INTERRUPTED
    if full:
        return _stopped_full(plan, after, unfinished, full, options)
    print(f"\n{len(todo) - len(unfinished)} of {len(todo)} trials finished"
          + (f"; not finished: {', '.join(t.name for t in unfinished)}" if unfinished else ""))
    print(f"MLflow: {uri}\n  runs:  {runs_link(uri, experiment_id)}  "
          f"(mlflow ui --backend-store-uri {uri})")
    return 1 if unfinished else 0


def _stopped_full(plan: RunPlan, after: dict, unfinished: list, line: str, options: Options) -> int:
    """A disk filled up during the sweep: the unfinished runs (those the stopped groups
    left RUNNING or KILLED) are FAILED with `line`, which is printed once, with the resume."""
    left = [after[t.key].run_id for t in unfinished
            if t.key in after and after[t.key].status in ("RUNNING", "SCHEDULED", "KILLED")]
    try:
        write.fail_runs(plan.uri, left, line)
        marked = "their runs are FAILED with this error"
    except Exception as err:
        if disk.no_space(err) is None and not is_store_error(err):
            raise
        marked = "their runs stay RUNNING: the tracking store could not take an error tag"
    print(f"\nerror: {line}; the sweep stopped: {len(plan.todo) - len(unfinished)} of {len(plan.todo)} "
          f"trials finished, {len(unfinished)} not ({marked}). Free space there, then this resumes "
          f"them from their last checkpoints:\n  {options.command}", file=sys.stderr)
    return NO_SPACE


def runs_link(uri: str, experiment_id: str) -> str:
    """Where the runs are in the MLflow UI: its experiment page opens on the GenAI view."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextlib.contextmanager
def interrupt_guard():
    """Ctrl-C (SIGINT) and SIGTERM while Tune runs: remember which, and ask Tune to stop
    its trials (SIGUSR1, Tune's own graceful stop). A second Ctrl-C stops at once."""
    interrupted = {"signal": None}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"      # Tune would swallow it: rc 0
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if interrupted["signal"] or not tune_listens:
            interrupted["signal"] = interrupted["signal"] or signal.Signals(signum).name
            raise KeyboardInterrupt
        interrupted["signal"] = signal.Signals(signum).name
        print(f"\n{interrupted['signal']}: stopping the sweep (again to stop at once)...",
              file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGUSR1)
    for s in previous:
        signal.signal(s, handler)
    try:
        yield interrupted
    except KeyboardInterrupt:
        interrupted["signal"] = interrupted["signal"] or "SIGINT"
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
