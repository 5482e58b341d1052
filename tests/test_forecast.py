"""The GPU memory forecast: the trainer's own step on fake tensors, counted as CUDA would.

Its numbers must (1) equal what the same step allocates for real (the counter on real CPU
tensors), (2) move as a memory model must, and (3) land near the paper's section 4.4
peaks for the vanilla network at 224x224 (our reading of the paper's profiling set-up).
"""
from __future__ import annotations

import pytest
import torch

from trainer.config import Config
from trainer.forecast import BLOCK, AllocationCounter, forecast, step_peaks
from trainer.memory import MB, model_bytes
from trainer.model import build_model


def cfg(**kw) -> Config:
    return Config.from_dict({**dict(dataset="synthetic", train_samples=50, test_samples=20,
                                    vgg_width_divisor=16, width=8, batch_size=5, device="cpu",
                                    threads=1), **kw})


@pytest.mark.parametrize("members", [
    [dict(regularizer=True, momentum=0.9)],
    [dict(arch="vgg16")],
    [dict(regularizer=True), dict(seed=1), dict(seed=2, width=4, regularizer=True)],
], ids=["bottleneck-reg-momentum", "vgg16", "fused-3-two-widths"])
def test_the_forecast_is_what_the_real_step_allocates(members):
    cfgs = [cfg(**m) for m in members]
    f = forecast(cfgs)
    with AllocationCounter() as counter:                     # the same step on REAL tensors
        real = step_peaks(cfgs, counter)
    assert (f.peak, f.forward_peak) == (real.peak, real.forward_peak)       # to the byte
    assert f.model == sum(sum(model_bytes(build_model(c))) for c in cfgs)
    assert f.peak % BLOCK == 0 and f.forward_peak < f.peak


def test_allocations_round_up_to_512_bytes_and_free_when_the_storage_dies():
    with AllocationCounter() as counter:
        a = torch.empty(1, dtype=torch.uint8)           # 1 B -> 512
        b = torch.empty(129, dtype=torch.float32)        # 516 B -> 1024
        view = b[1:]                                     # no new storage
        assert counter.live == 512 + 1024
        del a
        assert counter.live == 1024 and counter.peak == 512 + 1024
        del b, view
        assert counter.live == 0


def full(**kw) -> Config:
    return Config.from_dict({**dict(dataset="cifar10", device="cpu"), **kw})


def test_the_forecast_moves_as_memory_must():
    at = {b: forecast([full(arch="vgg16", batch_size=b)]) for b in (16, 7)}
    assert at[16].dynamic_peak_mb > at[7].dynamic_peak_mb                              # batch
    big = forecast([full(arch="vgg16", batch_size=7, image_size=224)])
    assert big.dynamic_peak_mb > 5 * at[7].dynamic_peak_mb                              # 224 > 32
    proposed = forecast([full(width=32, batch_size=7, image_size=224, regularizer=True)])
    assert big.peak > 1.5 * proposed.peak                                               # vanilla > proposed
    momentum = forecast([full(arch="vgg16", batch_size=7, momentum=0.9)])
    extra = momentum.peak - at[7].peak                   # one parameter-sized buffer, rounded
    params = model_bytes(build_model(full(arch="vgg16")))[0]
    assert params <= extra <= params + 64 * BLOCK


# Section 4.4 of the paper (MB, vanilla VGG16 at 224x224): peak dynamic memory.
PAPER_VANILLA_PEAK = {16: 2280, 7: 1200}


@pytest.mark.parametrize("batch", [16, 7])
def test_the_vanilla_forecast_at_224_is_within_20_percent_of_the_paper(batch):
    f = forecast([full(arch="vgg16", batch_size=batch, image_size=224)])
    assert f.dynamic_peak_mb == pytest.approx(PAPER_VANILLA_PEAK[batch], rel=0.20)
    # the forward pass peaks lower: FC1's 25,088 x 4,096 gradient comes only in backward
    assert f.dynamic_peak_mb - f.forward_peak_mb > 25_088 * 4_096 * 4 / MB
