"""The GPU checks, as one short script for a lent GPU machine (<= 8 min on an H200, compiling included).

    python bench/gpu_check.py                  # exit 0: every check passed; 1: one failed
    python bench/gpu_check.py --device cpu     # the same logic at toy sizes, no CUDA checks

1. the CUDA path: a short full-width run with the regularizer and the Figure 3 timeline:
   finite loss, accuracies, peak/dynamic memory (dynamic = peak - model - data), the
   timeline's passes in order;
2. no host sync in a training step: batch assembly + the fused step under
   torch.cuda.set_sync_debug_mode("error"), bottleneck with augmentation and vgg16 with
   dropout, solo and fused;
3. a member that turns non-finite does not touch the others (grouped cuDNN convs included);
4. fused throughput: full width, batch 5, regularizer on, N = 6, 12, 18 fused members
   against one solo eager trial (the goal: >= 10x at N = 18);
5. the memory forecast against torch.cuda.max_memory_allocated for the four section 4.4
   configurations at 224x224 and for batch 5 at 32x32 (the goal: within 10%);
6. the time calibration: ms/step of N = 1 and 18 (W=32, batch 5, full width, regularizer
   on), eager and torch.compile reduce-overhead (CUDA graphs), over the ops and FLOPs each
   step dispatches (trainer/cost.py): t_op eager and compiled, and the FLOP rate where the
   step shows it (bench/calibrate.py). Written, "assumed": false, with the GPU's name, the
   date and torch's version, to trainer/calibration.json, which `plan` reads: commit it;
7. the share cap: a fused group given a share of half its forecast peak (its allocator
   capped as `run` caps it, packing.allocator_cap) fails alone with torch's
   OutOfMemoryError, the orchestrator's one-line message printed, while a neighbour process
   on the same GPU finishes its epoch.
It prints a compact report to paste into BENCHMARKS.md's GPU section, and writes checks 5
and 6 to bench/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import Config  # noqa: E402
from trainer.data import group_batch  # noqa: E402
from trainer.forecast import CudaAllocator, forecast, step_objects, step_peaks  # noqa: E402
from trainer.memory import MB  # noqa: E402
from trainer.train import train  # noqa: E402

from bench_fused import fused_step, solo_steps, timed  # noqa: E402
from calibrate import calibrate  # noqa: E402

FAILED: list[str] = []
REPORT: dict = {}                  # what goes to bench/gpu_check.json
REPORT_PATH = Path(__file__).with_name("gpu_check.json")


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        FAILED.append(what)


def cfg(args, **kw) -> Config:
    base = dict(dataset="synthetic", train_samples=2000, test_samples=10, device=args.device,
                vgg_width_divisor=args.divisor)
    return Config.from_dict({**base, **kw})


def group_of(cfgs: list[Config], steps: int = 25):
    """A Group as the trainer builds it (trainer.forecast.step_objects), with its data and
    `steps` steps of its epoch's draws."""
    group, data, plan, _ = step_objects(cfgs, cfgs[0].device, steps)
    return group, data, plan


def cuda_run(args) -> None:
    c = cfg(args, train_samples=2000, test_samples=500, width=32, batch_size=64, epochs=2,
            regularizer=True, memory_timeline=True, timeline_steps=5)
    t0 = time.perf_counter()
    ms = [m for m in train(c) if not m.replayed]
    print(f"1. training run: bottleneck W=32, batch 64, 2 epochs, reg on ({time.perf_counter() - t0:.1f} s)")
    final = {"peak_memory_mb": math.nan, "dynamic_peak_memory_mb": math.nan, **ms[-1].metrics}
    model_mb = (final["model_param_bytes"] + final["model_buffer_bytes"]) / MB
    check(all(math.isfinite(m.metrics["train_loss"]) for m in ms), "train_loss finite")
    check({"train_accuracy", "test_accuracy", "generalization_gap"} <= set(final), "accuracies measured")
    check(final["peak_memory_mb"] > final["dynamic_peak_memory_mb"] + model_mb,
          f"peak {final['peak_memory_mb']:.1f} MB > dynamic {final['dynamic_peak_memory_mb']:.1f} + "
          f"model {model_mb:.1f} MB (the dataset sits on the GPU too)")
    timeline = ms[0].artifacts.get("memory_timeline.json")
    check(timeline is not None and not ms[1].artifacts, "timeline on epoch 1 only")
    if timeline:
        phases = [r["phase"] for r in timeline["records"] if r["step"] == 1]
        runs = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
        check(runs == ["fwd1", "fwd2", "bwd2", "bwd1", "step_end"], f"phases in order: {runs}")
        check("forward_peak_memory_mb" in ms[0].metrics, "forward-pass peak logged")


