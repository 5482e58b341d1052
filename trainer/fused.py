"""Horizontal fusion: the networks of N trials as one stacked model (HFTA, MLSys 2021).

At mini-batch 5-9 a VGG16 step is bound by kernel launches, not arithmetic; fusing N
trials runs each layer of all N as ONE op, so a group costs about one trial's launches.

    nets = [build_model(cfg) for cfg in cfgs]     # one trial's network each (trainer/model.py)
    model = FusedNet(nets, generators)            # the same weights, stacked: [N, ...]
    heads = model(x)                              # x (N, B, 3, S, S): member m's own batch

Layout: every parameter and buffer of member m is block m of a stacked tensor, named as in
its own Net (each tensor is stored in the layout its op wants, e.g. BatchNorm's as (N*C,),
and `.view(N, *member_shape)[m]` is member m's), so `member_state(m)` is exactly the
state_dict of that trial's Net (the checkpoint format).
- conv section: images (B, N*3, S, S); member m owns channel block m; Conv2d is one
  grouped conv (groups=N), BatchNorm one batch_norm over N*C channels, whose running
  statistics (N*C,) hold each member's in its own block (updated in place).
- head: activations (B, N*D), member m's features in column block m; Linear is one
  batched matmul, BatchNorm1d one batch_norm over N*D features (statistics per member and
  feature). A group of one runs exactly the ops of its solo Net, view for view.
- members whose heads differ in shape (width W) form consecutive sub-groups, each with
  its own stacked head; the conv section is shared by all (it is the same for every W).
Nothing mixes members: member m's outputs depend only on member m's weights and batch, so
its gradients and BatchNorm statistics are those of its solo step (tests/test_fused.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Net, to_head_input


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Members' tensors one after another along dim 0 (no stacking dim): (N*d0, ...)."""
    return torch.cat([t.detach().reshape(-1, *t.shape[1:]) for t in tensors]).clone()


class GroupedConv2d(nn.Module):
    """N Conv2d(3x3, padding 1): (B, N*C_in, H, W) -> (B, N*C_out, H, W)."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.n = len(convs)
        self.weight = nn.Parameter(_cat([c.weight for c in convs]))     # (N*C_out, C_in, 3, 3)
        self.bias = nn.Parameter(_cat([c.bias for c in convs]))         # (N*C_out,)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.weight, self.bias, padding=1, groups=self.n)


class GroupedBatchNorm(nn.Module):
    """N BatchNorms over channel dim 1 of size N*C, in channel blocks of C.
    track_stats=False: batch statistics without updating the running ones (the
    regularizer's recomputation, as FCBlock does for one trial)."""

    def __init__(self, bns: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        self.eps, self.momentum = bns[0].eps, bns[0].momentum
        self.weight = nn.Parameter(_cat([b.weight for b in bns]))        # (N*C,)
        self.bias = nn.Parameter(_cat([b.bias for b in bns]))
        for name in ("running_mean", "running_var"):                     # (N*C,), updated in place
            self.register_buffer(name, _cat([getattr(b, name) for b in bns]))
        self.register_buffer("num_batches_tracked", _cat([b.num_batches_tracked for b in bns]))  # (N,)

    def forward(self, h: torch.Tensor, track_stats: bool = True) -> torch.Tensor:
        # num_batches_tracked (which F.batch_norm leaves to the module) is counted for every
        # layer at once by FusedNet.forward: one op instead of one per layer.
        running = not self.training or track_stats
        return F.batch_norm(h, self.running_mean if running else None,
                            self.running_var if running else None, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class _BatchedLinear(torch.autograd.Function):
    """N Linear layers on the flat layout: x (B, N*D_in) -> (B, N*D_out), weights
    (N*D_out, D_in), biases (N*D_out,): one batched matmul each way. Its own backward gives
    dW in W's layout, as F.linear does for one weight (through autograd's views it would
    arrive transposed, and cost a strided copy on every accumulation)."""

    @staticmethod
    def forward(x, weight, bias, n):
        xt = x.view(len(x), n, -1).transpose(0, 1)                         # (N, B, D_in)
        w = weight.view(n, -1, weight.shape[1])                            # (N, D_out, D_in)
        out = torch.baddbmm(bias.view(n, 1, -1), xt, w.transpose(1, 2))    # (N, B, D_out)
        return out.transpose(0, 1).reshape(len(x), -1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.n = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad):                                               # grad (B, N*D_out)
        x, weight = ctx.saved_tensors
        n, b = ctx.n, len(grad)
        g = grad.view(b, n, -1).transpose(0, 1)                            # (N, B, D_out)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(g, weight.view(n, -1, weight.shape[1])).transpose(0, 1).reshape(b, -1)
        if ctx.needs_input_grad[1]:
            xt = x.view(b, n, -1).transpose(0, 1)
            dw = torch.bmm(g.transpose(1, 2), xt).view(weight.shape)
        if ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db, None


class GroupedLinear(nn.Module):
    """N Linear layers: (B, N*D_in) -> (B, N*D_out), one batched matmul (a group of one:
    exactly F.linear)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.n = len(linears)
        self.weight = nn.Parameter(_cat([l.weight for l in linears]))     # (N*D_out, D_in)
        self.bias = nn.Parameter(_cat([l.bias for l in linears]))         # (N*D_out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return F.linear(x, self.weight, self.bias)
        return _BatchedLinear.apply(x, self.weight, self.bias, self.n)


class GroupedFCBlock(nn.Module):
    """N FCBlocks (Linear + BatchNorm1d + ReLU): (B, N*D_in) -> (B, N*D_out); BatchNorm's
    statistics are per member and feature over the member's B samples."""

    def __init__(self, blocks):
        super().__init__()
        self.fc = GroupedLinear([b.fc for b in blocks])
        self.bn = GroupedBatchNorm([b.bn for b in blocks])

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """An activation (B, N*D) as each member's mini-batch: (N, B, D), a view."""
        return x.unsqueeze(0) if self.fc.n == 1 else x.view(len(x), self.fc.n, -1).transpose(0, 1)

    def forward(self, x: torch.Tensor, track_stats: bool = True) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x), track_stats))


