"""Placement of a whole sweep: the default (groups formed for the cores `run` sees) against
one trial per process and one fused group on one core, end to end (`python -m orchestrator
run`: Ray, MLflow, the tables), wall time of each variant on the same machine.

    python bench/bench_placement.py --repeats 1          # ~3 min on 2 cores

Variants:
  solo       fuse 1, resources {cpu: 1}: each trial its own process, one core each, as many
             at once as there are cores;
  one-group  fuse 8, resources {cpu: 1}, max_concurrent 1: one fused group of all 8 on one
             core (what the default was before groups followed the cluster);
  default    fuse 8, no resources: `run` forms as many groups as cores, each a mix of
             regularized and plain trials, one core each.
The trials (the issue's): bottleneck W=16, conv widths / 16, batch 5, 2,000 generated
samples, 2 epochs, regularizer off/on x 4 seeds. Each repeat runs every variant once, in a
fresh folder, in rotating order; min and median over repeats are printed, with the second
each group finished at (from `run`'s progress lines).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"solo": dict(fuse=1, resources={"cpu": 1}),
            "one-group": dict(fuse=8, resources={"cpu": 1}, max_concurrent=1),
            "default": dict(fuse=8)}


def sweep_file(folder: Path, variant: str, epochs: int, train_samples: int) -> Path:
    doc = {"name": f"bench-placement-{variant}", "description": "placement benchmark",
           "base": dict(dataset="synthetic", train_samples=train_samples, test_samples=500,
                        vgg_width_divisor=16, width=16, batch_size=5, device="cpu", epochs=epochs),
           "grid": {"regularizer": [False, True]}, "seeds": [0, 1, 2, 3],
           "reproduces": ["table1"], **VARIANTS[variant]}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_sweep(variant: str, args) -> tuple[float, list[int]]:
    """Wall seconds of `run`, and the second (of its progress clock) each group finished."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    path = sweep_file(folder, variant, args.epochs, args.train_samples)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(path)], cwd=folder,
                         capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stdout + out.stderr)
    finished = [int(m[1]) for m in re.finditer(r"^\[ *(\d+)s\] .* finished$", out.stdout + out.stderr, re.M)]
    return seconds, finished


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=2000)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    names = list(VARIANTS)
    times: dict[str, list[float]] = {v: [] for v in names}
    for r in range(args.repeats):
        for v in names[r % 3:] + names[:r % 3]:
            seconds, finished = run_sweep(v, args)
            times[v].append(seconds)
            print(f"repeat {r + 1}: {v}: {seconds:.1f} s (groups finished at {finished} s)", flush=True)
    print(f"\n8 trials, {args.epochs} epochs of {args.train_samples} samples, batch 5, {cores} cores")
    best = {v: min(t) for v, t in times.items()}
    for v, t in times.items():
        print(f"{v:>10}: min {min(t):6.1f} s, median {statistics.median(t):6.1f} s, "
              f"this / default: {best[v] / best['default']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
