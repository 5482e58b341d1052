"""Figures 3-5 as PNG, from the JSON artifacts the trainer leaves in each MLflow run.

Artifacts read (written by the trainer/orchestrator at the end of a run):

`memory_timeline.json` (Figure 3; runs with `memory_timeline: true`, CUDA only;
written by trainer/memory.py MemoryTimeline):
    {"phases": ["fwd1", "fwd2", "bwd2", "bwd1"],   # conv fwd, FC fwd, FC bwd, conv bwd
     "records": [{"step": int,            # training step of the epoch the sample is in
                  "event": int,           # running index of the sample (the x axis)
                  "allocated_mb": float,  # torch.cuda.memory_allocated, MB
                  "phase": "fwd1"}, ...], # or "step_end" (after optimizer.step)
     "batch_size": int, "arch": str, "width": int}

`representation_analysis.json` (Figures 4-5; runs with `representation_analysis: true`):
    {"train": R, "test": R} where R = trainer.analysis.representation_analysis(...):
    {"layers": ["conv", "FC1", ..., "FC10"],
     "labels": [int, ...],                       # N class ids (CIFAR-10: cat=3, dog=5)
     "embeddings": {layer: [[x, y], ...]},       # N 2-D t-SNE points per layer
     "lda_accuracy": {layer: float}}             # %, cross-validated LDA on the 2-D points

Drawing is pure (dict -> PNG). `make_figures` picks the runs and reads their artifacts
through orchestrator/store/read.py (the one MLflow reader);
orchestrator.store.write.log_figures writes them back to MLflow, as artifacts of the runs
they come from (report.write_results with attach_figures=True).
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import pandas as pd  # noqa: E402

from orchestrator.store import read  # noqa: E402
from trainer.config import NOT_EXPERIMENT, TYPES as CONFIG_TYPES  # noqa: E402

PHASE_COLORS = {"fwd1": "tab:red", "fwd2": "tab:green", "bwd2": "gold", "bwd1": "tab:purple",
                "step_end": "gray"}   # the paper's colours: red/green forward, yellow/purple backward
PHASE_NAMES = {"fwd1": "fwd1 (conv forward)", "fwd2": "fwd2 (FC forward)",
               "bwd2": "bwd2 (FC backward)", "bwd1": "bwd1 (conv backward)",
               "step_end": "optimizer step"}
FIGURES = ("figure3", "figure4", "figure5")   # the paper's figures this module draws
CLASS_NAMES = {3: "cat", 5: "dog"}   # CIFAR-10 ids of the two classes of Figures 4-5


def figure3(timeline: dict, path: pathlib.Path, title: str) -> pathlib.Path:
    """Allocated GPU memory (MB) over the steps of one epoch, coloured by pass (Fig. 3)."""
    records = timeline["records"]
    x = [r["event"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    seen = set()
    start = 0
    for i in range(1, len(records) + 1):   # one line per contiguous run of a phase
        if i < len(records) and records[i]["phase"] == records[start]["phase"]:
            continue
        phase = records[start]["phase"]
        end = min(i + 1, len(records))                  # +1 joins the next segment
        ax.plot(x[start:end], [r["allocated_mb"] for r in records[start:end]],
                color=PHASE_COLORS.get(phase, "gray"),
                label=None if phase in seen else PHASE_NAMES.get(phase, phase))
        seen.add(phase)
        start = i
    steps = len({r["step"] for r in records})
    ax.set_xlabel(f"memory sample over the first {steps} training steps")
    ax.set_ylabel("allocated GPU memory (MB)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _figure4_layers(analysis: dict) -> list[str]:
    """The paper's columns: conv output and the even bottleneck layers FC2, FC4, ..., FC10."""
    layers = analysis["layers"]
    picked = [l for l in layers if l == "conv" or (l.startswith("FC") and int(l[2:]) % 2 == 0)]
    return picked if len(picked) > 1 else layers


