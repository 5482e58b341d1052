"""What a training step costs a GPU, counted on any machine: dispatched ops (and FLOPs).

At mini-batch 5-9 a step is bound by the host: every eager op costs ~5-10 us to dispatch
and launch, while the arithmetic of one trial's step is ~20 us of a current GPU. So the
number that decides a sweep's GPU time is the count of ops a step dispatches, and it is
exact and deterministic on fake tensors.

    with OpCounter() as ops:
        group.step(x, y)
    ops.total, ops.counts.most_common(5)
"""
from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that create no kernel: views and aliases of an existing tensor (and lifting a
# constant into a tensor). `_unsafe_view` is a reshape autograd records as a new tensor.
_FREE = {torch.ops.aten.lift_fresh.default, torch.ops.aten._unsafe_view.default}


def launches_kernel(func) -> bool:
    """Whether a dispatched aten op costs a launch: everything but views and aliases."""
    if func.is_view or func in _FREE:
        return False
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active that is not a view or an alias."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.counts[func.__name__] += 1
        return func(*args, **(kwargs or {}))
