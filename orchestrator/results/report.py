"""`report.md`, and `write_results`: every artefact of the given sweeps into one folder.

Entry point for `python -m orchestrator tables SWEEP...` and the end of `run`:

    write_results(["sweeps/table1.yaml"], "sqlite:///abs/mlflow.db", out_dir="results/table1")

writes the tables (render.py, one file per format), the figures (figures.py) and report.md
(provenance, the claims of claims.py checked on our numbers, tables, figures). It reads
MLflow (orchestrator/store/read.py) and writes to it (store/write.py) only when asked:
`cell_runs=True` keeps one parent run per cell above its seeds (seeds.py; `run` and `tables` do, unless `tables --no-cell-runs`), `attach_figures=True`
attaches each figure to the runs it comes from (`run` does, `tables` with --attach-figures).

Every set-up error (unknown format, output folder that is a file, no such store or
experiment) is raised as ResultsError before anything is written.
"""
from __future__ import annotations

import datetime
import pathlib
import sys
from typing import NamedTuple, Sequence

import pandas as pd

from orchestrator.results import ResultsError, figures, render, seeds, tables
from orchestrator.results.cells import Table, load_runs, select
from orchestrator.results.claims import Claim, check_claims, claims_markdown
from orchestrator.run.sweep import check_name, load_sweep
from orchestrator.store import NotInStore, read, write
from orchestrator.store.client import is_store_error
from trainer.config import TYPES as CONFIG_TYPES, Config
from trainer.forecast import forecast_configs

FORMATS = ("md", "latex", "csv")
# Which epoch of each run the tables use (tables --metric); DESIGN.md has our reading.
METRICS = {
    "final": "final-epoch metrics of FINISHED runs (the paper's protocol as we read it: it "
             "trains 200 epochs and has no validation split to pick an epoch on)",
    "best": "each FINISHED run's metrics at its best epoch (highest test accuracy): picked on "
            "the test set, so optimistic; the paper's protocol, as we read it, is the final epoch",
}


def report_markdown(names: list[str], runs: pd.DataFrame, built: dict[str, Table],
                    claims: list[Claim], figure_files: list[pathlib.Path], notes: dict[str, list[str]],
                    tracking_uri: str, metric: str = "final", left_out: pd.DataFrame | None = None) -> str:
    """The whole report: provenance, claims, tables, figures (paths relative to the report)."""
    status = runs["status"].value_counts().to_dict() if len(runs) else {}
    commits = sorted(set(runs["tags.git_commit"].dropna())) if "tags.git_commit" in runs else []
    lines = [f"# Reproduction report: {', '.join(names)}", "",
             f"Built {datetime.datetime.now().isoformat(timespec='seconds')} from MLflow "
             f"({tracking_uri}), experiments {names}: {len(runs)} runs "
             f"({', '.join(f'{n} {s}' for s, n in sorted(status.items())) or 'none'}); "
             f"git commits {', '.join(c[:10] for c in commits) or 'not tagged'}.",
             f"Paper values: orchestrator/results/paper.yaml. Ours: {METRICS[metric]}.",
             *left_out_lines(left_out),
             *superseded_markdown(built, runs),
             "", "## Claims", "", claims_markdown(claims) if claims else "No claim rests on the built tables.",
             "", "## Tables", ""]
    lines += [render.to_markdown(t) for t in built.values()]
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.name})\n" for p in sorted(set(figure_files))]
    lines += [f"- {k}: {n}" for k, ns in sorted(notes.items()) for n in ns]
    lines += ["", *memory_check_markdown(runs)]
    return "\n".join(lines) + "\n"


def left_out_lines(left_out: pd.DataFrame | None) -> list[str]:
    """One line per run the tables leave out, and why (cells.usable)."""
    if left_out is None or left_out.empty:
        return []
    lines = ["", f"Left out of every table and figure: {len(left_out)} run(s) whose params "
                 f"cannot be read:"]
    for _, run in left_out.iterrows():
        name = run.get("tags.mlflow.runName") or run["run_id"]
        lines.append(f"- {name} ({run['status']}, run {run['run_id']}): {run['left_out']}")
    return lines


