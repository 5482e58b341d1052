"""Seeds as one result: each cell (a configuration without its seed) summarized over its
FINISHED seed runs, per epoch and at each run's best epoch. Pure functions of the runs
DataFrame (cells.load_runs) and the runs' metric histories (store/read.metric_histories).

    groups = cell_groups(runs)                    # CellSeeds per (experiment, cell key)
    writes = plan_writes(groups, parents)         # what to create, re-nest, delete in MLflow
    summary = summarize_cell(group, histories)    # per-epoch mean/std/n, best-epoch values

`run` and `tables` keep one MLflow parent run per cell (orchestrator/store/write.py
write_cell_runs), nested above its seeds with MLflow's `mlflow.parentRunId` tag, so the
UI's runs table shows one expandable row per cell and its charts plot the mean curves.
MLflow's metric history is append-only: a parent whose FINISHED seeds changed (a seed
added or finished later) is replaced by a new one, and the old one deleted, so each cell
has exactly one (active) parent run; a rerun with nothing new writes nothing.
"""
from __future__ import annotations

import hashlib
import math
import re
import statistics
from dataclasses import dataclass

import pandas as pd

from orchestrator.run.sweep import cell_key
from orchestrator.store import CELL_TAG, DIGEST_TAG, PARENT_TAG
from trainer.config import DEFAULTS, EXPERIMENT

# Per-epoch metrics a cell summarizes (what the trainer logs each evaluated epoch).
CELL_METRICS = ("test_accuracy", "train_accuracy", "generalization_gap", "train_loss")
BEST_BY = "test_accuracy"       # a run's best epoch: its highest test accuracy (first on ties)


@dataclass(frozen=True)
class CellSeeds:
    """The seed runs of one cell in one experiment, as the runs DataFrame has them."""
    experiment_id: str
    key: str                     # sweep.cell_key of the runs' params
    name: str                    # the seeds' run name without its "-s<seed>" ending
    params: dict                 # the cell's experiment fields, as the seeds logged them
    seeds: tuple[str, ...]       # run ids of every seed run (any status), oldest first
    finished: tuple[str, ...]    # those FINISHED: what the summary averages
    names: tuple[str, ...]       # run names of `seeds`
    parents: tuple               # each seed's current mlflow.parentRunId (None: not nested)
    digest: str                  # of `finished` and their last epochs


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None            # sample std (ddof=1); None when n < 2
    n: int


@dataclass(frozen=True)
class CellSummary:
    cell: CellSeeds
    curves: dict[str, dict[int, Stat]]   # metric -> epoch -> over the seeds that logged it
    best: dict[str, Stat]                # metric at each seed's best epoch
    best_epoch: Stat

    def metrics(self) -> list[tuple[str, float, int]]:
        """(key, value, step) to log on the parent run: `<metric>_mean|_std|_n` at each
        epoch (step = epoch), `best_<metric>_mean|_std`, `best_epoch_mean` and `seeds` at
        the last epoch."""
        out = []
        for metric, by_epoch in self.curves.items():
            for epoch, s in sorted(by_epoch.items()):
                out += [(f"{metric}_mean", s.mean, epoch), (f"{metric}_n", float(s.n), epoch)]
                if s.std is not None:
                    out.append((f"{metric}_std", s.std, epoch))
        last = max((e for c in self.curves.values() for e in c), default=0)
        for name, s in [*((f"best_{m}", s) for m, s in self.best.items()), ("best_epoch", self.best_epoch)]:
            out.append((f"{name}_mean", s.mean, last))
            if s.std is not None:
                out.append((f"{name}_std", s.std, last))
        out.append(("seeds", float(len(self.cell.finished)), last))
        return out


def stat(values) -> Stat:
    """Mean, sample std and n of the values that are not NaN (plain Python: a cell of 200
    epochs x 4 metrics makes 800 of these)."""
    v = [float(x) for x in values if not math.isnan(x)]
    if not v:
        return Stat(float("nan"), None, 0)
    return Stat(statistics.fmean(v), statistics.stdev(v) if len(v) >= 2 else None, len(v))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def run_cell_keys(runs: pd.DataFrame) -> pd.Series:
    """Each run's cell key, from its params (a param it did not log is the default)."""
    def key(row) -> str:
        config = {}
        for name in EXPERIMENT:
            value = row.get(f"params.{name}")
            config[name] = DEFAULTS[name] if value is None or pd.isna(value) else _plain(value)
        return cell_key(config)
    return runs.apply(key, axis=1) if len(runs) else pd.Series(dtype=str)


