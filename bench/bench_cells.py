"""What the cells' parent runs add to the tables step: Table 1-2's grid (18 cells x 3
seeds = 54 runs of 200 epochs, logged as the trainer logs them) in a SQLite store, then
`write_results` without cell runs, with them (the first write: 18 parents created), and
again (nothing to change), interleaved over fresh stores.

    python bench/bench_cells.py --repeats 3          # ~3 min on 2 cores

Prints min and median seconds per variant, and the ratio to the tables alone.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator.results import report  # noqa: E402
from trainer.config import Config  # noqa: E402

METRICS = ("test_accuracy", "train_accuracy", "generalization_gap", "train_loss", "epoch_seconds",
           "last_epoch")


def build_store(folder: Path, epochs: int) -> str:
    """54 FINISHED runs: W x batch x regularizer x 3 seeds, every epoch logged."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("bench-cells")
    for w in (32, 16, 8):
        for b in (9, 7, 5):
            for reg in (False, True):
                for seed in range(3):
                    config = Config(width=w, batch_size=b, regularizer=reg, seed=seed, epochs=epochs,
                                    dataset="cifar10").to_dict()
                    name = f"w{w}-b{b}-{'reg' if reg else 'noreg'}-s{seed}"
                    rid = c.create_run(exp, run_name=name, tags={"trial_key": name}).info.run_id
                    c.log_batch(rid, params=[Param(k, str(v)) for k, v in list(config.items())[:100]])
                    metrics = [Metric(m, float(e if m == "last_epoch" else 50 + seed + e / epochs), 0, e)
                               for e in range(1, epochs + 1) for m in METRICS]
                    for i in range(0, len(metrics), 1000):
                        c.log_batch(rid, metrics=metrics[i:i + 1000])
                    c.set_terminated(rid, "FINISHED")
    return uri


def timed(uri: str, out: Path, cell_runs: bool) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report.write_results(["bench-cells"], uri, formats=["csv"], out_dir=out, cell_runs=cell_runs)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200)
    args = ap.parse_args()
    times = {"tables only": [], "first write (18 created)": [], "rerun (nothing to write)": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            uri = build_store(folder, args.epochs)
            timed(uri, folder / "warm", False)                       # imports, first queries
            times["tables only"].append(timed(uri, folder / "a", False))
            times["first write (18 created)"].append(timed(uri, folder / "b", True))
            times["rerun (nothing to write)"].append(timed(uri, folder / "c", True))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    base = statistics.median(times["tables only"])
    print(f"\n| variant | min s | median s | median / tables only |\n|---|---:|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.2f} | {statistics.median(v):.2f} | {statistics.median(v) / base:.2f} |")


if __name__ == "__main__":
    main()