class GroupedBottleneckHead(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.n = len(heads)
        self.blocks = nn.ModuleList(GroupedFCBlock(layer) for layer in zip(*(h.blocks for h in heads)))
        self.out = GroupedLinear([h.out for h in heads])
        # Each member's block of each block parameter, detached (they alias the parameters,
        # so SGD's in-place updates show; a FusedNet is built on its device and never moved,
        # which would leave them behind): member-major, then layer, then parameter.
        self._member_blocks = [p.detach().view(self.n, -1)[m] for m in range(self.n)
                               for block in self.blocks for p in block.parameters()]

    def squared_norms(self) -> torch.Tensor:
        """||theta_j||^2 of every layer j and member, (L, N), in one op (a member's values
        are contiguous rows of each stacked tensor). A value: no gradient flows from it."""
        norms = torch.stack(torch._foreach_norm(self._member_blocks))          # (N*L*P,)
        return norms.square().view(self.n, len(self.blocks), -1).sum(-1).t()

    def add_squared_norm_gradients(self, weight: torch.Tensor) -> None:
        """p.grad += 2 w_j p for every parameter p of every layer j, each member with its own
        weight (L, N): the gradient of sum_j w_j ||theta_j||^2, in place."""
        for j, block in enumerate(self.blocks):
            for p in block.parameters():
                p.grad.view(self.n, -1).addcmul_(p.detach().view(self.n, -1), weight[j, :, None], value=2)

    def forward(self, h0: torch.Tensor, generators=None):
        feats = [h0]                                     # [(B, N*d_in), (B, N*16W), ..., (B, N*W)]
        for block in self.blocks:
            feats.append(block(feats[-1]))
        return self.out(feats[-1]), feats


class GroupedVGGHead(nn.Module):
    """N vanilla VGG16 heads; each member's dropout masks come from its own generator."""

    def __init__(self, heads):
        super().__init__()
        self.fc1 = GroupedLinear([h.fc1 for h in heads])
        self.fc2 = GroupedLinear([h.fc2 for h in heads])
        self.out = GroupedLinear([h.out for h in heads])
        self.p = heads[0].drop.p

    def _drop(self, h: torch.Tensor, generators) -> torch.Tensor:
        if not self.training or self.p == 0:
            return h
        b, width = len(h), h.shape[1] // len(generators)
        keep = torch.cat([torch.rand(b, width, generator=g, device=h.device, dtype=h.dtype)
                          for g in generators], dim=1) >= self.p
        return h * keep / (1 - self.p)

    def forward(self, h0: torch.Tensor, generators):
        h1 = F.relu(self.fc1(h0))
        h2 = F.relu(self.fc2(self._drop(h1, generators)))
        return self.out(self._drop(h2, generators)), [h0, h1, h2]


def _head_shape(net: Net) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in net.head.state_dict().items())


