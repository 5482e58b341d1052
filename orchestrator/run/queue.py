"""What the driver's Tune run is made of besides the trainable: the searcher that hands
out the jobs and re-packs a group that ran out of memory (JobQueue), the stopper that ends
the sweep once a disk is full (StopOnFullDisk), and the progress lines `run` prints
(SweepProgress).
"""
from __future__ import annotations

import collections
import dataclasses
import sys
import time

from ray import tune
from ray.tune.search import Searcher

from orchestrator.store import write

from . import packing
from .packing import MAX_REPACKS
from .groups import group_name
from .trial import DISK_FULL, FAILED_TRIALS, OOM, Job, oom_line


class JobQueue(Searcher):
    """The Tune searcher that hands out the jobs in the order given, and takes back a
    group that ran out of CUDA memory: re-packed (packing.repacked) at the front of the
    queue, or, after MAX_REPACKS or with nothing left to change, its trials FAILED in MLflow
    with the out-of-memory line. `outcome[trial_id]` is ("re-packed" or "failed", that
    line), for SweepProgress to print. After a group meets a full disk (`full`: its line) it
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
        if job is None or error or not (result or {}).get(OOM):
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
            write.fail_runs(self.uri, [m.run_id for m in job.members], line)
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


class SweepProgress(tune.Callback):
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
        if result.get(OOM):
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
