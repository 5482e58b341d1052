"""The Ray Tune driver: one Tune trial per pending sweep trial, each one trainer run that
logs to its own MLflow run.

Recovery does not use Tuner.restore (it cannot change a search space, so a grid that grew
could not run): every `run` builds a fresh Tuner over the trials MLflow does not hold as
FINISHED, and every trial resumes from its own checkpoint folder,
`<storage>/<sweep>/<trial_key>/`, which survives the driver. Within one `run`, Tune's
`max_failures` restarts a failed trial, which resumes from the same folder.
"""
from __future__ import annotations

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

from . import tracking

RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0",       # trials keep the driver's folder; paths are absolute anyway
           "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AIR_NEW_OUTPUT": "0"}


@dataclass
class Job:
    """What one Tune trial needs, all of it plain data (it is pickled to a worker)."""
    key: str
    name: str
    config: dict
    run_id: str
    tracking_uri: str
    checkpoint_dir: str
    threads: int
    tags: dict


def start_ray(address: str | None) -> dict:
    """Join `address` (or RAY_ADDRESS) if given, else start a local Ray without a dashboard.
    Returns the cluster's total resources."""
    os.environ.update(RAY_ENV)
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
                 include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                 runtime_env={"env_vars": RAY_ENV})
    return ray.cluster_resources()


def plan_resources(requested: dict | None, cluster: dict) -> tuple[dict, str | None]:
    """Per-trial resources, and a warning when the sweep's request cannot be met.

    Default: one GPU (and one CPU) per trial where the cluster has GPUs, else one CPU.
    A request for GPUs on a cluster with none falls back to CPU with a warning instead of
    waiting forever for a GPU that will never come.
    """
    has_gpu = cluster.get("GPU", 0) > 0
    if requested is None:
        return ({"cpu": 1, "gpu": 1} if has_gpu else {"cpu": 1}), None
    res = {k: v for k, v in requested.items() if v}
    warning = None
    if res.get("gpu") and not has_gpu:
        warning = (f"the sweep asks for {res['gpu']} GPU per trial but the Ray cluster has "
                   f"none: running on CPU instead (resources {{cpu: {res.get('cpu', 1)}}})")
        res = {"cpu": res.get("cpu", 1)}
    cpus = cluster.get("CPU", 1)
    if res.get("cpu", 1) > cpus:
        warning = (f"the sweep asks for {res['cpu']} CPUs per trial but the cluster has "
                   f"{cpus:g}: using {cpus:g}")
        res["cpu"] = cpus
    return res, warning


def run_trial(job: Job) -> None:
    """The Tune trainable: train one trial, logging each epoch to MLflow and to Tune."""
    from trainer.config import Config
    from trainer.train import train

    logger = tracking.TrialLogger(job.tracking_uri, job.run_id)
    logger.start({**job.tags, **where_am_i()})
    try:
        cfg = Config.from_dict({**job.config, "threads": job.threads}, source=job.name)
        for i, m in enumerate(train(cfg, job.checkpoint_dir)):
            if i == 0:   # says whether this attempt resumed from a checkpoint, and from where
                logger.tag("resumed_from_epoch", m.epoch - 1)
            for name, obj in m.artifacts.items():
                logger.log_json(name, obj)
            if m.final:
                logger.log_final(m.epoch, m.metrics)
                break
            logger.log_epoch(m.epoch, m.metrics)   # MLflow first: a crash before Tune hears
            tune.report({"epoch": m.epoch, **m.metrics})   # of it only repeats the epoch
    except BaseException as err:
        logger.finish("FAILED", error="".join(traceback.format_exception(err)))
        raise
    logger.finish("FINISHED")


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
    run_trial(Job(**params["job"]))


class Progress(tune.Callback):
    """One line per event: trials done/running/failed, and the reporting trial's epoch and
    test accuracy. Tune's own table is switched off (verbose=0)."""

    def __init__(self, total: int, epochs: dict[str, int], out=sys.stderr):
        self.total, self.epochs, self.out = total, epochs, out
        self.done = self.failed = 0
        self.running: dict[str, str] = {}
        self.t0 = time.time()

    def _line(self, text: str) -> None:
        elapsed = time.time() - self.t0
        print(f"[{elapsed:6.0f}s] {self.done}/{self.total} done, {len(self.running)} running, "
              f"{self.failed} failed | {text}", file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial.config["job"]["name"]
        self.running[trial.trial_id] = name
        self._line(f"{name} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        job = trial.config["job"]
        acc = result.get("test_accuracy")
        shown = f", test {acc:.1f}%" if acc is not None else ""
        self._line(f"{job['name']} epoch {result.get('epoch')}/{self.epochs[job['key']]}{shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.done += 1
        self._line(f"{trial.config['job']['name']} finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.failed += 1
        self._line(f"{trial.config['job']['name']} FAILED (error in MLflow tag 'error' and "
                   f"{trial.local_path})")


def run_jobs(jobs: list[Job], sweep_name: str, resources: dict, storage: str,
             max_failures: int, max_concurrent: int) -> dict:
    """Run the jobs on Ray Tune; returns {"finished": n, "failed": [names]}."""
    if not jobs:
        return {"finished": 0, "failed": []}
    trainable = tune.with_resources(tune_trial, resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search([dataclasses.asdict(j) for j in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None,
                                    reuse_actors=True,   # no new worker process (imports: ~10 s) per trial
                                    trial_name_creator=lambda t: t.config["job"]["name"],
                                    trial_dirname_creator=lambda t: t.config["job"]["name"]),
        run_config=tune.RunConfig(
            name=f"{sweep_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(storage) / "tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[Progress(len(jobs), {j.key: j.config["epochs"] for j in jobs})],
            verbose=0),
    )
    results = tuner.fit()
    failed = [r.config["job"]["name"] for r in results if r.error is not None]
    return {"finished": len(jobs) - len(failed), "failed": failed}


def default_storage() -> str:
    return str(Path(os.environ.get("SWEEP_STORAGE", Path.cwd() / "ray_results")).resolve())
