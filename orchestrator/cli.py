"""`python -m orchestrator {run,plan,status,tables}`: the product's command line."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.config import Config

from .run.packing import PackingError, needed_bytes, pack
from .run.plan import fuse_groups, group_forecast, group_name
from .run.sweep import SweepError, Sweep, Trial, apply_overrides, expand, load_sweep

# CPU cost model for the "paper-size sweep on CPU" guard: forward GFLOP per 32x32 image of
# VGG16's conv section (~15.5 GFLOP at 224x224, / 49), x3 for forward+backward, at ~3
# GFLOP/s per core, what small-batch steps reached on the 2-core dev machine (BENCHMARKS.md).
CONV_GFLOP_PER_IMAGE = 0.31
CPU_GFLOPS_PER_CORE = 3.0
CPU_HOURS_NEEDING_YES = 2.0

EPILOG = """\
examples:
  python -m orchestrator run sweeps/smoke.yaml          # 4 tiny trials on a CPU, ~2 min
  python -m orchestrator run sweeps/table1.yaml         # the paper's Tables 1-2 (18 GPU trials)
  python -m orchestrator plan sweeps/table1.yaml        # what would run, what is done
  python -m orchestrator status sweeps/table1.yaml      # progress, while `run` goes on
  python -m orchestrator tables sweeps/table1.yaml      # Tables 1-2, ours beside the paper's
  mlflow ui                                             # in the folder `run` started from

Runs go to MLflow: --tracking-uri, else $MLFLOW_TRACKING_URI, else the sweep's
tracking_uri, else mlflow.db in the current folder. `run` is idempotent: finished trials
are skipped and interrupted ones resume from their last checkpoint in the same run.
"""


def steps_per_trial(config: dict) -> int:
    cfg = Config.from_dict(config)
    return cfg.epochs * (cfg.train_size // cfg.batch_size)


def cpu_hours(trials: list[Trial], cpus_per_trial: float, total_cpus: float) -> float:
    """A rough estimate of a sweep's wall time on CPUs only (see CPU_GFLOPS_PER_CORE)."""
    gflop = sum(3 * CONV_GFLOP_PER_IMAGE / t.config["vgg_width_divisor"] ** 2
                * (t.config["image_size"] / 32) ** 2
                * t.config["batch_size"] * steps_per_trial(t.config) for t in trials)
    parallel = max(1.0, total_cpus // max(cpus_per_trial, 1))
    return gflop / (CPU_GFLOPS_PER_CORE * max(cpus_per_trial, 1)) / parallel / 3600


def classify(trials: list[Trial], states: dict) -> dict[str, list[Trial]]:
    """finished (skipped), resuming (a run exists, unfinished), new (no run yet)."""
    out = {"finished": [], "resuming": [], "new": []}
    for t in trials:
        s = states.get(t.key)
        out["new" if s is None else "finished" if s.status == "FINISHED" else "resuming"].append(t)
    return out


def _load(args) -> Sweep:
    resources = json.loads(args.resources) if getattr(args, "resources", None) else None
    sweep = load_sweep(args.sweep)
    return apply_overrides(sweep, resources=resources,
                           max_concurrent=getattr(args, "max_concurrent", None),
                           storage_path=getattr(args, "storage", None))


@dataclass
class RunPlan:
    """What `run` will do: the sweep, where it logs, and the groups of trials still to run."""
    sweep: Sweep
    uri: str
    trials: list[Trial]
    states: dict                     # trial_key -> tracking.RunState
    groups: list[list[Trial]]        # fused groups of the trials to run (new or resuming)


def make_plan(args) -> RunPlan:
    from .run import tracking

    sweep = _load(args)
    trials = expand(sweep)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, sweep.tracking_uri)
    states = tracking.runs_by_key(uri, sweep.name)
    todo = [t for t in trials if t.key not in states or states[t.key].status != "FINISHED"]
    return RunPlan(sweep, uri, trials, states, fuse_groups(todo, sweep.fuse))


