"""Memory-aware packing: GPU shares from the forecast, on described (fake) clusters."""
from __future__ import annotations

import pytest

from orchestrator.run.packing import (CUDA_RESERVE, GB, HEADROOM, Node, PackingError, allocator_cap,
                                      devices, needed_bytes, pack, repacked)
from orchestrator.run.groups import fuse_groups
from orchestrator.run.sweep import Trial
from trainer.config import Config
from trainer.estimates import Forecast


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
    many = [[trial(f"t{i}", seed=i)] for i in range(200)]       # enough that spreading does not bind
    placements, warnings = pack(many, by_peak(peak_gb), nodes, requested=None)
    assert {str(p.resources) for p in placements} == {str(expected)} and warnings == []
    assert placements[0].need == int(peak_gb * GB * HEADROOM) + CUDA_RESERVE


@pytest.mark.parametrize("groups,gpus,share", [(1, 1, 1), (3, 8, 1), (8, 8, 1), (9, 8, 0.5),
                                                (54, 8, 0.1428), (300, 8, 0.0625)])
def test_groups_spread_over_the_gpus_before_two_share_one(groups, gpus, share):
    """Ray puts fractional requests on the first GPU they fit (tests/test_placement.py
    shows it): a share is never below 1/ceil(groups/GPUs), memory and CPUs allowing."""
    nodes = [Node(cpus=16 * gpus, gpus=gpus, gpu_memory=80 * GB)]
    placements, _ = pack([[trial(f"t{i}", seed=i)] for i in range(groups)], by_peak(0.1), nodes, None)
    assert {p.resources["gpu"] for p in placements} == {share}


@pytest.mark.parametrize("nodes,requested,max_concurrent,count,why", [
    ([Node(cpus=1)], None, 0, 1, "1 CPU core(s), 1 per group"),
    ([Node(cpus=2)], None, 0, 2, "2 CPU core(s), 1 per group"),
    ([Node(cpus=8)], None, 0, 8, "8 CPU core(s), 1 per group"),
    ([Node(cpus=8)], {"cpu": 2}, 0, 4, "8 CPU core(s), 2 per group"),
    ([Node(cpus=16, gpus=1, gpu_memory=80 * GB)], None, 0, 1, "1 GPU(s), a group on each"),
    ([Node(cpus=16, gpus=2, gpu_memory=80 * GB)] * 2, None, 0, 4, "4 GPU(s), a group on each"),
    ([Node(cpus=16, gpus=4, gpu_memory=80 * GB)], {"gpu": 0.5, "cpu": 1}, 0, 8, "resources.gpu=0.5"),
    ([Node(cpus=8)], None, 3, 3, "max_concurrent: 3"),
], ids=["1-core", "2-cores", "8-cores", "8-cores-2-each", "1-gpu", "4-gpus", "4-gpus-halves",
        "max-concurrent"])
def test_the_devices_that_run_a_group_at_once(nodes, requested, max_concurrent, count, why):
    d = devices(nodes, requested, max_concurrent)
    assert d.count == count and why in d.why


def placement_sweep() -> list[Trial]:
    """The benchmark's sweep (BENCHMARKS.md, placement): 8 trials, W=16, regularizer on and
    off, 4 seeds: one class of trials that may share a group."""
    return [trial(f"{'reg' if reg else 'noreg'}-s{seed}", width=16, batch_size=5, regularizer=reg, seed=seed)
            for reg in (False, True) for seed in range(4)]


