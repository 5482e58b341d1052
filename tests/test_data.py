"""Data: the generated dataset, subsets, augmentation, the epoch draws and batching
(the CIFAR folder rules: tests/test_cifar.py)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.data import (Data, EpochDraws, augment, epoch_seed, group_batch, normalize, steps_per_epoch,
                          stratified_subset, synthetic_images)

ROOT = Path(__file__).resolve().parents[1]


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


def test_epoch_draws_are_each_members_own_and_repeat_by_seed_and_epoch():
    """Member m's epoch draws depend on (its seed, epoch) only, not on its group."""
    def draw(seeds, epoch):
        gens = [torch.Generator() for _ in seeds]
        for g, s in zip(gens, seeds):
            g.manual_seed(epoch_seed(s, epoch))
        return EpochDraws.draw(gens, 40, 8, 5, augment_on=True)
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
    # and each is the same on every call: a function of (seed, epoch) alone
    assert [epoch_seed(s, e) for s in range(50) for e in range(1, 201)] == \
        [epoch_seed(s, e) for s in range(50) for e in range(1, 201)]


# What one epoch draws, for a few (seed, epoch): its generator seed and its EpochDraws
# (40 samples, 8 steps of 5, augmented), as plain lists, so that another process can
# print the same thing as JSON.
DRAWS = """
import torch
from trainer.data import EpochDraws, epoch_seed

def draws():
    out = []
    for seed, epoch in [(0, 1), (0, 2), (1, 1), (7, 3), (123, 200)]:
        g = torch.Generator()
        g.manual_seed(epoch_seed(seed, epoch))
        plan = EpochDraws.draw([g], 40, 8, 5, augment_on=True)
        out.append([seed, epoch, epoch_seed(seed, epoch),
                    *(getattr(plan, f)[0].int().tolist() for f in ("order", "dy", "dx", "flip"))])
    return out
"""


def _draws() -> list:
    scope: dict = {}
    exec(DRAWS, scope)
    return scope["draws"]()


def test_epoch_draws_are_pinned_and_the_same_in_a_fresh_process():
    """The same (seed, epoch) gives the same epoch seed and the same draws (order, crop
    offsets, flips) on every call and in a fresh process with another PYTHONHASHSEED (no
    hash(), no process state in the seeding). The values are pinned: a resumed trial
    replays its epochs' draws from (seed, epoch) alone, so a change of the seeding scheme
    (or of torch's CPU generator) makes a run resumed across it differ from an
    uninterrupted one and breaks resume-equivalence; this test is meant to fail then, and
    its pins may only be updated knowing that runs from before and after do not match."""
    here = _draws()
    assert _draws() == here                                              # every call
    assert here[0][2] == epoch_seed(0, 1) == 6746404440217949167
    assert [epoch_seed(0, 2), epoch_seed(1, 1), epoch_seed(7, 3)] == \
        [7780190899420080275, 5438946774738908630, 4022505843406674961]
    _, _, _, order, dy, dx, flip = here[0]                               # seed 0, epoch 1
    assert order[:10] == [22, 1, 19, 18, 27, 30, 17, 4, 20, 33]
    assert dy[:10] == [2, 2, 5, 3, 6, 2, 0, 7, 0, 6] and dx[:10] == [0, 8, 0, 8, 6, 6, 1, 4, 4, 5]
    assert flip[:10] == [0, 1, 0, 0, 0, 1, 0, 1, 0, 0]
    # a generator that drew epoch 1 and is reseeded for epoch 2 (an uninterrupted run)
    # draws what a fresh one does (a run resumed at epoch 2)
    used = torch.Generator()
    used.manual_seed(epoch_seed(0, 1))
    EpochDraws.draw([used], 40, 8, 5, augment_on=True)
    used.manual_seed(epoch_seed(0, 2))
    assert EpochDraws.draw([used], 40, 8, 5, augment_on=True).order[0].tolist() == here[1][3]
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    fresh = subprocess.run([sys.executable, "-c", DRAWS + "import json; print(json.dumps(draws()))"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout) == here


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
    plan = EpochDraws.draw(gens, n, steps, batch, augment_on=True)
    batches = [group_batch(data, plan, s, batch, torch.float32, 32) for s in range(steps)]
    assert all(bx.shape == (2, batch, 3, 32, 32) and bx.dtype == torch.float32 for bx, _ in batches)
    for member in (0, 1):
        seen = torch.cat([by[member] for _, by in batches])
        assert len(set(seen.tolist())) == steps * batch           # no sample twice an epoch
