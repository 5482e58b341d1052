"""What each Tune trial (a fused group, or one trial) asks of the cluster, from its memory
forecast (trainer/forecast.py), so a user need not guess GPU fractions or find out by OOM.

    nodes = [Node(cpus=16, gpus=1, gpu_memory=80 * 10**9)]        # driver.cluster_nodes()
    at_once = devices(nodes, sweep.resources, sweep.max_concurrent)   # groups to form, at least
    placements, warnings = pack(groups, forecast, nodes, requested=None)
    allocator_cap(placement.resources, gpu_memory)                # the bytes its process may use
    repacked(placement.resources, members)                        # after an OOM: a new packing

On a cluster with GPUs and no `resources` in the sweep, a group asks for the share of one
GPU its forecast needs (with headroom for what a forecast cannot see), rounded to 1/k so
that k groups fill a card exactly, and for the CPU cores of one GPU's share of its node
(at least one). Groups spread over the GPUs before two share one: Ray places fractional
requests on the first GPU they fit (ray#28679), so three 1/30 shares on eight GPUs would
share GPU 0 while seven idle; a share is therefore never smaller than 1/ceil(groups/GPUs).
A group too large for the largest GPU is split in halves until it fits; a single trial
that does not fit is refused before anything launches. On a CPU-only cluster a group gets
an equal part of the cores (at least one). Pure functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from trainer.estimates import Forecast

from .groups import group_name

HEADROOM = 1.2                # x the forecast peak: fragmentation, cuDNN/cuBLAS workspaces
CUDA_RESERVE = 1 << 30        # bytes per process outside the allocator: CUDA context, handles
GB = 10 ** 9


MAX_REPACKS = 3               # re-packings of a group after CUDA OOMs before its trials FAIL


class PackingError(ValueError):
    """A trial cannot fit any GPU of the cluster: the message names it, its need and the GPU."""


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float = 0
    gpu_memory: int = 0       # bytes of each of its GPUs
    name: str = ""


@dataclass
class Placement:
    group: list               # the trials (orchestrator.run.sweep.Trial) of one Tune trial
    resources: dict           # {"cpu": n, "gpu": share}, as tune.with_resources takes it
    need: int = 0             # bytes of GPU memory it asks for (0 on a CPU-only cluster)


@dataclass(frozen=True)
class Devices:
    """How many groups the cluster runs at the same time, and why that many."""
    count: int
    why: str


def devices(nodes: list[Node], requested: dict | None, max_concurrent: int = 0) -> Devices:
    """The devices that can each run a group at once: the GPUs (or, for a sweep that sets
    `resources`, the shares of them it asks for), else the CPU cores at the group's CPUs
    each; at most `max_concurrent` (0: no limit)."""
    gpus = sum(n.gpus for n in nodes)
    res = {k: v for k, v in (requested or {}).items() if v}
    cpu = res.get("cpu", 1)
    if gpus and res.get("gpu"):
        count = sum(int(min(n.gpus // res["gpu"], n.cpus // cpu)) for n in nodes if n.gpus)
        why = f"{gpus:g} GPU(s) at resources.gpu={res['gpu']:g} per group"
    elif gpus:
        count, why = int(gpus), f"{gpus:g} GPU(s), a group on each before two share one"
    else:
        count = sum(int(n.cpus // cpu) for n in nodes)
        why = f"{sum(n.cpus for n in nodes):g} CPU core(s), {cpu:g} per group"
    count = max(1, count)
    if max_concurrent and max_concurrent < count:
        count, why = max_concurrent, f"max_concurrent: {max_concurrent} ({why})"
    return Devices(count, why)


def needed_bytes(forecast: Forecast) -> int:
    """GPU memory to reserve for a process whose step peaks at forecast.peak."""
    return int(forecast.peak * HEADROOM) + CUDA_RESERVE


def pack(groups: list[list], forecast: Callable[[list], Forecast], nodes: list[Node],
         requested: dict | None) -> tuple[list[Placement], list[str]]:
    """One Placement per Tune trial, and warnings. `forecast(group) -> Forecast` (a
    function, so split groups can be forecast too); `requested`: the sweep's resources."""
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    if requested is not None or not gpu_nodes:
        return _as_requested(groups, requested, gpu_nodes, nodes, forecast)
    largest = max(gpu_nodes, key=lambda n: n.gpu_memory)
    smallest = min(n.gpu_memory for n in gpu_nodes)
    cpus_per_gpu = min(n.cpus / n.gpus for n in gpu_nodes)
    warnings = []
    if smallest != largest.gpu_memory:
        warnings.append(f"GPUs of different sizes ({smallest / GB:.0f} to {largest.gpu_memory / GB:.0f} GB): "
                        f"shares are sized for the smallest")
    placements = []
    fitting = _fitting(groups, forecast, largest)
    spread = math.ceil(len(fitting) / sum(n.gpus for n in gpu_nodes))   # groups per GPU, at most
    for group in fitting:
        need = needed_bytes(forecast(group))
        share = min(1.0, need / smallest)
        per_gpu = max(1, min(math.floor(1 / share), math.floor(cpus_per_gpu), spread))
        cpu = max(1, math.floor(cpus_per_gpu / per_gpu))
        placements.append(Placement(group, {"cpu": cpu, "gpu": gpu_share(per_gpu)}, need))
    return placements, warnings


