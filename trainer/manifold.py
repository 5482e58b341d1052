"""The manifold regularizer, Eq. 3-4 of the paper.

    L_u = sum_k alpha_k * L_u^(k)                                                  (Eq. 3)
    L_u^(k) = sum_n sum_m [d(x_n^k, x_m^k) - d(x_n^{k-1}, x_m^{k-1})]^2 + lambda ||theta^(k)||^2   (Eq. 4)

Each local term reaches only the layers it spans (Fig. 1): its input is detached and the
spanned layers are recomputed from it, so cross-entropy alone trains everything upstream.

Shapes carry optional leading dims: x (B, D) is one trial's mini-batch; x (N, B, D) is a
fused group's (trainer/fused.py), and every loss is then one value per member, (N,).
The layers say how their activations split into mini-batches (`block.members`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """x (..., B, D) -> (..., B, B) Euclidean distances with a finite gradient everywhere.

    d = sqrt(s) has an infinite derivative at s = 0 (the diagonal, or two equal samples).
    There the distance is exactly 0 and its gradient is set to 0 (the subgradient), instead
    of the NaN that sqrt would give.
    """
    sq = (x[..., :, None, :] - x[..., None, :, :]).pow(2).sum(-1)    # (..., B, B)
    zero = sq == 0
    return torch.where(zero, 0.0, sq.masked_fill(zero, 1.0).sqrt())


def distance_preservation_loss(prev: torch.Tensor, curr: torch.Tensor) -> torch.Tensor:
    """Eq. 4's first term. prev (..., B, D_prev), curr (..., B, D_curr) -> (...).
    Sum over all ordered pairs (n, m); the diagonal contributes 0."""
    return (pairwise_distances(curr) - pairwise_distances(prev)).pow(2).sum((-2, -1))


@dataclass(frozen=True)
class LocalTerm:
    """One L_u^(k): compare feats[prev] with feats[curr], training head blocks `blocks`
    (1-based FC indices). Its alpha_k is alpha_first when `first_half`, else alpha_second."""
    prev: int
    curr: int
    blocks: tuple[int, ...]
    first_half: bool


def local_terms(n_layers: int, reg_pairs: str) -> list[LocalTerm]:
    """The terms of Eq. 3 for a head of `n_layers` FC layers.

    adjacent (our default reading): (FC1,FC2) ... (FC9,FC10); each trains its two layers.
    even ("backpropagated every two layers", the spaces of the t-SNE figure):
      (FC2,FC4) ... (FC8,FC10); each trains the halving and the same-width layer between.
    The paper puts smaller weights on the first half of the bottleneck than on the second;
    a term belongs to the first half when its deeper layer is in FC1..FC(n/2).
    """
    if reg_pairs == "adjacent":
        spans = [(k - 1, k, (k - 1, k)) for k in range(2, n_layers + 1)]
    else:
        spans = [(k - 2, k, (k - 1, k)) for k in range(4, n_layers + 1, 2)]
    return [LocalTerm(p, c, b, c <= n_layers // 2) for p, c, b in spans]


def alpha(term: LocalTerm, alpha_first: float, alpha_second: float) -> float:
    return alpha_first if term.first_half else alpha_second


def local_loss(blocks, feats: list[torch.Tensor], term: LocalTerm, lam) -> torch.Tensor:
    """L_u^(k) (Eq. 4) for one term, reaching only the parameters of term.blocks.
    blocks: the head's FC layers (each recomputes with track_stats=False, knows its
    ||theta||^2 and how its activations split into mini-batches); feats: the head's
    activations; lam: lambda (a number, or one per member (N,)). Returns a scalar for one
    trial, (N,) for a fused group."""
    first = term.blocks[0]
    acts = {first - 1: feats[first - 1].detach()}           # the local loss stops here
    for j in term.blocks:
        acts[j] = blocks[j - 1](acts[j - 1], track_stats=False)
    theta_sq = sum(blocks[j - 1].squared_norm() for j in term.blocks)
    batch = blocks[first - 1].members                       # -> (..., B, D)
    return distance_preservation_loss(batch(acts[term.prev]), batch(acts[term.curr])) + lam * theta_sq
