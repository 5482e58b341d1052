"""Table cells from runs: the DataFrame `load_runs` returns, pooled into Cells.

Pure functions of the runs DataFrame (columns `run_id`, `status`, `start_time`,
`params.*` (cast by `prepare`), `metrics.*` (last logged value = final epoch), `tags.*`),
so tests build it by hand. The paper's tables (tables.py) are made of these:

    runs = load_runs(["table1"], tracking_uri).runs       # prepared DataFrame
    cell = summarize(runs, "test_accuracy", arch="bottleneck", batch_size=9, width=32)

A cell pools the FINISHED runs of one configuration (its seeds): mean ± sample std
(ddof=1) and n. Runs that differ in anything but the seed are never pooled: when a cell's
runs hold several configurations (an edited sweep: epochs 3 -> 5), the newest one (by
start time) is the cell and the others are `superseded`, listed in the report. A cell
without a value says why: not run, running, failed, killed, or which metric the finished
runs lack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from orchestrator.results.stats import mean_interval
from orchestrator.store import TRIAL_KEY_TAG
from trainer.config import DATASET_CLASSES, DEFAULTS, NOT_EXPERIMENT, TYPES as CONFIG_TYPES, Config

# Why a FINISHED run has no value for a metric.
MISSING_METRIC = {
    "peak_memory_mb": "needs CUDA: a CPU run",
    "dynamic_peak_memory_mb": "needs CUDA: a CPU run",
    "total_peak_memory_mb": "needs CUDA: a CPU run",
    "forward_peak_memory_mb": "needs CUDA: a CPU run",
}
STATUS_REASON = {"RUNNING": "running", "SCHEDULED": "running", "FAILED": "failed", "KILLED": "killed"}
REASON_ORDER = ["running", "failed", "killed"]   # then missing-metric reasons


class Loaded(NamedTuple):
    """The runs of a sweep's experiments as the tables take them."""
    runs: pd.DataFrame        # trial runs, prepared, each one the tables may use
    parents: pd.DataFrame     # the cells' parent runs (results/seeds.py), unprepared
    left_out: pd.DataFrame    # trial runs with a param that cannot be read, and why (usable)


def load_runs(experiment_names: list[str], tracking_uri: str) -> Loaded:
    """The named experiments' runs from MLflow (orchestrator/store/read.py), prepared."""
    from orchestrator.store import read

    runs, parents = read.experiment_runs(experiment_names, tracking_uri)
    ok, odd = usable(prepare(runs))
    return Loaded(ok, parents, odd)