def gpu_share(per_gpu: int) -> float:
    """The share of a GPU that lets `per_gpu` groups fill it (Ray takes 4 decimals)."""
    return math.floor(10_000 / per_gpu) / 10_000 if per_gpu > 1 else 1


def threads(resources: dict) -> int:
    """The torch threads of a group's process: the CPU cores its placement holds."""
    return max(1, int(resources.get("cpu", 1)))


def allocator_cap(resources: dict, gpu_memory: int) -> int | None:
    """The bytes a group's CUDA caching allocator may hold: its share of the (smallest) GPU
    less what a process keeps outside the allocator. None: no GPU, or its size unknown."""
    if not resources.get("gpu") or not gpu_memory:
        return None
    return int(resources["gpu"] * gpu_memory) - CUDA_RESERVE


def repacked(resources: dict, members: list) -> tuple[str, list[tuple[list, dict]]] | None:
    """How to run a group again after it ran out of CUDA memory, never at the same packing:
    (what changed, [(members, resources)]). A share below a whole GPU doubles; a group on a
    whole GPU (or on a CPU) is split in halves. None: one trial on a whole GPU, so nothing
    is left to change. The caller bounds how often (MAX_REPACKS)."""
    gpu = resources.get("gpu", 0)
    if 0 < gpu < 1:
        per_gpu = max(1, round(1 / gpu) // 2)
        new = {**resources, "gpu": gpu_share(per_gpu)}
        return f"share {gpu:g} -> {new['gpu']:g} GPU", [(members, new)]
    if len(members) > 1:
        half = len(members) // 2
        return (f"split in halves of {half} and {len(members) - half}",
                [(members[:half], dict(resources)), (members[half:], dict(resources))])
    return None


def _fitting(groups, forecast, largest: Node) -> list[list]:
    """The groups, each split in halves until its need fits the largest GPU."""
    out, todo = [], list(groups)
    while todo:
        group = todo.pop(0)
        need = needed_bytes(forecast(group))
        if need <= largest.gpu_memory:
            out.append(group)
        elif len(group) > 1:
            half = len(group) // 2
            todo[:0] = [group[:half], group[half:]]
        else:
            f = forecast(group)
            raise PackingError(
                f"trial {group[0].name} needs about {need / GB:.1f} GB of GPU memory (forecast peak "
                f"{f.peak / GB:.1f} GB x {HEADROOM} headroom + {CUDA_RESERVE / GB:.1f} GB for CUDA) "
                f"but the largest GPU in the cluster{f' ({largest.name})' if largest.name else ''} "
                f"has {largest.gpu_memory / GB:.1f} GB: lower its batch_size or image_size, or run "
                f"it on a larger GPU")
    return out


def _as_requested(groups, requested, gpu_nodes, nodes, forecast) -> tuple[list[Placement], list[str]]:
    """The sweep's own resources (or the CPU default): a GPU request on a cluster without
    GPUs falls back to CPU; CPUs are capped by the largest node (a larger request would
    wait forever); a GPU share smaller than the forecast needs is warned about."""
    warnings = []
    max_cpus = max((n.cpus for n in nodes), default=1)
    if requested is None:      # a CPU-only cluster: its cores in equal parts, one at least
        total = sum(n.cpus for n in nodes) or 1
        cpu = max(1, min(int(max_cpus), int(total // max(1, len(groups)))))
        return [Placement(g, {"cpu": cpu}) for g in groups], warnings
    res = {k: v for k, v in requested.items() if v}
    if res.get("gpu") and not gpu_nodes:
        warnings.append(f"the sweep asks for {res['gpu']} GPU per trial but the Ray cluster has "
                        f"none: running on CPU instead (resources {{cpu: {res.get('cpu', 1)}}})")
        res = {"cpu": res.get("cpu", 1)}
    if res.get("cpu", 1) > max_cpus:
        warnings.append(f"the sweep asks for {res['cpu']} CPUs per trial but the largest node has "
                        f"{max_cpus:g}: using {max_cpus:g}")
        res["cpu"] = max_cpus
    placements = [Placement(g, dict(res)) for g in groups]
    if res.get("gpu") and gpu_nodes:
        memory = res["gpu"] * min(n.gpu_memory for n in gpu_nodes)
        for p in placements:
            p.need = needed_bytes(forecast(p.group))
            if p.need > memory:
                warnings.append(f"{group_name(p.group)} may run out of GPU memory: it needs about "
                                f"{p.need / GB:.1f} GB but resources.gpu={res['gpu']} is "
                                f"{memory / GB:.1f} GB of the smallest GPU; omit resources to let "
                                f"run size the share from the forecast")
    return placements, warnings
