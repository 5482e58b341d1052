"""The paper's tables rebuilt from runs, ours beside theirs (the TABLES registry).

Each builder is a pure function (runs DataFrame, paper dict) -> cells.Table: the rows and
columns of the paper's table, our pooled cells (cells.summarize) beside the published
values of orchestrator/results/paper.yaml, and notes where our runs differ from the
paper's training setup (`training:` in paper.yaml).

    runs = reader.load_runs(["table1"], tracking_uri)     # prepared DataFrame
    table = TABLES["table1"](runs, load_paper())          # -> Table (cells, paper values, bold)
    render.to_markdown(table)                             # orchestrator/results/render.py
"""
from __future__ import annotations

import pathlib
import typing

import pandas as pd
import yaml

from orchestrator.results import ResultsError
from orchestrator.results.cells import Row, Table, select, summarize
from trainer.config import TYPES as CONFIG_TYPES

PAPER_PATH = pathlib.Path(__file__).with_name("paper.yaml")
WIDTHS = [32, 16, 8]
METHODS = [(False, "Without regularizer"), (True, "With regularizer")]


def load_paper(path: str | pathlib.Path = PAPER_PATH) -> dict:
    """The published numbers (orchestrator/results/paper.yaml)."""
    return yaml.safe_load(pathlib.Path(path).read_text())


def paper_setup(paper: dict) -> dict:
    """The paper's training setup (section 4.2) as Config field -> value, in paper.yaml order.

    Keyed by Config field so each can be compared with our runs' params; a key that is
    not a field would silently compare nothing, so it is an error.
    """
    setup = paper["training"]
    unknown = sorted(set(setup) - set(CONFIG_TYPES))
    if unknown:
        raise ResultsError(f"paper.yaml training: {unknown} are not trainer Config fields; "
                           f"use the field names of trainer/config.py (e.g. lr, epochs)")
    return setup


def _notes(table: Table, runs: pd.DataFrame, paper: dict, dataset: str) -> Table:
    """Say under the table where our runs differ from the paper's setup or pool mixed configs."""
    ids = {rid for row in table.rows for c in row.ours if c for rid in c.runs}
    used = runs[runs["run_id"].isin(ids)]
    setup = dict(paper_setup(paper), dataset=dataset)
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
    return _notes(table, runs, paper, spec["dataset"])


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
    return _notes(table, runs, paper, spec["dataset"])


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
    return _notes(table, runs, paper, spec["dataset"])


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
    return _notes(table, runs, paper, "cifar10")


# memory_peaks columns: (label, claim key, our metric, the paper's key or None = gives none)
PEAK_COLUMNS = [("Peak dynamic", "dynamic_peak", "dynamic_peak_memory_mb", "peak"),
                ("Forward-pass peak dynamic", "forward_peak", "forward_peak_memory_mb", "forward_peak"),
                ("Peak total", "total_peak", "peak_memory_mb", None)]
PEAK_POOLED = ("width", "regularizer", "dataset", "synthetic_classes")


def _profiled_widths(runs: pd.DataFrame, arch: str, batch_size: int) -> list[int | None]:
    """The bottleneck widths to split rows by: several only when the runs hold several."""
    present = select(runs, arch=arch, batch_size=batch_size)
    widths = []
    if arch == "bottleneck" and "params.width" in present:
        widths = sorted({int(w) for w in present["params.width"].dropna()}, reverse=True)
    return widths if len(widths) > 1 else [None]


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
            ref = spec[arch][f"batch_{b}"]
            for w in _profiled_widths(runs, arch, b):
                where = dict(arch=arch, batch_size=b, **({"width": w} if w else {}))
                ours = [summarize(runs, metric, pooled=PEAK_POOLED, **where)
                        for _, _, metric, _ in PEAK_COLUMNS]
                rows.append(Row((arch, b, w), f"{label}{f' W={w}' if w else ''}, batch {b}", ours,
                                [ref[key] if key else None for _, _, _, key in PEAK_COLUMNS]))
    table = Table("memory_peaks", "Section 4.4: GPU memory over one training epoch (MB)",
                  [c[0] for c in PEAK_COLUMNS], [c[1] for c in PEAK_COLUMNS], rows, {"": ""},
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
