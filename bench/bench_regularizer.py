"""A solo training step with the regularizer: this checkout against an earlier commit of the
trainer (default 50a2cb6, the per-term regularizer of 1,556 ops a step), side by side.

    OMP_NUM_THREADS=1 python bench/bench_regularizer.py                       # the default cases
    python bench/bench_regularizer.py --cases 1:64:5,32:1:5 --baseline 50a2cb6 --repeats 7

A case is W:divisor:batch. At W=1 and conv widths /64 a CPU step is almost no arithmetic,
so its time is what the host dispatches (as a batch-5 step on a GPU); at W=32 and /1 it is
the paper's network, mostly arithmetic on a CPU. The baseline's trainer/ is taken from git
(`git archive`) into a temporary folder; each timing runs in a fresh process of either
code, the two interleaved repeat by repeat, so a noisy neighbour hits both alike. It prints
ms per step (min and median of the repeats) and baseline / this, and each code's ops per
step (trainer/cost.py's rule; counted here, so the baseline needs no cost module).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process with the chosen code's trainer/ first on sys.path.
WORKER = r"""
import json, sys, time, torch
from torch.utils._python_dispatch import TorchDispatchMode
from trainer.config import Config
from trainer.group import Group
from trainer.model import build_model
from trainer.train import Member
width, divisor, batch, steps = map(int, sys.argv[1:5])
torch.set_num_threads(1)
cfg = Config.from_dict(dict(dataset="synthetic", width=width, vgg_width_divisor=divisor,
                            batch_size=batch, regularizer=True, device="cpu"))
group = Group([Member(0, cfg, None, generator=torch.Generator())], [build_model(cfg)], [{}])
g = torch.Generator().manual_seed(0)
x, y = torch.randn(1, batch, 3, 32, 32, generator=g), torch.randint(0, 10, (1, batch), generator=g)

class Ops(TorchDispatchMode):
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        free = func.is_view or func.__name__ in ("lift_fresh.default", "_unsafe_view.default") or any(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        self.n += not free
        return func(*args, **(kwargs or {}))

for _ in range(3):
    group.step(x, y)                    # warm-up; SGD state exists from here on
with Ops() as ops:
    group.step(x, y)
t0 = time.perf_counter()
for _ in range(steps):
    group.step(x, y)
print(json.dumps({"ms": (time.perf_counter() - t0) / steps * 1e3, "ops": ops.n}))
"""


def baseline_tree(commit: str, into: Path) -> Path:
    """The baseline commit's trainer/ package, unpacked under `into`."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit,
                    "trainer"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "code", filter="data")
    return into / "code"


def time_once(code: Path, case: tuple[int, int, int], steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r})\n" + WORKER,
                          *map(str, case), str(steps)], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=code)
    if out.returncode:
        raise SystemExit(f"a timing run of {code} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="50a2cb6", help="git commit to compare with")
    p.add_argument("--cases", default="1:64:5,32:16:5,32:1:5", help="W:divisor:batch, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    cases = [tuple(map(int, c.split(":"))) for c in args.cases.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        codes = {args.baseline: baseline_tree(args.baseline, Path(tmp)), "this": ROOT}
        print(f"solo step, regularizer on, 1 thread, CPU; ms per step, min / median of {args.repeats} "
              f"interleaved repeats of {args.steps} steps")
        print(f"{'W':>3} {'div':>4} {'batch':>5}" + "".join(f" {name + ' min':>15} {'med':>7} {'ops':>6}"
                                                          for name in codes) + f" {'speed-up':>9}")
        for case in cases:
            runs = {name: [] for name in codes}
            for _ in range(args.repeats):
                for name, code in codes.items():
                    runs[name].append(time_once(code, case, args.steps))
            row = "".join(f" {min(r['ms'] for r in rs):15.2f} {statistics.median(r['ms'] for r in rs):7.2f} "
                          f"{rs[0]['ops']:6d}" for rs in runs.values())
            speedup = min(r["ms"] for r in runs[args.baseline]) / min(r["ms"] for r in runs["this"])
            print(f"{case[0]:>3} {case[1]:>4} {case[2]:>5}{row} {speedup:9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
