"""The manifold regularizer (Eq. 3-4): values, invariances, gradients and their scope."""
import pytest
import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.fused import FusedNet
from trainer.group import Group
from trainer.manifold import (LocalTerm, Weights, alpha, column_index, distance_preservation_loss,
                              distance_preservation_losses, layer_weights, local_terms, manifold_loss,
                              add_theta_gradients)
from trainer.model import Net, build_model
from trainer.train import Member

T = torch.float64


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=T))
    return q


def test_loss_matches_a_hand_computed_three_point_case():
    prev = torch.tensor([[0.0], [1.0], [3.0]], dtype=T)            # d01=1, d02=3, d12=2
    curr = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 0.0]], dtype=T)  # d01=5, d02=6, d12=5
    # (5-1)^2 + (6-3)^2 + (5-2)^2 = 16 + 9 + 9 = 34 per unordered pair set; x2 ordered pairs
    assert distance_preservation_loss(prev, curr).item() == 68.0


def test_loss_is_zero_for_an_isometry():
    prev = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=T)
    rotated = prev @ orthogonal(5, 1)
    padded = torch.cat([prev, torch.zeros(7, 3, dtype=T)], dim=1)     # into a wider space
    assert distance_preservation_loss(prev, rotated).item() == pytest.approx(0, abs=1e-20)
    assert distance_preservation_loss(prev, padded).item() == 0.0
    assert distance_preservation_loss(prev, 2 * prev).item() > 1     # a dilation is not


@pytest.mark.parametrize("which,transform", [
    ("prev", "translate"), ("curr", "translate"), ("prev", "rotate"), ("curr", "rotate"),
], ids=["translate-prev", "translate-curr", "rotate-prev", "rotate-curr"])
def test_loss_is_invariant_to_rigid_motions_of_either_input(which, transform):
    g = torch.Generator().manual_seed(2)
    prev, curr = torch.randn(6, 4, generator=g, dtype=T), torch.randn(6, 3, generator=g, dtype=T)
    base = distance_preservation_loss(prev, curr).item()
    x = prev if which == "prev" else curr
    if transform == "translate":
        moved = x + 10 * torch.randn(1, x.shape[1], generator=g, dtype=T)
    else:
        moved = x @ orthogonal(x.shape[1], 3)
    args = (moved, curr) if which == "prev" else (prev, moved)
    assert base > 1
    assert distance_preservation_loss(*args).item() == pytest.approx(base, rel=1e-12)


def test_gradient_matches_finite_differences_away_from_coincident_points():
    g = torch.Generator().manual_seed(4)
    prev = torch.randn(5, 4, generator=g, dtype=T, requires_grad=True)
    curr = torch.randn(5, 3, generator=g, dtype=T, requires_grad=True)
    assert torch.autograd.gradcheck(distance_preservation_loss, (prev, curr))


