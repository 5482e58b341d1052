"""The manifold regularizer, Eq. 3-4 of the paper.

    L_u = sum_k alpha_k * L_u^(k)                                                  (Eq. 3)
    L_u^(k) = sum_n sum_m [d(x_n^k, x_m^k) - d(x_n^{k-1}, x_m^{k-1})]^2 + lambda ||theta^(k)||^2   (Eq. 4)

Each local term reaches only the layers it spans (Fig. 1): its input is detached and the
spanned layers are recomputed from it, so cross-entropy alone trains everything upstream.

A step computes every term at once, because at mini-batch 5 a GPU step costs what the host
dispatches, not what it computes (trainer/cost.py). Eq. 3 regrouped by layer is the same sum:

    L_u = sum_k alpha_k * D^(k)  +  sum_j c_j ||theta_j||^2,   c_j = lambda * sum_{k spans j} alpha_k

D^(k), the first term of Eq. 4, for all k in one pass (`distance_preservation_losses`), and
||theta_j||^2 of every layer in one op (GroupedBottleneckHead.squared_norms, trainer/fused.py).
The lambda term is a weight decay: its value joins the loss, and its gradient 2 c_j theta_j
is added to the parameters' gradients after backward (`add_theta_gradients`), instead of
through autograd, which would keep a copy of every head parameter until backward (FC1
alone is 51 MB at 224 px).

Shapes carry optional leading dims: x (B, D) is one trial's mini-batch; x (N, B, D) is a
fused group's (trainer/fused.py), and every loss is then one value per member, (N,).
The layers say how their activations split into mini-batches (`block.members`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def distances(sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., B, B) -> distances, with a finite gradient everywhere.

    d = sqrt(s) has an infinite derivative at s = 0 (the diagonal, or two equal samples).
    There the distance is exactly 0 and its gradient is set to 0 (the subgradient), instead
    of the NaN that sqrt would give.
    """
    zero = sq == 0
    return torch.where(zero, 0.0, sq.masked_fill(zero, 1.0).sqrt())


def column_index(widths: list[int], device=None) -> torch.Tensor:
    """(sum widths,) int32: for each column of activations laid side by side, which one it
    belongs to (0..len(widths)-1)."""
    return torch.repeat_interleave(torch.arange(len(widths), dtype=torch.int32, device=device),
                                   torch.tensor(widths, device=device), output_size=sum(widths))


def distance_preservation_losses(prevs: list[torch.Tensor], currs: list[torch.Tensor],
                                 column_of: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4's first term of T terms at once: prevs[k] (..., B, D_k), currs[k] (..., B, D'_k)
    -> (T, ...); each sums over all ordered pairs (n, m), the diagonal contributing 0.
    A squared distance is a sum over features, so the 2T activations side by side
    (..., B, sum D) give every pair's squared differences in one op, summed per activation
    by `column_of` (column_index of their widths; pass it to build it once)."""
    xs = prevs + currs
    if column_of is None:
        column_of = column_index([x.shape[-1] for x in xs], xs[0].device)
    x = torch.cat(xs, -1)                                                   # (..., B, sum D)
    diff_sq = (x[..., :, None, :] - x[..., None, :, :]).pow(2)              # (..., B, B, sum D)
    sq = diff_sq.new_zeros(*diff_sq.shape[:-1], len(xs)).index_add_(-1, column_of, diff_sq)
    d = distances(sq.movedim(-1, 0))                                        # (2T, ..., B, B)
    return (d[len(prevs):] - d[:len(prevs)]).pow(2).sum((-2, -1))


def distance_preservation_loss(prev: torch.Tensor, curr: torch.Tensor) -> torch.Tensor:
    """Eq. 4's first term of one term: prev (..., B, D_prev), curr (..., B, D_curr) -> (...)."""
    return distance_preservation_losses([prev], [curr])[0]


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


def layer_weights(terms: list[LocalTerm], alphas: list[float], lam: float, n_layers: int) -> list[float]:
    """c_j = lambda * sum of alpha_k over the terms k that span layer j (FC1..FCn): the
    weight of ||theta_j||^2 once Eq. 3 is regrouped by layer."""
    return [lam * sum(a for t, a in zip(terms, alphas) if j in t.blocks) for j in range(1, n_layers + 1)]


@dataclass
class Weights:
    """Eq. 3's terms and weights for the members of one head (one width W), on the device."""
    terms: list[LocalTerm]      # every L_u^(k) any member uses
    alpha: torch.Tensor         # (T, n) alpha_k per term and member; 0 where a member has none
    theta_weight: torch.Tensor  # (L, n) c_j per layer and member (layer_weights)
    column_of: torch.Tensor     # (sum D,) int32: which of the 2T activations (prevs, then
                                # currs) each column of their concatenation belongs to

    @classmethod
    def of(cls, cfgs, widths: list[int], device, dtype) -> "Weights":
        """cfgs: the members' configs; widths: feats[j]'s width per member, j = 0..L."""
        n_layers = len(widths) - 1
        uses = [local_terms(n_layers, c.reg_pairs) if c.regularizer else [] for c in cfgs]
        terms = list(dict.fromkeys(t for u in uses for t in u))     # in order, once each
        alphas = [[alpha(t, c.alpha_first, c.alpha_second) if t in u else 0.0 for t in terms]
                  for c, u in zip(cfgs, uses)]                      # (n, T)
        thetas = [layer_weights(terms, a, c.reg_lambda, n_layers) for c, a in zip(cfgs, alphas)]
        columns = column_index([widths[t.prev] for t in terms] + [widths[t.curr] for t in terms], device)
        as_tensor = functools.partial(torch.tensor, dtype=dtype, device=device)
        return cls(terms, as_tensor(alphas).reshape(len(cfgs), -1).t(),
                   as_tensor(thetas).reshape(len(cfgs), -1).t(), columns)


def term_activations(blocks, feats: list[torch.Tensor], term: LocalTerm):
    """(prev, curr) as L_u^(k) sees them, each split into mini-batches (..., B, D): its
    spanned blocks recomputed from a detached input (BatchNorm with the main pass's batch
    statistics, running statistics untouched), so its gradient reaches only those blocks."""
    first = term.blocks[0]
    acts = {first - 1: feats[first - 1].detach()}           # the local loss stops here
    for j in term.blocks:
        acts[j] = blocks[j - 1](acts[j - 1], track_stats=False)
    batch = blocks[first - 1].members                       # -> (..., B, D)
    return batch(acts[term.prev]), batch(acts[term.curr])


def manifold_loss(head, feats: list[torch.Tensor], w: Weights) -> torch.Tensor:
    """Eq. 3, sum_k alpha_k L_u^(k), of every member: (n,). head: a GroupedBottleneckHead
    (trainer/fused.py); feats: its activations. Backward gives the gradient of the distance
    terms; add_theta_gradients then adds the lambda terms' own."""
    prevs, currs = zip(*(term_activations(head.blocks, feats, t) for t in w.terms))
    D = distance_preservation_losses(list(prevs), list(currs), w.column_of)   # (T, n)
    return (w.alpha * D).sum(0) + (w.theta_weight * head.squared_norms()).sum(0)


def add_theta_gradients(head, w: Weights) -> None:
    """d/d theta_j of sum_j c_j ||theta_j||^2 = 2 c_j theta_j, added to every member's
    gradients (after backward, before the optimizer step)."""
    head.add_squared_norm_gradients(w.theta_weight)
