"""A whole sweep with and without fused trials: 8 trials on the same CPUs, end to end
(`python -m orchestrator run`: Ray, MLflow, the tables), wall time of each variant.

    python bench/bench_sweep_fusion.py --repeats 3            # ~10 min on 2 cores

Variants (every one uses all the machine's cores):
  fuse 1  each trial alone, one core each, as many at once as there are cores;
  fuse 4  two groups of 4 fused trials, one core each;
  fuse 8  one group of all 8, with every core's threads.
The trials: bottleneck, W in {32, 16, 8, 4} x regularizer off/on, batch 5 (the paper's
regime), conv widths / 16, generated data. Each repeat runs every variant once, in a fresh
folder, in rotating order; min and median over repeats are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, fuse: int, cpus: int, epochs: int, train_samples: int) -> Path:
    doc = {"name": "bench-fusion", "description": "fused vs solo sweep",
           "base": dict(dataset="synthetic", train_samples=train_samples, test_samples=256,
                        vgg_width_divisor=16, augment=True, device="cpu", epochs=epochs,
                        batch_size=5),
           "grid": {"width": [32, 16, 8, 4], "regularizer": [False, True]},
           "fuse": fuse, "resources": {"cpu": cpus}, "reproduces": ["table1"]}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_sweep(fuse: int, cpus: int, args) -> float:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-fuse{fuse}-"))
    path = sweep_file(folder, fuse, cpus, args.epochs, args.train_samples)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(path)], cwd=folder,
                         capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stdout + out.stderr)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=500)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    variants = [(1, 1), (4, 1), (8, cores)]                  # (fuse, cpus per Tune trial)
    times = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants[r % 3:] + variants[:r % 3]:
            times[v].append(run_sweep(*v, args))
            print(f"repeat {r + 1}: fuse {v[0]} ({v[1]} cpu per group): {times[v][-1]:.1f} s", flush=True)
    print(f"\n8 trials, {args.epochs} epochs of {args.train_samples} samples, batch 5, {cores} cores")
    base = min(times[variants[0]])
    for (fuse, cpus), t in times.items():
        print(f"fuse {fuse} ({cpus} cpu per group): min {min(t):6.1f} s, median "
              f"{statistics.median(t):6.1f} s, fuse-1 / this: {base / min(t):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
