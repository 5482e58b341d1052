"""One fused step of N trials against N solo steps of the same trials.

    OMP_NUM_THREADS=1 python bench/bench_fused.py --n 1,2,4,8,16 --divisors 16,4 --batch-sizes 5,9
    python bench/bench_fused.py --device cuda --divisors 1 --n 6,12,18 --batch-sizes 5   # a GPU

Per (divisor, batch, N) it prints milliseconds per step of
  solo    the N trials one after another, each the trainer's step of a group of one (forward,
          cross-entropy + the manifold terms of Eq. 3-4, backward, SGD): what one trial per
          process does;
  fused   trainer.group.Group.step: the trainer's own step over the N stacked trials;
and the speed-up solo / fused. Every trial has the regularizer on, its own seed and its own
batch (batches made beforehand, so only the step is timed). Repeats interleave the two so a
noisy neighbour hits both; min and median are reported. (A torch.func vmap version of the
fusion, measured on earlier commits and not kept, is in BENCHMARKS.md.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from trainer.config import Config  # noqa: E402
from trainer.group import Group  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.train import Member, resolve_device  # noqa: E402


def configs(n: int, divisor: int, batch: int, device: str, width: int = 32) -> list[Config]:
    return [Config.from_dict(dict(dataset="synthetic", vgg_width_divisor=divisor, batch_size=batch,
                                  width=width, regularizer=True, seed=s, device=device)) for s in range(n)]


def _group(cfgs, device) -> Group:
    cfgs = sorted(cfgs, key=lambda c: -c.width)          # one head shape next to each other
    members = [Member(i, c, None, generator=torch.Generator(device=device)) for i, c in enumerate(cfgs)]
    return Group(members, [build_model(c).to(device) for c in cfgs], [{} for _ in cfgs])


def solo_steps(cfgs, device):
    groups = [_group([c], device) for c in cfgs]

    def step(x, y):
        for i, group in enumerate(groups):
            group.step(x[i:i + 1], y[i:i + 1])
    return step


def fused_step(cfgs, device):
    return _group(cfgs, device).step


def timed(step, x, y, steps: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="1,2,4,8,16", help="group sizes N")
    p.add_argument("--divisors", default="16,4", help="conv width divisors (1 = the paper)")
    p.add_argument("--batch-sizes", default="5,9")
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--width", type=int, default=32, help="W (the head's narrowest width)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    impls = ["solo", "fused"]
    make = {"solo": solo_steps, "fused": fused_step}
    print(f"torch {torch.__version__}, {device}, {args.threads} thread(s), bottleneck W={args.width}, "
          f"regularizer on; ms per step of all N trials; min / median of {args.repeats}")
    print(f"{'div':>4} {'batch':>5} {'N':>3} " + " ".join(f"{i + ' min':>10} {'med':>7}" for i in impls)
          + "".join(f" {'solo/' + i:>11}" for i in impls[1:]))
    for divisor in map(int, args.divisors.split(",")):
        for batch in map(int, args.batch_sizes.split(",")):
            for n in map(int, args.n.split(",")):
                cfgs = configs(n, divisor, batch, str(device), args.width)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(n, batch, 3, 32, 32, generator=g).to(device)
                y = torch.randint(0, 10, (n, batch), generator=g).to(device)
                steps = {i: make[i](cfgs, device) for i in impls}
                for step in steps.values():             # warm-up: allocator, first-call costs
                    timed(step, x, y, 2, sync)
                times = {i: [] for i in impls}
                for _ in range(args.repeats):
                    for i in impls:
                        times[i].append(timed(steps[i], x, y, args.steps, sync) * 1e3)
                row = " ".join(f"{min(times[i]):10.2f} {statistics.median(times[i]):7.2f}" for i in impls)
                ratios = "".join(f" {min(times['solo']) / min(times[i]):11.2f}" for i in impls[1:])
                print(f"{divisor:>4} {batch:>5} {n:>3} {row}{ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
