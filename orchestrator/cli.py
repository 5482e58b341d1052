"""`python -m orchestrator {run,plan,status,tables}`: the product's command line.

Each command is a thin layer over orchestrator/run/ (running a sweep) or
orchestrator/results/ (building its tables). Every set-up error is one `error:` line and
exit code 2, before Ray starts and before anything is written; a sweep stopped by Ctrl-C
or SIGTERM exits 130, one stopped by a full disk 3, one with unfinished trials 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .run.sweep import SweepError, Sweep, Trial, apply_overrides, load_sweep

EPILOG = """\
examples:
  python -m orchestrator run sweeps/smoke.yaml          # 8 tiny trials on a CPU, ~1 min
  python -m orchestrator run sweeps/table1.yaml         # the paper's Tables 1-2 (54 GPU trials)
  python -m orchestrator plan sweeps/table1.yaml        # what would run, in which groups, memory
  python -m orchestrator status sweeps/table1.yaml      # progress, while `run` goes on
  python -m orchestrator tables sweeps/table1.yaml      # Tables 1-2, ours beside the paper's
  mlflow ui                                             # in the folder `run` started from

Runs go to MLflow: --tracking-uri, else $MLFLOW_TRACKING_URI, else the sweep's
tracking_uri, else mlflow.db in the current folder. `run` is idempotent: finished trials
are skipped and interrupted ones resume from their last checkpoint in the same run.
"""


def classify(trials: list[Trial], states: dict) -> dict[str, list[Trial]]:
    """finished (skipped), resuming (a run exists, unfinished), new (no run yet)."""
    out = {"finished": [], "resuming": [], "new": []}
    for t in trials:
        s = states.get(t.key)
        out["new" if s is None else "finished" if s.status == "FINISHED" else "resuming"].append(t)
    return out


def _load(args) -> Sweep:
    resources = None
    if getattr(args, "resources", None):
        try:
            resources = json.loads(args.resources)
        except json.JSONDecodeError as err:
            raise SweepError(f"--resources {args.resources!r} is not JSON ({err.msg}); write e.g. "
                             f"--resources '{{\"cpu\": 2, \"gpu\": 0.25}}'") from None
    sweep = load_sweep(args.sweep)
    return apply_overrides(sweep, resources=resources,
                           max_concurrent=getattr(args, "max_concurrent", None),
                           storage_path=getattr(args, "storage", None))


def _run_plan(args, gpus: int | None = None):
    """The sweep (with its overrides), its store (checked within seconds, never created
    here) and what `run` would do on this machine (with `gpus` GPUs: default, those torch
    sees). Read-only."""
    from .run import launch
    from .store.client import check_store
    from .store.uri import local_store, resolve_tracking_uri

    sweep = _load(args)
    uri = resolve_tracking_uri(args.tracking_uri, sweep.tracking_uri)
    if not check_store(uri):
        print(f"note: no MLflow store at {local_store(uri)} yet, so every trial is "
              f"pending" + ("" if args.command == "run" else "; pass --tracking-uri if it is "
                            "elsewhere"), file=sys.stderr)
    return launch.make_plan(sweep, uri, launch.local_nodes(gpus))


def cmd_run(args) -> int:
    """Plan, check, then launch; the tables are built at the end."""
    from .results.report import tables_after_run
    from .run import driver, launch
    from .run.groups import steps_per_trial

    plan = _run_plan(args)
    counts = classify(plan.trials, plan.states)
    print(f"sweep {plan.sweep.name} ({plan.sweep.path}): {len(plan.trials)} trials: "
          f"{len(counts['new'])} new, {len(counts['resuming'])} resuming, "
          f"{len(counts['finished'])} finished (skipped)")
    _say_superseded(plan)
    if plan.todo:
        steps = sorted({steps_per_trial(t.config) for t in plan.todo})
        print(f"steps per trial: {', '.join(f'{s:,}' for s in steps)}; {len(plan.groups)} "
              f"group(s) of at most {plan.sweep.fuse} fused trials, {groups_at_once(plan)}")
    print(f"tracking: {plan.uri}")
    if args.dry_run:
        for group in plan.groups:
            print(f"  would run {len(group)} together: " + ", ".join(f"{t.name} ({t.key})" for t in group))
        if plan.groups:
            from .run import costs

            for line in costs.forecast_lines(costs.group_costs(plan.groups, plan.states,
                                                               measured=plan.measured),
                                             costs.local_gpus(), memory=False):
                print(line)
        return 0
    if not plan.todo:
        print("nothing to run: every trial is FINISHED in MLflow.")
        return tables_after_run(plan.sweep, plan.uri)
    storage = Path(plan.sweep.storage_path or driver.default_storage()).resolve()
    launch.preflight(plan, storage)
    code = launch.launch(plan, storage, launch.Options(args.address, args.gpu_memory, args.yes,
                                                       _resume_command(args)))
    if code in (2, launch.INTERRUPTED, launch.NO_SPACE):
        return code
    tables = tables_after_run(plan.sweep, plan.uri)
    return code or tables


def _resume_command(args) -> str:
    return "python -m orchestrator " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv[1:2] == ["run"] else f"python -m orchestrator run {shlex.quote(args.sweep)}"


def _states(plan) -> dict[str, str]:
    """trial_key -> what `plan` and `status` call its state. A RUNNING run whose driver
    stopped sending heartbeats (killed, or its node lost) is "interrupted": `run` resumes it."""
    from .run import lease
    from .store import read

    live = lease.alive(*read.heartbeat(plan.uri, plan.sweep.name))
    out = {}
    for t in plan.trials:
        s = plan.states.get(t.key)
        state = "pending" if s is None else s.status.lower()
        if state in ("running", "scheduled") and not live:
            state = "interrupted"
        out[t.key] = state
    return out


def _say_superseded(plan) -> None:
    from .run.groups import superseded, superseded_lines

    for line in superseded_lines(superseded(plan.trials, plan.states)):
        print(line)


def groups_at_once(plan) -> str:
    """How many of the plan's groups run at the same time, and why."""
    n = min(plan.at_once.count, len(plan.groups))
    return f"{n} at once ({plan.at_once.why}; groups are formed so that none of them idles)"


