"""`plan` on a 540-trial sweep (Tables 1-2's grid with 30 seeds): this checkout against an
earlier commit, cold (no measured costs on disk) and warm (the second `plan` of the same code).

    python bench/bench_plan.py                      # baseline 950aaea, 3 repeats
    python bench/bench_plan.py --baseline 950aaea --repeats 5 --seeds 30

Each timing is a fresh `python -m orchestrator plan` process in an empty folder (no tracking
store: every trial is new), with MANIFOLD_SWEEPS_CACHE pointing at a folder of its own:
emptied before a cold timing, kept from the cold one for the warm timing. The two codes run
interleaved, repeat by repeat, so a noisy neighbour hits both alike. It prints wall seconds
(min and median) and baseline / this. The baseline's orchestrator/ and trainer/ come from git
(`git archive`) into a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def checkout(commit: str, into: Path) -> Path:
    """The commit's orchestrator/ and trainer/ packages, unpacked under `into`."""
    archive = into / f"{commit}.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit,
                    "orchestrator", "trainer"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / commit, filter="data")
    return into / commit


def big_sweep(seeds: int, path: Path) -> Path:
    """sweeps/table1.yaml with `seeds` seeds: 18 cells x seeds trials."""
    spec = yaml.safe_load((ROOT / "sweeps" / "table1.yaml").read_text())
    spec.update(name="bench-plan", seeds=list(range(seeds)))
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def time_plan(code: Path, sweep: Path, cache: Path, cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(code), MANIFOLD_SWEEPS_CACHE=str(cache))
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(sweep)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode or "total" not in out.stdout:
        raise SystemExit(f"`plan` of {code} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="950aaea", help="git commit to compare with")
    p.add_argument("--seeds", type=int, default=30, help="seeds per cell (18 cells)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = {args.baseline: checkout(args.baseline, tmp), "this": ROOT}
        sweep = big_sweep(args.seeds, tmp / "big.yaml")
        times = {(name, kind): [] for name in codes for kind in ("cold", "warm")}
        for repeat in range(args.repeats):
            for name, code in codes.items():
                cache, cwd = tmp / f"cache-{name}", tmp / f"cwd-{name}"
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(cwd, ignore_errors=True)
                cwd.mkdir()
                for kind in ("cold", "warm"):
                    times[name, kind].append(time_plan(code, sweep, cache, cwd))
                    print(f"repeat {repeat + 1}/{args.repeats}: {name} {kind} "
                          f"{times[name, kind][-1]:.2f} s", file=sys.stderr, flush=True)
        print(f"`plan` of {18 * args.seeds} trials, wall seconds, min / median of {args.repeats} "
              f"interleaved repeats")
        print(f"{'code':>10} {'kind':>5} {'min':>7} {'median':>7} {'baseline / this':>16}")
        for (name, kind), ts in times.items():
            ratio = min(times[args.baseline, kind]) / min(ts)
            print(f"{name:>10} {kind:>5} {min(ts):7.2f} {statistics.median(ts):7.2f} {ratio:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
