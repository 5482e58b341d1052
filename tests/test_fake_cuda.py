"""The CUDA path of a training step, exercised without a GPU: batch assembly
(trainer/data.py group_batch) and the forward pass + objective (trainer/group.py
Group.losses) of solo and fused groups, on fake CUDA tensors (torch's FakeTensorMode:
shapes, dtypes and devices, no data, no arithmetic), under a guard that fails the step on
the first CPU tensor or host sync in it.

What FakeTensorMode gives on a CPU-only machine (checked on torch 2.14.1+cu130, no GPU;
`test_what_fake_cuda_tensors_catch_on_their_own` keeps these facts checked):
- modules built inside the mode under `with torch.device("cuda"):` get fake CUDA
  parameters, and their forward pass runs. `.cuda()`/`.to("cuda")` of an existing module
  fails ("Couldn't swap"), backward fails (it needs a CUDA context), and a CUDA
  `torch.Generator` cannot be created (no driver). So the nets are built under the device,
  as the trainer's `build_model` builds them on the current default device, and only the
  forward pass is checked (test_gpu.py checks the whole step on a real GPU).
- it raises by itself on a binary op mixing a CPU and a CUDA tensor, on `.item()` /
  `.tolist()` / `bool()` (DataDependentOutputException) and on `nonzero` / boolean-mask
  indexing (DynamicOutputShapeException).
- it does NOT raise on: a CUDA tensor indexed by a CPU index tensor (a host-to-device copy
  on a GPU), a CPU tensor indexed by a CUDA one (an error on a GPU), a tensor built from
  Python numbers (a host-to-device copy), `.cpu()` (a device-to-host sync), or a random op
  on CUDA given a CPU generator (an error on a GPU); nor on a 0-dim CPU tensor in a CUDA op
  (allowed on a GPU too: read on the host as a scalar).
  Hence `CudaStepGuard`, a dispatch mode above the fake mode that sees every aten op of the
  step: every tensor going in or coming out must be a CUDA one (stricter than CUDA itself:
  0-dim CPU tensors too; the step has none), no tensor may be lifted from Python data, no
  op may read data back to the host, and every random draw must come from one of the
  members' own generators.

The generators. The trainer gives each member a generator on the device (train._resume:
`torch.Generator(device=device)`); without a GPU only CPU generators exist. Each member
gets a seeded CPU generator as a stand-in for its CUDA one:
- the epoch plan (order, crops, flips) is drawn by the trainer's own `EpochDraws.draw` from
  them at the epoch's start, outside the step, and each of its tensors is then moved to
  fake CUDA (the trainer draws it on the device directly; one move per epoch here). The
  step only slices it, under the guard: a plan left on the CPU fails the step
  (`test_the_guard_fails_a_broken_step[plan-left-on-cpu-no-augment]`), although fake
  tensors alone let that CPU index through.
- dropout (trainer/fused.py GroupedVGGHead._drop) draws its masks inside the step from the
  members' generators with `device=h.device`. The guard checks that each draw lands on
  CUDA and names one of the members' generators (not the global RNG: the
  `dropout-from-the-global-rng` control). NOT covered here: that the generator's own
  device matches on a real GPU (fake tensors do not check it, and a CPU generator cannot
  stand for a CUDA one there): train._resume makes them with `device=device`, and on a
  GPU test_gpu.py's vgg16 forecast check runs this dropout with CUDA generators.

Data.normalize builds its mean/std constants on the device once per dataset and dtype
(a one-time host-to-device copy, trainer/data.py); the harness builds them before the
guarded steps, which are then the steady state the trainer repeats for every step.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import (DataDependentOutputException,
                                           DynamicOutputShapeException, FakeTensor,
                                           FakeTensorDeviceMismatchError, FakeTensorMode)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainer.config import Config
from trainer.data import EpochDraws, epoch_seed, group_batch, load_data
from trainer.group import Group
from trainer.model import build_model
from trainer.train import Member

CUDA = torch.device("cuda")
aten = torch.ops.aten
BATCH, STEPS = 5, 2


class NotOnDevice(AssertionError):
    """The step touched the host: a CPU tensor, a tensor from Python data, a read-back."""


class CudaStepGuard(TorchDispatchMode):
    """Fails on the first aten op of the step that would, on a GPU, mix a CPU tensor in,
    copy from or to the host, or sync the host; or that draws random numbers from anything
    but one of `generators`. Enter it inside FakeTensorMode (it then dispatches first)."""

    LIFTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}
    READS_BACK = {aten._local_scalar_dense.default, aten.nonzero.default}

    def __init__(self, generators: list[torch.Generator]):
        super().__init__()
        self.members = [g._cdata for g in generators]
        self.draws: list[int] = []      # the member whose generator each random draw used
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "prim":   # metadata (prim.device): queried from C++ code that
            return func(*args, **kwargs)   # cannot take an exception; the op itself is checked
        self.ops += 1
        leaves = tree_leaves((args, kwargs))
        if func in self.LIFTS:
            raise NotOnDevice(f"{func}: a tensor built from Python data in the step "
                              f"(on CUDA, a host-to-device copy each step)")
        if func in self.READS_BACK:
            raise NotOnDevice(f"{func}: reads a value back to the host (on CUDA, a sync)")
        self._on_cuda(func, "an input", leaves)
        if torch.Tag.nondeterministic_seeded in func.tags:
            # The dispatcher hands over a new Python wrapper of the same C++ generator:
            # compare the generators themselves (_cdata), not the wrappers.
            given = [g._cdata for g in leaves if isinstance(g, torch.Generator)]
            if len(given) != 1 or given[0] not in self.members:
                raise NotOnDevice(f"{func}: a random draw not from a member's own generator "
                                  f"({'none given: the global RNG' if not given else 'another one'})")
            self.draws.append(self.members.index(given[0]))
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as err:
            raise NotOnDevice(f"{func}: data-dependent (on CUDA, a host sync): {err!r}") from err
        self._on_cuda(func, "an output", tree_leaves(out))
        return out

    @staticmethod
    def _on_cuda(func, what, leaves) -> None:
        for t in leaves:
            if isinstance(t, torch.Tensor):
                if not isinstance(t, FakeTensor):
                    raise NotOnDevice(f"{func}: {what} is a real tensor, not a fake one: {type(t)}")
                if t.device.type != "cuda":
                    raise NotOnDevice(f"{func}: {what} is on {t.device}, shape {tuple(t.shape)}")


def cfg(**kw) -> Config:
    return Config.from_dict({**dict(dataset="synthetic", train_samples=100, test_samples=10,
                                    vgg_width_divisor=16, width=8, batch_size=BATCH,
                                    device="cuda", threads=1), **kw})


def build(cfgs: list[Config], *, nets_on_cuda: bool = True, plan_on_cuda: bool = True):
    """What the trainer builds for one epoch of a group (train.train_group/_resume/_epoch),
    inside the active FakeTensorMode, with CPU generators standing in for the members' CUDA
    ones (module docstring): (group, data, plan)."""
    c = cfgs[0]
    data = load_data(c.dataset, c.data_dir, c.num_classes, c.train_samples, c.test_samples, CUDA)
    members = sorted((Member(i, m, None, generator=torch.Generator().manual_seed(epoch_seed(m.seed, 1)))
                      for i, m in enumerate(cfgs)), key=lambda m: -m.cfg.width)   # as train_group
    if nets_on_cuda:
        with torch.device(CUDA):                 # build_model builds on the default device
            nets = [build_model(m.cfg) for m in members]
    else:
        nets = [build_model(m.cfg) for m in members]
    group = Group(members, nets, [{} for _ in members])
    plan = EpochDraws.draw([m.generator for m in members], len(data.train_y), STEPS, BATCH, c.augment)
    if plan_on_cuda:
        plan = EpochDraws(*(t.to(CUDA) if t is not None else None
                           for t in (plan.order, plan.dy, plan.dx, plan.flip)))
    data.normalize(data.train_x[:1], group.dtype, c.image_size)   # the constants, once per run
    return group, data, plan


def guarded_steps(group: Group, data, plan, *, guard: bool = True, fault=None) -> list:
    """Batch assembly + forward pass of every step of the plan, each under CudaStepGuard;
    `fault(group, losses) -> losses` is a deliberate defect injected into the step."""
    cfg0 = group.members[0].cfg
    out = []
    for step in range(STEPS):
        g = CudaStepGuard([m.generator for m in group.members])
        with g if guard else contextlib.nullcontext():
            x, y = group_batch(data, plan, step, cfg0.batch_size, group.dtype, cfg0.image_size)
            losses = group.losses(x, y)
            if fault is not None:
                losses = fault(group, losses)
        assert not guard or g.ops > 100          # the guard saw the step's ops
        out.append((x, y, losses, g.draws))
    return out


CASES = {
    "bottleneck-solo-reg-augment": [dict(regularizer=True)],
    "bottleneck-fused-4-reg-on-off-two-widths": [
        dict(regularizer=True, seed=0), dict(seed=1, width=4),
        dict(regularizer=True, reg_pairs="even", seed=2, width=4), dict(seed=3)],
    "bottleneck-solo-224-upsampled": [dict(regularizer=True, image_size=224, head_input="pool")],
    "vgg16-solo-dropout": [dict(arch="vgg16")],
    "vgg16-fused-3-dropout": [dict(arch="vgg16", seed=i) for i in range(3)],
}


@pytest.mark.parametrize("members", CASES.values(), ids=CASES.keys())
def test_batch_assembly_and_forward_stay_on_cuda(members):
    torch.set_num_threads(1)
    cfgs = [cfg(**m) for m in members]
    n, c = len(cfgs), cfgs[0]
    with FakeTensorMode():
        group, data, plan = build(cfgs)
        tensors = [*group.model.parameters(), *group.model.buffers(),
                   *(t for h in group.heads for t in tree_leaves(vars(h))   # alphas, lambdas
                     if isinstance(t, torch.Tensor)),
                   data.train_x, data.train_y, plan.order]
        assert {t.device.type for t in tensors} == {"cuda"}
        assert all(isinstance(t, FakeTensor) for t in tensors)
        assert group.model.generators == [m.generator for m in group.members]  # dropout's
        vgg = c.arch == "vgg16"
        if vgg:
            assert group.model.head[0].p == 0.5 and group.model.training        # dropout is on
        for x, y, losses, draws in guarded_steps(group, data, plan):
            assert x.device.type == y.device.type == "cuda"
            assert x.shape == (n, BATCH, 3, c.image_size, c.image_size) and y.shape == (n, BATCH)
            assert isinstance(losses, FakeTensor) and losses.device.type == "cuda"
            assert losses.shape == (n,) and losses.dtype == torch.float32
            # dropout after FC1 and FC2: one mask per member each, from its own generator
            assert draws == (list(range(n)) * 2 if vgg else [])
            assert losses.requires_grad                     # a graph backward could run on


def _cpu_plan(group, data, plan):
    return group, data, EpochDraws(*(t.cpu() if t is not None else None
                                    for t in (plan.order, plan.dy, plan.dx, plan.flip)))


def _global_rng(group, data, plan):
    group.model.generators = [None] * group.n
    return group, data, plan


# name: (members, change to the built objects, fault injected into the step, what catches
# it without the guard: an exception type, or None when fake tensors let it through)
CONTROLS = {
    "plan-left-on-cpu": ([{}], _cpu_plan, None, FakeTensorDeviceMismatchError),   # at the crop
    "plan-left-on-cpu-no-augment": ([dict(augment=False)], _cpu_plan, None, None),  # a CPU index
    "cpu-tensor-in-the-loss": ([{}, dict(seed=1)], None,
                               lambda g, l: l + torch.ones(g.n, device="cpu"),
                               FakeTensorDeviceMismatchError),
    "item": ([{}], None, lambda g, l: l * l.sum().item(), DataDependentOutputException),
    "nonzero": ([{}, dict(seed=1)], None, lambda g, l: l[l.nonzero()[0]], DynamicOutputShapeException),
    "bool-mask": ([{}, dict(seed=1)], None, lambda g, l: l[l > 0], DynamicOutputShapeException),
    "tensor-from-python-numbers": ([{}, dict(seed=1)], None,
                                   lambda g, l: l * torch.tensor([1.0] * g.n, device="cuda"), None),
    "cpu-scalar-tensor": ([{}], None, lambda g, l: l * torch.ones((), device="cpu"), None),
    "read-back-with-cpu": ([{}], None, lambda g, l: l.cpu(), None),
    "dropout-from-the-global-rng": ([dict(arch="vgg16")], _global_rng, None, None),
}


@pytest.mark.parametrize("members, change, fault, unguarded", CONTROLS.values(), ids=CONTROLS.keys())
def test_the_guard_fails_a_broken_step(members, change, fault, unguarded):
    """Negative controls: the same harness with a deliberate defect fails, so a passing
    case above means something. Where fake tensors alone let the defect through, the same
    step without the guard is shown to pass."""
    torch.set_num_threads(1)
    cfgs = [cfg(**m) for m in members]
    with FakeTensorMode():
        objects = build(cfgs)
        if change is not None:
            objects = change(*objects)
        with pytest.raises(NotOnDevice):
            guarded_steps(*objects, fault=fault)
        if unguarded is None:
            guarded_steps(*objects, guard=False, fault=fault)   # fake tensors alone: no error
        else:
            with pytest.raises(unguarded):
                guarded_steps(*objects, guard=False, fault=fault)


def test_nets_built_on_the_cpu_fail_the_device_checks():
    """The control for the parameter check and the fake-CUDA construction: nets built
    outside `torch.device("cuda")` stay on the CPU, and the step fails at its first use of
    a parameter or buffer."""
    torch.set_num_threads(1)
    with FakeTensorMode():
        group, data, plan = build([cfg()], nets_on_cuda=False)
        assert {p.device.type for p in group.model.parameters()} == {"cpu"}
        with pytest.raises(NotOnDevice, match="is on cpu"):
            guarded_steps(group, data, plan)
        with pytest.raises(RuntimeError, match="same device"):    # fake tensors' own check
            guarded_steps(group, data, plan, guard=False)


def test_what_fake_cuda_tensors_catch_on_their_own():
    """The facts the module docstring relies on, on this torch: what raises on fake CUDA
    tensors without a GPU, and what does not (the guard's reason to exist)."""
    torch.set_num_threads(1)
    with FakeTensorMode():
        a, cpu = torch.empty(4, 3, device="cuda"), torch.empty(4, 3)
        assert isinstance(a, FakeTensor) and a.device.type == "cuda"
        with pytest.raises(FakeTensorDeviceMismatchError):
            a + cpu
        for read_back in (lambda: a.sum().item(), a.tolist, lambda: bool(a.sum() > 0)):
            with pytest.raises(DataDependentOutputException):
                read_back()
        for dynamic in (a.nonzero, lambda: a[a > 0]):
            with pytest.raises(DynamicOutputShapeException):
                dynamic()
        # Let through by fake tensors: each is a copy, a sync or an error on a real GPU
        # (the 0-dim one excepted: CUDA takes it as a scalar; the guard refuses it anyway).
        a[torch.zeros(2, dtype=torch.long)]
        cpu[torch.zeros(2, dtype=torch.long, device="cuda")]
        torch.tensor([1.0, 2.0], device="cuda")
        a.cpu()
        a * torch.ones(())
        torch.rand(3, device="cuda", generator=torch.Generator())
        with torch.device("cuda"):
            lin = torch.nn.Linear(3, 2)
        assert lin.weight.device.type == "cuda" and lin(a).device.type == "cuda"
        with pytest.raises(RuntimeError, match="swap"):
            torch.nn.Linear(3, 2).to("cuda")
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError):
                lin(a).sum().backward()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.Generator(device="cuda")