def no_host_sync(args) -> None:
    print("2. no host sync in a step (set_sync_debug_mode('error'))")
    for name, cfgs in (("bottleneck+reg, augment, solo", [cfg(args, regularizer=True, batch_size=5)]),
                       ("bottleneck+reg, augment, 4 fused", [cfg(args, regularizer=bool(i % 2), seed=i,
                                                                  width=(32, 16)[i % 2], batch_size=5)
                                                              for i in range(4)]),
                       ("vgg16 dropout, 2 fused", [cfg(args, arch="vgg16", seed=i, batch_size=5)
                                                   for i in range(2)])):
        group, data, plan = group_of(cfgs)
        for step in range(2):                                   # warm-up: cuDNN, allocator
            group.step(*group_batch(data, plan, step, 5, torch.float32, 32))
        torch.cuda.synchronize()
        try:
            torch.cuda.set_sync_debug_mode("error")
            for step in range(2, 6):
                group.step(*group_batch(data, plan, step, 5, torch.float32, 32))
            ok, why = True, ""
        except RuntimeError as err:
            ok, why = False, f": {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        check(ok, f"{name}{why}")


def nan_isolation(args) -> None:
    print("3. a non-finite member leaves the others alone")
    cfgs = [cfg(args, regularizer=True, batch_size=5, seed=i) for i in range(3)]
    group, data, plan = group_of(cfgs)
    with torch.no_grad():
        for p in group.model.parameters():
            p.view(3, -1)[1].fill_(float("nan"))        # member 1's every weight
    losses = group.step(*group_batch(data, plan, 0, 5, torch.float32, 32))
    finite = [bool(torch.isfinite(group.model.member_state(i)["head.out.weight"]).all()) for i in range(3)]
    check(not math.isfinite(losses[1].item()) and finite == [True, False, True],
          f"losses {[round(v, 3) for v in losses.tolist()]}, members finite {finite}")


def throughput(args) -> None:
    print("4. fused throughput, batch 5, regularizer on, ms per step (min of 5 x 20 steps)")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    solo_cfg = [cfg(args, regularizer=True, batch_size=5)]
    x1 = torch.randn(1, 5, 3, 32, 32, generator=g).to(args.device)
    y1 = torch.randint(0, 10, (1, 5), generator=g).to(args.device)
    solo = solo_steps(solo_cfg, args.device)
    timed(solo, x1, y1, 5, sync)
    solo_ms = min(timed(solo, x1, y1, 20, sync) for _ in range(5)) * 1e3
    print(f"  solo eager: {solo_ms:.2f} ms per step")
    for n in args.n:
        cfgs = [cfg(args, regularizer=True, batch_size=5, seed=i, width=(32, 16, 8)[i % 3]) for i in range(n)]
        x = torch.randn(n, 5, 3, 32, 32, generator=g).to(args.device)
        y = torch.randint(0, 10, (n, 5), generator=g).to(args.device)
        step = fused_step(cfgs, args.device)
        timed(step, x, y, 5, sync)
        ms = min(timed(step, x, y, 20, sync) for _ in range(5)) * 1e3
        gain = n * solo_ms / ms
        print(f"  fused N={n:>2}: {ms:7.2f} ms per step, {gain:5.1f}x the throughput of one solo trial")
        if n == 18:
            check(gain >= 10, f"N=18 throughput {gain:.1f}x >= 10x")


def forecast_vs_measured(args) -> None:
    print("5. forecast vs torch.cuda.max_memory_allocated over step 2 (MB)")
    cases = [dict(arch="vgg16", batch_size=16, image_size=224), dict(arch="vgg16", batch_size=7, image_size=224),
             dict(regularizer=True, batch_size=16, image_size=224), dict(regularizer=True, batch_size=7, image_size=224),
             dict(regularizer=True, batch_size=5)]
    REPORT["memory"] = []
    for case in cases:
        c = cfg(args, dataset="cifar10", train_samples=5000, test_samples=1000, **case)
        f = forecast([c])
        torch.cuda.empty_cache()
        measured = step_peaks([c], CudaAllocator(), "cuda").peak
        ratio = f.peak / measured
        REPORT["memory"].append({**case, "forecast_mb": f.peak / MB, "measured_mb": measured / MB})
        check(abs(ratio - 1) <= 0.10, f"{case}: forecast {f.peak / MB:,.0f}, measured "
              f"{measured / MB:,.0f} (forecast/measured {ratio:.3f})")