def usable(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prepared runs split into those the tables may use and those left out (`left_out`
    says why: a param that is no number, NaN or infinite, e.g. a run of an older version
    that accepted lr=nan). A left-out run is listed in the report, never pooled."""
    if "left_out" not in runs:
        return runs, runs.iloc[0:0]
    odd = runs["left_out"].notna()
    return runs[~odd], runs[odd]


def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Cast `params.*` (MLflow strings) to the Config field types; add derived columns.

    A param that cannot be read as its type (or is not finite) becomes NA, and the run's
    `left_out` column says which (see `usable`); reading never fails on one odd run.

    Adds `classes` (10/100, whatever the dataset is called),
    `metrics.model_total_bytes` (= parameter + buffer bytes, Table 5) and
    `metrics.total_peak_memory_mb` (model + dynamic peak: section 4.4's "total peak", which
    leaves out the dataset the trainer keeps on the GPU). Keeps only the latest run of each
    `tags.trial_key` (by start_time), so a retried trial counts once.
    """
    runs = runs.copy()
    odd = pd.Series(None, index=runs.index, dtype=object)
    for name, kind in CONFIG_TYPES.items():
        col = f"params.{name}"
        if col not in runs:
            continue
        raw = runs[col]
        if kind is bool:
            parsed = raw.map({"True": True, "False": False, True: True, False: False})
            bad = raw.notna() & parsed.isna()
            runs[col] = parsed.astype("boolean")
        elif kind in (int, float):
            parsed = pd.to_numeric(raw, errors="coerce").astype("float64")
            bad = raw.notna() & ~np.isfinite(parsed)
            runs[col] = parsed.where(~bad).astype("Int64" if kind is int else "float64")
        else:
            continue
        first = bad & odd.isna()
        odd[first] = [f"{name}={v!r} is not a {'finite number' if kind is not bool else 'bool'}"
                      for v in raw[first]]
    runs["left_out"] = odd
    dataset = runs.get("params.dataset", pd.Series(index=runs.index, dtype=object))
    # A run that did not log synthetic_classes used the Config default.
    synthetic = runs.get("params.synthetic_classes", pd.Series(pd.NA, index=runs.index, dtype="Int64"))
    synthetic = synthetic.astype("Int64").fillna(Config.synthetic_classes)
    classes = dataset.map(DATASET_CLASSES).astype("Int64")
    runs["classes"] = classes.where(dataset != "synthetic", synthetic).astype("Int64")
    if "metrics.model_param_bytes" in runs and "metrics.model_buffer_bytes" in runs:
        runs["metrics.model_total_bytes"] = runs["metrics.model_param_bytes"] + runs["metrics.model_buffer_bytes"]
        if "metrics.dynamic_peak_memory_mb" in runs:
            runs["metrics.total_peak_memory_mb"] = (runs["metrics.dynamic_peak_memory_mb"]
                                                    + runs["metrics.model_total_bytes"] / 2 ** 20)
    key = f"tags.{TRIAL_KEY_TAG}"
    if key in runs and len(runs):
        order = runs.sort_values("start_time") if "start_time" in runs else runs
        keyed = order[order[key].notna()].drop_duplicates(key, keep="last")
        runs = pd.concat([keyed, order[order[key].isna()]]).sort_index()
    return runs


@dataclass(frozen=True)
class Cell:
    """Our value for one table cell: the runs of one configuration pooled."""
    mean: float | None = None      # None: no finished run has the metric (see `reason`)
    std: float | None = None       # sample std over runs (ddof=1); None when n < 2
    n: int = 0                     # finished runs with the metric
    reason: str = ""               # n == 0: why ("not run", "running", ...); n > 0: "1 running"...
    superseded: tuple = ()         # (run_id, "epochs 3 -> 5"): runs of an older configuration left out
    runs: tuple[str, ...] = ()     # run_ids pooled
    source: str = ""               # "": pooled runs; else the code that computes it ("forecast", ...)

    @property
    def ci95(self) -> tuple[float, float] | None:
        """95% Student-t interval of the mean over the pooled runs (None: n < 2, or computed)."""
        return None if self.source else mean_interval(self.mean, self.std, self.n)

    def contains(self, value: float | None) -> bool | None:
        """Whether `value` (the paper's) lies inside ci95 (None: no interval or no value)."""
        ci = self.ci95
        return None if ci is None or value is None else ci[0] <= value <= ci[1]


def from_code(value: float, source: str) -> Cell:
    """A value that comes from the code, not from runs (a memory forecast, a model's bytes)."""
    return Cell(mean=float(value), n=1, source=source)


def select(runs: pd.DataFrame, **where) -> pd.DataFrame:
    """Runs whose param (or `classes`) equals each given value; absent column = no match."""
    mask = pd.Series(True, index=runs.index)
    for key, value in where.items():
        col = key if key == "classes" else f"params.{key}"
        if col not in runs:
            return runs.iloc[0:0]
        mask &= (runs[col] == value).fillna(False).astype(bool)
    return runs[mask]


def summarize(runs: pd.DataFrame, metric: str, pooled: tuple[str, ...] = (), **where) -> Cell:
    """Pool the runs matching `where` for `metric` (the last logged value) into a Cell.

    pooled: config fields expected to vary inside the cell (besides the seed); any other
    field that differs splits the runs, and only the newest configuration is pooled
    (`newest_configuration`).
    """
    match = select(runs, **where)
    if match.empty:
        return Cell(reason="not run")
    match, superseded = newest_configuration(match, NOT_EXPERIMENT | set(where) | set(pooled) | {"seed"})
    col = f"metrics.{metric}"
    values = match[col] if col in match else pd.Series(float("nan"), index=match.index)
    ok = (match["status"] == "FINISHED") & values.notna()
    why = [STATUS_REASON.get(s, MISSING_METRIC.get(metric, f"no {metric} logged"))
           for s in match.loc[~ok, "status"]]
    counts = {r: why.count(r) for r in REASON_ORDER + sorted(set(why) - set(REASON_ORDER)) if r in why}
    n = int(ok.sum())
    if n == 0 and len(counts) == 1:
        reason = next(iter(counts))
    else:
        reason = ", ".join(f"{c} {r}" for r, c in counts.items())
    used = match[ok]
    v = values[ok].astype(float)
    return Cell(mean=float(v.mean()) if n else None, std=float(v.std(ddof=1)) if n >= 2 else None,
                n=n, reason=reason, superseded=superseded, runs=tuple(used["run_id"]))


def newest_configuration(match: pd.DataFrame, skip: set) -> tuple[pd.DataFrame, tuple]:
    """The runs of `match` (one table cell) of its newest configuration, the config fields
    outside `skip` (a param a run lacks counts as the field's default), and the others as
    (run_id, what changed: "epochs 3 -> 5"). The newest is the one whose latest run started
    last, whatever its status: an edited sweep's cell waits for its new runs."""
    fields = [f"params.{n}" for n in CONFIG_TYPES if n not in skip and f"params.{n}" in match]
    if len(match) < 2 or not fields:
        return match, ()
    configs = match[fields].astype(object).apply(
        lambda col: col.where(col.notna(), DEFAULTS[col.name[len("params."):]]).astype(str))
    ids = configs.agg("\x1f".join, axis=1)
    if ids.nunique() == 1:
        return match, ()
    started = match["start_time"] if "start_time" in match else pd.Series(range(len(match)), index=match.index)
    newest = started.groupby(ids).max().idxmax()
    keep = ids == newest
    current = configs[keep].iloc[0]
    left = tuple((run_id, ", ".join(f"{f[len('params.'):]} {old[f]} -> {current[f]}"
                                    for f in fields if old[f] != current[f]))
                 for run_id, (_, old) in zip(match.loc[~keep, "run_id"], configs[~keep].iterrows()))
    return match[keep], left


@dataclass
class Row:
    key: tuple                      # what claims look the row up by, e.g. (9, True)
    label: str                      # "With regularizer"
    ours: list[Cell | None]         # one per column; None = not applicable to this row
    paper: list[float | None]       # the published value; None = the paper gives none
    group: str = ""                 # section heading inside the table ("Mini-batch size = 9")
    compare: bool = True            # competes for bold within its group and column


@dataclass
class Table:
    key: str                        # "table1"
    title: str                      # "Table 1: ..."
    columns: list[str]              # column labels, paper order ("W=32", ...)
    col_keys: list                  # what claims look columns up by (32, 16, 8)
    rows: list[Row]
    better: dict[str, str]          # group -> "higher" | "lower" | "" (no bold)
    number: str = "{:.2f}"          # format of one value
    show_std: bool = True
    noise: bool = True              # False: values carry no seed noise (memory); compared exactly
    notes: list[str] = field(default_factory=list)

    def get(self, row_key: tuple, col_key) -> tuple[Cell | None, float | None]:
        """(ours, paper) at a row key and column key."""
        row = next(r for r in self.rows if r.key == row_key)
        j = self.col_keys.index(col_key)
        return row.ours[j], row.paper[j]

    def bold(self) -> tuple[list[list[bool]], list[list[bool]]]:
        """Per row and column, whether ours / the paper's value is the group's best."""
        ours = [[False] * len(self.columns) for _ in self.rows]
        paper = [[False] * len(self.columns) for _ in self.rows]
        for group, better in self.better.items():
            if not better:
                continue
            pick = max if better == "higher" else min
            idx = [i for i, r in enumerate(self.rows) if r.group == group and r.compare]
            for j in range(len(self.columns)):
                for marks, value in ((ours, lambda r: r.ours[j].mean if r.ours[j] else None),
                                     (paper, lambda r: r.paper[j])):
                    have = {i: value(self.rows[i]) for i in idx if value(self.rows[i]) is not None}
                    if len(have) >= 2:
                        best = pick(have.values())
                        for i, v in have.items():
                            marks[i][j] = v == best
        return ours, paper