def figure4(without: dict | None, with_: dict | None, path: pathlib.Path, title: str) -> pathlib.Path:
    """t-SNE of cat/dog activations per layer: rows (a) without/train, (b) with/train,
    (c) without/test, (d) with/test, as in the paper; rows without data are left out."""
    panels = [(f"{split}, {name} regularizer", runs[split])
              for split in ("train", "test") for name, runs in (("without", without), ("with", with_))
              if runs is not None and split in runs]
    layers = _figure4_layers(panels[0][1])
    fig, axes = plt.subplots(len(panels), len(layers), squeeze=False,
                             figsize=(max(6.0, 2.2 * len(layers)), 2.2 * len(panels)))
    for r, (label, analysis) in enumerate(panels):
        labels = pd.Series(analysis["labels"])
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            points = pd.DataFrame(analysis["embeddings"][layer], columns=["x", "y"])
            for k in sorted(labels.unique()):
                sel = points[labels == k]
                ax.scatter(sel["x"], sel["y"], s=3, label=CLASS_NAMES.get(int(k), f"class {k}"))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("Conv section" if layer == "conv" else layer, fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure5(without: dict | None, with_: dict | None, path: pathlib.Path, title: str) -> pathlib.Path:
    """LDA accuracy (%) on the 2-D t-SNE test embedding per layer, with vs without (Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, runs, style in (("without regularizer", without, "o--"), ("with regularizer", with_, "s-")):
        if runs is not None and "test" in runs:
            acc = runs["test"]["lda_accuracy"]
            layers = runs["test"]["layers"]
            ax.plot(range(len(layers)), [acc[l] for l in layers], style, label=name)
            ax.set_xticks(range(len(layers)), ["Conv" if l == "conv" else l for l in layers])
    ax.axhline(50, color="gray", lw=0.8, ls=":", label="chance (2 classes)")
    ax.set_ylabel("LDA accuracy on test t-SNE (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finished_with(runs: pd.DataFrame, flag: str) -> pd.DataFrame:
    col = f"params.{flag}"
    if col not in runs or runs.empty:
        return runs.iloc[0:0]
    return runs[(runs["status"] == "FINISHED") & runs[col].fillna(False).astype(bool)]


def _run_name(run: pd.Series) -> str:
    return str(run.get("tags.mlflow.runName") or run["run_id"][:8])


def make_figures(runs: pd.DataFrame, out_dir: pathlib.Path, tracking_uri: str,
                 artefacts: set[str]) -> tuple[list[tuple[str, pathlib.Path]], dict[str, list[str]], dict]:
    """Draw the requested figures from the runs' artifacts.

    Returns (pairs, notes, analyses): pairs = (run_id, png) for every figure and each run it
    comes from (log them with orchestrator.store.write.log_figures); notes = artefact -> why nothing was
    drawn; analyses = figure-4/5 name -> {"without": dict|None, "with": dict|None} for claims.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs, notes, analyses = [], {}, {}
    if "figure3" in artefacts:
        for _, run in _finished_with(runs, "memory_timeline").iterrows():
            timeline = read.artifact_json(run["run_id"], "memory_timeline.json", tracking_uri)
            if timeline is None:
                continue
            name = _run_name(run)
            width = f" W={timeline.get('width')}" if timeline.get("arch") == "bottleneck" else ""
            title = f"Figure 3: {timeline.get('arch')}{width}, batch {timeline.get('batch_size')} ({name})"
            pairs.append((run["run_id"], figure3(timeline, out_dir / f"figure3_{name}.png", title)))
        if not pairs:
            notes["figure3"] = ["no finished run has memory_timeline.json (set memory_timeline: true; "
                                "the timeline is recorded on CUDA only)"]
    if artefacts & {"figure4", "figure5"}:
        chosen = _finished_with(runs, "representation_analysis")
        # Pair "without" and "with" runs that agree on every other experiment field and the seed.
        keys = [f"params.{n}" for n in CONFIG_TYPES
                if n != "regularizer" and (n == "seed" or n not in NOT_EXPERIMENT)
                and f"params.{n}" in chosen]
        for _, group in chosen.groupby(keys, dropna=False, sort=True) if len(chosen) else []:
            found = {}
            for _, run in group.sort_values("params.regularizer").iterrows():
                data = read.artifact_json(run["run_id"], "representation_analysis.json", tracking_uri)
                if data is not None:
                    found[bool(run["params.regularizer"])] = (run, data)
            if not found:
                continue
            first = next(iter(found.values()))[0]
            name = (f"{first['params.dataset']}-w{first['params.width']}-b{first['params.batch_size']}"
                    f"-s{first['params.seed']}")
            without, with_ = (found.get(r, (None, None))[1] for r in (False, True))
            analyses[name] = {"without": without, "with": with_}
            drawn = []
            if "figure4" in artefacts:
                drawn.append(figure4(without, with_, out_dir / f"figure4_{name}.png",
                                     f"Figure 4: t-SNE of cat/dog activations ({name})"))
            if "figure5" in artefacts:
                drawn.append(figure5(without, with_, out_dir / f"figure5_{name}.png",
                                     f"Figure 5: LDA accuracy per layer ({name})"))
            pairs += [(run["run_id"], png) for run, _ in found.values() for png in drawn]
        if not analyses:
            for fig in sorted(artefacts & {"figure4", "figure5"}):
                notes[fig] = ["no finished run has representation_analysis.json "
                              "(set representation_analysis: true)"]
    return pairs, notes, analyses

