"""Measure the constants of trainer/calibration.json (seconds per op, FLOP/s) on this machine.

    python bench/calibrate.py --device cpu [--write]     # this CPU, one thread (~1 min)
    # CUDA: bench/gpu_check.py runs calibrate("cuda", ...) (eager and compiled) and writes it

Each case is a real training step of the trainer (trainer.forecast.step_objects) timed
here, beside its ops and FLOPs counted on fake tensors (trainer.cost). Then:
- t_op = the smallest seconds/op over the cases (the most launch-bound one; on a CPU a
  step at 1/64 of the channels without the regularizer, whose arithmetic is ~0.1%);
- the FLOP rate, from the case with the most FLOPs, if its arithmetic shows (it takes at
  least 1.5x what its ops alone would): on a GPU FLOPs / seconds (launches overlap the
  arithmetic), on a CPU FLOPs / (seconds - ops x t_op) (one thread does both). Otherwise the
  rate stays as it was, still marked assumed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import calibration  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.estimates import cost_configs  # noqa: E402
from trainer.data import group_batch  # noqa: E402
from trainer.forecast import step_objects  # noqa: E402

ARITHMETIC_SHOWS = 1.5      # seconds >= this x ops x t_op: the rate can be read off


def case_configs(n: int, divisor: int, device: str, compile: str = "off",
                 regularizer: bool = True) -> list[Config]:
    """N fused members as the calibration times them: W=32, batch 5."""
    return [Config.from_dict(dict(dataset="synthetic", train_samples=1000, test_samples=100,
                                  width=32, batch_size=5, regularizer=regularizer, seed=i,
                                  device=device, vgg_width_divisor=divisor, compile=compile))
            for i in range(n)]


def seconds_per_step(cfgs: list[Config], steps: int, repeats: int, warmup: int) -> float:
    """The fastest of `repeats` runs of `steps` training steps, after `warmup` steps
    (cuDNN autotuning, compiling, CUDA graph capture), synchronised at both ends."""
    device = cfgs[0].device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    total = warmup + steps * repeats
    group, data, plan, _ = step_objects(cfgs, device, total)
    batches = [group_batch(data, plan, s, cfgs[0].batch_size, torch.float32, 32) for s in range(total)]
    for s in range(warmup):
        group.step(*batches[s])
    best = float("inf")
    for r in range(repeats):
        sync()
        t0 = time.perf_counter()
        for s in range(warmup + r * steps, warmup + (r + 1) * steps):
            group.step(*batches[s])
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def measure_case(n: int, divisor: int, device: str, compile: str = "off", steps: int = 20,
                 repeats: int = 3, warmup: int = 3, regularizer: bool = True) -> dict:
    cfgs = case_configs(n, divisor, device, compile, regularizer)
    cost = cost_configs([c.to_dict() for c in cfgs])[1]
    seconds = seconds_per_step(cfgs, steps, repeats, warmup)
    return {"n": n, "divisor": divisor, "compile": compile, "regularizer": regularizer,
            "ops": cost.ops_per_step,
            "flops": cost.flops_per_step, "seconds": seconds}


def derive(kind: str, cases: list[dict], old: calibration.Rates) -> dict:
    """New values of t_op_s (and flops_per_s where the cases show it) from eager cases;
    t_op_compiled_s from compiled ones (seconds per eager-counted op). Pure: tested."""
    out = {}
    eager = [c for c in cases if c["compile"] == "off"]
    compiled = [c for c in cases if c["compile"] != "off"]
    if eager:
        out["t_op_s"] = min(c["seconds"] / c["ops"] for c in eager)
        heavy = max(eager, key=lambda c: c["flops"])
        launch_s = heavy["ops"] * out["t_op_s"]
        if heavy["seconds"] >= ARITHMETIC_SHOWS * launch_s:
            arithmetic_s = heavy["seconds"] - (launch_s if kind == "cpu" else 0.0)
            threads = torch.get_num_threads() if kind == "cpu" else 1
            out["flops_per_s"] = heavy["flops"] / arithmetic_s / threads
    if compiled:
        out["t_op_compiled_s"] = min(c["seconds"] / c["ops"] for c in compiled)
    return out


def cpu_compiled(values: dict) -> dict:
    """A CPU's compiled t_op is not measured (compiling takes 30-40 s there): the eager
    value, still marked assumed, so compiled CPU runs are forecast as eager ones."""
    return {"value": values["t_op_s"], "assumed": True,
            "source": "not measured on a CPU: the eager t_op (compiled runs forecast as eager)"}


def machine(kind: str) -> str:
    import platform

    if kind == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def calibrate(kind: str, cases: list[dict], write: bool) -> dict:
    """Measure `cases` (measure_case's keyword arguments), derive the constants, print them
    and, with write, record them in trainer/calibration.json."""
    measured = []
    for case in cases:
        m = measure_case(device=kind, **case)
        print(f"  N={m['n']:>2} divisor {m['divisor']:>2} reg {'on ' if m['regularizer'] else 'off'} "
              f"compile={m['compile']:<15} "
              f"{m['ops']:>6,} ops {m['flops'] / 1e9:8.2f} GFLOP  {m['seconds'] * 1e3:8.2f} ms/step "
              f"({m['seconds'] / m['ops'] * 1e6:.2f} us/op)", flush=True)
        measured.append(m)
    values = derive(kind, measured, calibration.rates(kind))
    print("  derived: " + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
    if write:
        calibration.write(kind, values, machine(kind), {"cases": measured},
                          extra={"t_op_compiled_s": cpu_compiled(values)} if kind == "cpu" else {})
        print(f"  written to {calibration.PATH}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu"],
                   help="cpu here; CUDA is calibrated by bench/gpu_check.py")
    p.add_argument("--write", action="store_true", help="record the result in trainer/calibration.json")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)            # flops_per_s is per thread on a CPU
    print(f"calibrating {machine(args.device)}")
    # t_op: channels / 64 and no regularizer, so that arithmetic is ~0.1% of the step;
    # the rate: the paper's full-width step, 9.4 GFLOP.
    calibrate(args.device, [dict(n=1, divisor=64, regularizer=False, steps=args.steps * 4),
                            dict(n=1, divisor=1, steps=args.steps, repeats=2, warmup=1)], args.write)
    print(json.dumps(calibration.load()[args.device], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
