"""Memory measurements: model bytes (Table 5), CUDA peak/dynamic memory (section 4.4) and
the Figure 3 timeline of allocated memory over training steps, passes marked.

On CPU there is no allocator to read: GPU memory metrics are absent, never estimated.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .estimates import MB

# Table 5 of the paper (bytes, 10 classes): the numbers `python -m trainer memory` compares
# against. The orchestrator's copy of every published number is orchestrator/results/paper.yaml;
# tests/test_model.py checks that the two agree.
PAPER_TABLE5 = {
    "vgg16": (134_586_664, 33_896),
    "bottleneck_w32": (62_059_304, 49_848),
    "bottleneck_w16": (60_480_040, 43_960),
    "bottleneck_w8": (60_082_856, 41_016),
}


def model_bytes(model: nn.Module) -> tuple[int, int]:
    """(parameter bytes, buffer bytes): what the model itself keeps resident (Table 5)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params, buffers


def table5_rows(num_classes: int = 10) -> list[dict]:
    """Our bytes beside the paper's for every model of Table 5 (full-width VGG, 32x32
    inputs: 512 features into the head), then the same models at 224x224 with the 7x7x512
    conv output flattened into FC1 (the networks section 4.4 profiles; the paper gives no
    bytes for them, so their paper columns are None)."""
    from .model import Net  # local: model imports nothing from here

    rows = []
    for image_size in (32, 224):
        for name, (paper_params, paper_buffers) in PAPER_TABLE5.items():
            arch, _, w = name.partition("_w")
            with torch.device("meta"):                  # sizes only: nothing is allocated
                params, buffers = model_bytes(Net(arch, int(w or 32), num_classes,
                                                  image_size=image_size))
            paper = image_size == 32
            rows.append(dict(model=name, image_size=image_size, param_bytes=params,
                             buffer_bytes=buffers, total_bytes=params + buffers,
                             paper_param_bytes=paper_params if paper else None,
                             paper_buffer_bytes=paper_buffers if paper else None,
                             paper_total_bytes=paper_params + paper_buffers if paper else None))
    return rows


def cuda_peak_metrics(device: torch.device, resident_bytes: int) -> dict:
    """Peak allocated memory since the last reset, and that peak minus what stays resident
    (the model's parameters and buffers, and the dataset the trainer keeps on the device):
    the paper's "dynamic", computation-related memory. Call
    `torch.cuda.reset_peak_memory_stats(device)` at the start of the measured epoch."""
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_memory_mb": peak / MB, "dynamic_peak_memory_mb": (peak - resident_bytes) / MB}


def cap_allocator(device: torch.device, cap_bytes: int | None) -> None:
    """Let this process's CUDA caching allocator hold at most `cap_bytes` of the device
    (None: all of it), so a process that outgrows its share fails alone with an
    OutOfMemoryError instead of pushing a neighbour on the same GPU out of memory."""
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if cap_bytes is None else min(1.0, cap_bytes / total),
                                               device)


class MemoryTimeline:
    """Figure 3: allocated memory sampled as each layer finishes its forward and backward.

    Phases, as in the paper: fwd1/bwd1 = forward/backward through the conv section,
    fwd2/bwd2 = through the fully connected section. `sample` returns bytes; it is
    torch.cuda.memory_allocated on CUDA (tests pass a fake to check the marks on CPU).
    """

    def __init__(self, model: nn.Module, sample: Callable[[], int], max_steps: int):
        self.sample, self.max_steps = sample, max_steps
        self.records: list[dict] = []
        self.step = 0
        self.handles = []
        for section, fwd, bwd in ((model.features, "fwd1", "bwd1"), (model.head, "fwd2", "bwd2")):
            for module in section.modules():
                if not list(module.children()) or module is section:
                    self.handles.append(module.register_forward_hook(self._hook(fwd, bwd)))

    def _hook(self, fwd: str, bwd: str):
        def hook(module, inputs, output):
            if not self.active:
                return
            self._record(fwd)
            for t in output if isinstance(output, (tuple, list)) else [output]:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(lambda grad: self._record(bwd))
                    break
        return hook

    @property
    def active(self) -> bool:
        return self.step < self.max_steps and torch.is_grad_enabled()

    def _record(self, phase: str) -> None:
        self.records.append({"step": self.step, "event": len(self.records), "phase": phase,
                             "allocated_mb": self.sample() / MB})

    def end_step(self) -> None:
        """Call after optimizer.step(): the step's last sample, then the next step."""
        if self.active:
            self._record("step_end")
        self.step += 1

    def close(self) -> dict:
        for h in self.handles:
            h.remove()
        return {"phases": ["fwd1", "fwd2", "bwd2", "bwd1"], "records": self.records}


def forward_peak_mb(timeline: dict, resident_bytes: int) -> float:
    """Section 4.4's forward-pass peak: the highest dynamic memory (allocated minus what
    stays resident, as in cuda_peak_metrics) sampled during fwd1/fwd2 in the timeline."""
    fwd = [r["allocated_mb"] for r in timeline["records"] if r["phase"] in ("fwd1", "fwd2")]
    return max(fwd, default=0.0) - resident_bytes / MB
