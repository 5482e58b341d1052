"""Seconds from counts: a group's training time, forecast from its StepCost (trainer/cost.py)
and the per-device constants in calibration.json, the one place they live.

    r = rates("cuda")                         # t_op_s, t_op_compiled_s, flops_per_s, assumed
    t = group_time(cfgs, cost, r)             # steps, ops/step, GFLOP/step, train + eval s
    step_seconds(ops, flops, r)               # max(ops x t_op, FLOPs / rate)

On a GPU a step takes as long as its slower bound: the host issuing its ops one by one
(t_op per op, dispatch and launch), or the device doing its arithmetic; on a CPU, both. Each constant carries
`"assumed": true` and its source until bench/gpu_check.py (cuda) or bench/calibrate.py
(cpu) measures it and rewrites the file (`write`).
"""
from __future__ import annotations

import datetime
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path


PATH = Path(__file__).with_name("calibration.json")
CONSTANTS = ("t_op_s", "t_op_compiled_s", "flops_per_s")
KINDS = ("cuda", "cpu")


@dataclass(frozen=True)
class Rates:
    """One device kind's constants. On a CPU, flops_per_s is per thread."""
    kind: str
    t_op_s: float                 # seconds per dispatched op, eager
    t_op_compiled_s: float        # seconds per (eager-counted) op under torch.compile
    flops_per_s: float            # FLOP/s the step's matmuls and convolutions reach
    assumed: tuple[str, ...]      # which of CONSTANTS nobody has measured
    measured_on: str | None       # "NVIDIA H200, torch 2.x, 2026-01-01" once measured

    def note(self) -> str:
        """One line: which constants the forecast rests on, and whether they are measured."""
        rate = (f"{self.flops_per_s / 1e9:.3g} GFLOP/s per thread" if self.kind == "cpu"
                else f"{self.flops_per_s / 1e12:.3g} TFLOP/s")
        shown = (f"t_op {self.t_op_s * 1e6:.1f} us eager, {self.t_op_compiled_s * 1e6:.1f} us "
                 f"compiled; {rate}")
        if not self.assumed:
            return f"{self.kind} constants ({shown}) measured on {self.measured_on}"
        return (f"{self.kind} constants ({shown}): assumed, not measured: "
                f"{', '.join(self.assumed)} (trainer/calibration.json; "
                f"{'bench/gpu_check.py' if self.kind == 'cuda' else 'bench/calibrate.py --device cpu'}"
                f" measures them)")


def load(path: Path = PATH) -> dict:
    with open(path) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def rates(kind: str = "cuda", path: Path = PATH) -> Rates:
    if kind not in KINDS:
        raise ValueError(f"no constants for device kind {kind!r}; use one of {', '.join(KINDS)}")
    entry = load(path)[kind]
    missing = [c for c in CONSTANTS if c not in entry]
    if missing:
        raise ValueError(f"{path}: {kind} lacks {', '.join(missing)}; restore it from git or "
                         f"rerun the calibration")
    return Rates(kind, *(float(entry[c]["value"]) for c in CONSTANTS),
                 tuple(c for c in CONSTANTS if entry[c].get("assumed", True)),
                 entry.get("measured_on"))


def step_seconds(ops: int, flops: float, r: Rates, compiled: bool = False, threads: int = 1) -> float:
    """One pass's seconds. On a GPU the host issues ops while the device computes, so the
    slower of the two: max(ops x t_op, FLOPs / rate). On a CPU the same threads do both:
    their sum (FLOPs spread over `threads`, dispatch not)."""
    t_op = r.t_op_compiled_s if compiled else r.t_op_s
    if r.kind == "cpu":
        return ops * t_op + flops / (r.flops_per_s * threads)
    return max(ops * t_op, flops / r.flops_per_s)


@dataclass(frozen=True)
class GroupTime:
    members: int
    steps: int                    # training steps left (every member trains each one)
    ops_per_step: int
    gflop_per_step: float
    evaluations: int              # evaluated epochs left (train and test sets each)
    train_s: float
    eval_s: float

    @property
    def hours(self) -> float:
        return (self.train_s + self.eval_s) / 3600


def evaluated_epochs(epochs: int, eval_every: int, done: int = 0) -> int:
    """Epochs after `done` that end with an evaluation: every eval_every-th, and the last."""
    return sum(1 for e in range(done + 1, epochs + 1) if e % eval_every == 0 or e == epochs)


def group_time(cfgs: list, cost, r: Rates, epochs_done: int = 0, threads: int = 1) -> GroupTime:
    """The time the group's remaining epochs take (from `epochs_done` on), alone on one
    device of kind r.kind: steps x step_seconds, plus each evaluation's chunks."""
    from .estimates import eval_chunk_size

    cfg = cfgs[0]
    compiled = cfg.compile != "off"
    epochs = max(0, cfg.epochs - epochs_done)
    steps = epochs * (cfg.train_size // cfg.batch_size)
    step = step_seconds(cost.ops_per_step, cost.flops_per_step, r, compiled, threads)
    chunk = eval_chunk_size(len(cfgs), cfg.image_size)
    n_test = cfg.test_size
    images = cfg.train_size + n_test
    chunks = math.ceil(cfg.train_size / chunk) + math.ceil(n_test / chunk)
    evaluations = evaluated_epochs(cfg.epochs, cfg.eval_every, epochs_done)
    one_eval = step_seconds(chunks * cost.eval_ops, images * cost.eval_flops / cost.eval_images,
                            r, compiled, threads)
    return GroupTime(len(cfgs), steps, cost.ops_per_step, cost.flops_per_step / 1e9, evaluations,
                     steps * step, evaluations * one_eval)


def makespan(hours: list[float], slots: int) -> float:
    """Wall hours of these jobs on `slots` devices, each job on one device, longest first
    onto the least loaded (the order Tune starts them in is close to this)."""
    loads = [0.0] * max(1, slots)
    for h in sorted(hours, reverse=True):
        loads[loads.index(min(loads))] += h
    return max(loads)


def write(kind: str, values: dict, measured_on: str, details: dict, path: Path = PATH,
          extra: dict | None = None) -> dict:
    """Record measured constants (`values`: constant -> value) for `kind`, each marked
    `"assumed": false`; `extra` entries are written as given; any other constant keeps its
    old value and marking."""
    data = load(path)
    entry = data[kind]
    entry.update(extra or {})
    for name, value in values.items():
        entry[name] = {"value": value, "assumed": False, "source": f"measured: {measured_on}"}
    entry["measured_on"] = measured_on
    entry["measurement"] = {**details, "date": datetime.date.today().isoformat()}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    rates.cache_clear()
    return data
