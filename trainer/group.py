"""The trials of one fused group as one trainable thing: their stacked model (fused.py),
one SGD over it, the objective of each member, and the training step.

    group = Group(members, nets, momenta)     # members: train.Member, nets: their Nets
    losses = group.step(x, y)                 # x (N, B, 3, S, S), y (N, B) -> (N,) losses
    model_state, momentum = group.member_state(i)   # member i as a solo checkpoint holds it
    group = group.without([i])                # member i leaves (it finished, or failed)

SGD is elementwise, so one SGD over the stacked parameters is N SGDs with the same
lr/momentum/weight decay (those must agree inside a group); each member's momentum
buffer is its slice.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fused import FusedNet
from .manifold import Weights, add_theta_gradients, manifold_loss
from .model import build_model


@dataclass
class HeadObjective:
    """The loss terms of one head sub-group (members of one width): Eq. 1 + Eq. 3."""
    members: slice
    manifold: Weights | None            # None: no member of the sub-group is regularized


def objectives(model: FusedNet, cfgs, device, dtype) -> list[HeadObjective]:
    out = []
    for s, head in zip(model.slices, model.head):
        if not any(c.regularizer for c in cfgs[s]):
            out.append(HeadObjective(s, None))
            continue
        widths = [head.blocks[0].fc.weight.shape[1]] + [b.fc.weight.shape[0] // head.n for b in head.blocks]
        out.append(HeadObjective(s, Weights.of(cfgs[s], widths, device, dtype)))
    return out


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy: logits (B, n*classes), y (n, B) -> (n,)."""
    n, b = y.shape
    if n == 1:
        return F.cross_entropy(logits, y[0]).unsqueeze(0)
    per_sample = F.cross_entropy(logits.view(b, n, -1).transpose(1, 2), y.t(), reduction="none")
    return per_sample.mean(0)                                 # (B, n) -> (n,)


def member_losses(model: FusedNet, heads: list[HeadObjective], x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """Every member's training loss, (N,): cross-entropy plus its manifold terms."""
    out = []
    for (logits, feats), head, obj in zip(model(x), model.head, heads):
        ce = cross_entropy(logits, y[obj.members])
        if obj.manifold is None:
            out.append(ce)                                    # Eq. 1 alone
        else:
            out.append(ce + manifold_loss(head, feats, obj.manifold))   # Eq. 1 + Eq. 3, (n_g,)
    return torch.cat(out) if len(out) > 1 else out[0]


class Group:
    def __init__(self, members: list, nets: list, momenta: list[dict]):
        cfg = members[0].cfg
        self.members = members
        self.n = len(members)
        self.dtype = getattr(torch, cfg.dtype)
        self.timeline = None                      # a MemoryTimeline while one records
        device = next(nets[0].parameters()).device
        self.model = FusedNet(nets, [m.generator for m in members])       # on the nets' device
        self.model.train()
        # foreach: one op updates every parameter (the default on CUDA, not on CPU); the same
        # arithmetic, tensor by tensor, as the for-loop SGD.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, foreach=True)
        self._set_momentum(momenta)
        self.heads = objectives(self.model, [m.cfg for m in members], device, self.dtype)
        self.losses = functools.partial(member_losses, self.model, self.heads)
        if cfg.compile != "off":
            self.losses = torch.compile(self.losses, mode=None if cfg.compile == "default"
                                        else cfg.compile)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step of every member; returns their losses (N,), detached."""
        return self.update(self.losses(x, y))

    def update(self, losses: torch.Tensor) -> torch.Tensor:
        """The step's second half: backward from the members' losses, then SGD. Gradients
        are freed right after the step, so none is held through the next forward pass."""
        self.backward(losses)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return losses.detach()

    def backward(self, losses: torch.Tensor) -> None:
        """Every member's gradient of its own loss (members share no weights), the manifold
        terms' weight decay (manifold.add_theta_gradients) included."""
        losses.sum().backward()
        for head, obj in zip(self.model.head, self.heads):
            if obj.manifold is not None:
                add_theta_gradients(head, obj.manifold)

    def member_state(self, i: int) -> tuple[dict, dict]:
        """(Net state_dict, {parameter name: momentum buffer}) of member i: what its
        checkpoint holds, the same whether it trained alone or fused."""
        momentum = {}
        for name, (p, where) in self.model.member_tensors(i).items():
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                momentum[name] = where.of(buf).detach().clone()
        return self.model.member_state(i), momentum

    def without(self, leaving: list[int]) -> "Group | None":
        """The group of the other members (None if nobody is left), same states."""
        if not leaving:
            return self
        stay = [i for i in range(self.n) if i not in set(leaving)]
        if not stay:
            return None
        device = next(self.model.parameters()).device
        nets, momenta = [], []
        for i in stay:
            state, momentum = self.member_state(i)
            net = build_model(self.members[i].cfg)
            net.load_state_dict(state)
            nets.append(net.to(device))
            momenta.append(momentum)
        return Group([self.members[i] for i in stay], nets, momenta)

    def _set_momentum(self, momenta: list[dict]) -> None:
        """Stack the members' momentum buffers. A member without one (a new trial beside
        resumed ones) gets zeros: SGD's first step (buf = grad) is then exactly the same."""
        if not any(momenta) or self.members[0].cfg.momentum == 0:
            return
        for i, momentum in enumerate(momenta):
            for name, (p, where) in self.model.member_tensors(i).items():
                if not isinstance(p, torch.nn.Parameter):
                    continue
                state = self.opt.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                if name in momentum:
                    where.of(state["momentum_buffer"]).copy_(momentum[name])