@pytest.mark.parametrize("nodes,sizes", [
    ([Node(cpus=1)], [8]),
    ([Node(cpus=2)], [4, 4]),
    ([Node(cpus=8)], [1] * 8),
    ([Node(cpus=16, gpus=1, gpu_memory=80 * GB)], [8]),
    ([Node(cpus=64, gpus=4, gpu_memory=80 * GB)], [2, 2, 2, 2]),
], ids=["1-core", "2-cores", "8-cores", "1-gpu", "4-gpus"])
def test_the_group_count_follows_the_cluster_and_mixes_the_regularized(nodes, sizes):
    groups = fuse_groups(placement_sweep(), fuse=8, at_once=devices(nodes, None).count)
    assert [len(g) for g in groups] == sizes
    if len(groups) > 1 and len(groups[0]) > 1:   # as many regularized members as not, in each group
        assert {sum(t.config["regularizer"] for t in g) for g in groups} == {len(groups[0]) // 2}
    placements, _ = pack(groups, by_peak(0.1), nodes, None)
    if nodes[0].gpus:                       # one group per GPU: a whole card each
        assert {p.resources["gpu"] for p in placements} == {1}
    else:                                   # the cores in equal parts
        assert {p.resources["cpu"] for p in placements} == {max(1, int(nodes[0].cpus) // len(groups))}


def test_one_group_on_a_cpu_only_machine_gets_all_its_cores():
    placements, _ = pack([placement_sweep()], by_peak(0.1), [Node(cpus=2)], None)
    assert placements[0].resources == {"cpu": 2}


@pytest.mark.parametrize("resources,size,how,after", [
    ({"cpu": 1, "gpu": 0.0333}, 4, "share 0.0333 -> 0.0666 GPU", [(4, {"cpu": 1, "gpu": 0.0666})]),
    ({"cpu": 5, "gpu": 0.3333}, 4, "share 0.3333 -> 1 GPU", [(4, {"cpu": 5, "gpu": 1})]),
    ({"cpu": 16, "gpu": 1}, 5, "split in halves of 2 and 3", [(2, {"cpu": 16, "gpu": 1}), (3, {"cpu": 16, "gpu": 1})]),
    ({"cpu": 1}, 4, "split in halves of 2 and 2", [(2, {"cpu": 1}), (2, {"cpu": 1})]),
], ids=["small-share-doubles", "third-to-whole", "whole-gpu-splits", "cpu-splits"])
def test_an_oom_repacks_never_at_the_same_packing(resources, size, how, after):
    members = list(range(size))
    said, parts = repacked(resources, members)
    assert said == how and [(len(m), r) for m, r in parts] == after
    assert sorted(x for m, _ in parts for x in m) == members


def test_one_trial_on_a_whole_gpu_has_nothing_left_to_repack_and_the_cap_follows_the_share():
    assert repacked({"cpu": 16, "gpu": 1}, ["only"]) is None
    assert allocator_cap({"cpu": 1, "gpu": 0.25}, 80 * GB) == 20 * GB - CUDA_RESERVE
    assert allocator_cap({"cpu": 1}, 80 * GB) is None and allocator_cap({"gpu": 0.5}, 0) is None


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


def test_without_gpus_groups_share_the_cores_and_a_gpu_request_falls_back():
    cpus = [Node(cpus=8), Node(cpus=32)]
    placements, warnings = pack([[trial("a")]], by_peak(1.0), cpus, None)
    assert placements[0].resources == {"cpu": 32} and not warnings    # one group: the largest node
    placements, _ = pack([[trial(f"t{i}", seed=i)] for i in range(10)], by_peak(1.0), cpus, None)
    assert {p.resources["cpu"] for p in placements} == {4}            # 40 cores / 10 groups
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
    from orchestrator.run.groups import group_forecast
    placements, _ = pack([formed] * 16, group_forecast, ONE_80GB, None)   # 16 such groups
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
    for g in groups[:3]:                                           # each width in every group
        assert sorted(t.config["width"] for t in g) == [16, 16, 16, 32, 32, 32]
        assert [t.name for t in g] == sorted((t.name for t in g), key=[t.name for t in trials].index)
    assert sorted(t.name for g in groups[:3] for t in g) == sorted(t.name for t in trials[:18])
    assert [len(g) for g in fuse_groups(trials, fuse=1)] == [1] * 20
    # 8 devices: the 18 split further (the class with most work per group), never the lone ones
    assert sorted(len(g) for g in fuse_groups(trials, fuse=8, at_once=8)) == [1, 1, 3, 3, 3, 3, 3, 3]


def test_a_resumed_trial_keeps_the_group_it_trained_in():
    """Float32 rounding depends on a group's members, so a resume that regrouped them would
    change their numbers: trials that trained some epochs go back into their recorded group
    (in its order, less those that finished), the trials not started are grouped anew."""
    from orchestrator.run.groups import plan_groups
    from orchestrator.store.read import RunState

    trials = [trial(f"b5-{i}", batch_size=5, seed=i, width=(32, 16)[i % 2]) for i in range(8)]
    first = ("b5-5", "b5-0", "b5-3", "b5-6")                  # as the first run grouped them
    states = {t.key: RunState(t.name, "KILLED", 2, {}, first) for t in trials if t.name in first}
    states[trials[3].key].status = "FINISHED"                 # b5-3 finished since: not to run
    states[trials[7].key] = RunState("b5-7", "KILLED", 0, {}, ("b5-7", "b5-1"))   # never trained
    todo = [t for t in trials if t.name != "b5-3"]
    groups = plan_groups(todo, states, fuse=8)
    assert [[t.name for t in g] for g in groups] == [["b5-1", "b5-2", "b5-4", "b5-7"], ["b5-5", "b5-0", "b5-6"]]
    assert [len(g) for g in fuse_groups(todo, fuse=8)] == [7]     # what forming anew would do
    # two devices: the kept group counts as one of them, the fresh trials fill the other
    assert [len(g) for g in plan_groups(todo, states, fuse=8, at_once=2)] == [4, 3]
    assert [len(g) for g in plan_groups(todo, states, fuse=8, at_once=3)] == [2, 2, 3]
    assert plan_groups(todo, {}, fuse=8) == fuse_groups(todo, fuse=8)
