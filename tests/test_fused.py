"""Fused training is solo training: each member of a group gets exactly its solo step.

This training is chaotic (SGD, batch 5: a 1e-15 float64 perturbation of the initial weights
grows to a 0.1 loss difference within ~8 steps), so fused and solo are compared one step
at a time from identical states in float64, and over 2-3 steps at most, never by long
float32 runs. The solo reference is the textbook step of one Net, written out here.
"""
from __future__ import annotations

import pytest
import torch

from trainer.checkpoint import CHECKPOINT
from trainer.config import Config
from trainer.errors import ConfigError, NonFiniteLoss
from trainer.group import Group
from trainer.model import build_model
from trainer.train import Measurement, Member, MemberFailed, train, train_group

from paper_regularizer import objective

# A group that mixes everything that may differ inside one: seeds, regularizer on/off,
# alphas, lambda, the reading of the pairs, and the width W (two head sub-groups).
MIXED = [dict(seed=0, regularizer=True),
         dict(seed=1, regularizer=False),
         dict(seed=2, regularizer=True, alpha_first=1e-3, reg_lambda=1e-2, reg_pairs="even"),
         dict(seed=3, regularizer=True, width=16),
         dict(seed=4, regularizer=False, width=16)]


def cfg(dtype="float64", **kw) -> Config:
    base = dict(dataset="synthetic", vgg_width_divisor=16, width=32, batch_size=5, device="cpu",
                dtype=dtype, momentum=0.9, threads=1)
    return Config.from_dict({**base, **kw})