@pytest.mark.parametrize("prev,curr,value", [
    # samples 0 and 1 coincide in both spaces: d01 = 0 -> 0; d02 = d12: 1 -> 5
    ([[0.0], [0.0], [1.0]], [[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], 2 * (4 ** 2 + 4 ** 2)),
    # every sample coincides in curr: distances 1, 2, 1 in prev all collapse to 0
    ([[0.0], [1.0], [2.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], 2 * (1 + 4 + 1)),
], ids=["pair-coincides-in-both", "all-coincide-in-curr"])
def test_gradient_is_finite_when_samples_coincide(prev, curr, value):
    prev = torch.tensor(prev, dtype=T, requires_grad=True)
    curr = torch.tensor(curr, dtype=T, requires_grad=True)
    loss = distance_preservation_loss(prev, curr)
    loss.backward()
    assert loss.item() == value
    assert torch.isfinite(prev.grad).all() and torch.isfinite(curr.grad).all()


@pytest.mark.parametrize("reg_pairs,expected", [
    ("adjacent", [(1, 2, (1, 2), "a1"), (2, 3, (2, 3), "a1"), (3, 4, (3, 4), "a1"),
                  (4, 5, (4, 5), "a1"), (5, 6, (5, 6), "a2"), (6, 7, (6, 7), "a2"),
                  (7, 8, (7, 8), "a2"), (8, 9, (8, 9), "a2"), (9, 10, (9, 10), "a2")]),
    ("even", [(2, 4, (3, 4), "a1"), (4, 6, (5, 6), "a2"), (6, 8, (7, 8), "a2"),
              (8, 10, (9, 10), "a2")]),
], ids=["adjacent", "even"])
def test_local_terms_pair_the_layers_and_weight_the_second_half_more(reg_pairs, expected):
    alphas = {"a1": 1e-4, "a2": 1e-3}
    terms = local_terms(10, reg_pairs)
    assert terms == [LocalTerm(p, c, b, a == "a1") for p, c, b, a in expected]
    assert [alpha(t, 1e-4, 1e-3) for t in terms] == [alphas[a] for *_, a in expected]


def test_batched_distances_are_each_members_own():
    """(N, B, D) inputs give one loss per member, each equal to that member's alone."""
    g = torch.Generator().manual_seed(0)
    prev, curr = torch.randn(3, 5, 7, generator=g, dtype=T), torch.randn(3, 5, 4, generator=g, dtype=T)
    batched = distance_preservation_loss(prev, curr)
    assert batched.shape == (3,)
    assert batched.tolist() == [distance_preservation_loss(p, c).item() for p, c in zip(prev, curr)]


def test_all_terms_at_once_equal_each_term_alone():
    """Activations of different widths side by side: each term's loss is its own."""
    g = torch.Generator().manual_seed(5)
    prevs = [torch.randn(2, 5, d, generator=g, dtype=T) for d in (7, 3, 3)]
    currs = [torch.randn(2, 5, d, generator=g, dtype=T) for d in (3, 3, 1)]
    together = distance_preservation_losses(prevs, currs)
    assert together.shape == (3, 2)
    for k, (p, c) in enumerate(zip(prevs, currs)):
        d = lambda x: torch.cdist(x, x)
        assert together[k].tolist() == pytest.approx((d(c) - d(p)).pow(2).sum((-2, -1)).tolist(), rel=1e-12)


def test_layer_weights_regroup_eq3_by_layer():
    terms = local_terms(10, "adjacent")                       # (FC1,FC2), ..., (FC9,FC10)
    alphas = [alpha(t, 1.0, 10.0) for t in terms]             # first half 1, second half 10
    c = layer_weights(terms, alphas, 0.5, 10)
    assert c == [0.5, 1.0, 1.0, 1.0, 5.5, 10.0, 10.0, 10.0, 10.0, 5.0]
    even = local_terms(10, "even")                            # spans (3,4), (5,6), (7,8), (9,10)
    assert layer_weights(even, [1.0] * 4, 1.0, 10) == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]


def one_term(net_head, term: LocalTerm, lam: float) -> Weights:
    """Eq. 3 with the single term `term` (alpha 1) for a head of one member."""
    widths = [net_head.blocks[0].fc.weight.shape[1]] + [b.fc.weight.shape[0] for b in net_head.blocks]
    theta = torch.tensor(layer_weights([term], [1.0], lam, 10), dtype=torch.float32)[:, None]
    return Weights([term], torch.ones(1, 1), theta, column_index([widths[term.prev], widths[term.curr]]))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


TERMS = [(mode, t) for mode in ("adjacent", "even") for t in local_terms(10, mode)]


@pytest.mark.parametrize("reg_pairs,term", TERMS,
                         ids=[f"{m}-FC{t.prev}-FC{t.curr}" for m, t in TERMS])
def test_local_term_reaches_exactly_the_layers_it_spans(reg_pairs, term):
    """Its whole gradient: autograd's (the distances) and the lambda term's (added after
    backward) reach the layers it spans, and nothing else."""
    torch.manual_seed(0)
    model = FusedNet([Net("bottleneck", 4, 10, 16)]).train()     # the trainer's layers, one member
    [(_, feats)] = model(torch.randn(1, 6, 3, 32, 32))
    before = bn_state(model)
    w = one_term(model.head[0], term, 1e-3)
    manifold_loss(model.head[0], feats, w).sum().backward()
    autograd = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    for p in model.head[0].blocks.parameters():
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    add_theta_gradients(model.head[0], w)
    inside = {f"head.0.blocks.{j - 1}." for j in term.blocks}
    for name, p in model.named_parameters():
        if name[:16] in inside:
            assert autograd[name] is not None and autograd[name].abs().sum() > 0, name
            c = w.theta_weight[int(name.split(".")[3]), 0]
            torch.testing.assert_close(p.grad - autograd[name], 2 * c * p.detach())   # + 2 c_j theta_j
        else:
            assert autograd[name] is None, name      # conv, other FC layers, the classifier
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)   # recomputation: no update


@pytest.mark.parametrize("arch,reg_pairs", [
    ("bottleneck", None), ("bottleneck", "adjacent"), ("bottleneck", "even"), ("vgg16", None),
], ids=["bottleneck", "bottleneck-reg-adjacent", "bottleneck-reg-even", "vgg16"])
def test_full_objective_gives_every_parameter_a_finite_gradient(arch, reg_pairs):
    c = Config.from_dict(dict(arch=arch, width=4, vgg_width_divisor=16, batch_size=6, device="cpu",
                              regularizer=reg_pairs is not None, reg_pairs=reg_pairs or "adjacent"))
    group = Group([Member(0, c, None, generator=torch.Generator())], [build_model(c)], [{}])
    x, y = torch.randn(1, 6, 3, 32, 32), torch.arange(6)[None] % 10
    loss = group.losses(x, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    for name, p in group.model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
