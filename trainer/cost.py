"""What a training step costs, counted on any machine: dispatched ops and FLOPs (and the
step's memory, from the same fake run).

At mini-batch 5-9 a step is bound by the host: every eager op costs ~5-10 us to dispatch
and launch, while the arithmetic of one trial's step is ~20 us of a current GPU. So the
number that decides a sweep's GPU time is the count of ops a step dispatches, and it is
exact and deterministic on fake tensors. trainer/calibration.py turns counts into seconds.

    with OpCounter() as ops:
        group.step(x, y)
    ops.total, ops.counts.most_common(5)
    memory, cost = measure(cfgs)                    # one fake run: Forecast, StepCost
    estimates.cost_configs([cfg dicts])             # the same, cached per group shape

FLOPs are those of matmuls and convolutions (2 per multiply-add), as torch's
flop_counter counts them, except that convolutions count their `groups`: torch's formula
for a convolution's weight gradient ignores them, which counts a fused group of N members
(N+2)/3 times too much (6.7x at N = 18).
"""
from __future__ import annotations

import collections
import math

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .estimates import Forecast, StepCost, eval_chunk_size

PHASES = ("batch", "forward", "backward", "optimizer")     # one training step, in order

# Ops that create no kernel: views and aliases of an existing tensor (and lifting a
# constant into a tensor). `_unsafe_view` is a reshape autograd records as a new tensor.
_FREE = {torch.ops.aten.lift_fresh.default, torch.ops.aten._unsafe_view.default}
# Returns a number, but copies it to the host: a real (and syncing) cost.
_SYNC = {torch.ops.aten._local_scalar_dense.default}


def launches_kernel(func) -> bool:
    """Whether a dispatched aten op costs a launch: not a view or an alias, and not a
    metadata query (prim::device, sym_size, is_contiguous, ...: they return no tensor)."""
    if func.is_view or func in _FREE or func.namespace == "prim":
        return False
    returns = func._schema.returns
    if returns and func not in _SYNC and not any("Tensor" in str(r.type) for r in returns):
        return False
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in returns)


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


def _conv(x_shape, w_shape, out_shape) -> int:
    """FLOPs of a (grouped) convolution: 2 per multiply-add; w is (C_out, C_in/groups, k...),
    so each output element costs prod(w_shape[1:]) multiply-adds whatever the groups."""
    return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


def conv_flops(x, w, *args, out_val=None, **kwargs) -> int:
    return _conv(x.shape, w.shape, out_val.shape)


def conv_backward_flops(grad_out, x, w, bias_sizes, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask, out_val=None, **kwargs) -> int:
    """grad_input costs what the forward does; grad_weight too (each weight element sums
    over batch x output positions): both are forward-sized, with or without groups."""
    if transposed:      # its weight is (C_in, C_out/groups, k...): the formula above would miscount
        raise ValueError("cost: FLOPs of a transposed convolution are not counted (no model here "
                         "has one); add its formula to trainer/cost.py before counting such a model")
    forward = _conv(x.shape, w.shape, grad_out.shape)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


aten = torch.ops.aten
FLOP_FORMULAS = {**{op: flop_registry[op] for op in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)},
                 **{op: conv_flops for op in (aten.convolution, aten._convolution,
                                              aten.cudnn_convolution, aten._slow_conv2d_forward)},
                 aten.convolution_backward: conv_backward_flops}


class StepCounter(TorchDispatchMode):
    """Ops (as OpCounter counts them) and FLOPs, summed under the current `phase`."""

    def __init__(self):
        super().__init__()
        self.phase = "batch"
        self.ops: collections.Counter = collections.Counter()
        self.flops: collections.Counter = collections.Counter()

    def reset(self) -> None:
        self.ops.clear()
        self.flops.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if launches_kernel(func):
            self.ops[self.phase] += 1
            formula = FLOP_FORMULAS.get(func._overloadpacket)
            if formula is not None:
                self.flops[self.phase] += int(formula(*args, out_val=out, **kwargs))
        return out


def measure(cfgs: list, steps: int = 2):
    """One fake run of the trainer's step for these trials as one group: (the memory
    Forecast of step `steps`, its StepCost). Steps before the last create what the steady
    state has (momentum buffers); the last is counted. The ops are the same on any device
    (SGD is foreach everywhere: trainer/group.py)."""
    from .data import group_batch, resident_bytes
    from .forecast import AllocationCounter, step_objects
    from .train import eval_chunk

    cfg = cfgs[0]
    dtype = getattr(torch, cfg.dtype)
    memory, counter = AllocationCounter(), StepCounter()
    with FakeTensorMode(), memory, counter:
        group, data, draws, model = step_objects(cfgs, "cpu", steps)
        for step in range(steps):
            counter.reset()
            memory.reset_peak()
            counter.phase = "batch"
            x, y = group_batch(data, draws, step, cfg.batch_size, dtype, cfg.image_size)
            counter.phase = "forward"
            losses = group.losses(x, y)
            forward_peak = memory.peak
            counter.phase = "backward"          # group.update's parts, counted apart
            group.backward(losses)
            counter.phase = "optimizer"
            group.opt.step()
            group.opt.zero_grad(set_to_none=True)
            del x, y, losses
        ops, flops = dict(counter.ops), dict(counter.flops)
        forecast = Forecast(model, resident_bytes(data), memory.peak, forward_peak)
        chunk = min(eval_chunk_size(group.n, cfg.image_size), len(data.test_y))
        group.model.eval()
        with torch.no_grad():
            correct = torch.zeros(group.n, dtype=torch.int64)     # once per evaluation: not counted
            counter.reset()
            counter.phase = "eval"                                # one chunk, as accuracy() runs it
            correct += eval_chunk(group, data, data.test_x[:chunk], data.test_y[:chunk])
    return forecast, StepCost({p: ops.get(p, 0) for p in PHASES}, {p: flops.get(p, 0) for p in PHASES},
                              counter.ops["eval"], counter.flops["eval"], chunk, group.n)