class FusedNet(nn.Module):
    """The stacked networks of N trials. `nets` must list members of the same head shape
    next to each other (train.py sorts them by width); `generators[m]` draws member m's
    dropout masks. forward(x (N, B, 3, S, S)) -> [(logits (B, n_g*classes), feats)] per
    head sub-group, in member order; feats are (B, n_g*D) (block.members() splits them)."""

    def __init__(self, nets: list[Net], generators: list[torch.Generator] | None = None):
        super().__init__()
        self.n = len(nets)
        self.head_input = nets[0].head_input
        self.generators = generators or [None] * self.n
        self.features = nn.Sequential(*(self._fuse_layer(layer) for layer in zip(*(n.features for n in nets))))
        shapes = [_head_shape(n) for n in nets]
        self.slices: list[slice] = []                       # member range of each head
        for m, shape in enumerate(shapes):
            if m == 0 or shape != shapes[m - 1]:
                if shape in shapes[:m]:
                    raise ValueError("FusedNet: members with the same head shape must be adjacent")
                self.slices.append(slice(m, m + 1))
            else:
                self.slices[-1] = slice(self.slices[-1].start, m + 1)
        grouped = {"BottleneckHead": GroupedBottleneckHead, "VGGHead": GroupedVGGHead}
        self.head = nn.ModuleList(grouped[type(nets[s.start].head).__name__]([n.head for n in nets[s]])
                                  for s in self.slices)
        # The shape of each tensor in one member's Net (heads: per sub-group).
        self.shapes = [{k: v.shape for k, v in nets[s.start].state_dict().items()} for s in self.slices]

    @staticmethod
    def _fuse_layer(layers: tuple[nn.Module, ...]) -> nn.Module:
        first = layers[0]
        if isinstance(first, nn.Conv2d):
            return GroupedConv2d(list(layers))
        if isinstance(first, nn.BatchNorm2d):
            return GroupedBatchNorm(list(layers))
        return type(first)(**({"kernel_size": first.kernel_size} if isinstance(first, nn.MaxPool2d)
                              else {"inplace": True}))

    def forward(self, x: torch.Tensor):
        n, b = x.shape[:2]
        if self.training:           # every BatchNorm layer sees one batch: count it, in one op
            torch._foreach_add_([m.num_batches_tracked for m in self.modules()
                                 if isinstance(m, GroupedBatchNorm)], 1)
        images = x[0] if n == 1 else x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:])
        h0 = to_head_input(self.features(images), self.head_input)     # (B, N*D), member-major
        if len(self.slices) == 1:
            return [self.head[0](h0, self.generators)]
        d = h0.shape[1] // n
        return [head(h0[:, s.start * d:s.stop * d], self.generators[s])
                for head, s in zip(self.head, self.slices)]

    # --- one member's view, in its own Net's names ------------------------------------
    def member_tensors(self, m: int) -> dict[str, tuple[torch.Tensor, "Block"]]:
        """Net state_dict name -> (the stacked tensor holding member m, where m is in it)."""
        g = next(i for i, s in enumerate(self.slices) if s.start <= m < s.stop)
        shapes = self.shapes[g]
        out = {f"features.{k}": (t, Block(m, shapes[f"features.{k}"]))
               for k, t in self.features.state_dict(keep_vars=True).items()}
        out.update({f"head.{k}": (t, Block(m - self.slices[g].start, shapes[f"head.{k}"]))
                    for k, t in self.head[g].state_dict(keep_vars=True).items()})
        return out

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's state_dict, as its own Net's (a copy)."""
        return {k: where.of(t).detach().clone() for k, (t, where) in self.member_tensors(m).items()}


class Block(tuple):
    """Where one member is inside a stacked tensor: its index and its own tensor's shape."""

    def __new__(cls, index: int, shape: torch.Size):
        return super().__new__(cls, (index, tuple(shape)))

    def of(self, stacked: torch.Tensor) -> torch.Tensor:
        """The member's block of `stacked` (or of anything laid out like it), as a view."""
        index, shape = self
        return stacked.view(-1, *shape)[index]