def solo_steps(c: Config, xs, ys):
    """The reference: one trial's Net, cross-entropy + Eq. 3-4, SGD. -> (state_dict, losses)."""
    net = build_model(c).train()
    opt = torch.optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    losses = []
    for x, y in zip(xs, ys):
        loss = objective(net, x, y, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net.state_dict(), losses


def fused_steps(cfgs, xs, ys):
    """The trainer's group step. Members are listed widest first, as train_group orders them."""
    members = [Member(i, c, None, generator=torch.Generator()) for i, c in enumerate(cfgs)]
    group = Group(members, [build_model(c) for c in cfgs], [{} for _ in cfgs])
    losses = [group.step(x, y) for x, y in zip(xs, ys)]
    return group, torch.stack(losses)


def batches(n_members: int, steps: int, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, n_members, 5, 3, 32, 32, generator=g, dtype=dtype)
    ys = torch.randint(0, 10, (steps, n_members, 5), generator=g)
    return xs, ys


def worst_relative(ours: dict, ref: dict) -> float:
    """max |ours - ref| / max |ref| over every floating tensor (params and BN buffers); the
    integers (num_batches_tracked) must be equal."""
    worst = 0.0
    for name, r in ref.items():
        if not r.dtype.is_floating_point:
            assert torch.equal(ours[name], r), name
            continue
        scale = r.abs().max().clamp_min(1e-3)    # a conv bias before BatchNorm has gradient ~0
        worst = max(worst, float((ours[name] - r).abs().max() / scale))
    return worst


@pytest.mark.parametrize("steps,tol", [(1, 1e-9), (3, 1e-6)], ids=["one-step", "three-steps"])
def test_each_member_of_a_mixed_group_steps_exactly_as_alone(steps, tol):
    cfgs = [cfg(**m) for m in MIXED]
    xs, ys = batches(len(cfgs), steps)
    group, fused_losses = fused_steps(cfgs, xs, ys)
    assert [s.stop - s.start for s in group.model.slices] == [3, 2]   # W=32 and W=16 heads
    for i, c in enumerate(cfgs):
        state, losses = solo_steps(c, xs[:, i], ys[:, i])
        member_state, momentum = group.member_state(i)
        assert worst_relative(member_state, state) < tol, MIXED[i]
        assert fused_losses[:, i].tolist() == pytest.approx(losses, rel=tol), MIXED[i]
        assert set(momentum) == {k for k, v in state.items() if v.dtype.is_floating_point
                                 and "running" not in k}                # one buffer per parameter


def test_float32_first_step_loss_matches_solo():
    cfgs = [cfg(dtype="float32", **m) for m in MIXED]
    xs, ys = batches(len(cfgs), 1, torch.float32)
    _, fused_losses = fused_steps(cfgs, xs, ys)
    for i, c in enumerate(cfgs):
        _, losses = solo_steps(c, xs[:, i], ys[:, i])
        assert fused_losses[0, i].item() == pytest.approx(losses[0], rel=1e-4)


def test_a_regularized_member_differs_from_its_unregularized_twin():
    """The check above would pass if the regularizer were dropped for everyone: pin it."""
    cfgs = [cfg(seed=0, regularizer=True), cfg(seed=0, regularizer=False)]
    xs, ys = batches(1, 1)
    xs = xs.expand(1, 2, *xs.shape[2:])
    ys = ys.expand(1, 2, 5)
    group, losses = fused_steps(cfgs, xs, ys)
    assert losses[0, 0] > losses[0, 1] * 1.01                         # the manifold terms count


def tiny(**kw) -> Config:
    """10 generated images, 2 steps an epoch (more would let chaos grow the float64
    rounding differences between fused and solo beyond any tolerance that means something)."""
    base = dict(dataset="synthetic", train_samples=10, test_samples=20, vgg_width_divisor=16,
                width=8, batch_size=5, epochs=1, threads=1, device="cpu", dtype="float64",
                momentum=0.9, augment=True)
    return Config.from_dict({**base, **kw})


def test_train_group_equals_train_alone_with_own_data_order_and_augmentation(tmp_path):
    """One epoch (8 steps) of a group through the real loop, against each trial alone:
    their own generator draws their own order, crops and flips, whatever their group."""
    cfgs = [tiny(seed=0, regularizer=True), tiny(seed=1), tiny(seed=2, width=4, regularizer=True)]
    alone = [tmp_path / f"alone{i}" for i in range(3)]
    for c, d in zip(cfgs, alone):
        list(train(c, d))
    fused = [tmp_path / f"fused{i}" for i in range(3)]
    events = [e for round_ in train_group(cfgs, fused) for e in round_]
    assert sorted((e.member, e.final) for e in events) == [(0, False), (0, True), (1, False),
                                                           (1, True), (2, False), (2, True)]
    for a, f in zip(alone, fused):
        assert worst_relative(torch.load(f / CHECKPOINT, weights_only=True)["model"],
                              torch.load(a / CHECKPOINT, weights_only=True)["model"]) < 1e-5
    s0, s1 = (torch.load(f / CHECKPOINT, weights_only=True)["model"] for f in fused[:2])
    assert not torch.allclose(s0["head.blocks.0.fc.weight"], s1["head.blocks.0.fc.weight"])


def test_a_member_that_turns_non_finite_fails_alone_and_the_others_go_on(tmp_path):
    cfgs = [tiny(seed=0, epochs=2), tiny(seed=1, epochs=2, regularizer=True, alpha_first=1e200,
                                         alpha_second=1e200), tiny(seed=2, epochs=2)]
    events = [e for round_ in train_group(cfgs, [tmp_path / str(i) for i in range(3)]) for e in round_]
    failed = [e for e in events if isinstance(e, MemberFailed)]
    assert [f.member for f in failed] == [1]
    assert isinstance(failed[0].error, NonFiniteLoss)
    assert "epoch 1, step" in str(failed[0].error)
    finished = sorted(e.member for e in events if isinstance(e, Measurement) and e.final)
    assert finished == [0, 2]
    # the survivors' training is what it would have been without the failing member
    alone = tmp_path / "alone0"
    list(train(cfgs[0], alone))
    assert worst_relative(torch.load(tmp_path / "0" / CHECKPOINT, weights_only=True)["model"],
                          torch.load(alone / CHECKPOINT, weights_only=True)["model"]) < 1e-5


def test_members_resume_from_their_own_epochs_fused_or_alone(tmp_path):
    """A member checkpointed inside a group resumes alone, and a solo checkpoint resumes
    inside a group beside a new trial: the same states as uninterrupted solo runs."""
    a, b = tiny(seed=0, epochs=2), tiny(seed=1, epochs=2, regularizer=True)
    list(train_group([a.__class__(**{**a.to_dict(), "epochs": 1}),
                      b.__class__(**{**b.to_dict(), "epochs": 1})], [tmp_path / "a", tmp_path / "b"]))
    list(train(a, tmp_path / "a"))                                   # epoch 2 of a: alone
    new = tiny(seed=7, epochs=2)
    rounds = list(train_group([b, new], [tmp_path / "b", tmp_path / "new"]))   # b: epoch 2, new: 1, 2
    assert [(e.member, e.epoch) for e in rounds[0]] == [(0, 1)] and rounds[0][0].replayed
    epochs = [[(e.member, e.epoch) for e in r if not e.final] for r in rounds[1:]]
    assert epochs == [[(0, 2), (1, 1)], [(1, 2)]]
    for name, c in (("a", a), ("b", b), ("new", new)):
        list(train(c, tmp_path / f"straight-{name}"))
        assert worst_relative(torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["model"],
                              torch.load(tmp_path / f"straight-{name}" / CHECKPOINT,
                                         weights_only=True)["model"]) < 1e-5, name


@pytest.mark.parametrize("other,field", [(dict(lr=0.1), "lr"), (dict(batch_size=4), "batch_size"),
                                         (dict(memory_timeline=True), "memory_timeline")])
def test_a_group_refuses_members_that_differ_in_shape_or_optimizer(other, field):
    with pytest.raises(ConfigError, match=field):
        list(train_group([tiny(), tiny(seed=1, **other)]))


def test_memory_timeline_is_never_fused():
    with pytest.raises(ConfigError, match="alone"):
        list(train_group([tiny(memory_timeline=True), tiny(seed=1, memory_timeline=True)]))