def time_calibration(args) -> None:
    """Check 6. On a CPU (toy sizes, eager only) it runs the same code and writes nothing."""
    print("6. time calibration: ms/step over ops/step (trainer/calibration.json)")
    modes = ["off", "reduce-overhead"] if args.device == "cuda" else ["off"]
    cases = [dict(n=n, divisor=args.divisor, compile=mode, steps=20 if mode == "off" else 30,
                  repeats=3, warmup=3) for mode in modes for n in (1, max(args.n))]
    values = calibrate(args.device, cases, write=args.device == "cuda" and not args.no_write)
    REPORT["calibration"] = values
    check(all(v > 0 and math.isfinite(v) for v in values.values()), f"constants measured: {sorted(values)}")


def _neighbour(divisor: int) -> None:
    """Check 7's neighbour: one short epoch in its own process, beside the capped group."""
    c = Config.from_dict(dict(dataset="synthetic", train_samples=500, test_samples=10, device="cuda",
                              vgg_width_divisor=divisor, regularizer=True, epochs=1))
    for _ in train(c):
        pass


def share_cap(args) -> None:
    print("7. share cap: a group given too small a share fails alone, with the named error")
    from orchestrator.run.trial import Job, JobTrial, oom_line
    from orchestrator.run.packing import CUDA_RESERVE
    from trainer.memory import cap_allocator
    from trainer.train import train_group

    cfgs = [cfg(args, regularizer=True, epochs=1, train_samples=500, seed=i) for i in range(4)]
    f = forecast(cfgs)
    total = torch.cuda.get_device_properties(0).total_memory
    share = round((f.peak // 2 + CUDA_RESERVE) / total, 4)      # the cap: about half the forecast
    job = Job("share-cap-check", [JobTrial(f"k{i}", f"member{i}", {}, "", "") for i in range(4)], "", {},
              {"cpu": 1, "gpu": share}, total, f.peak)
    neighbour = torch.multiprocessing.get_context("spawn").Process(target=_neighbour, args=(args.divisor,))
    neighbour.start()
    torch.cuda.reset_peak_memory_stats()
    try:
        for _ in train_group(cfgs, memory_cap=job.memory_cap):
            pass
        check(False, f"a group capped at {job.memory_cap / MB:,.0f} MB (forecast {f.peak / MB:,.0f}) "
                     f"raised no OutOfMemoryError")
    except torch.cuda.OutOfMemoryError:
        reached = torch.cuda.max_memory_reserved()
        print("  " + oom_line(job, reached / MB, "(run would re-pack it: share doubled)"))
        check(reached <= job.memory_cap, f"OOM inside its cap: reserved {reached / MB:,.0f} MB <= cap "
                                         f"{job.memory_cap / MB:,.0f} MB")
    finally:
        cap_allocator(torch.device("cuda"), None)
        torch.cuda.empty_cache()
    neighbour.join(600)
    check(neighbour.exitcode == 0, f"the neighbour process on the same GPU finished its epoch "
                                   f"(exit code {neighbour.exitcode})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--n", default="6,12,18", help="fused group sizes to time (the largest "
                                                  "is calibrated too)")
    p.add_argument("--no-write", action="store_true",
                   help="leave trainer/calibration.json and bench/gpu_check.json as they are")
    args = p.parse_args(argv)
    args.n = [int(v) for v in args.n.split(",")]
    args.divisor = 1 if args.device == "cuda" else 16       # CPU: toy sizes, logic only
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run this on a GPU machine (or --device cpu)",
              file=sys.stderr)
        return 2
    if args.device == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
              f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB")
    t0 = time.perf_counter()
    if args.device == "cuda":
        cuda_run(args)
        no_host_sync(args)
    nan_isolation(args)
    throughput(args)
    if args.device == "cuda":
        forecast_vs_measured(args)
    time_calibration(args)
    if args.device == "cuda":
        share_cap(args)
    if args.device == "cuda" and not args.no_write:
        REPORT_PATH.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0),
                                           "torch": torch.__version__, **REPORT}, indent=2) + "\n")
        print(f"written: {REPORT_PATH}")
    print(f"{'FAILED: ' + '; '.join(FAILED) if FAILED else 'all checks passed'} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
