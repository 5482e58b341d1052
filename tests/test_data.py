"""Data: the generated dataset, subsets, augmentation, the epoch draws and batching
(the CIFAR folder rules: tests/test_cifar.py)."""
import hashlib

import pytest
import torch

from trainer.data import (Data, EpochPlan, augment, epoch_seed, group_batch, normalize, steps_per_epoch,
                          stratified_subset, synthetic_images)


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_synthetic_is_deterministic_by_seed():
    x1, y1 = synthetic_images(300, 10, seed=0)
    x2, y2 = synthetic_images(300, 10, seed=0)
    x3, _ = synthetic_images(300, 10, seed=1)
    assert (sha256(x1), sha256(y1)) == (sha256(x2), sha256(y2))
    assert sha256(x1) != sha256(x3)
    assert x1.shape == (300, 3, 32, 32) and x1.dtype == torch.uint8 and y1.dtype == torch.int64


@pytest.mark.parametrize("classes", [10, 100], ids=["c10", "c100"])
def test_synthetic_classes_are_balanced(classes):
    _, y = synthetic_images(1000, classes, seed=0)
    assert torch.bincount(y, minlength=classes).tolist() == [1000 // classes] * classes


@pytest.mark.parametrize("classes,min_accuracy", [(10, 0.6), (100, 0.3)], ids=["c10", "c100"])
def test_synthetic_is_learnable_not_random_labels(classes, min_accuracy):
    """Nearest class mean on raw pixels, fitted on one part, scored on another.
    Chance is 1/classes; random labels would stay there."""
    x, y = synthetic_images(3000, classes, seed=0)
    x = x.float().flatten(1) / 255
    (x_fit, y_fit), (x_val, y_val) = (x[:2000], y[:2000]), (x[2000:], y[2000:])
    means = torch.stack([x_fit[y_fit == c].mean(0) for c in range(classes)])
    accuracy = (torch.cdist(x_val, means).argmin(1) == y_val).float().mean().item()
    assert accuracy > min_accuracy
    # the pixels are not the label alone: a class's images differ (shift, contrast, noise)
    assert x_fit[y_fit == 0].std(0).mean() > 0.05


@pytest.mark.parametrize("counts,n,expected", [
    ([100] * 10, 50, [5] * 10),
    ([600, 300, 100], 100, [60, 30, 10]),
    ([500, 500], 7, None),                      # the remainder is filled: 7 in all, 3-4 each
], ids=["balanced", "imbalanced-keeps-proportions", "remainder"])
def test_stratified_subset_keeps_class_proportions(counts, n, expected):
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    x = torch.arange(len(y))
    xs, ys = stratified_subset(x, y, n)
    got = torch.bincount(ys, minlength=len(counts)).tolist()
    assert len(ys) == n and len(set(xs.tolist())) == n
    assert torch.equal(y[xs], ys)                                   # images keep their labels
    assert got == expected if expected else sorted(got) == [3, 4]
    assert torch.equal(stratified_subset(x, y, n)[0], xs)           # a fixed draw


def test_augment_crops_the_padded_image_at_the_offsets_and_flips():
    x = torch.randint(1, 256, (3, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))  # no zeros: padding shows
    dy, dx, flip = torch.tensor([0, 8, 3]), torch.tensor([8, 0, 4]), torch.tensor([False, True, False])
    out = augment(x, dy, dx, flip)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], padded[0, :, 0:32, 8:40])
    assert torch.equal(out[1], padded[1, :, 8:40, 0:32].flip(2))
    assert torch.equal(out[2], padded[2, :, 3:35, 4:36])
    # offsets (0, 8): the top 4 rows and the right 4 columns are padding, the rest image
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, -4:] == 0).all() and (out[0, :, 4:, :-4] > 0).all()


def test_epoch_plans_are_each_members_own_and_repeat_by_seed_and_epoch():
    """Member m's epoch draws depend on (its seed, epoch) only, not on its group."""
    def draw(seeds, epoch):
        gens = [torch.Generator() for _ in seeds]
        for g, s in zip(gens, seeds):
            g.manual_seed(epoch_seed(s, epoch))
        return EpochPlan.draw(gens, 40, 8, 5, augment_on=True)
    group, alone, again = draw([3, 7], 1), draw([7], 1), draw([3, 7], 1)
    for field in ("order", "dy", "dx", "flip"):
        assert torch.equal(getattr(group, field)[1], getattr(alone, field)[0])
        assert torch.equal(getattr(group, field), getattr(again, field))
    assert not torch.equal(group.order[0], group.order[1])                     # seeds differ
    assert not torch.equal(draw([3], 2).order[0], group.order[0])              # epochs differ
    assert sorted(group.order[0].tolist()) == list(range(40))                  # a permutation
    assert int(group.dy.max()) <= 8 and int(group.dy.min()) >= 0
    kept = group.keep([1])
    assert torch.equal(kept.order[0], group.order[1]) and kept.order.shape == (1, 40)


def test_epoch_seeds_differ_for_every_seed_and_epoch():
    seeds = {epoch_seed(s, e) for s in range(50) for e in range(1, 201)}
    assert len(seeds) == 50 * 200 and all(0 <= s < 2 ** 63 for s in seeds)


def test_normalize_upsamples_to_224_on_the_device():
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    small, big = normalize(x), normalize(x, torch.float64, 224)
    assert small.shape == (2, 3, 32, 32) and small.dtype == torch.float32
    assert big.shape == (2, 3, 224, 224) and big.dtype == torch.float64
    assert torch.allclose(big[:, :, 100, 100], small[:, :, 10, 10].double(), atol=1e-6)  # flat stays flat


@pytest.mark.parametrize("n,batch,steps", [(23, 5, 4), (25, 5, 5), (9, 2, 4)],
                         ids=["partial-dropped", "exact", "odd"])
def test_last_partial_batch_is_dropped(n, batch, steps):
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    data = Data(x, torch.arange(n), x[:2], torch.arange(2), 10)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    assert steps_per_epoch(data, batch) == steps
    plan = EpochPlan.draw(gens, n, steps, batch, augment_on=True)
    batches = [group_batch(data, plan, s, batch, torch.float32, 32) for s in range(steps)]
    assert all(bx.shape == (2, batch, 3, 32, 32) and bx.dtype == torch.float32 for bx, _ in batches)
    for member in (0, 1):
        seen = torch.cat([by[member] for _, by in batches])
        assert len(set(seen.tolist())) == steps * batch           # no sample twice an epoch