def cmd_plan(args) -> int:
    """Every trial, its state, and the fused groups `run` would launch with their memory
    forecast (no Ray; nothing written)."""
    from .run import costs
    from .run.groups import steps_per_trial

    plan = _run_plan(args, args.gpus)
    states = _states(plan)
    print(f"sweep {plan.sweep.name}: {plan.sweep.description.strip()}\n{len(plan.trials)} trials, "
          f"tracking {plan.uri}\n")
    print(f"{'trial':<28} {'key':<13} {'state':<11} {'epoch':>9} {'steps':>12} {'group':>6}")
    group_of = {t.key: i + 1 for i, g in enumerate(plan.groups) for t in g}
    for t in plan.trials:
        s = plan.states.get(t.key)
        epoch = f"{s.last_epoch if s else 0}/{t.config['epochs']}"
        group = f"g{group_of[t.key]}" if t.key in group_of else "-"
        print(f"{t.name:<28} {t.key:<13} {states[t.key]:<11} {epoch:>9} "
              f"{steps_per_trial(t.config):>12,} {group:>6}")
    _say_superseded(plan)
    if not plan.groups:
        return 0
    gpus = costs.local_gpus() if args.gpus is None else args.gpus
    print(f"\n{len(plan.groups)} group(s) to run (fuse: {plan.sweep.fuse}), {groups_at_once(plan)}; "
          f"each group's training alone on one GPU and its GPU memory (MB), forecast on this "
          f"machine:", flush=True)
    for line in costs.forecast_lines(costs.group_costs(plan.groups, plan.states, measured=plan.measured),
                                     gpus):
        print(line)
    print("peak: model + data on the GPU + the step; dynamic: peak - model - data; measured: the "
          "highest peak a group of the same shape reached on a GPU before (tracking store), "
          "which sizes the share when it is larger. A share adds headroom for what a forecast "
          "cannot see (CUDA context, library workspaces).")
    return 0


