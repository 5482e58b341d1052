"""write_results on a real MLflow SQLite store renders every table, figure and report.md; the
`tables` command's set-up errors are one `error:` line, exit code 2, and nothing written."""
import re

import pytest
import yaml

from orchestrator import cli
from orchestrator.store import write
from orchestrator.results import ResultsError, report
from orchestrator.run.sweep import ARTEFACTS, SweepError


def test_write_results_renders_everything_and_attaches_figures(store, tmp_path):
    import mlflow
    uri, ids = store
    sweep = tmp_path / "fake.yaml"
    sweep.write_text(yaml.safe_dump({"name": "fake-smoke", "reproduces": list(ARTEFACTS)}))
    out = tmp_path / "out"
    written = report.write_results([str(sweep)], uri, out_dir=str(out), attach_figures=True)
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
    assert f"from MLflow ({uri}), experiments ['fake-smoke']: 5 runs (1 FAILED, 3 FINISHED, 1 RUNNING)" in text
    assert "Paper values: orchestrator/results/paper.yaml." in text
    assert "| LDA on test t-SNE is more accurate with the regularizer" in text
    # The smoke-like batch-16 rows count too: W=16 measured (45 vs 40, one seed each: not resolved),
    # the rest failed/running/not run.
    assert ("in every CIFAR-10 cell (Table 1) | 9 of 9 | 0 of 1 hold, 1 not resolved (11 missing) | **open (cells missing)** |"
            in text)
    # Table 5 is the model code's bytes; the memory table forecasts the profiled (timeline) run
    assert "| Bottleneck model memory is under 50% of VGG16's for every W (Table 5) | 3 of 3 | 3 of 3 hold |" in text
    peaks = (out / "memory_peaks.md").read_text()
    assert "| Bottleneck W=16, batch 16 | " in peaks and "(forecast)" in peaks
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = {f.path for f in client.list_artifacts(ids[1], "figures")}
    assert logged == {"figures/figure3_bottleneck-w16-b16-reg.png", "figures/figure4_synthetic-w16-b16-s0.png",
                      "figures/figure5_synthetic-w16-b16-s0.png"}
    assert {f.path for f in client.list_artifacts(ids[0], "figures")} == {
        "figures/figure4_synthetic-w16-b16-s0.png", "figures/figure5_synthetic-w16-b16-s0.png"}


def test_write_results_by_experiment_name_renders_what_runs_support(store, tmp_path):
    uri, _ = store
    written = report.write_results(["fake-smoke"], uri, formats=("csv",), out_dir=tmp_path)
    names = {p.name for p in written}
    assert {"table1.csv", "table3.csv", "report.md"} <= names
    assert "table4.csv" not in names          # no 100-class run
    assert "table5.csv" not in names          # the model code's bytes alone: only when asked for
    assert "memory_peaks.csv" in names        # a profiled run exists; cells say why memory is missing


@pytest.fixture
def attached(monkeypatch):
    """The (run id, png) pairs each write.log_figures call got (nothing is written)."""
    calls = []
    monkeypatch.setattr(write, "log_figures", lambda uri, pairs: calls.append(pairs))
    return calls


@pytest.mark.parametrize("flags, attaches", [([], 0), (["--attach-figures"], 1)])
def test_tables_attaches_figures_to_runs_only_when_asked(store, tmp_path, attached, flags, attaches):
    uri, ids = store
    rc = cli.main(["tables", "fake-smoke", "--tracking-uri", uri, "--out", str(tmp_path), *flags])
    assert rc == 0 and (tmp_path / "figure4_synthetic-w16-b16-s0.png").is_file()
    assert len(attached) == attaches
    assert {run_id for pairs in attached for run_id, _ in pairs} == set(ids[:2] if attaches else [])


def test_tables_reads_the_sweep_files_tracking_uri(store, tmp_path, monkeypatch, attached):
    """As `run` does: with no --tracking-uri and no $MLFLOW_TRACKING_URI, the sweep's store."""
    uri, _ = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "fake-smoke", "reproduces": ["table3"],
                                                     "tracking_uri": uri}))
    assert cli.main(["tables", "s.yaml", "--format", "csv"]) == 0
    assert "VGG16,batch 16,35,,1,,,ok,75.84,," in (tmp_path / "results" / "table3.csv").read_text()
    assert not (tmp_path / "mlflow.db").exists()


def _two_sweeps(tmp_path):
    for name, db in (("a", "one.db"), ("b", "two.db")):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\ntracking_uri: sqlite:///{tmp_path / db}\n")
    return ["a.yaml", "b.yaml"]


