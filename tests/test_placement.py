"""Where Ray puts the groups `run` packs, on a simulated cluster of 4 GPUs (Ray's own
resource accounting, no real GPU): groups spread over the GPUs before two share one.

Ray places fractional GPU requests on the first GPU they fit (ray#28679, #48012): three
1/30 shares all land on GPU 0 while three GPUs idle. packing.pack therefore never asks for
less than 1/ceil(groups/GPUs) of a card; these tests run the shares through Tune's
placement groups (driver._resources) and the JobQueue, and read the GPU each trial got.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from ray import tune

from orchestrator.run import driver
from orchestrator.run.queue import JobQueue
from orchestrator.run.trial import Job
from orchestrator.run.packing import GB, Node, pack
from orchestrator.run.sweep import Trial
from trainer.config import Config
from trainer.estimates import Forecast

pytestmark = pytest.mark.slow      # Ray and a Tune run per test: ~30 s on 2 cores

GPUS = 4


@pytest.fixture(scope="module")
def four_gpus():
    ray.init(num_cpus=2 * GPUS, num_gpus=GPUS, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": driver.RAY_ENV})
    yield [Node(cpus=2 * GPUS, gpus=GPUS, gpu_memory=80 * GB)]
    ray.shutdown()


def where_trials_ran(resources: list[dict], folder: Path) -> list[int]:
    """Run one Tune trial per `resources` at once (each waits until all have started, so
    they hold their GPUs together); the GPU id each one got."""
    def probe(config):
        (folder / f"{tune.get_context().get_trial_id()}.started").touch()
        deadline = time.time() + 300          # generous: a loaded machine starts workers slowly
        while len(list(folder.glob("*.started"))) < len(resources) and time.time() < deadline:
            time.sleep(0.2)
        tune.report({"gpu": int(ray.get_gpu_ids()[0]), "together": len(list(folder.glob("*.started")))})

    jobs = [Job(f"g{i}", [], "unused", {}, r) for i, r in enumerate(resources)]
    tuner = tune.Tuner(tune.with_resources(probe, driver._resources),
                       tune_config=tune.TuneConfig(search_alg=JobQueue(jobs, "unused"), num_samples=-1),
                       run_config=tune.RunConfig(storage_path=str(folder / "tune"), verbose=0))
    results = [r.metrics for r in tuner.fit()]
    assert all(r["together"] == len(resources) for r in results), results
    return sorted(r["gpu"] for r in results)


def small_groups(n: int) -> list[list[Trial]]:
    config = Config.from_dict({}).to_dict()
    return [[Trial(f"t{i}", f"t{i}", {**config, "seed": i}, {})] for i in range(n)]


def tiny_forecast(group) -> Forecast:      # 0.1 GB: 1/30 of an 80 GB card would do
    return Forecast(model=0, data=0, peak=GB // 10, forward_peak=0)


def test_ray_alone_puts_small_shares_on_one_gpu(four_gpus, tmp_path):
    """What `run` used to ask for (the forecast's share alone): all three on GPU 0."""
    assert where_trials_ran([{"cpu": 1, "gpu": 0.0333}] * 3, tmp_path) == [0, 0, 0]


@pytest.mark.parametrize("groups,per_gpu", [(3, 1), (8, 2)])
def test_packed_groups_spread_over_the_four_gpus(four_gpus, tmp_path, groups, per_gpu):
    placements, _ = pack(small_groups(groups), tiny_forecast, four_gpus, None)
    gpus = where_trials_ran([p.resources for p in placements], tmp_path)
    assert max(gpus.count(g) for g in set(gpus)) == per_gpu and len(set(gpus)) == min(groups, GPUS)
