"""Memory-aware packing: GPU shares from the forecast, on described (fake) clusters."""
from __future__ import annotations

import pytest

from orchestrator.run.packing import CUDA_RESERVE, GB, HEADROOM, Node, PackingError, needed_bytes, pack
from orchestrator.run.plan import fuse_groups
from orchestrator.run.sweep import Trial
from trainer.config import Config
from trainer.forecast import Forecast


def trial(name: str, **config) -> Trial:
    return Trial(name, name, Config.from_dict(config).to_dict(), {})


def by_peak(peak_per_trial: float):
    """A forecast of `peak_per_trial` GB per member (groups add up, as fused ones do)."""
    return lambda group: Forecast(model=0, data=0, peak=int(peak_per_trial * GB * len(group)), forward_peak=0)


ONE_80GB = [Node(cpus=16, gpus=1, gpu_memory=80 * GB, name="gpu-node")]


@pytest.mark.parametrize("peak_gb,nodes,expected", [
    # need = 2 x 1.2 + 1.07 = 3.47 GB: 23 fit in 80 GB, but 16 CPUs allow 16 -> 1/16 each
    (2.0, ONE_80GB, {"cpu": 1, "gpu": 0.0625}),
    # need = 20 x 1.2 + 1.07 = 25.1 GB: 3 fit -> 1/3 (4 decimals, rounded down) and 5 CPUs
    (20.0, ONE_80GB, {"cpu": 5, "gpu": 0.3333}),
    # more than half a card: a whole GPU and all 16 CPUs of its node
    (45.0, ONE_80GB, {"cpu": 16, "gpu": 1}),
    # 8 GPUs, 96 CPUs: 12 CPUs per GPU cap the share at 1/12
    (2.0, [Node(cpus=96, gpus=8, gpu_memory=80 * GB)], {"cpu": 1, "gpu": 0.0833}),
], ids=["small-cpu-bound", "third", "whole-card", "8-gpus"])
def test_the_share_follows_the_forecast_and_the_node(peak_gb, nodes, expected):
    placements, warnings = pack([[trial("a")]], by_peak(peak_gb), nodes, requested=None)
    assert [p.resources for p in placements] == [expected] and warnings == []
    assert placements[0].need == int(peak_gb * GB * HEADROOM) + CUDA_RESERVE


def test_a_trial_larger_than_the_largest_gpu_is_refused_before_launch():
    with pytest.raises(PackingError) as err:
        pack([[trial("w32-b5-huge-s0")]], by_peak(70.0), ONE_80GB + [Node(8, 1, 24 * GB)], None)
    message = str(err.value)
    assert "w32-b5-huge-s0" in message and "85.1 GB" in message          # 70 x 1.2 + 1.07
    assert "80.0 GB" in message and "gpu-node" in message and "batch_size" in message


def test_a_fused_group_too_large_for_one_gpu_is_split_until_it_fits():
    group = [trial(f"t{i}", seed=i) for i in range(6)]
    placements, _ = pack([group], by_peak(15.0), ONE_80GB, None)     # 6 x 15 GB = 90: too much
    assert [len(p.group) for p in placements] == [3, 3]               # 3 x 15 x 1.2 + 1 = 55 GB
    assert [p.resources for p in placements] == [{"cpu": 16, "gpu": 1}] * 2


def test_without_gpus_a_group_gets_one_cpu_and_a_gpu_request_falls_back():
    cpus = [Node(cpus=8), Node(cpus=32)]
    placements, warnings = pack([[trial("a")]], by_peak(1.0), cpus, None)
    assert placements[0].resources == {"cpu": 1} and not warnings
    placements, warnings = pack([[trial("a")]], by_peak(1.0), cpus, {"gpu": 0.5, "cpu": 64})
    assert placements[0].resources == {"cpu": 32}                     # the largest NODE, not the sum
    assert "none: running on CPU" in warnings[0] and "largest node has 32" in warnings[1]


def test_an_explicit_share_too_small_for_the_forecast_is_warned_about():
    placements, warnings = pack([[trial("a")]], by_peak(10.0), ONE_80GB, {"gpu": 0.1, "cpu": 2})
    assert placements[0].resources == {"gpu": 0.1, "cpu": 2}          # the sweep's choice stands
    assert "may run out of GPU memory" in warnings[0] and "8.0 GB" in warnings[0]


def test_real_forecasts_pack_a_paper_group_onto_an_80gb_gpu():
    """A fused group of 6 full-width trials at batch 5 (the paper's Table 1 cells)."""
    group = [trial(f"t{i}", dataset="cifar10", width=(32, 16, 8)[i % 3], regularizer=bool(i % 2), seed=i)
             for i in range(6)]
    (formed,) = fuse_groups(group, fuse=8)
    from orchestrator.run.plan import group_forecast
    placements, _ = pack([formed], group_forecast, ONE_80GB, None)
    f = group_forecast(formed)
    assert 0.5 * GB < f.peak < 2 * GB                                  # ~0.9 GB measured here
    assert placements[0].resources == {"cpu": 1, "gpu": 0.0625}        # CPU-bound: 16 per card
    assert needed_bytes(f) < 80 * GB / 16


def test_groups_form_from_trials_that_may_share_one_and_balance_their_sizes():
    trials = ([trial(f"b5-{i}", batch_size=5, seed=i, width=(32, 16)[i % 2]) for i in range(18)]
              + [trial("b9", batch_size=9)]
              + [trial("timeline", batch_size=5, memory_timeline=True, seed=99)])
    groups = fuse_groups(trials, fuse=8)
    assert [len(g) for g in groups] == [6, 6, 6, 1, 1]            # 18 in 3 even groups, not 8+8+2
    assert [g[0].name for g in groups[3:]] == ["b9", "timeline"]  # other batch size; a timeline alone
    assert [t.name for g in groups[:3] for t in g] == [t.name for t in trials[:18]]   # sweep order
    assert [len(g) for g in fuse_groups(trials, fuse=1)] == [1] * 20
