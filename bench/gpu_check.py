"""One short check of the CUDA path, for a GPU machine (about a minute on an H200).

    python bench/gpu_check.py            # exit 0: all checks passed; 1: a check failed

1. a short full-width training run on generated data with device=cuda, the regularizer and
   the Figure 3 timeline on: finite loss, accuracies measured, CUDA memory metrics present
   with peak > model memory and dynamic = peak - model, the timeline's passes in order;
2. the step time at batch 5 (and 64) of the full-width bottleneck (W=32, with and without
   the regularizer) and of vgg16, beside a bare PyTorch loop over the same model.
It prints a compact report; paste it into BENCHMARKS.md's GPU section.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import Config  # noqa: E402
from trainer.memory import MB  # noqa: E402
from trainer.train import train  # noqa: E402

from bench_trainer import bare_step_seconds, trainer_step_seconds  # noqa: E402

FAILED: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILED.append(what)


def cuda_run() -> None:
    cfg = Config.from_dict(dict(dataset="synthetic", train_samples=2000, test_samples=500,
                                arch="bottleneck", width=32, batch_size=64, epochs=2,
                                regularizer=True, memory_timeline=True, timeline_steps=5,
                                device="cuda"))
    t0 = time.perf_counter()
    ms = list(train(cfg))
    print(f"training run: bottleneck W=32, batch 64, 2 epochs, reg on ({time.perf_counter() - t0:.1f} s)")
    final = {"peak_memory_mb": math.nan, "dynamic_peak_memory_mb": math.nan, **ms[-1].metrics}
    model_mb = (final["model_param_bytes"] + final["model_buffer_bytes"]) / MB
    for m in ms[:-1]:
        print(f"  epoch {m.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.metrics.items()))
    check(all(math.isfinite(m.metrics["train_loss"]) for m in ms), "train_loss finite")
    check({"train_accuracy", "test_accuracy", "generalization_gap"} <= set(final),
          "accuracies measured")
    check(all(k in m.metrics for m in ms for k in ("peak_memory_mb", "dynamic_peak_memory_mb")),
          "peak/dynamic memory reported every epoch")
    check(final["peak_memory_mb"] > model_mb,
          f"peak {final['peak_memory_mb']:.1f} MB > model {model_mb:.1f} MB")
    check(abs(final["dynamic_peak_memory_mb"] - (final["peak_memory_mb"] - model_mb)) < 1e-6,
          f"dynamic {final['dynamic_peak_memory_mb']:.1f} MB = peak - model")
    timeline = ms[0].artifacts.get("memory_timeline.json")
    check(timeline is not None and not ms[1].artifacts, "timeline on epoch 1 only")
    if timeline:
        records = timeline["records"]
        check(sorted({r["step"] for r in records}) == list(range(5)), "timeline covers 5 steps")
        phases = [r["phase"] for r in records if r["step"] == 1]
        runs = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
        check(runs == ["fwd1", "fwd2", "bwd2", "bwd1", "step_end"], f"phases in order: {runs}")
        peak = max(r["allocated_mb"] for r in records)
        check(peak > model_mb, f"timeline peak {peak:.1f} MB > model {model_mb:.1f} MB")


def step_times() -> None:
    print("step time, ms (median of 3 after a warm-up; trainer = epoch_seconds / steps):")
    print(f"  {'model':<16}{'batch':>6}{'bare':>8}{'trainer':>9}{'ratio':>7}")
    for arch, reg, batch in [("bottleneck", False, 5), ("bottleneck", True, 5), ("vgg16", False, 5),
                             ("bottleneck", False, 64), ("vgg16", False, 64)]:
        cfg = Config.from_dict(dict(dataset="synthetic", train_samples=batch * 200,
                                    test_samples=batch, arch=arch, width=32, batch_size=batch,
                                    epochs=1, augment=False, regularizer=reg, device="cuda"))
        trainer_step_seconds(cfg)                                   # warm-up (cudnn)
        ours = statistics.median(trainer_step_seconds(cfg) for _ in range(3))
        name = arch + ("+reg" if reg else "")
        if reg:   # the bare loop has no regularizer: no ratio for this row
            print(f"  {name:<16}{batch:>6}{'-':>8}{1e3 * ours:>9.2f}{'-':>7}")
        else:
            bare_step_seconds(cfg)
            bare = statistics.median(bare_step_seconds(cfg) for _ in range(3))
            print(f"  {name:<16}{batch:>6}{1e3 * bare:>8.2f}{1e3 * ours:>9.2f}{ours / bare:>7.2f}")
        check(math.isfinite(ours) and ours > 0, f"{name} batch {batch} timed")


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB")
    t0 = time.perf_counter()
    cuda_run()
    step_times()
    print(f"{'FAILED: ' + '; '.join(FAILED) if FAILED else 'all checks passed'} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
