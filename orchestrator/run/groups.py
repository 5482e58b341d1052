"""What runs together: the pending trials of a sweep in fused groups (trainer/fused.py).

Pure functions of the trials, shared by `run`, `plan` and the tests. A group is trials
that agree on every config field that fixes shapes or the optimizer (trainer/config.py:
all but PER_MEMBER), at most `fuse` of them. A trial that has trained part of its
epochs resumes in the group it trained in (the run's `fused_group` tag), less the
members that finished since: float32 rounding depends on a group's composition, and
training at batch 5 grows a rounding difference into a different result, so regrouping
would change a resumed trial's numbers. The trials that have not started are grouped
anew by every `run`, so a grown grid's new trials form groups of their own.
"""
from __future__ import annotations

import dataclasses
import math

from trainer.config import PER_MEMBER, Config, trains_alone

from .sweep import Trial


def steps_per_trial(config: dict) -> int:
    cfg = Config.from_dict(config)
    return cfg.epochs * (cfg.train_size // cfg.batch_size)


def fusion_key(config: dict) -> tuple:
    """The values a group's members must share."""
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k not in PER_MEMBER))


def fuse_groups(trials: list[Trial], fuse: int, at_once: int = 1) -> list[list[Trial]]:
    """Trials in groups of at most `fuse`, never fewer groups than `at_once` (the devices
    that can run a group at the same time: GPUs, or CPU cores) while trials remain to fill
    them, in sweep order of each group's first member.

    Trials that can share a group are split into as few groups as these two bounds allow
    (18 with fuse 8: 6, 6, 6); when a cluster holds more groups at once, the class with the
    most work per group is split further. Members are dealt to a class's groups so that
    every group gets the same mix of kinds (regularized or not, its pairs, its width), so
    the groups carry equal work under any per-member cost and finish together. A
    trial that trains alone (trainer.config.trains_alone: a memory timeline) is a group of one."""
    classes: dict[tuple, list[Trial]] = {}
    alone = []
    for t in trials:
        if trains_alone(t.config) or fuse == 1:
            alone.append([t])
        else:
            classes.setdefault(fusion_key(t.config), []).append(t)
    counts = {key: math.ceil(len(members) / fuse) for key, members in classes.items()}

    def work_per_group(key) -> float:
        return steps_per_trial(classes[key][0].config) * len(classes[key]) / counts[key]

    while len(alone) + sum(counts.values()) < at_once:
        splittable = [k for k in classes if counts[k] < len(classes[k])]
        if not splittable:
            break
        counts[max(splittable, key=work_per_group)] += 1
    groups = [g for key, members in classes.items() for g in _deal(members, counts[key])]
    order = {t.key: i for i, t in enumerate(trials)}
    return sorted(groups + alone, key=lambda g: order[g[0].key])


def plan_groups(todo: list[Trial], states: dict, fuse: int, at_once: int = 1) -> list[list[Trial]]:
    """The groups `run` trains: each trial that trained some epochs in a recorded group
    (states: trial_key -> read.RunState) with the others of that group still to run,
    in the recorded order; the rest in groups formed anew (fuse_groups). All in sweep order
    of each group's first member."""
    by_name = {t.name: t for t in todo}
    kept: dict[tuple, list[Trial]] = {}
    fresh = []
    for t in todo:
        s = states.get(t.key)
        if s is not None and s.last_epoch > 0 and t.name in s.group:
            kept.setdefault(s.group, []).append(t)
        else:
            fresh.append(t)
    groups = [[by_name[n] for n in recorded if by_name.get(n) in members]
              for recorded, members in kept.items()]
    order = {t.key: i for i, t in enumerate(todo)}
    return sorted(groups + fuse_groups(fresh, fuse, max(1, at_once - len(groups))),
                  key=lambda g: order[g[0].key])


def member_kind(t: Trial) -> tuple:
    """What sets a member's share of a fused step's work: its regularizer terms, then its width."""
    c = t.config
    return (c["regularizer"], c["regularizer"] and c["reg_pairs"] == "adjacent", c["width"])


