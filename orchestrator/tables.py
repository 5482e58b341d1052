"""The paper's tables rebuilt from MLflow, ours beside theirs.

MLflow is read here and nowhere else for results (`load_runs`, `load_artifact_json`).
Everything after that is a pure function of the runs DataFrame that `mlflow.search_runs`
returns (columns `run_id`, `status`, `start_time`, `params.*` (cast by `prepare`),
`metrics.*` (last logged value = final epoch), `tags.*`):

    runs = load_runs(["table1"], tracking_uri)            # prepared DataFrame
    table = TABLES["table1"](runs, load_paper())          # -> Table (cells, paper values, bold)
    render.to_markdown(table)                             # orchestrator/render.py

A cell pools the FINISHED runs of one configuration (usually the seeds): mean ± sample
std (ddof=1) and n. A cell without a value says why: not run, running, failed, killed,
or which metric the finished runs lack.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import tempfile
import typing
from dataclasses import dataclass, field

import pandas as pd
import yaml

from trainer.config import DATASET_CLASSES, NOT_EXPERIMENT, TYPES as CONFIG_TYPES, Config

PAPER_PATH = pathlib.Path(__file__).with_name("paper.yaml")
# The paper's training setup (section 4.2); runs that differ are flagged under each table.
PAPER_SETUP = {"epochs": 200, "lr": 0.01, "vgg_width_divisor": 1, "train_samples": 0,
               "test_samples": 0}
# Why a FINISHED run has no value for a metric.
MISSING_METRIC = {
    "peak_memory_mb": "not measured: CUDA only, CPU run",
    "dynamic_peak_memory_mb": "not measured: CUDA only, CPU run",
    "forward_peak_memory_mb": "not logged by the trainer",
}
STATUS_REASON = {"RUNNING": "running", "SCHEDULED": "running", "FAILED": "failed", "KILLED": "killed"}
REASON_ORDER = ["running", "failed", "killed"]   # then missing-metric reasons


# ----------------------------------------------------------------------------- reading MLflow
@contextlib.contextmanager
def _tracking(tracking_uri: str | None):
    """Point the mlflow fluent API at `tracking_uri` for the block, then restore."""
    import mlflow
    before = mlflow.get_tracking_uri()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before)


def load_runs(experiment_names: list[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """All runs of the named experiments (one per sweep), params cast to Config types.

    tracking_uri: None uses MLflow's default (MLFLOW_TRACKING_URI, else ./mlflow.db).
    Adds the column `experiment` (the experiment's name). Unknown names raise ValueError
    listing the experiments the store holds.
    """
    with _tracking(tracking_uri) as mlflow:
        known = {e.name: e.experiment_id for e in mlflow.search_experiments()}
        missing = [n for n in experiment_names if n not in known]
        if missing:
            raise ValueError(
                f"no MLflow experiment named {missing} at tracking URI {mlflow.get_tracking_uri()!r}; "
                f"it holds {sorted(known)}. Pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the "
                f"store the sweep logged to, e.g. sqlite:///path/to/mlflow.db")
        runs = mlflow.search_runs(experiment_ids=[known[n] for n in experiment_names],
                                  output_format="pandas")
    names = {v: k for k, v in known.items()}
    runs["experiment"] = runs["experiment_id"].map(names) if len(runs) else pd.Series(dtype=str)
    return prepare(runs)


def load_artifact_json(run_id: str, artifact_path: str, tracking_uri: str | None = None) -> dict | None:
    """A run's JSON artifact (e.g. `memory_timeline.json`), or None if the run has none."""
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if artifact_path not in {f.path for f in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, artifact_path, tmp)
        return json.loads(pathlib.Path(local).read_text())


def load_paper(path: str | pathlib.Path = PAPER_PATH) -> dict:
    """The published numbers (orchestrator/paper.yaml)."""
    return yaml.safe_load(pathlib.Path(path).read_text())


# ----------------------------------------------------------------------------- pure from here
def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Cast `params.*` (MLflow strings) to the Config field types; add derived columns.

    Adds `classes` (10/100, whatever the dataset is called) and
    `metrics.model_total_bytes` (= parameter + buffer bytes, Table 5). Keeps only the
    latest run of each `tags.trial_key` (by start_time), so a retried trial counts once.
    """
    runs = runs.copy()
    for name, kind in CONFIG_TYPES.items():
        col = f"params.{name}"
        if col not in runs:
            continue
        raw = runs[col]
        if kind is bool:
            runs[col] = raw.map({"True": True, "False": False, True: True, False: False}).astype("boolean")
        elif kind is int:
            runs[col] = pd.to_numeric(raw).astype("Int64")
        elif kind is float:
            runs[col] = pd.to_numeric(raw).astype("float64")
    dataset = runs.get("params.dataset", pd.Series(index=runs.index, dtype=object))
    # A run that did not log synthetic_classes used the Config default.
    synthetic = runs.get("params.synthetic_classes", pd.Series(pd.NA, index=runs.index, dtype="Int64"))
    synthetic = synthetic.astype("Int64").fillna(Config.synthetic_classes)
    classes = dataset.map(DATASET_CLASSES).astype("Int64")
    runs["classes"] = classes.where(dataset != "synthetic", synthetic).astype("Int64")
    if "metrics.model_param_bytes" in runs and "metrics.model_buffer_bytes" in runs:
        runs["metrics.model_total_bytes"] = runs["metrics.model_param_bytes"] + runs["metrics.model_buffer_bytes"]
    if "tags.trial_key" in runs and len(runs):
        order = runs.sort_values("start_time") if "start_time" in runs else runs
        keyed = order[order["tags.trial_key"].notna()].drop_duplicates("tags.trial_key", keep="last")
        runs = pd.concat([keyed, order[order["tags.trial_key"].isna()]]).sort_index()
    return runs


@dataclass(frozen=True)
class Cell:
    """Our value for one table cell: the runs of one configuration pooled."""
    mean: float | None = None      # None: no finished run has the metric (see `reason`)
    std: float | None = None       # sample std over runs (ddof=1); None when n < 2
    n: int = 0                     # finished runs with the metric
    reason: str = ""               # n == 0: why ("not run", "running", ...); n > 0: "1 running"...
    mixed: tuple[str, ...] = ()    # config fields that differ between the pooled runs
    runs: tuple[str, ...] = ()     # run_ids pooled


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

    pooled: config fields expected to vary inside the cell (besides the seed) that are
    therefore not reported as `mixed`.
    """
    match = select(runs, **where)
    if match.empty:
        return Cell(reason="not run")
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
    skip = NOT_EXPERIMENT | set(where) | set(pooled)
    mixed = tuple(name for name in CONFIG_TYPES if name not in skip and f"params.{name}" in used
                  and used[f"params.{name}"].nunique(dropna=False) > 1)
    v = values[ok].astype(float)
    return Cell(mean=float(v.mean()) if n else None, std=float(v.std(ddof=1)) if n >= 2 else None,
                n=n, reason=reason, mixed=mixed, runs=tuple(used["run_id"]))


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


def _notes(table: Table, runs: pd.DataFrame, dataset: str) -> Table:
    """Say under the table where our runs differ from the paper's setup or pool mixed configs."""
    ids = {rid for row in table.rows for c in row.ours if c for rid in c.runs}
    used = runs[runs["run_id"].isin(ids)]
    setup = dict(PAPER_SETUP, dataset=dataset)
    for name, paper_value in setup.items():
        col = f"params.{name}"
        if col in used:
            ours = sorted({str(v) for v in used[col].dropna() if v != paper_value})
            if ours:
                shown = "the whole set" if name.endswith("_samples") else paper_value  # 0 = all
                table.notes.append(f"ours use {name}={', '.join(ours)} (paper: {shown})")
    mixed = sorted({m for row in table.rows for c in row.ours if c for m in c.mixed})
    if mixed:
        table.notes.append(f"some cells pool runs that differ in {', '.join(mixed)}")
    return table


WIDTHS = [32, 16, 8]
METHODS = [(False, "Without regularizer"), (True, "With regularizer")]


def table_cifar10(runs: pd.DataFrame, paper: dict, which: str) -> Table:
    """Tables 1 (test accuracy, higher better) and 2 (generalization gap, lower better).

    Rows: the paper's batch sizes 9, 7, 5, then any other batch size our runs have (e.g.
    the smoke sweep's), with no paper value.
    """
    spec = paper[which]
    metric = spec["metric"]
    published = {(e["batch_size"], e["regularizer"]): e["width"] for e in spec["values"]}
    ran = select(runs, arch="bottleneck", classes=10)
    ours_only = sorted({int(b) for b in ran.get("params.batch_size", pd.Series()).dropna()}
                       - {b for b, _ in published}, reverse=True)
    keys = list(published) + [(b, reg) for b in ours_only for reg, _ in METHODS]
    rows = []
    for b, reg in keys:
        ours = [summarize(runs, metric, arch="bottleneck", classes=10, batch_size=b, width=w,
                          regularizer=reg) for w in WIDTHS]
        paper_row = published.get((b, reg), {})
        rows.append(Row((b, reg), dict(METHODS)[reg], ours, [paper_row.get(w) for w in WIDTHS],
                        group=f"Mini-batch size = {b}" + ("" if paper_row else " (not in the paper)")))
    better = "higher" if metric == "test_accuracy" else "lower"
    title = {"table1": "Table 1: CIFAR-10 test accuracy (%, higher is better)",
             "table2": "Table 2: CIFAR-10 generalization error, train - test accuracy (%, lower is better)"}[which]
    table = Table(which, title, [f"W={w}" for w in WIDTHS], WIDTHS, rows,
                  {r.group: better for r in rows})
    return _notes(table, runs, spec["dataset"])


def table3(runs: pd.DataFrame, paper: dict) -> Table:
    """Table 3: vanilla VGG16 on CIFAR-10 by mini-batch size, accuracy and gap."""
    spec = paper["table3"]
    batches = list(spec["test_accuracy"])
    rows = [Row((metric,), "VGG16", [summarize(runs, metric, arch="vgg16", classes=10, batch_size=b)
                                     for b in batches],
                [spec[metric][b] for b in batches], group=group)
            for metric, group in (("test_accuracy", "Classification performance (%)"),
                                  ("generalization_gap", "Generalization error (%)"))]
    table = Table("table3", "Table 3: vanilla VGG16 on CIFAR-10 by mini-batch size",
                  [f"batch {b}" for b in batches], batches, rows, {r.group: "" for r in rows})
    return _notes(table, runs, spec["dataset"])


def table4(runs: pd.DataFrame, paper: dict) -> Table:
    """Table 4: CIFAR-100, batch 5, by W; plus the vanilla VGG16 batch-5 baseline (text)."""
    spec = paper["table4"]
    b = spec["batch_size"]
    rows, better = [], {}
    for metric, group, direction in (("test_accuracy", "Classification performance (%)", "higher"),
                                     ("generalization_gap", "Generalization error (%)", "lower")):
        for entry in spec[metric]:
            reg = entry["regularizer"]
            ours = [summarize(runs, metric, arch="bottleneck", classes=100, batch_size=b, width=w,
                              regularizer=reg) for w in WIDTHS]
            rows.append(Row((metric, reg), dict(METHODS)[reg], ours,
                            [entry["width"][w] for w in WIDTHS], group=group))
        # The baseline has no W: one value, shown in the first column only.
        base = summarize(runs, metric, arch="vgg16", classes=100, batch_size=b)
        rows.append(Row((metric, "vgg16"), f"Vanilla VGG16 (batch {b}, no W)", [base, None, None],
                        [spec["vanilla_vgg16_batch5"][metric], None, None], group=group, compare=False))
        better[group] = direction
    table = Table("table4", f"Table 4: CIFAR-100, mini-batch size {b}",
                  [f"W={w}" for w in WIDTHS], WIDTHS, rows, better)
    return _notes(table, runs, spec["dataset"])


def table5(runs: pd.DataFrame, paper: dict) -> Table:
    """Table 5: model memory in bytes (float32 parameters, resident buffers, total)."""
    spec = paper["table5"]
    models = [("vgg16", dict(arch="vgg16"))] + [(w, dict(arch="bottleneck", width=w)) for w in WIDTHS]
    names = {"vgg16": "vgg16", 32: "bottleneck_w32", 16: "bottleneck_w16", 8: "bottleneck_w8"}
    rows = []
    for part, paper_key, label in (("param", "parameters", "Model parameters"),
                                   ("buffer", "buffers", "Resident buffers"),
                                   ("total", "total", "Total")):
        # Bytes do not depend on batch size or regularizer: pool every 10-class run of a model.
        ours = [summarize(runs, f"model_{part}_bytes", pooled=("batch_size", "regularizer"),
                          classes=10, **where) for _, where in models]
        rows.append(Row((part,), label, ours, [spec[names[m]][paper_key] for m, _ in models]))
    table = Table("table5", "Table 5: model-related memory (bytes)",
                  ["VGG16"] + [f"W={w}" for w in WIDTHS], [m for m, _ in models], rows, {"": ""},
                  number="{:,.0f}", show_std=False)
    return _notes(table, runs, "cifar10")


def memory_peaks(runs: pd.DataFrame, paper: dict) -> Table:
    """Section 4.4: peak dynamic and forward-pass memory (MB) over one epoch, batch 16 and 7.

    Paper "peak" = our `dynamic_peak_memory_mb` (peak minus model memory); our total
    `peak_memory_mb` is shown too (the paper gives none). Bottleneck rows split by W
    only when the runs hold several widths (the paper does not say which W it profiled).
    """
    spec = paper["memory_peaks"]
    rows = []
    for arch, label in (("vgg16", "VGG16"), ("bottleneck", "Bottleneck")):
        for b in (16, 7):
            present = select(runs, arch=arch, batch_size=b)
            widths = []
            if arch == "bottleneck" and "params.width" in present:
                widths = sorted({int(w) for w in present["params.width"].dropna()}, reverse=True)
            for w in (widths if len(widths) > 1 else [None]):
                where = dict(arch=arch, batch_size=b, **({"width": w} if w else {}))
                pooled = ("width", "regularizer", "dataset", "synthetic_classes")
                ours = [summarize(runs, m, pooled=pooled, **where)
                        for m in ("dynamic_peak_memory_mb", "forward_peak_memory_mb", "peak_memory_mb")]
                ref = spec[arch][f"batch_{b}"]
                rows.append(Row((arch, b, w), f"{label}{f' W={w}' if w else ''}, batch {b}", ours,
                                [ref["peak"], ref["forward_peak"], None]))
    table = Table("memory_peaks", "Section 4.4: GPU memory over one training epoch (MB)",
                  ["Peak dynamic", "Forward-pass peak dynamic", "Peak total"],
                  ["dynamic_peak", "forward_peak", "total_peak"], rows, {"": ""},
                  number="{:,.0f}", show_std=True)
    table.notes.append(spec["note"])
    return table


TABLES: dict[str, typing.Callable[[pd.DataFrame, dict], Table]] = {
    "table1": lambda runs, paper: table_cifar10(runs, paper, "table1"),
    "table2": lambda runs, paper: table_cifar10(runs, paper, "table2"),
    "table3": table3,
    "table4": table4,
    "table5": table5,
    "memory_peaks": memory_peaks,
}


def supported(table: Table) -> bool:
    """Whether any cell of the table rests on at least one run (of any status)."""
    return any(c is not None and c.reason != "not run" for row in table.rows for c in row.ours)