def superseded_markdown(built: dict[str, Table], runs: pd.DataFrame) -> list[str]:
    """One line per run a table cell leaves out for a newer configuration of the same cell
    (an edited sweep: epochs 3 -> 5; cells.newest_configuration)."""
    found = {s for t in built.values() for row in t.rows for c in row.ours if c for s in c.superseded}
    if not found:
        return []
    names = runs.set_index("run_id")["tags.mlflow.runName"] if "tags.mlflow.runName" in runs else {}
    lines = ["", f"Left out of the tables: {len(found)} run(s) of an older configuration of their "
                 f"cell (the sweep was edited; each cell uses its newest configuration):"]
    for run_id, change in sorted(found, key=lambda s: (s[1], s[0])):
        name = names.get(run_id)
        lines.append(f"- {name if isinstance(name, str) and name else run_id} (run {run_id}): {change}")
    return lines


def memory_check_markdown(runs: pd.DataFrame) -> list[str]:
    """GPU memory forecast vs measured, per group configuration (the `group_shape` tag: a
    group's members and shapes): what `run` sized each share from, and what the group
    reached. Runs on a CPU measure nothing and are left out."""
    head = ["## GPU memory: forecast vs measured", ""]
    needed = {"tags.group_shape", "metrics.group_peak_memory_mb", "metrics.forecast_peak_mb"}
    if not needed <= set(runs.columns):
        return head + ["No run measured its group's GPU memory (runs on a CPU measure none)."]
    measured = runs.dropna(subset=sorted(needed))
    if measured.empty:
        return head + ["No run measured its group's GPU memory (runs on a CPU measure none)."]
    rows = ["| group (first member) | members | runs | forecast peak MB | measured peak MB | measured / forecast |",
            "|---|---:|---:|---:|---:|---:|"]
    for _, g in sorted(measured.groupby("tags.group_shape"), key=lambda kv: kv[1]["run_id"].iloc[0]):
        first = g.sort_values("tags.mlflow.runName")["tags.mlflow.runName"].iloc[0] \
            if "tags.mlflow.runName" in g else g["run_id"].iloc[0]
        size = g["tags.fused_group_size"].iloc[0] if "tags.fused_group_size" in g else "?"
        forecast, peak = g["metrics.forecast_peak_mb"].max(), g["metrics.group_peak_memory_mb"].max()
        rows.append(f"| {first} | {size} | {len(g)} | {forecast:,.0f} | {peak:,.0f} | {peak / forecast:.2f} |")
    return head + rows + ["", "A later `run` sizes a share from the larger of the two for a group of "
                              "the same shape."]


class Sources(NamedTuple):
    """What the sources of `tables` ask for.

    auto: some source (an experiment name, or a sweep without `reproduces:`) leaves it to
    the runs: build every table that has runs and every figure that has artifacts.
    uris: the sweep files' own `tracking_uri:` values (see sweep_tracking_uri).
    """
    names: list[str]            # MLflow experiment names
    wanted: set[str]            # artefacts asked for
    auto: bool
    uris: set[str]
    sweeps: list                # the sweep files among them, loaded (orchestrator.run.sweep.Sweep)


def resolve_sources(sources: list[str]) -> Sources:
    """Sweep files or experiment names -> Sources."""
    names, wanted, auto, uris, sweeps = [], set(), False, set(), []
    for source in sources:
        path = pathlib.Path(source)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            sweep = load_sweep(path)          # the same parsing and checks as `run`
            sweeps.append(sweep)
            names.append(sweep.name)
            wanted |= set(sweep.reproduces)
            auto |= not sweep.reproduces
            uris |= {sweep.tracking_uri} if sweep.tracking_uri else set()
        else:
            names.append(source)
            auto = True
    return Sources(names, wanted, auto, uris, sweeps)


