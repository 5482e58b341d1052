"""Peak GPU memory of a training step, forecast on any machine (a CPU is enough) before launch.

    f = forecast([cfg])             # one trial; forecast(cfgs) for a fused group
    f.peak_mb, f.dynamic_peak_mb, f.forward_peak_mb, f.model_mb

It runs the trainer's own step (trainer/group.py: the same model, objective and optimizer
code, and trainer/data.py's batch assembly) on fake tensors (torch's FakeTensorMode: shapes,
dtypes and storages, no data, no arithmetic), and counts every storage the step creates as
CUDA's caching allocator does: each rounded up to 512 bytes, freed when its last tensor
dies. Fake CUDA tensors cannot run backward without a GPU, so the fake tensors are CPU
ones; the allocations are the same aten ops' outputs either way.

What it counts, as `torch.cuda.max_memory_allocated` would over a steady-state step (the
second one, after SGD's momentum buffers exist): parameters and buffers, the dataset held
on the device, the epoch's draws, the batch, activations kept for backward, gradients,
momentum and every temporary. What it cannot see: cuDNN/cuBLAS workspaces (allocated
inside library calls), the CUDA context (~0.3-0.5 GB, outside the allocator),
fragmentation, and the extra memory cudnn.benchmark tries in the first steps. The packer
(orchestrator/run/groups.py) adds headroom for those.
"""
from __future__ import annotations

import functools
import json
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .config import NO_MEMORY, Config
from .estimates import Forecast
from .data import Data, EpochDraws, epoch_seed, group_batch, resident_bytes
from .memory import model_bytes
from .model import build_model

BLOCK = 512          # CUDA's caching allocator hands out multiples of 512 bytes


def _rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class AllocationCounter(TorchDispatchMode):
    """Bytes alive (and their peak) of every storage created while active, each rounded up
    to 512 bytes and freed when the storage is garbage-collected."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        size = _rounded(storage.nbytes())
        self._seen[storage] = weakref.ref(storage, lambda _, size=size: self._free(size))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, size: int) -> None:
        self.live -= size

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


class CudaAllocator:
    """CUDA's own count, read the way AllocationCounter is: the real thing to check against."""

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    @property
    def peak(self) -> int:
        return torch.cuda.max_memory_allocated()


def step_objects(cfgs: list[Config], device="cpu", steps: int = 2):
    """What the trainer builds to train these trials as one group, with an all-zeros
    dataset of their size on `device`: (group, data, draws for `steps` steps, the networks'
    bytes). Members are in the trainer's order (widest head first)."""
    from .group import Group            # local: group imports the trainer's step
    from .train import Member, check_fusable

    cfg = check_fusable(cfgs)
    members = sorted((Member(i, c, None, generator=torch.Generator(device=device))
                      for i, c in enumerate(cfgs)), key=lambda m: -m.cfg.width)
    for m in members:
        m.generator.manual_seed(epoch_seed(m.cfg.seed, 1))
    n_train, n_test = cfg.train_size, cfg.test_size
    zeros = functools.partial(torch.zeros, device=device)
    data = Data(zeros(n_train, 3, 32, 32, dtype=torch.uint8), zeros(n_train, dtype=torch.int64),
                zeros(n_test, 3, 32, 32, dtype=torch.uint8), zeros(n_test, dtype=torch.int64),
                cfg.num_classes)
    nets = [build_model(m.cfg) for m in members]         # built on the CPU
    if torch.device(device).type != "cpu":               # (.to() cannot swap fake parameters)
        nets = [net.to(device) for net in nets]
    model = sum(sum(model_bytes(net)) for net in nets)
    group = Group(members, nets, [{} for _ in members])    # holds its own stacked copies
    draws = EpochDraws.draw([m.generator for m in members], n_train, steps, cfg.batch_size, cfg.augment)
    return group, data, draws, model


def step_peaks(cfgs: list[Config], meter, device="cpu", steps: int = 2) -> Forecast:
    """The peak (and forward-pass peak) that `meter` (AllocationCounter, CudaAllocator)
    sees over step `steps` of these trials trained as one group: the steady state."""
    group, data, draws, model = step_objects(cfgs, device, steps)
    cfg = cfgs[0]
    dtype = getattr(torch, cfg.dtype)
    for step in range(steps):
        meter.reset_peak()
        x, y = group_batch(data, draws, step, cfg.batch_size, dtype, cfg.image_size)
        losses = group.losses(x, y)
        forward_peak = meter.peak
        group.update(losses)
        del x, y, losses
    return Forecast(model, resident_bytes(data), meter.peak, forward_peak)


def forecast(cfgs: list[Config], steps: int = 2) -> Forecast:
    """The peak of step `steps` (steady state) of these trials trained as one group, on
    fake tensors: no data, no arithmetic, any machine."""
    counter = AllocationCounter()
    with FakeTensorMode(), counter:
        return step_peaks(cfgs, counter, "cpu", steps)


def forecast_configs(configs: list[dict]) -> Forecast:
    """`forecast` of these trial configs (dicts), cached by what sets their memory."""
    key = tuple(sorted(json.dumps({k: v for k, v in c.items() if k not in NO_MEMORY}, sort_keys=True)
                       for c in configs))
    return _forecast_once(key)


@functools.lru_cache(maxsize=None)
def _forecast_once(key: tuple[str, ...]) -> Forecast:
    return forecast([Config.from_dict(json.loads(k)) for k in key])