def cell_groups(runs: pd.DataFrame) -> list[CellSeeds]:
    """The cells of `runs` (trial runs, not parents) that have at least one FINISHED seed."""
    if runs.empty:
        return []
    runs = runs.assign(_cell=run_cell_keys(runs)).sort_values("start_time", kind="stable")
    out = []
    for (exp, key), g in runs.groupby(["experiment_id", "_cell"], sort=False):
        done = g[g["status"] == "FINISHED"]
        if done.empty:
            continue
        names = tuple(str(n) for n in g.get("tags.mlflow.runName", g["run_id"]))
        epochs = done.get("metrics.last_epoch", pd.Series(0, index=done.index)).fillna(0)
        digest = hashlib.sha256(",".join(f"{r}:{int(e)}" for r, e in
                                         sorted(zip(done["run_id"], epochs))).encode()).hexdigest()[:12]
        first = done.iloc[0]
        params = {n: str(_plain(first[f"params.{n}"])) for n in sorted(EXPERIMENT)
                  if f"params.{n}" in first and pd.notna(first[f"params.{n}"])}
        parents = g.get(f"tags.{PARENT_TAG}", pd.Series(None, index=g.index))
        out.append(CellSeeds(str(exp), key, re.sub(r"-s\d+$", "", names[0]), params,
                             tuple(g["run_id"]), tuple(done["run_id"]), names,
                             tuple(None if pd.isna(p) else p for p in parents), digest))
    return out


@dataclass(frozen=True)
class CellWrite:
    """What MLflow needs for one cell: a parent to create (or the one kept), the seeds to
    nest under it, the stale parents to delete."""
    cell: CellSeeds
    keep: str | None             # the parent run kept as it is; None: create a new one
    delete: tuple[str, ...]      # stale or duplicate parent runs of the cell


def plan_writes(groups: list[CellSeeds], parents: pd.DataFrame) -> list[CellWrite]:
    """Compare each cell with its existing parent runs (cells.load_runs: the experiments' runs that
    carry the cell tag): keep one whose digest matches (delete any duplicates), else
    replace them all. Cells with nothing to change are left out."""
    out = []
    for g in groups:
        keep, delete = None, ()
        if f"tags.{CELL_TAG}" in parents:
            mine = parents[(parents["experiment_id"] == g.experiment_id)
                           & (parents[f"tags.{CELL_TAG}"] == g.key)].sort_values("start_time", kind="stable")
            current = mine[mine.get(f"tags.{DIGEST_TAG}", pd.Series(index=mine.index)) == g.digest]
            keep = current["run_id"].iloc[0] if len(current) else None
            delete = tuple(r for r in mine["run_id"] if r != keep)
        if keep is not None and not delete and all(p == keep for p in g.parents):
            continue
        out.append(CellWrite(g, keep, delete))
    return out


def best_epochs(history: dict[str, dict[int, float]]) -> int | None:
    """A run's best epoch: the one with the highest test accuracy (the first on ties)."""
    acc = history.get(BEST_BY, {})
    finite = {e: v for e, v in acc.items() if not math.isnan(v)}
    return min(finite, key=lambda e: (-finite[e], e)) if finite else None


def summarize_cell(cell: CellSeeds, histories: dict[str, dict[str, dict[int, float]]]) -> CellSummary:
    """Per epoch, the mean, std and n of each CELL_METRICS over the FINISHED seeds that
    logged it; and each metric at every seed's best epoch.

    histories: run id -> metric -> epoch -> value (store/read.metric_histories).
    """
    curves = {}
    for metric in CELL_METRICS:
        epochs = sorted({e for r in cell.finished for e in histories.get(r, {}).get(metric, {})})
        if epochs:
            curves[metric] = {e: stat(histories[r][metric][e] for r in cell.finished
                                      if e in histories.get(r, {}).get(metric, {})) for e in epochs}
    best_of = {r: best_epochs(histories.get(r, {})) for r in cell.finished}
    chosen = {r: e for r, e in best_of.items() if e is not None}
    best = {m: stat(histories[r].get(m, {}).get(e, float("nan")) for r, e in chosen.items())
            for m in CELL_METRICS if any(m in histories[r] for r in chosen)}
    return CellSummary(cell, curves, best, stat(chosen.values()))


def at_best_epoch(runs: pd.DataFrame, histories: dict[str, dict[str, dict[int, float]]]) -> pd.DataFrame:
    """`runs` with each per-epoch metric (CELL_METRICS) replaced by its value at the run's
    best epoch (`tables --metric best`), and `metrics.best_epoch` added. A run without a
    test accuracy history keeps its final values."""
    runs = runs.copy()
    for metric in CELL_METRICS + ("best_epoch",):
        if f"metrics.{metric}" not in runs:
            runs[f"metrics.{metric}"] = float("nan")
    for i, run_id in runs["run_id"].items():
        history = histories.get(run_id, {})
        epoch = best_epochs(history)
        if epoch is None:
            continue
        runs.at[i, "metrics.best_epoch"] = float(epoch)
        for metric in CELL_METRICS:
            runs.at[i, f"metrics.{metric}"] = history.get(metric, {}).get(epoch, float("nan"))
    return runs