def compute_from_code(sweeps: list, runs: pd.DataFrame, wanted: set[str], auto: bool) -> tables.Computed:
    """What the tables take from the code rather than from runs: Table 5's bytes, and the
    memory forecast of every profiled configuration (trials and runs with a memory
    timeline, at the paper's batch sizes 16 and 7) when the memory table is built."""
    from trainer.memory import table5_rows

    model_bytes = {r["model"]: (r["param_bytes"], r["buffer_bytes"])
                   for r in table5_rows() if r["image_size"] == 32}
    if not (auto or "memory_peaks" in wanted):
        return tables.Computed(model_bytes)
    configs = [t.config for sweep in sweeps for t in sweep.trials]
    configs += [{k[len("params."):]: v for k, v in run.items() if k.startswith("params.") and pd.notna(v)}
                for _, run in select(runs, memory_timeline=True).iterrows()]
    forecasts = {}
    for c in configs:
        c = Config.from_dict({k: v.item() if hasattr(v, "item") else v for k, v in c.items()
                              if k in CONFIG_TYPES}).to_dict()
        key = (c["arch"], c["batch_size"], c["width"] if c["arch"] == "bottleneck" else None)
        if c["memory_timeline"] and c["batch_size"] in (16, 7) and key not in forecasts:
            forecasts[key] = forecast_configs([c])
    return tables.Computed(model_bytes, forecasts)


def sweep_tracking_uri(sources: list[str]) -> str | None:
    """The `tracking_uri:` the sweep files among `sources` name (None: none does), for the
    caller to resolve as `run` does (resolve_tracking_uri)."""
    uris = resolve_sources(sources).uris
    if len(uris) > 1:
        raise ResultsError(f"the sweep files name different tracking URIs {sorted(uris)}; "
                           f"pass --tracking-uri to choose one")
    return next(iter(uris), None)