@pytest.mark.parametrize("name, args, message", [
    ("no such experiment", lambda uri, tmp: ["nope", "--tracking-uri", uri],
     r"error: no MLflow experiment named \['nope'\] at tracking URI 'sqlite:///.*'; it holds "
     r"\['Default', 'fake-smoke'\]\. Pass --tracking-uri"),
    ("unknown format", lambda uri, tmp: ["fake-smoke", "--tracking-uri", uri, "--format", "md,bogus"],
     r"error: unknown table format\(s\) \['bogus'\]; choose from \['csv', 'latex', 'md'\], "
     r"e\.g\. --format md,latex,csv"),
    ("empty format", lambda uri, tmp: ["fake-smoke", "--tracking-uri", uri, "--format", ""],
     r"error: no table format given; pass --format with one or more of \['csv', 'latex', 'md'\]"),
    ("--out is a file", lambda uri, tmp: ["fake-smoke", "--tracking-uri", uri, "--out", "taken.txt"],
     r"error: output folder taken\.txt: taken\.txt is a file, not a folder; pass --out a folder"),
    ("--out under a file", lambda uri, tmp: ["fake-smoke", "--tracking-uri", uri, "--out", "taken.txt/x"],
     r"error: output folder taken\.txt/x: taken\.txt is a file, not a folder"),
    ("no store at the default ./mlflow.db", lambda uri, tmp: ["fake-smoke"],
     r"error: no MLflow store at /.*/mlflow\.db \(tracking URI 'sqlite:///.*/mlflow\.db'\); "
     r"pass --tracking-uri \(or set MLFLOW_TRACKING_URI\) to the store the sweep logged to"),
    ("no store at the given URI", lambda uri, tmp: ["fake-smoke", "--tracking-uri", "sqlite:///gone.db"],
     r"error: no MLflow store at /.*/gone\.db "),
    ("sweeps naming two stores", lambda uri, tmp: _two_sweeps(tmp),
     r"error: the sweep files name different tracking URIs \['sqlite:///.*one\.db', 'sqlite:///.*two\.db'\]; "
     r"pass --tracking-uri to choose one"),
])
def test_tables_setup_errors_are_one_line_exit_2_nothing_written(store, tmp_path, monkeypatch, capsys,
                                                                  name, args, message):
    uri, _ = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "taken.txt").write_text("not a folder")
    argv = ["tables", *args(uri, tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, name
    assert len(err.splitlines()) == 1 and out == "", (name, err)
    assert re.match(message, err), (name, err)
    assert sorted(tmp_path.rglob("*")) == before, name          # no results/, no mlflow.db
    assert (tmp_path / "taken.txt").read_text() == "not a folder"


def test_bad_sources_and_formats_fail_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nreproduces: [table9]\n")
    with pytest.raises(SweepError, match=r"bad.yaml: reproduces: 'table9' is not an artefact"):
        report.resolve_sources([str(bad)])
    with pytest.raises(SweepError, match="missing.yaml: no such sweep file"):
        report.resolve_sources([str(tmp_path / "missing.yaml")])
    with pytest.raises(ResultsError, match=r"unknown table format\(s\) \['html'\]"):
        report.write_results(["x"], "sqlite:///unused.db", formats=("html",), out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [bad]


def test_the_report_lists_gpu_memory_forecast_vs_measured_per_group_shape():
    from fake_runs import fake_run, frame
    from orchestrator.results.report import memory_check_markdown

    def run(i, shape, name, forecast, peak):
        row = fake_run(i, metrics={"forecast_peak_mb": forecast, "group_peak_memory_mb": peak})
        return {**row, "tags.group_shape": shape, "tags.mlflow.runName": name, "tags.fused_group_size": "2"}
    runs = frame(run(1, "aaa", "w32-b5-reg-s1", 1000.0, 1150.0), run(2, "aaa", "w32-b5-reg-s0", 1000.0, 1210.0),
                 run(3, "bbb", "w8-b9-noreg-s0", 400.0, 300.0), fake_run(4))      # run 4: a CPU run
    lines = memory_check_markdown(runs)
    assert "| w32-b5-reg-s0 | 2 | 2 | 1,000 | 1,210 | 1.21 |" in lines      # the highest peak
    assert "| w8-b9-noreg-s0 | 2 | 1 | 400 | 300 | 0.75 |" in lines
    assert "runs on a CPU measure none" in memory_check_markdown(frame(fake_run(1)))[-1]
