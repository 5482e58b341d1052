"""The GPU-hours of every paper sweep, forecast (orchestrator/run/costs.py): the README's
"What it costs" table and each sweep file's "Forecast GPU cost" header line come from here.

    python bench/gpu_hours.py            # print the table and the header lines
    python bench/gpu_hours.py --write    # put them into README.md and sweeps/*.yaml
    python bench/gpu_hours.py --check    # exit 1 if README.md or a sweep file disagrees

Rerun with --write after anything that changes a step's ops (the regularizer, the model)
or after bench/gpu_check.py measures the constants in trainer/calibration.json.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.run.costs import group_costs, total_hours  # noqa: E402
from orchestrator.run.groups import fuse_groups  # noqa: E402
from orchestrator.run.sweep import expand, load_sweep  # noqa: E402

SWEEPS = {"table1": "Tables 1–2", "table3": "Table 3", "table4": "Table 4", "table5": "Table 5, Figure 3",
          "figure4": "Figures 4–5"}
BEGIN, END = "<!-- gpu-hours: begin (bench/gpu_hours.py --write) -->", "<!-- gpu-hours: end -->"
HEADER = "# Forecast GPU cost (bench/gpu_hours.py):"


def hours(name: str) -> dict:
    """Trials, and GPU-hours one trial per GPU and in the sweep file's fused groups."""
    sweep = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    trials = expand(sweep)
    fused = fuse_groups(trials, sweep.fuse)
    return {"trials": len(trials), "groups": len(fused),
            "solo": total_hours(group_costs(fuse_groups(trials, 1), {})),
            "fused": total_hours(group_costs(fused, {}))}


def shown(h: float) -> str:
    return f"{h:,.1f}" if h >= 0.1 else "< 0.1"


def table(rows: dict) -> str:
    from trainer.calibration import rates

    lines = ["| sweep | trials | GPU-hours, one trial per GPU | fused (as the sweep file sets it) |",
             "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| `{name}.yaml` ({SWEEPS[name]}) | {r['trials']} | {shown(r['solo'])} | "
                     f"{shown(r['fused'])} ({r['groups']} group{'s' if r['groups'] > 1 else ''}) |")
    lines.append(f"| **all** | {sum(r['trials'] for r in rows.values())} | "
                 f"**{shown(sum(r['solo'] for r in rows.values()))}** | "
                 f"**{shown(sum(r['fused'] for r in rows.values()))}** |")
    lines.append("")
    lines.append(f"Forecast, not measured: {rates('cuda').note()}.")
    return "\n".join(lines)


def header(r: dict) -> str:
    return (f"{HEADER} {shown(r['fused'])} GPU-hours in {r['groups']} fused group(s), "
            f"{shown(r['solo'])} one trial per GPU (a forecast; `plan` shows its constants)")


def expected(rows: dict) -> dict[Path, str]:
    """Each file as it should read, with the table and the header lines of `rows`."""
    out = {}
    readme = (ROOT / "README.md").read_text()
    block = f"{BEGIN}\n{table(rows)}\n{END}"
    out[ROOT / "README.md"] = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block,
                                     readme, flags=re.S)
    for name, r in rows.items():
        path = ROOT / "sweeps" / f"{name}.yaml"
        out[path] = re.sub("^" + re.escape(HEADER) + ".*$", lambda _: header(r), path.read_text(),
                           flags=re.M)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="update README.md and sweeps/*.yaml")
    p.add_argument("--check", action="store_true", help="exit 1 where they disagree")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = {name: hours(name) for name in SWEEPS}
    print(table(rows))
    for r in rows.values():
        print(header(r))
    stale = [path for path, text in expected(rows).items() if path.read_text() != text]
    if args.write:
        for path, text in expected(rows).items():
            path.write_text(text)
        print(f"written: {', '.join(p.name for p in stale) or 'nothing changed'}")
    elif args.check and stale:
        print(f"stale: {', '.join(p.name for p in stale)}; run python bench/gpu_hours.py --write",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