def cmd_run(args) -> int:
    plan = make_plan(args)
    todo = [t for g in plan.groups for t in g]
    counts = classify(plan.trials, plan.states)
    print(f"sweep {plan.sweep.name} ({plan.sweep.path}): {len(plan.trials)} trials: "
          f"{len(counts['new'])} new, {len(counts['resuming'])} resuming, "
          f"{len(counts['finished'])} finished (skipped)")
    if todo:
        steps = sorted({steps_per_trial(t.config) for t in todo})
        print(f"steps per trial: {', '.join(f'{s:,}' for s in steps)}; "
              f"{len(plan.groups)} group(s) of at most {plan.sweep.fuse} fused trials")
    print(f"tracking: {plan.uri}")
    if args.dry_run:
        for group in plan.groups:
            print(f"  would run {group_name(group)}: " + ", ".join(f"{t.name} ({t.key})" for t in group))
        return 0
    if not todo:
        print("nothing to run: every trial is FINISHED in MLflow.")
        return build_tables_step(plan.sweep, plan.uri)
    return launch(plan, args)


def launch(plan: RunPlan, args) -> int:
    """Start (or join) Ray, create the runs of new trials, run every group on Tune, then say
    how each trial ended and build the tables."""
    from .run import driver, tracking

    sweep, uri = plan.sweep, plan.uri
    cluster = driver.start_ray(args.address)
    nodes = driver.cluster_nodes(args.gpu_memory)
    placements, warnings = pack(plan.groups, group_forecast, nodes, sweep.resources)
    asks = sorted({json.dumps(p.resources, sort_keys=True) for p in placements})
    print(f"on: Ray cluster with {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{len(placements)} group(s), each asking for {' or '.join(asks)}"
          + ("" if sweep.resources else " (sized from the memory forecast)" if nodes and
             any(n.gpus for n in nodes) else ""))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    todo = [t for g in plan.groups for t in g]
    resources = placements[0].resources
    if not resources.get("gpu"):
        hours = cpu_hours(todo, resources.get("cpu", 1), cluster.get("CPU", 1))
        if hours > CPU_HOURS_NEEDING_YES and not args.yes:
            print(f"error: this sweep would take about {hours:,.0f} hours on these CPUs "
                  f"(no GPU). Run it on a GPU cluster (README: 'Run on a GPU cluster'), or "
                  f"pass --yes to start anyway.", file=sys.stderr)
            return 2

    experiment_id = tracking.ensure_experiment(uri, sweep.name)
    tags = tracking.provenance_tags()
    storage = Path(sweep.storage_path or driver.default_storage()).resolve()
    jobs = []
    for placement in placements:
        group, members = placement.group, []
        for t in group:
            run_id = (plan.states[t.key].run_id if t.key in plan.states
                      else tracking.create_run(uri, experiment_id, t, sweep, tags))
            config = {**t.config, "data_dir": str(Path(t.config["data_dir"]).resolve())}
            members.append(driver.Member(t.key, t.name, config, run_id, str(storage / sweep.name / t.key)))
        threads = max(1, int(placement.resources.get("cpu", 1)))
        jobs.append(driver.Job(group_name(group), members, uri, threads, tags, placement.resources))
    driver.run_jobs(jobs, sweep.name, str(storage), sweep.max_failures, sweep.max_concurrent)

    after = tracking.runs_by_key(uri, sweep.name)
    failed = [t.name for t in todo if after.get(t.key) is None or after[t.key].status != "FINISHED"]
    print(f"\n{len(todo) - len(failed)} of {len(todo)} trials finished"
          + (f"; not finished: {', '.join(failed)}" if failed else ""))
    print(f"MLflow: {uri}\n  see runs:   mlflow ui --backend-store-uri {uri}\n"
          f"  tables:     python -m orchestrator tables {args.sweep}"
          + (f" --tracking-uri {uri}" if args.tracking_uri else ""))
    code = build_tables_step(sweep, uri)
    return 1 if failed else code


def build_tables_step(sweep: Sweep, uri: str) -> int:
    """`run`'s final aggregation: the sweep's tables and report, exactly as `tables` writes,
    and each figure attached to the runs it comes from."""
    from .results import ResultsError
    from .results.report import write_results

    out = Path("results") / sweep.name
    try:
        paths = write_results([str(sweep.path)], uri, out_dir=str(out), attach_figures=True)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"tables and report: {out}/ ({len(paths)} files)")
    return 0


def _state(s) -> str:
    return "pending" if s is None else s.status.lower()