def update_cell_runs(runs: pd.DataFrame, parents: pd.DataFrame, tracking_uri: str) -> int:
    """Keep one MLflow parent run per cell above its seeds (results/seeds.py); returns how
    many were created or replaced (0: every cell's parent is up to date)."""
    writes = seeds.plan_writes(seeds.cell_groups(runs), parents)
    created = [w.cell for w in writes if w.keep is None]
    histories = read.metric_histories({r for c in created for r in c.finished},
                                      seeds.CELL_METRICS, tracking_uri)
    try:
        write.write_cell_runs(tracking_uri, writes, {(c.experiment_id, c.key): seeds.summarize_cell(c, histories)
                                                        for c in created})
    except Exception as err:   # MlflowException, sqlalchemy's OperationalError (read-only file), ...
        raise ResultsError(f"could not write the cells' parent runs to {tracking_uri} "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); pass "
                           f"--no-cell-runs to build the tables without writing to MLflow") from None
    return len(created)


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The table formats asked for; none, or an unknown one, is an error (not a silent skip)."""
    formats = tuple(formats)
    bad = sorted(set(formats) - set(render.RENDERERS))
    if bad:
        raise ResultsError(f"unknown table format(s) {bad}; choose from {sorted(render.RENDERERS)}, "
                           f"e.g. --format {','.join(FORMATS)}")
    if not formats:
        raise ResultsError(f"no table format given; pass --format with one or more of "
                           f"{sorted(render.RENDERERS)}, e.g. --format {','.join(FORMATS)}")
    return formats


def output_folder(out_dir: str | pathlib.Path | None, names: list[str]) -> pathlib.Path:
    """The folder to write into (default results/<experiment>[+<experiment>...]), not yet
    created; a file in its place (or in place of a parent) is an error."""
    if not out_dir:
        try:
            for name in names:
                check_name(name, "experiment name")
        except ValueError as err:
            raise ResultsError(f"{err}; or pass --out a folder for the results") from None
    out = pathlib.Path(out_dir) if out_dir else pathlib.Path("results") / "+".join(names)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ResultsError(f"output folder {out}: {blocking} is a file, not a folder; "
                           f"pass --out a folder (it is created if missing)")
    return out


def _write_tables(built: dict[str, Table], formats: tuple[str, ...], out: pathlib.Path,
                  ci: bool) -> list[pathlib.Path]:
    written = []
    for key, table in built.items():
        for fmt in formats:
            path = out / f"{key}{render.SUFFIX[fmt]}"
            path.write_text(render.RENDERERS[fmt](table, ci=ci))
            written.append(path)
    return written


def write_results(sources: list[str], tracking_uri: str, formats: Sequence[str] = FORMATS,
                  out_dir: str | pathlib.Path | None = None, attach_figures: bool = False,
                  cell_runs: bool = False, metric: str = "final", ci: bool = False) -> list[pathlib.Path]:
    """Render the sweeps' tables, figures and report.md from MLflow; print and return the files.

    sources: sweep YAML paths (experiment = its `name:`, artefacts = its `reproduces:`) or
        MLflow experiment names (artefacts = whatever the runs support).
    tracking_uri: the store to read, already resolved (see sweep_tracking_uri).
    out_dir: default results/<experiment>[+<experiment>...].
    attach_figures: also attach each figure to the runs it comes from (an MLflow write).
    cell_runs: also keep one parent run per cell above its seeds (an MLflow write).
    metric: "final" or "best" epoch of each run (METRICS); ci: 95% intervals in md/LaTeX.
    """
    formats = check_formats(formats)
    if metric not in METRICS:
        raise ResultsError(f"unknown --metric {metric!r}; choose {' or '.join(METRICS)}")
    names, wanted, auto, _, sweeps = resolve_sources(sources)
    out = output_folder(out_dir, names)
    runs, parents, left_out = load_runs(names, tracking_uri)
    if cell_runs:
        changed = update_cell_runs(runs, parents, tracking_uri)
        if changed:
            print(f"MLflow: {changed} cell run(s) written, one per configuration above its seeds")
    if metric == "best":
        finished = runs.loc[runs["status"] == "FINISHED", "run_id"] if len(runs) else []
        runs = seeds.at_best_epoch(runs, read.metric_histories(finished, seeds.CELL_METRICS,
                                                               tracking_uri))
    paper = tables.load_paper()
    computed = compute_from_code(sweeps, runs, wanted, auto)
    built = {key: make(runs, paper, computed) for key, make in tables.TABLES.items()}
    built = {k: t for k, t in built.items() if k in wanted or (auto and tables.supported(t))}
    for key in set(built) & set(tables.EPOCH_TABLES):
        built[key].notes.append(tables.EPOCH_NOTE[metric])
    out.mkdir(parents=True, exist_ok=True)
    written = _write_tables(built, formats, out, ci)
    fig_wanted = {a for a in figures.FIGURES if auto or a in wanted}
    pairs, notes, analyses = figures.make_figures(runs, out, tracking_uri, fig_wanted)
    notes = {k: v for k, v in notes.items() if k in wanted}   # silent about figures nobody asked for
    if attach_figures and pairs:
        write.log_figures(tracking_uri, pairs)
    pngs = sorted({p for _, p in pairs})
    report = out / "report.md"
    report.write_text(report_markdown(names, runs, built, check_claims(built, analyses), pngs, notes,
                                      tracking_uri, metric, left_out))
    written += pngs + [report]
    for path in written:
        print(path)
    return written


def tables_after_run(sweep, uri: str) -> int:
    """`run`'s last step: the sweep's tables and report, exactly as `tables` writes them,
    one parent run per cell above its seeds, and each figure attached to the runs it comes
    from. Returns `run`'s exit code for it: 0, 2 (a set-up error), 1 (not built: the runs
    are safe in MLflow, and the line says how to build the tables later)."""
    out = pathlib.Path("results") / sweep.name
    try:
        paths = write_results([str(sweep.path)], uri, out_dir=str(out), attach_figures=True,
                              cell_runs=True)
    except (ResultsError, NotInStore) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:   # the runs are safe in MLflow either way: the tables can wait
        what = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        if is_store_error(err):
            print(f"error: the tables were not built: the store did not answer ({what}); build them "
                  f"with `python -m orchestrator tables {sweep.path}` once {uri} answers", file=sys.stderr)
        else:
            print(f"error: the tables were not built: {what}. The runs are safe in MLflow; "
                  f"`python -m orchestrator tables {sweep.path}` shows the whole traceback (a bug "
                  f"in the tables: please report it with that)", file=sys.stderr)
        return 1
    print(f"tables and report: {out}/ ({len(paths)} files)")
    return 0
