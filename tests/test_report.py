"""Claim checks flip with the numbers; a real MLflow SQLite store renders every table and figure."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator import report, tables
from orchestrator.sweep import SweepError
from trainer.config import Config

PAPER = tables.load_paper()


def fake_run(i, status="FINISHED", metrics=None, **params):
    p = dict(dataset="cifar10", arch="bottleneck", width=32, batch_size=9, regularizer=False, seed=0)
    p.update(params)
    row = {"run_id": f"run{i}", "status": status, "tags.trial_key": f"key{i}"}
    row.update({f"params.{k}": str(v) for k, v in p.items()})
    row.update({f"metrics.{k}": float(v) for k, v in (metrics or {}).items()})
    return row


def cifar10_grid(acc_with=80.0, acc_without=60.0, overrides=None):
    """All 18 Table-1 cells; `overrides` maps (batch, reg, W) -> accuracy, or None to drop the cell."""
    overrides = overrides or {}
    rows = []
    for b in (9, 7, 5):
        for w in (32, 16, 8):
            for reg in (False, True):
                a = overrides.get((b, reg, w), acc_with if reg else acc_without)
                if a is not None:
                    rows.append(fake_run(len(rows), batch_size=b, width=w, regularizer=reg,
                                         metrics={"test_accuracy": a, "generalization_gap": 100 - a - 15}))
    return tables.prepare(pd.DataFrame(rows))


def claim(claims, start):
    return next(c for c in claims if c.text.startswith(start))


@pytest.mark.parametrize("name, overrides, holds, ours", [
    ("all cells agree", {}, True, "9 of 9"),
    ("one cell flips", {(7, True, 16): 50.0}, False, "8 of 9"),
    ("one cell missing", {(5, False, 8): None}, None, "8 of 8 (1 missing)"),
])
def test_regularizer_accuracy_claim_flips(name, overrides, holds, ours):
    runs = cifar10_grid(overrides=overrides)
    built = {k: tables.TABLES[k](runs, PAPER) for k in ("table1", "table2")}
    c = claim(report.check_claims(built, {}), "With the regularizer, test accuracy")
    assert (c.holds, c.ours, c.paper) == (holds, ours, "9 of 9"), name


def test_gap_under_ten_percent_claim_flips():
    runs = cifar10_grid(acc_with=80.0)             # gap with = 5 %
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    assert claim(report.check_claims(built, {}), "With the regularizer the gap").holds is True
    runs = cifar10_grid(acc_with=80.0, overrides={(9, True, 8): 70.0})   # gap 15 % in one cell
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    c = claim(report.check_claims(built, {}), "With the regularizer the gap")
    assert (c.holds, c.ours, c.paper) == (False, "8 of 9", "9 of 9")


@pytest.mark.parametrize("bottleneck_bytes, holds", [(62_059_304, True), (70_000_000, False)])
def test_model_memory_claim_flips(bottleneck_bytes, holds):
    runs = tables.prepare(pd.DataFrame(
        [fake_run(0, arch="vgg16", metrics={"model_param_bytes": 134_586_664, "model_buffer_bytes": 33_896})]
        + [fake_run(i, width=w, metrics={"model_param_bytes": bottleneck_bytes, "model_buffer_bytes": 49_848})
           for i, w in ((1, 32), (2, 16), (3, 8))]))
    c = claim(report.check_claims({"table5": tables.table5(runs, PAPER)}, {}), "Bottleneck model memory")
    assert (c.holds, c.paper) == (holds, "3 of 3")


def analysis(acc):
    return {"test": {"layers": list(acc), "labels": [3, 5], "embeddings": {}, "lda_accuracy": acc}}


def test_lda_claims_flip():
    without = analysis({"conv": 52.0, "FC2": 70.0, "FC4": 72.0})
    better = analysis({"conv": 51.0, "FC2": 80.0, "FC4": 85.0})
    worse = analysis({"conv": 65.0, "FC2": 80.0, "FC4": 60.0})
    ok = report.claims_representation({"run": {"without": without, "with": better}})
    assert [(c.holds, c.ours) for c in ok] == [(True, "2 of 2"), (True, "2 of 2")]
    bad = report.claims_representation({"run": {"without": without, "with": worse}})
    assert [(c.holds, c.ours) for c in bad] == [(False, "1 of 2"), (False, "1 of 2")]


# ----------------------------------------------------------------------------- real MLflow store
def _timeline():
    phases = ["fwd1"] * 3 + ["fwd2"] * 2 + ["bwd2"] * 2 + ["bwd1"] * 3
    phases = (phases + ["step_end"]) * 2   # two steps, as trainer/memory.py MemoryTimeline records them
    return {"phases": ["fwd1", "fwd2", "bwd2", "bwd1"], "batch_size": 16, "arch": "bottleneck", "width": 16,
            "records": [{"step": e // 11, "event": e, "allocated_mb": 100.0 + 10 * (e % 11), "phase": p}
                        for e, p in enumerate(phases)]}


def _analysis(separation, rng):
    labels = [3] * 10 + [5] * 10
    out = {}
    for split in ("train", "test"):
        emb = {l: (rng.normal(size=(20, 2)) + separation * (np.array(labels)[:, None] == 5)).tolist()
               for l in ("conv", "FC1", "FC2")}
        out[split] = {"layers": ["conv", "FC1", "FC2"], "labels": labels, "embeddings": emb,
                      "lda_accuracy": {"conv": 50.0, "FC1": 60.0 + separation, "FC2": 65.0 + separation}}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with one fake sweep `fake-smoke`, logged through mlflow's client."""
    import mlflow
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("fake-smoke", artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    specs = [  # (params, final metrics, status, artifacts)
        (dict(width=16, regularizer=False), dict(test_accuracy=40.0, generalization_gap=20.0), "FINISHED"),
        (dict(width=16, regularizer=True), dict(test_accuracy=45.0, generalization_gap=8.0), "FINISHED"),
        (dict(width=8, regularizer=False), dict(test_accuracy=30.0), "FAILED"),
        (dict(width=8, regularizer=True), dict(test_accuracy=33.0), "RUNNING"),
        (dict(arch="vgg16", width=32, regularizer=False), dict(test_accuracy=35.0, generalization_gap=9.0), "FINISHED"),
    ]
    ids = []
    for i, (params, final, status) in enumerate(specs):
        p = Config().to_dict()   # every Config key is a param, as the tracking module logs them
        p.update(dataset="synthetic", arch="bottleneck", batch_size=16, seed=0, epochs=2, vgg_width_divisor=16,
                 memory_timeline=(i == 1), representation_analysis=(i < 2))
        p.update(params)
        name = f"{p['arch']}-w{p['width']}-b16-{'reg' if p['regularizer'] else 'noreg'}"
        run = client.create_run(exp, run_name=name, tags={"trial_key": f"k{i}", "sweep": "fake-smoke",
                                                           "git_commit": "abc1234def"})
        rid = run.info.run_id
        for k, v in p.items():
            client.log_param(rid, k, v)
        for k, v in final.items():   # epoch 0 then the final epoch: the table must use the last
            client.log_metric(rid, k, v - 5.0, step=0)
            client.log_metric(rid, k, v, step=1)
        bytes_ = (134_586_664, 33_896) if p["arch"] == "vgg16" else (62_059_304, 49_848)
        client.log_metric(rid, "model_param_bytes", bytes_[0])
        client.log_metric(rid, "model_buffer_bytes", bytes_[1])
        if p["memory_timeline"]:
            client.log_dict(rid, _timeline(), "memory_timeline.json")
        if p["representation_analysis"]:
            client.log_dict(rid, _analysis(6.0 * p["regularizer"], rng), "representation_analysis.json")
        if status != "RUNNING":
            client.set_terminated(rid, status=status)
        ids.append(rid)
    return uri, ids


def test_load_runs_reads_final_metrics_and_typed_params(store):
    uri, ids = store
    runs = tables.load_runs(["fake-smoke"], uri)
    assert len(runs) == 5 and set(runs["experiment"]) == {"fake-smoke"}
    reg16 = runs[runs["run_id"] == ids[1]].iloc[0]
    assert reg16["metrics.test_accuracy"] == 45.0          # the final epoch's value
    assert (reg16["params.width"], bool(reg16["params.regularizer"]), reg16["classes"]) == (16, True, 10)
    assert (runs["params.width"].dtype, runs["params.regularizer"].dtype) == ("Int64", "boolean")


def test_unknown_experiment_names_the_known_ones(store):
    uri, _ = store
    with pytest.raises(ValueError, match=r"no MLflow experiment named \['nope'\].*fake-smoke.*--tracking-uri"):
        tables.load_runs(["nope"], uri)


def test_build_tables_renders_everything_and_logs_figures(store, tmp_path):
    import mlflow
    uri, ids = store
    sweep = tmp_path / "fake.yaml"
    sweep.write_text(yaml.safe_dump({"name": "fake-smoke", "reproduces": report.ARTEFACTS}))
    out = tmp_path / "out"
    written = report.build_tables([str(sweep)], uri, out_dir=str(out))
    names = sorted(p.name for p in written)
    for key in ("table1", "table2", "table3", "table4", "table5", "memory_peaks"):
        assert {f"{key}.md", f"{key}.tex", f"{key}.csv"} <= set(names)
    pngs = [p for p in written if p.suffix == ".png"]
    assert sorted(p.name for p in pngs) == ["figure3_bottleneck-w16-b16-reg.png",
                                            "figure4_synthetic-w16-b16-s0.png", "figure5_synthetic-w16-b16-s0.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    table1 = (out / "table1.md").read_text()
    assert "| *Mini-batch size = 16 (not in the paper)* |" in table1
    assert "| Without regularizer | — (not run) | — | 40.00 (n=1) | — | — (failed) | — |" in table1
    assert "| With regularizer | — (not run) | — | **45.00** (n=1) | — | — (running) | — |" in table1
    text = (out / "report.md").read_text()
    assert "git commits abc1234def" in text and "![figure4_synthetic-w16-b16-s0](figure4_synthetic-w16-b16-s0.png)" in text
    assert "| LDA on test t-SNE is more accurate with the regularizer" in text
    # The smoke-like batch-16 rows count too: W=16 measured (45 > 40), the rest failed/running/not run.
    assert ("in every CIFAR-10 cell (Table 1) | 9 of 9 | 1 of 1 (11 missing) | **open (cells missing)** |"
            in text)
    assert "| Bottleneck model memory is under 50% of VGG16's for every W (Table 5) | 3 of 3 | 1 of 1 (2 missing)" in text
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = {f.path for f in client.list_artifacts(ids[1], "figures")}
    assert logged == {"figures/figure3_bottleneck-w16-b16-reg.png", "figures/figure4_synthetic-w16-b16-s0.png",
                      "figures/figure5_synthetic-w16-b16-s0.png"}
    assert {f.path for f in client.list_artifacts(ids[0], "figures")} == {
        "figures/figure4_synthetic-w16-b16-s0.png", "figures/figure5_synthetic-w16-b16-s0.png"}


def test_build_tables_by_experiment_name_renders_what_runs_support(store, tmp_path):
    uri, _ = store
    written = report.build_tables(["fake-smoke"], uri, formats=("csv",), out_dir=tmp_path, log_figures=False)
    names = {p.name for p in written}
    assert {"table1.csv", "table3.csv", "table5.csv", "report.md"} <= names
    assert "table4.csv" not in names          # no 100-class run
    assert "memory_peaks.csv" in names        # batch-16 runs exist; cells say why memory is missing


def test_bad_sources_and_formats_fail_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nreproduces: [table9]\n")
    with pytest.raises(SweepError, match=r"bad.yaml: reproduces: 'table9' is not an artefact"):
        report.resolve_sources([str(bad)])
    with pytest.raises(SweepError, match="missing.yaml: no such sweep file"):
        report.resolve_sources([str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match=r"unknown table format\(s\) \['html'\]"):
        report.build_tables(["x"], None, formats=("html",), out_dir=tmp_path)
