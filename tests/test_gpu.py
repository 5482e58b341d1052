"""The CUDA path: memory metrics, the Figure 3 timeline, the forecast against the allocator,
and a training step without host syncs. Skipped without CUDA (CI has none); on a GPU
machine, `python -m pytest -m gpu`, or the longer bench/gpu_check.py."""
from __future__ import annotations

import pytest
import torch

from trainer.config import Config
from trainer.data import group_batch
from trainer.forecast import CudaAllocator, forecast, step_objects, step_peaks
from trainer.memory import MB
from trainer.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cfg(**kw) -> Config:
    return Config.from_dict({**dict(dataset="synthetic", train_samples=400, test_samples=100,
                                    vgg_width_divisor=4, batch_size=16, device="cuda"), **kw})


def test_memory_metrics_and_the_timeline_on_cuda():
    ms = [m for m in train(cfg(regularizer=True, epochs=2, memory_timeline=True, timeline_steps=3))]
    epoch1, final = ms[0], ms[-1]
    resident = (final.metrics["model_param_bytes"] + final.metrics["model_buffer_bytes"]
                + 400 * 3072 + 100 * 3072 + 500 * 8) / MB          # model + the dataset on the GPU
    for m in ms[:-1]:
        assert m.metrics["dynamic_peak_memory_mb"] == pytest.approx(m.metrics["peak_memory_mb"] - resident)
        assert m.metrics["dynamic_peak_memory_mb"] > 0
    timeline = epoch1.artifacts["memory_timeline.json"]
    phases = [r["phase"] for r in timeline["records"] if r["step"] == 1]
    runs = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert runs == ["fwd1", "fwd2", "bwd2", "bwd1", "step_end"]
    assert 0 < epoch1.metrics["forward_peak_memory_mb"] <= epoch1.metrics["dynamic_peak_memory_mb"]
    assert not ms[1].artifacts                                       # epoch 1 only


# Section 4.4's configurations (GBs): library workspaces (cuBLAS keeps tens of MB) are a
# small part of them; at toy sizes they would dominate what the forecast cannot see.
@pytest.mark.parametrize("kw", [dict(arch="vgg16", batch_size=16), dict(regularizer=True, batch_size=7)],
                         ids=["vgg16-b16-224", "bottleneck-reg-b7-224"])
def test_the_forecast_is_within_10_percent_of_the_allocator(kw):
    c = cfg(image_size=224, vgg_width_divisor=1, **kw)
    expected = forecast([c])
    torch.cuda.empty_cache()
    measured = step_peaks([c], CudaAllocator(), "cuda")
    assert expected.peak == pytest.approx(measured.peak, rel=0.10)


def test_a_fused_step_makes_no_host_sync():
    cfgs = [cfg(regularizer=bool(i % 2), seed=i, width=(32, 16)[i // 2]) for i in range(4)]
    group, data, plan, _ = step_objects(cfgs, "cuda", steps=4)
    group.step(*group_batch(data, plan, 0, 16, torch.float32, 32))   # warm-up: cuDNN, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            group.step(*group_batch(data, plan, step, 16, torch.float32, 32))
    finally:
        torch.cuda.set_sync_debug_mode(0)