def cmd_plan(args) -> int:
    """Every trial, its state, and the fused groups `run` would launch with their memory
    forecast (no Ray, nothing written)."""
    plan = make_plan(args)
    print(f"sweep {plan.sweep.name}: {plan.sweep.description.strip()}\n{len(plan.trials)} trials, "
          f"tracking {plan.uri}\n")
    print(f"{'trial':<28} {'key':<13} {'state':<10} {'epoch':>9} {'steps':>12} {'group':>6}")
    group_of = {t.key: i + 1 for i, g in enumerate(plan.groups) for t in g}
    for t in plan.trials:
        s = plan.states.get(t.key)
        epoch = f"{s.last_epoch if s else 0}/{t.config['epochs']}"
        group = f"g{group_of[t.key]}" if t.key in group_of else "-"
        print(f"{t.name:<28} {t.key:<13} {_state(s):<10} {epoch:>9} "
              f"{steps_per_trial(t.config):>12,} {group:>6}")
    if not plan.groups:
        return 0
    print(f"\n{len(plan.groups)} group(s) to run (fuse: {plan.sweep.fuse}); GPU memory of one "
          f"training step, forecast on this machine (MB):", flush=True)
    print(f"{'group':>6} {'trials':>6} {'model':>8} {'peak':>8} {'dynamic':>8} {'forward':>8} "
          f"{'a GPU share needs':>18}  first trial")
    for i, group in enumerate(plan.groups, 1):
        f = group_forecast(group)
        print(f"{'g' + str(i):>6} {len(group):>6} {f.model_mb:>8,.0f} {f.peak_mb:>8,.0f} "
              f"{f.dynamic_peak_mb:>8,.0f} {f.forward_peak_mb:>8,.0f} "
              f"{needed_bytes(f) / 1e9:>15.1f} GB  {group[0].name}")
    print("peak: model + data on the GPU + the step; dynamic: peak - model - data. A share adds "
          "headroom for what a forecast cannot see (CUDA context, library workspaces).")
    return 0


def cmd_status(args) -> int:
    plan = make_plan(args)
    sweep, trials, states = plan.sweep, plan.trials, plan.states
    counts: dict[str, int] = {}
    lines = []
    for t in trials:
        s = states.get(t.key)
        state = _state(s)
        counts[state] = counts.get(state, 0) + 1
        if s is not None and s.status != "FINISHED":
            acc = s.metrics.get("test_accuracy")
            lines.append(f"  {t.name:<28} {state:<10} epoch {s.last_epoch}/{t.config['epochs']}"
                         + (f", test {acc:.2f}%" if acc is not None else ""))
    print(f"sweep {sweep.name}: {len(trials)} trials: "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print("\n".join(lines))
    return 0


def cmd_tables(args) -> int:
    """Read-only unless --attach-figures: set-up errors are one `error:` line, exit 2,
    nothing written (and no MLflow store created)."""
    import os

    from .run import tracking
    from .results import ResultsError
    from .results.report import sweep_tracking_uri, write_results

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        # As for run: --tracking-uri, $MLFLOW_TRACKING_URI, the sweep files', ./mlflow.db.
        given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        uri = tracking.resolve_tracking_uri(given, None if given else sweep_tracking_uri(args.sources))
        write_results(args.sources, uri, formats=formats, out_dir=args.out,   # prints each file
                      attach_figures=args.attach_figures)
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
    r.add_argument("--max-concurrent", type=int, help="trials at once (default: the sweep's)")
    r.add_argument("--resources", help='per-trial resources as JSON, e.g. \'{"cpu": 2, "gpu": 0.25}\'')
    r.add_argument("--gpu-memory", type=float, metavar="GB",
                   help="memory of each GPU in GB (1e9 bytes), to size GPU shares without "
                        "asking the cluster (default: read on each GPU node)")
    r.add_argument("--dry-run", action="store_true", help="say what would run; launch nothing")
    r.add_argument("--yes", action="store_true", help="start a paper-size sweep even on CPUs only")
    r.set_defaults(fn=cmd_run)
    with_sweep("plan", "list the trials, their keys and their state in MLflow").set_defaults(fn=cmd_plan)
    with_sweep("status", "progress of a sweep from MLflow (works while `run` goes on)"
               ).set_defaults(fn=cmd_status)
    t = sub.add_parser("tables", help="rebuild the paper's tables, figures and report from MLflow",
                       description="Rebuild the paper's tables, figures and report.md from MLflow.")
    t.add_argument("sources", nargs="+", help="sweep files or MLflow experiment names")
    t.add_argument("--tracking-uri", help="MLflow store (default as for run)")
    t.add_argument("--format", default="md,latex,csv", help="comma-separated: md, latex, csv")
    t.add_argument("--out", default="results", help="output folder (default: results/)")
    t.add_argument("--attach-figures", action="store_true",
                   help="also attach each figure to the MLflow runs it comes from (an MLflow "
                        "write; `run` always does)")
    t.set_defaults(fn=cmd_tables)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (SweepError, PackingError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