def _deal(members: list[Trial], k: int) -> list[list[Trial]]:
    """`members` in k groups of near-equal sizes, dealt in snake order (0..k-1, k-1..0, ...)
    after sorting by kind, so each kind spreads evenly; each group keeps sweep order."""
    if k == 1:
        return [members]
    order = {t.key: i for i, t in enumerate(members)}
    ranked = sorted(members, key=member_kind, reverse=True)   # stable: sweep order within a kind
    groups: list[list[Trial]] = [[] for _ in range(k)]
    for i, t in enumerate(ranked):
        lap, pos = divmod(i, k)
        groups[pos if lap % 2 == 0 else k - 1 - pos].append(t)
    return [sorted(g, key=lambda t: order[t.key]) for g in groups]


def group_name(group: list[Trial]) -> str:
    """The first member's name, and how many others train with it: `w32-b5-reg-s0+5`."""
    return group[0].name + (f"+{len(group) - 1}" if len(group) > 1 else "")


def group_forecast(group: list[Trial]):
    """The memory forecast of one training step of the group (trainer/forecast.py), from
    the same cached fake run that counts its ops and FLOPs (trainer/cost.py): `plan` costs
    one fake run per distinct group."""
    from trainer.estimates import cost_configs   # torch only if a shape was never measured

    return cost_configs([t.config for t in group])[0]


def group_shape(group: list[Trial]) -> str:
    """The id of the group's shape (trainer.estimates.shape_id), under which its measured peak is kept."""
    from trainer.estimates import shape_id

    return shape_id([t.config for t in group])


def sizing_forecast(measured: dict[str, int]):
    """group -> the forecast a share is sized from: the larger of the forecast peak and the
    peak measured before for a group of the same shape (read.measured_peaks)."""
    def forecast(group: list[Trial]):
        f = group_forecast(group)
        return dataclasses.replace(f, peak=max(f.peak, measured.get(group_shape(group), 0)))
    return forecast


@dataclasses.dataclass(frozen=True)
class Superseded:
    """Earlier runs of the sweep's experiment whose trial the sweep no longer holds: the
    sweep file was edited (epochs 3 -> 5 makes every trial new, as the trial key holds
    every field that can change a result). MLflow keeps them; `run` does not resume them
    (a run's params cannot change, so a 3-epoch run cannot become a 5-epoch one) and the
    tables leave them out of a cell that has newer runs (results/cells.py)."""
    change: str          # "epochs 3 -> 5", or "" when no trial of the same name is left
    names: tuple         # their run names, sweep order


def superseded(trials: list[Trial], states: dict) -> list[Superseded]:
    """The runs in `states` (trial_key -> read.RunState) that no trial of `trials` has,
    grouped by what changed: each is compared with the trial of the same name."""
    from trainer.config import IDENTITY

    by_name = {t.name: t for t in trials}
    keys = {t.key for t in trials}
    changes: dict[str, list[str]] = {}
    for key, state in states.items():
        if key in keys:
            continue
        trial = by_name.get(state.name)
        change = "" if trial is None else ", ".join(
            f"{k} {state.params.get(k, '(none)')} -> {trial.config[k]}" for k in sorted(IDENTITY)
            if k in trial.config and state.params.get(k) != str(trial.config[k]))
        changes.setdefault(change, []).append(state.name)
    order = {t.name: i for i, t in enumerate(trials)}
    return [Superseded(change, tuple(sorted(names, key=lambda n: (order.get(n, len(order)), n))))
            for change, names in sorted(changes.items())]


def superseded_lines(found: list[Superseded], shown: int = 4) -> list[str]:
    """What `plan`, `status` and `run` say of the superseded runs."""
    lines = []
    for s in found:
        names = ", ".join(s.names[:shown]) + (f" and {len(s.names) - shown} more" if len(s.names) > shown else "")
        why = f"their trials changed: {s.change}" if s.change else "no trial of the sweep has their names"
        lines.append(f"superseded: {len(s.names)} earlier run(s) ({why}): {names}; kept in MLflow, "
                     f"not resumed, left out of the tables where newer runs of their cell exist")
    return lines
