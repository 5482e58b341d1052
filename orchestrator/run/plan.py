"""What runs together: the pending trials of a sweep in fused groups (trainer/fused.py).

Pure functions of the trials, shared by `run`, `plan` and the tests. A group is trials
that agree on every config field that fixes shapes or the optimizer (trainer/config.py:
all but PER_MEMBER), at most `fuse` of them; groups are formed anew by every `run` over
the trials still to run, so a grown grid's new trials may join a group or run alone, and
each member resumes from its own checkpoint whatever its group was before.
"""
from __future__ import annotations

import math

from trainer.config import PER_MEMBER

from .sweep import Trial


def fusion_key(config: dict) -> tuple:
    """The values a group's members must share."""
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k not in PER_MEMBER))


def fuse_groups(trials: list[Trial], fuse: int) -> list[list[Trial]]:
    """Trials in groups of at most `fuse`, in sweep order. Trials that can share a group are
    split into as few groups as `fuse` allows, of near-equal sizes (18 with fuse 8: 6, 6, 6,
    which finish together); a memory-timeline trial always runs alone (it measures one
    trial's memory)."""
    by_key: dict[tuple, list[Trial]] = {}
    alone = []
    for t in trials:
        if t.config["memory_timeline"] or fuse == 1:
            alone.append([t])
        else:
            by_key.setdefault(fusion_key(t.config), []).append(t)
    groups = []
    for members in by_key.values():
        k = math.ceil(len(members) / fuse)
        sizes = [len(members) // k + (i < len(members) % k) for i in range(k)]
        start = 0
        for size in sizes:
            groups.append(members[start:start + size])
            start += size
    order = {t.key: i for i, t in enumerate(trials)}
    return sorted(groups + alone, key=lambda g: order[g[0].key])


def group_name(group: list[Trial]) -> str:
    """The first member's name, and how many others train with it: `w32-b5-reg-s0+5`."""
    return group[0].name + (f"+{len(group) - 1}" if len(group) > 1 else "")


def group_forecast(group: list[Trial]):
    """The memory forecast of one training step of the group (trainer/forecast.py), from
    the same cached fake run that counts its ops and FLOPs (trainer/cost.py): `plan` costs
    one fake run per distinct group."""
    from trainer.cost import cost_configs   # torch: only when a forecast is asked for

    return cost_configs([t.config for t in group])[0]
