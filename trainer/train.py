"""The training loop: a group of trials trained together (fused), from Configs to per-epoch
measurements and checkpoints. A solo trial is a group of one.

    for m in train(cfg, checkpoint_dir="ckpt"):              # one trial; resumes from ckpt/
        print(m.epoch, m.metrics)
    for events in train_group([cfg_a, cfg_b], ["a", "b"]):   # fused: per epoch, a Measurement
        ...                                                  # (or MemberFailed) per member

Knows nothing of Ray, MLflow or YAML: callers decide where measurements go.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import checkpoint, faults
from .config import PER_MEMBER, Config, available_cpus, trains_alone
from .data import Data, EpochDraws, epoch_seed, group_batch, load_data, resident_bytes, steps_per_epoch
from .errors import ConfigError, NonFiniteLoss, TrialError
from .estimates import eval_chunk_size
from .group import Group
from .memory import MemoryTimeline, cap_allocator, cuda_peak_metrics, forward_peak_mb, model_bytes
from .model import build_model

CHECK_EVERY = 100     # steps between loss checks: one host sync per 100 steps on CUDA


@dataclass
class Measurement:
    epoch: int                         # 1-based; the final summary repeats the last epoch
    metrics: dict                      # name -> float (accuracies and gaps in %)
    checkpoint: Path | None = None     # written this epoch (the whole state), else None
    artifacts: dict = field(default_factory=dict)   # name.json -> JSON-able dict
    final: bool = False
    member: int = 0                    # index of the trial in train_group's list
    replayed: bool = False             # an epoch done before this resume, from the checkpoint


@dataclass
class MemberFailed:
    """A member that left its group with its own error; the others go on."""
    member: int
    error: Exception


@dataclass
class Member:
    index: int                         # position in the caller's list
    cfg: Config
    folder: Path | None                # checkpoint folder
    epoch: int = 0                     # epochs done
    generator: torch.Generator | None = None   # its own randomness, on the device
    bytes: tuple[int, int] = (0, 0)    # (parameter, buffer) bytes of its network
    history: list = field(default_factory=list)   # every epoch's {"epoch", "metrics", "artifacts"}

    @property
    def metrics(self) -> dict:
        return self.history[-1]["metrics"] if self.history else {}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_fusable(cfgs: list[Config]) -> Config:
    """The group's shared config (the first member's); raises ConfigError naming the first
    field that fixes shapes or the optimizer and differs between members."""
    if not cfgs:
        raise ConfigError("train_group: no trials given")
    for cfg in cfgs:
        cfg.validate()
    for name in cfgs[0].to_dict():
        values = [getattr(c, name) for c in cfgs]
        if name not in PER_MEMBER and len(set(map(repr, values))) > 1:
            raise ConfigError(f"these trials cannot train as one group: {name} differs ({values}); "
                              f"only {sorted(PER_MEMBER)} may differ inside a group")
    if len(cfgs) > 1 and trains_alone(cfgs[0].to_dict()):
        raise ConfigError("memory_timeline measures one trial's memory: train it alone, not fused")
    return cfgs[0]


def train(cfg: Config, checkpoint_dir: str | os.PathLike | None = None,
          progress: Callable[[int, int, int], None] | None = None) -> Iterator[Measurement]:
    """Run (or resume) one trial; yield a Measurement per epoch, then a final one."""
    for events in train_group([cfg], [checkpoint_dir], progress):
        for event in events:
            if isinstance(event, MemberFailed):
                raise event.error
            yield event


def train_group(cfgs: list[Config], checkpoint_dirs: list | None = None,
                progress: Callable[[int, int, int], None] | None = None,
                memory_cap: int | None = None) -> Iterator[list]:
    """Train (or resume) the trials together. Per epoch of the group, yield a list with a
    Measurement for every member that trained it (and its final Measurement after its last
    epoch) and a MemberFailed for every member that left. Members may resume from different
    epochs; each trains until its own last. A resumed member first re-yields the epochs its
    checkpoint holds (Measurement.replayed), so a caller can log any it missed.
    `progress(epoch, step, steps)` is called about 100 times an epoch (epoch: the lowest
    of the members'). `memory_cap`: bytes the process's CUDA allocator may hold (its share
    of the GPU); beyond it a step raises torch.cuda.OutOfMemoryError, as a real OOM does.
    """
    cfg = check_fusable(cfgs)
    device = resolve_device(cfg.device)
    cap_allocator(device, memory_cap)
    oom_at = faults.injected_oom(cfgs)              # a test hook, None unless asked for
    # More OpenMP threads than free cores makes a CPU step 10-100x slower: match them.
    torch.set_num_threads(cfg.threads or available_cpus())
    # cuDNN picks its fastest conv algorithms per shape; they may differ between reruns.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    data = load_data(cfg.dataset, cfg.data_dir, cfg.num_classes, cfg.train_samples,
                     cfg.test_samples, device)
    steps = steps_per_epoch(data, cfg.batch_size)
    if steps == 0:
        raise ConfigError(f"{len(data.train_y)} training samples make no batch of {cfg.batch_size}")
    folders = checkpoint_dirs or [None] * len(cfgs)
    members = [Member(i, c, Path(d) if d is not None else None)
               for i, (c, d) in enumerate(zip(cfgs, folders))]
    members.sort(key=lambda m: -m.cfg.width)      # one head shape (width) next to each other
    group, events = _resume(members, device)
    events += [Measurement(h["epoch"], h["metrics"], None, h["artifacts"], member=m.index, replayed=True)
               for m in members for h in m.history]
    if group is not None:
        events += [_final(group, i, data) for i in _done(group)]   # finished before: report
        group = group.without(_done(group))
    if events:
        yield events
    while group is not None:
        group, events = _epoch(group, data, steps, device, progress, oom_at)
        if group is not None:
            events += [_final(group, i, data) for i in _done(group)]
            group = group.without(_done(group))
        yield events


def _resume(members: list[Member], device) -> tuple[Group | None, list]:
    """The group of every member that can train, each from its checkpoint if it has one;
    a member whose checkpoint cannot be used fails alone."""
    nets, momenta, ok, failed = [], [], [], []
    for m in members:
        m.generator = torch.Generator(device=device)
        net = build_model(m.cfg)
        m.bytes = model_bytes(net)
        try:
            state = checkpoint.load(m.folder, m.cfg) if m.folder else None
        except TrialError as err:
            failed.append(MemberFailed(m.index, err))
            continue
        if state is not None:
            net.load_state_dict(state["model"])
            m.epoch, m.history = state["epoch"], state["history"]
        nets.append(net.to(device))
        momenta.append(state["momentum"] if state else {})
        ok.append(m)
    return (Group(ok, nets, momenta) if ok else None), failed


def _done(group: Group) -> list[int]:
    return [i for i, m in enumerate(group.members) if m.epoch >= m.cfg.epochs]


def _epoch(group: Group, data: Data, steps: int, device, progress,
           oom_at: tuple[int, int] | None = None) -> tuple[Group | None, list]:
    """Every member trains its next epoch: measure, evaluate, checkpoint."""
    cfg = group.members[0].cfg
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.memory_timeline and group.members[0].epoch == 0 and device.type == "cuda":
        group.timeline = MemoryTimeline(group.model, lambda: torch.cuda.memory_allocated(device),
                                        cfg.timeline_steps)
    for m in group.members:
        m.generator.manual_seed(epoch_seed(m.cfg.seed, m.epoch + 1))
    draws = EpochDraws.draw([m.generator for m in group.members], len(data.train_y), steps,
                          cfg.batch_size, cfg.augment)
    epoch = min(m.epoch for m in group.members) + 1
    oom_step = oom_at[1] if oom_at is not None and oom_at[0] == epoch else None
    group, losses, events = train_one_epoch(group, data, draws, cfg, progress, oom_step)
    if group is None:
        return None, events
    seconds = time.perf_counter() - t0
    memory = _memory_metrics(group, data, device)
    evaluated = evaluate(group, data)
    for i, m in enumerate(group.members):
        m.epoch += 1
        metrics = {"train_loss": losses[i] / steps, "epoch_seconds": seconds, **memory,
                   **evaluated.get(i, {})}
        artifacts = {}
        if group.timeline is not None:
            artifacts["memory_timeline.json"] = _timeline_artifact(group.timeline, m)
            metrics["forward_peak_memory_mb"] = forward_peak_mb(
                artifacts["memory_timeline.json"], sum(m.bytes) + resident_bytes(data))
        m.history.append({"epoch": m.epoch, "metrics": metrics, "artifacts": artifacts})
        saved = None
        if m.folder and (m.epoch % cfg.checkpoint_every == 0 or m.epoch == cfg.epochs):
            saved = checkpoint.save(m.folder, m.epoch, m.cfg, *group.member_state(i), m.history)
        events.append(Measurement(m.epoch, dict(metrics), saved, artifacts, member=m.index))
    group.timeline = None
    return group, events


def train_one_epoch(group: Group, data: Data, draws: EpochDraws, cfg: Config, progress=None,
                    oom_step: int | None = None) -> tuple[Group | None, list[float], list[MemberFailed]]:
    """One epoch of every member: (the group without the members whose loss turned
    non-finite, the summed loss of each remaining member, a MemberFailed per leaver).
    `oom_step`: the 1-based step that raises an injected OOM (trainer/faults.py)."""
    steps = draws.order.shape[1] // cfg.batch_size
    loss_sum = torch.zeros(group.n, dtype=torch.float64, device=draws.order.device)
    pending, failed = [], []
    for step in range(steps):
        if step + 1 == oom_step:
            faults.raise_oom(min(m.epoch for m in group.members) + 1, step + 1)
        x, y = group_batch(data, draws, step, cfg.batch_size, group.dtype, cfg.image_size)
        pending.append(group.step(x, y))                  # (N,) losses; no host sync
        if group.timeline is not None:
            group.timeline.end_step()
        if len(pending) == CHECK_EVERY or step == steps - 1:
            window = torch.stack(pending)                 # (steps, N): one host sync here
            pending = []
            loss_sum += window.double().sum(0)
            bad = _non_finite(window, group, step)
            if bad:
                failed += [MemberFailed(group.members[i].index, err) for i, err in bad]
                keep = [i for i in range(group.n) if i not in dict(bad)]
                group = group.without(sorted(dict(bad)))
                if group is None:
                    return None, [], failed
                loss_sum, draws = loss_sum[keep], draws.keep(keep)
        if progress and ((step + 1) % max(1, steps // 100) == 0 or step == steps - 1):
            progress(min(m.epoch for m in group.members) + 1, step + 1, steps)
    return group, loss_sum.tolist(), failed


def _non_finite(window: torch.Tensor, group: Group, last_step: int) -> list[tuple[int, Exception]]:
    """(position in the group, NonFiniteLoss naming the epoch and first bad step) for every
    member whose loss is NaN or infinite somewhere in the window (steps, N)."""
    finite = torch.isfinite(window)
    if bool(finite.all()):
        return []
    out = []
    for i in (~finite).any(0).nonzero().flatten().tolist():
        first = int((~finite[:, i]).nonzero()[0])
        step = last_step - len(window) + 1 + first
        out.append((i, NonFiniteLoss(f"loss is {window[first, i].item()} at epoch "
                                     f"{group.members[i].epoch + 1}, step {step}: lower lr or "
                                     f"alpha_*, or check the data")))
    return out


def _memory_metrics(group: Group, data: Data, device) -> dict:
    """CUDA peak memory of the epoch. Every group logs its peak as group_peak_memory_mb
    (what its process needed: the orchestrator checks it against the forecast); a fused
    group's is never logged as one trial's peak."""
    if device.type != "cuda":
        return {}
    m = group.members[0]
    peak = cuda_peak_metrics(device, sum(m.bytes) + resident_bytes(data))
    whole = {"group_peak_memory_mb": peak["peak_memory_mb"]}
    return {**peak, **whole} if group.n == 1 else whole


def evaluate(group: Group, data: Data) -> dict[int, dict]:
    """Train and test accuracy (%) of the members due for evaluation this epoch (every
    eval_every epochs, and the last), by position in the group."""
    cfg = group.members[0].cfg
    due = [i for i, m in enumerate(group.members)
           if (m.epoch + 1) % cfg.eval_every == 0 or m.epoch + 1 == cfg.epochs]
    if not due:
        return {}
    train_acc = accuracy(group, data, data.train_x, data.train_y)
    test_acc = accuracy(group, data, data.test_x, data.test_y)
    return {i: {"train_accuracy": train_acc[i], "test_accuracy": test_acc[i],
                "generalization_gap": train_acc[i] - test_acc[i]} for i in due}


def eval_chunk(group: Group, data: Data, x_uint8: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many of these images each member classifies right, (N,): one forward pass of
    all members (the pass trainer/cost.py counts)."""
    cfg, model = group.members[0].cfg, group.model
    x = data.normalize(x_uint8, group.dtype, cfg.image_size)
    logits = torch.cat([lg for lg, _ in model(x.expand(group.n, *x.shape))], dim=1)  # (b, N*C)
    predicted = logits.view(len(x), group.n, -1).argmax(-1)                            # (b, N)
    return (predicted == y[:, None]).sum(0)


@torch.no_grad()
def accuracy(group: Group, data: Data, x_uint8: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Top-1 accuracy in % of every member, eval mode (BatchNorm running stats, no
    dropout, no augmentation); all members see the same images at once."""
    chunk = eval_chunk_size(group.n, group.members[0].cfg.image_size)
    group.model.eval()
    correct = torch.zeros(group.n, dtype=torch.int64, device=y.device)
    for i in range(0, len(y), chunk):
        correct += eval_chunk(group, data, x_uint8[i:i + chunk], y[i:i + chunk])
    group.model.train()
    return (100.0 * correct.double() / len(y)).tolist()


def _final(group: Group, i: int, data: Data) -> Measurement:
    """A member's summary after its last epoch: its last metrics, its model bytes and,
    when asked for, Figures 4-5's analysis."""
    m = group.members[i]
    metrics = {**m.metrics, "model_param_bytes": m.bytes[0], "model_buffer_bytes": m.bytes[1]}
    artifacts = {}
    if m.cfg.representation_analysis:
        net = build_model(m.cfg)
        net.load_state_dict(group.member_state(i)[0])
        from .analysis import analyze   # scikit-learn: only when asked for
        artifacts["representation_analysis.json"] = analyze(net.to(data.train_x.device), data, m.cfg)
    return Measurement(m.epoch, metrics, None, artifacts, final=True, member=m.index)


def _timeline_artifact(timeline: MemoryTimeline, m: Member) -> dict:
    return {**timeline.close(), "batch_size": m.cfg.batch_size, "arch": m.cfg.arch,
            "width": m.cfg.width, "image_size": m.cfg.image_size}
