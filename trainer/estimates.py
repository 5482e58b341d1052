"""What a training step costs, as plain data: its memory (Forecast) and its dispatched ops
and FLOPs (StepCost), keyed by what sets them (cost_key, shape_id) and kept on disk.

Measuring them needs torch (one fake run: trainer/cost.py `measure`, trainer/forecast.py);
reading them does not, so `plan` on a sweep whose group shapes were measured before
imports no torch:

    forecast, cost = cost_configs([cfg dicts])      # measured once per shape and code version
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
from dataclasses import dataclass, field

from .config import NO_COST

MB = 2 ** 20


@dataclass(frozen=True)
class Forecast:
    """Bytes of one training step of a trial (or of a fused group) on CUDA."""
    model: int           # parameters + buffers of the networks (Table 5's bytes, unrounded)
    data: int            # the dataset kept on the device (uint8 images, int64 labels)
    peak: int            # the step's peak allocated bytes, model and data included
    forward_peak: int    # the peak before backward starts (forward pass and regularizer)

    @property
    def model_mb(self) -> float:
        return self.model / MB

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    @property
    def dynamic_peak_mb(self) -> float:
        """As the trainer measures it: peak minus what stays resident (model and data)."""
        return (self.peak - self.model - self.data) / MB

    @property
    def forward_peak_mb(self) -> float:
        return (self.forward_peak - self.model - self.data) / MB

    def as_dict(self) -> dict:
        return {"model_mb": self.model_mb, "peak_mb": self.peak_mb,
                "dynamic_peak_mb": self.dynamic_peak_mb, "forward_peak_mb": self.forward_peak_mb}


@dataclass(frozen=True)
class StepCost:
    """One steady-state training step of a group (ops and FLOPs per phase) and one chunk of
    its evaluation pass (eval mode, `eval_images` images, all members at once)."""
    ops: dict                            # phase -> dispatched ops (PHASES)
    flops: dict                          # phase -> FLOPs
    eval_ops: int                        # one evaluation chunk
    eval_flops: int
    eval_images: int                     # images in that chunk
    members: int = 1
    counts: dict = field(default_factory=dict, compare=False)   # op name -> count, the step

    @property
    def ops_per_step(self) -> int:
        return sum(self.ops.values())

    @property
    def flops_per_step(self) -> int:
        return sum(self.flops.values())

    def as_dict(self) -> dict:
        return {"members": self.members, "ops_per_step": self.ops_per_step, "ops": dict(self.ops),
                "gflop_per_step": self.flops_per_step / 1e9,
                "gflop": {k: v / 1e9 for k, v in self.flops.items()},
                "eval_chunk": {"images": self.eval_images, "ops": self.eval_ops,
                               "gflop": self.eval_flops / 1e9}}


EVAL_BATCH = 1000     # 32x32 images per forward pass when measuring accuracy (eval mode)


def eval_chunk_size(n: int, image_size: int) -> int:
    """Images per evaluation forward pass of a group of n: EVAL_BATCH 32x32 images' worth."""
    return max(1, EVAL_BATCH // (n * (image_size // 32) ** 2))


def cost_key(configs: list[dict]) -> tuple[str, ...]:
    """What sets a group's cost: its members' configs less NO_COST, in any order."""
    return tuple(sorted(json.dumps({k: v for k, v in c.items() if k not in NO_COST}, sort_keys=True)
                        for c in configs))


def shape_id(configs: list[dict]) -> str:
    """12 hex digits naming a group's shape (its cost_key): groups with the same id have
    the same forecast, so a peak measured for one holds for the other."""
    return hashlib.sha256(json.dumps(cost_key(configs)).encode()).hexdigest()[:12]


def cost_configs(configs: list[dict]):
    """`measure` of these trial configs (dicts): (Forecast, StepCost), cached by what sets
    them, so one fake run per distinct group gives its memory, ops and FLOPs: in this
    process, and on disk (cache_dir) for the next `plan` or `run` of the same code."""
    return _cached(cost_key(configs))


CACHE_ENV = "MANIFOLD_SWEEPS_CACHE"   # a folder for the measured costs; "off": none


def cache_dir() -> pathlib.Path | None:
    """$MANIFOLD_SWEEPS_CACHE, else $XDG_CACHE_HOME/manifold-sweeps/costs (~/.cache/...)."""
    root = os.environ.get(CACHE_ENV)
    if root == "off":
        return None
    if root:
        return pathlib.Path(root)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "manifold-sweeps" / "costs"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """What a measured cost depends on besides the configs: the trainer's code and torch."""
    h = hashlib.sha256(importlib.metadata.version("torch").encode())
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _cached(key: tuple[str, ...]):
    """A fake run takes ~1-10 s (an 18-member group ~10 s): a 540-trial sweep's few distinct
    group shapes are measured once per machine and code version. A cache file that cannot
    be read is measured again; one that cannot be written is skipped."""
    folder = cache_dir()
    path = None if folder is None else \
        folder / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}-{code_digest()}.json"
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            return Forecast(**saved["forecast"]), StepCost(**saved["cost"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    from .config import Config
    from .cost import measure            # torch (~2 s to import): only when a cost is measured

    forecast, cost = measure([Config.from_dict(json.loads(k)) for k in key])
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"forecast": dataclasses.asdict(forecast),
                                       "cost": {**dataclasses.asdict(cost), "counts": dict(cost.counts)}}))
            os.replace(tmp, path)
        except OSError:
            pass
    return forecast, cost
