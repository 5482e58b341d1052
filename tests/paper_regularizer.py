"""Eq. 3-4 written out term by term on one trial's Net, as the paper reads (and as the
trainer computed them until it batched every term into one pass): the reference that the
trainer's regularizer (trainer/manifold.py) is tested against. Test code only."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.manifold import LocalTerm, alpha, local_terms


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances; 0 (and gradient 0) where two samples coincide."""
    sq = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    zero = sq == 0
    return torch.where(zero, 0.0, sq.masked_fill(zero, 1.0).sqrt())


def recompute(block, x: torch.Tensor) -> torch.Tensor:
    """One FCBlock again, with batch statistics and its running statistics untouched."""
    bn = block.bn
    return F.relu(F.batch_norm(block.fc(x), None, None, bn.weight, bn.bias, True, 0.0, bn.eps))


def local_loss(blocks, feats: list[torch.Tensor], term: LocalTerm, lam: float) -> torch.Tensor:
    """L_u^(k) (Eq. 4): its blocks recomputed from a detached input (Fig. 1)."""
    first = term.blocks[0]
    acts = {first - 1: feats[first - 1].detach()}
    for j in term.blocks:
        acts[j] = recompute(blocks[j - 1], acts[j - 1])
    theta_sq = sum(p.pow(2).sum() for j in term.blocks for p in blocks[j - 1].parameters())
    distance = (pairwise_distances(acts[term.curr]) - pairwise_distances(acts[term.prev])).pow(2).sum()
    return distance + lam * theta_sq


def objective(net, x: torch.Tensor, y: torch.Tensor, cfg) -> torch.Tensor:
    """One trial's training loss: cross-entropy (Eq. 1) + sum_k alpha_k L_u^(k) (Eq. 3)."""
    logits, feats = net(x)
    terms = local_terms(len(net.head.blocks), cfg.reg_pairs) if cfg.regularizer else []
    return F.cross_entropy(logits, y) + sum(
        alpha(t, cfg.alpha_first, cfg.alpha_second) * local_loss(net.head.blocks, feats, t, cfg.reg_lambda)
        for t in terms)
