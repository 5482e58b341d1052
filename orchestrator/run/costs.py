"""What a sweep's groups cost in device time, forecast before launch: the one cost model
(trainer/cost.py counts each group's step on fake tensors, trainer/calibration.py turns the
counts into seconds with the constants of trainer/calibration.json). `plan` and `run`
print it; `run`'s --yes guard for CPU-only clusters and bench/gpu_hours.py (the README's
and the sweep files' GPU-hours) use it.

    rows = group_costs(plan.groups, plan.states, "cuda")
    for line in forecast_lines(rows, gpus=4): print(line)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .sweep import Trial


@dataclass
class GroupCost:
    group: list[Trial]
    time: object          # trainer.calibration.GroupTime
    memory: object        # trainer.estimates.Forecast
    measured: int = 0     # bytes: the peak a group of this shape reached on a GPU before (0: none)


def epochs_done(group: list[Trial], states: dict) -> int:
    """The group trains until its least advanced member is done."""
    return min((states[t.key].last_epoch if t.key in states else 0) for t in group)


def group_costs(groups: list[list[Trial]], states: dict, kind: str = "cuda",
                threads: int = 1, measured: dict | None = None) -> list[GroupCost]:
    """Each group's remaining time alone on one device of `kind` (cuda, or cpu with
    `threads`), its step's memory forecast (one cached fake run gives both) and the peak
    measured before for its shape (`measured`: read.measured_peaks)."""
    from trainer.calibration import group_time, rates
    from trainer.config import Config
    from trainer.estimates import cost_configs

    from .groups import group_forecast, group_shape

    out = []
    for group in groups:
        _, cost = cost_configs([t.config for t in group])
        cfgs = [Config.from_dict(t.config) for t in group]
        out.append(GroupCost(group, group_time(cfgs, cost, rates(kind), epochs_done(group, states),
                                               threads), group_forecast(group),
                             (measured or {}).get(group_shape(group), 0)))
    return out


def total_hours(rows: list[GroupCost]) -> float:
    return sum(r.time.hours for r in rows)


def forecast_lines(rows: list[GroupCost], gpus: int, memory: bool = True) -> list[str]:
    """The table `plan` and `run` print: per group its steps, ops and GFLOP per step, GPU
    hours (and memory), then the total, the wall time on `gpus` GPUs, and the constants."""
    from trainer.calibration import makespan, rates

    from trainer.estimates import MB

    from .packing import needed_bytes

    head = (f"{'group':>6} {'trials':>6} {'steps':>9} {'ops/step':>9} {'GFLOP/step':>11} "
            f"{'GPU h':>7}")
    if memory:
        head += (f" {'model':>7} {'peak':>7} {'measured':>8} {'dynamic':>8} {'forward':>8} "
                 f"{'a GPU share needs':>18}")
    lines = [head + "  first trial"]
    for i, r in enumerate(rows, 1):
        t, f = r.time, r.memory
        line = (f"{'g' + str(i):>6} {len(r.group):>6} {t.steps:>9,} {t.ops_per_step:>9,} "
                f"{t.gflop_per_step:>11,.1f} {t.hours:>7,.1f}")
        if memory:
            measured = f"{r.measured / MB:,.0f}" if r.measured else "-"
            sizing = dataclasses.replace(f, peak=max(f.peak, r.measured))
            line += (f" {f.model_mb:>7,.0f} {f.peak_mb:>7,.0f} {measured:>8} {f.dynamic_peak_mb:>8,.0f} "
                     f"{f.forward_peak_mb:>8,.0f} {needed_bytes(sizing) / 1e9:>15.1f} GB")
        lines.append(line + f"  {r.group[0].name}")
    hours = [r.time.hours for r in rows]
    total = sum(hours)
    if gpus > 0:
        wall = (f"wall time on the {gpus} GPU(s) this sees: {makespan(hours, gpus):,.1f} h "
                f"(one group per GPU, longest first)")
    else:
        wall = (f"wall time: {total:,.1f} h on one GPU, {makespan(hours, len(hours)):,.1f} h with "
                f"a GPU per group (this machine sees no GPU; --gpus N for N)")
    lines.append(f"total: {total:,.1f} GPU-hours (forecast: steps x max(ops x t_op, FLOPs / rate) "
                 f"+ evaluation); {wall}")
    lines.append(rates("cuda").note())
    return lines


def cpu_wall_hours(rows: list[GroupCost], cpus_per_group: float, total_cpus: float) -> float:
    """Wall hours of these groups (forecast with kind cpu) on a CPU-only cluster: as many
    at once as its CPUs hold, each with its share's threads."""
    from trainer.calibration import makespan

    return makespan([r.time.hours for r in rows], max(1, int(total_cpus // max(cpus_per_group, 1))))


def local_gpus() -> int:
    """The GPUs torch sees on this machine (plan starts no Ray, so it cannot see a cluster's).
    Without a GPU driver (NVIDIA's /proc/driver/nvidia, AMD's /dev/kfd) it is 0 without
    importing torch (~2 s)."""
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
