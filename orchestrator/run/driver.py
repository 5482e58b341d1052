"""The Ray Tune driver: Ray started or joined, and one Tune trial per fused group of
pending trials (a group of one for a trial alone; trial.py), handed out by a JobQueue
(queue.py).

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

import os
import time
from pathlib import Path

import ray
from ray import tune

from orchestrator import disk

from .packing import GB, Node, PackingError
from .queue import JobQueue, StopOnFullDisk, SweepProgress
from .trial import Job, tune_trial

RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0",       # trials keep the driver's folder; paths are absolute anyway
           "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AIR_NEW_OUTPUT": "0"}
# The driver's settings for talking to MLflow, handed to every trial process.
PASSED_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "SWEEP_TRACKING_RETRY_S")


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
            callbacks=[SweepProgress(queue)],
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