def cmd_status(args) -> int:
    plan = _run_plan(args)
    states = _states(plan)
    counts: dict[str, int] = {}
    lines = []
    for t in plan.trials:
        state, s = states[t.key], plan.states.get(t.key)
        counts[state] = counts.get(state, 0) + 1
        if s is not None and state != "finished":
            acc = s.metrics.get("test_accuracy")
            lines.append(f"  {t.name:<28} {state:<11} epoch {s.last_epoch}/{t.config['epochs']}"
                         + (f", test {acc:.2f}%" if acc is not None else ""))
    print(f"sweep {plan.sweep.name}: {len(plan.trials)} trials: "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if lines:
        print("\n".join(lines))
    _say_superseded(plan)
    if counts.get("interrupted"):
        print(f"interrupted: their driver is gone; `python -m orchestrator run {args.sweep}` resumes them")
    return 0


def cmd_tables(args) -> int:
    """Writes to MLflow only the cells' parent runs (unless --no-cell-runs) and, with
    --attach-figures, the figures: set-up errors are one `error:` line, exit 2, nothing
    written (and no MLflow store created)."""
    from .results import ResultsError
    from .results.report import sweep_tracking_uri, write_results
    from .store.client import check_store
    from .store.uri import resolve_tracking_uri

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        uri = resolve_tracking_uri(args.tracking_uri, lambda: sweep_tracking_uri(args.sources))
        check_store(uri)
        write_results(args.sources, uri, formats=formats, out_dir=args.out,   # prints each file
                      attach_figures=args.attach_figures, cell_runs=not args.no_cell_runs,
                      metric=args.metric, ci=args.ci)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Rerun the paper's experimental grids as Ray Tune sweeps tracked in "
                    "MLflow, and rebuild its tables with our numbers beside the published ones.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,plan,status,tables}")

    def with_sweep(name, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("sweep", help="sweep file, e.g. sweeps/table1.yaml")
        sp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, "
                                               "the sweep's tracking_uri, or ./mlflow.db)")
        return sp

    r = with_sweep("run", "run a sweep's unfinished trials on Ray Tune, then build its tables")
    r.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--storage", help="checkpoint folder; shared by all nodes on a cluster "
                                     "(default: the sweep's storage_path, else ./ray_results)")
    r.add_argument("--max-concurrent", type=int, help="groups at once (default: the sweep's)")
    r.add_argument("--resources", help="per group (Tune trial) as JSON, e.g. "
                                       "'{\"cpu\": 2, \"gpu\": 0.25}' (default: the sweep's; "
                                       "none: sized from the memory forecast)")
    r.add_argument("--gpu-memory", type=float, metavar="GB",
                   help="memory of each GPU in GB (1e9 bytes), to size GPU shares without "
                        "asking the cluster (default: read on each GPU node)")
    r.add_argument("--dry-run", action="store_true", help="say what would run; launch and write nothing")
    r.add_argument("--yes", action="store_true", help="start a paper-size sweep even on CPUs only")
    r.set_defaults(fn=cmd_run)
    pl = with_sweep("plan", "list the trials, their state, and the fused groups `run` would "
                            "launch with their forecast GPU time and memory")
    pl.add_argument("--gpus", type=int, metavar="N",
                    help="GPUs the sweep will run on, for its wall time (default: the GPUs torch "
                         "sees here; with none, the time on one GPU and with one per group). "
                         "plan starts no Ray, so it cannot count a cluster's")
    pl.set_defaults(fn=cmd_plan)
    with_sweep("status", "progress of a sweep from MLflow (works while `run` goes on)"
               ).set_defaults(fn=cmd_status)
    t = sub.add_parser("tables", help="rebuild the paper's tables, figures and report from MLflow",
                       description="Rebuild the paper's tables, figures and report.md from MLflow.")
    t.add_argument("sources", nargs="+", help="sweep files or MLflow experiment names")
    t.add_argument("--tracking-uri", help="MLflow store (default as for run)")
    t.add_argument("--format", default="md,latex,csv", help="comma-separated: md, latex, csv")
    t.add_argument("--out", default="results", help="output folder (default: results/)")
    t.add_argument("--metric", choices=("final", "best"), default="final",
                   help="which epoch of each run the tables use: final (default; the paper's "
                        "protocol as we read it) or best (each run's highest test accuracy, "
                        "and the other metrics at that epoch)")
    t.add_argument("--ci", action="store_true",
                   help="show each cell's 95%% interval (Student t over seeds) and whether the "
                        "paper's value lies inside it in the md and LaTeX tables too (the CSV "
                        "always has them)")
    t.add_argument("--no-cell-runs", action="store_true",
                   help="do not create or update the cells' MLflow parent runs (one per "
                        "configuration, mean curves over its seeds): read only")
    t.add_argument("--attach-figures", action="store_true",
                   help="also attach each figure to the MLflow runs it comes from (an MLflow "
                        "write; `run` always does)")
    t.set_defaults(fn=cmd_tables)
    return p


def main(argv: list[str] | None = None) -> int:
    # MLflow retries a dead server 7 times with long backoffs (minutes, silently); our own
    # retries say what they wait for (orchestrator/store/client.py).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    args = parser().parse_args(argv)
    from .run.lease import LeaseHeld
    from .run.packing import PackingError
    from .store import NotInStore, StoreUnreachable

    try:
        return args.fn(args)
    except (SweepError, PackingError, LeaseHeld, StoreUnreachable, NotInStore) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
