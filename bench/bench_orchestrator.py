"""The orchestrator's overhead: a sweep of 8 short trials, one at a time, through Ray Tune
and MLflow, against the same 8 trials run back to back by the bare trainer in one process.

    OMP_NUM_THREADS=1 python bench/bench_orchestrator.py [--epochs 2] [--train-samples 512]

Prints both wall times, their ratio, and the overhead per trial: (sweep - bare) / trials,
which holds Ray's start, each trial's start-up and MLflow logging, and the final tables.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.run.sweep import expand, load_sweep  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.train import train  # noqa: E402


def sweep_file(folder: Path, epochs: int, train_samples: int) -> Path:
    doc = {"name": "bench", "description": "orchestrator overhead",
           "base": dict(dataset="synthetic", train_samples=train_samples, test_samples=256,
                        vgg_width_divisor=16, augment=False, device="cpu", epochs=epochs,
                        batch_size=16),
           "grid": {"width": [32, 16, 8, 4], "regularizer": [False, True]},
           "fuse": 1, "resources": {"cpu": 1}, "max_concurrent": 1}   # one at a time, like the bare side
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=512)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    path = sweep_file(folder, args.epochs, args.train_samples)
    trials = expand(load_sweep(path))

    t0 = time.perf_counter()
    trained = 0.0
    for t in trials:
        for m in train(Config.from_dict({**t.config, "threads": 1})):
            trained += 0 if m.final else m.metrics["epoch_seconds"]
    bare = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(path)], cwd=folder,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                              "OMP_NUM_THREADS": "1",
                                                              "PATH": "/usr/bin:/bin"})
    swept = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stdout + out.stderr)
    print(f"{len(trials)} trials, {args.epochs} epochs of {args.train_samples} samples each")
    print(f"bare trainer, one process:   {bare:7.1f} s  (training itself: {trained:.1f} s)")
    print(f"orchestrator sweep:          {swept:7.1f} s  (Ray start, MLflow, tables included)")
    print(f"ratio sweep / bare:          {swept / bare:7.2f}")
    print(f"start-up + tracking per trial: {(swept - bare) / len(trials):5.1f} s")


if __name__ == "__main__":
    main()
