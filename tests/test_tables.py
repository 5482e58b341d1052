"""Tables from hand-built `mlflow.search_runs`-shaped DataFrames: cells, bold, reasons, exact text."""
import pytest

from fake_runs import FakeForecast, fake_run, frame
from orchestrator.results import ResultsError, cells, render, tables

PAPER = tables.load_paper()


def acc(v):
    return {"test_accuracy": v}


def test_prepare_casts_params_to_config_types():
    runs = frame(fake_run(1, regularizer=True, width=16, lr=0.01),
                 fake_run(2, dataset="synthetic", synthetic_classes=100))
    assert runs["params.width"].tolist() == [16, 32]
    assert runs["params.regularizer"].tolist() == [True, False]
    assert runs["params.lr"].tolist() == [0.01, 0.01]
    assert runs["classes"].tolist() == [10, 100]   # cifar10 -> 10; synthetic -> synthetic_classes


def test_prepare_keeps_latest_run_of_a_trial_key():
    old = fake_run(1, status="FAILED", start=0)
    new = dict(fake_run(2, metrics=acc(70.0), start=5), **{"tags.trial_key": "key1"})
    runs = frame(old, new)
    assert runs["run_id"].tolist() == ["run2"]


@pytest.mark.parametrize("name, rows, metric, expected", [
    ("two seeds", [fake_run(1, metrics=acc(80)), fake_run(2, seed=1, metrics=acc(82))],
     "test_accuracy", (81.0, 1.4142, 2, "")),
    ("not run", [fake_run(1, width=16, metrics=acc(80))], "test_accuracy", (None, None, 0, "not run")),
    ("running ignores its partial metric", [fake_run(1, status="RUNNING", metrics=acc(40))],
     "test_accuracy", (None, None, 0, "running")),
    ("failed", [fake_run(1, status="FAILED")], "test_accuracy", (None, None, 0, "failed")),
    ("killed and running", [fake_run(1, status="KILLED"), fake_run(2, seed=1, status="RUNNING")],
     "test_accuracy", (None, None, 0, "1 running, 1 killed")),
    ("partial", [fake_run(1, metrics=acc(80)), fake_run(2, seed=1, status="RUNNING")],
     "test_accuracy", (80.0, None, 1, "1 running")),
    ("CPU run has no peak memory", [fake_run(1, metrics=acc(80))], "peak_memory_mb",
     (None, None, 0, "needs CUDA: a CPU run")),
])
def test_summarize(name, rows, metric, expected):
    cell = cells.summarize(frame(*rows), metric, arch="bottleneck", width=32, batch_size=9)
    std = None if cell.std is None else round(cell.std, 4)
    assert (cell.mean, std, cell.n, cell.reason) == expected, name


def test_an_edited_sweep_is_never_pooled_the_newest_configuration_is_the_cell():
    # Three seeds at 3 epochs, then the sweep grew to 5 epochs: two new seeds finished, one runs.
    old = [fake_run(i, seed=i, epochs=3, metrics=acc(50 + i)) for i in range(3)]
    new = [fake_run(10 + i, seed=i, epochs=5, metrics=acc(70 + 2 * i)) for i in range(2)]
    running = fake_run(12, seed=2, epochs=5, status="RUNNING")
    cell = cells.summarize(frame(*old, *new, running), "test_accuracy", width=32)
    assert (cell.mean, cell.n, cell.reason) == (71.0, 2, "1 running")
    assert cell.runs == ("run10", "run11")
    assert sorted(cell.superseded) == [("run0", "epochs 3 -> 5"), ("run1", "epochs 3 -> 5"),
                                       ("run2", "epochs 3 -> 5")]


def test_a_newer_configuration_that_has_only_started_still_replaces_the_old_one():
    # The cell waits for the edited sweep's runs rather than showing the old configuration.
    runs = frame(fake_run(1, lr=0.01, metrics=acc(80)), fake_run(2, lr=0.1, status="RUNNING"))
    cell = cells.summarize(runs, "test_accuracy", width=32)
    assert (cell.mean, cell.n, cell.reason, cell.superseded) == (None, 0, "running",
                                                                (("run1", "lr 0.01 -> 0.1"),))


def test_seeds_of_one_configuration_supersede_nothing():
    cell = cells.summarize(frame(fake_run(1, metrics=acc(80)), fake_run(2, seed=1, metrics=acc(82))),
                           "test_accuracy", width=32)
    assert (cell.n, cell.superseded) == (2, ())


def test_tables_note_and_report_list_the_superseded_runs():
    runs = frame(fake_run(1, epochs=3, metrics=acc(50)), fake_run(2, epochs=5, metrics=acc(80)),
                 fake_run(3, epochs=5, seed=1, metrics=acc(84)))
    table = tables.table_cifar10(runs, PAPER, "table1")
    assert table.rows[0].ours[0].n == 2 and table.rows[0].ours[0].mean == 82.0
    assert ("1 run(s) of an older configuration left out (epochs 3 -> 5): each cell uses its "
            "newest; report.md lists them") in table.notes
    from orchestrator.results import report
    assert report.superseded_markdown({"table1": table}, runs)[2:] == ["- run1 (run run1): epochs 3 -> 5"]


TABLE1_MD = """\
### Table 1: CIFAR-10 test accuracy (%, higher is better)

| Method | W=32 ours | W=32 paper | W=16 ours | W=16 paper | W=8 ours | W=8 paper |
|---|---|---|---|---|---|---|
| *Mini-batch size = 9* | | | | | | |
| Without regularizer | 81.00 ± 1.41 (n=2) | 83.67 | — (failed) | 83.47 | — (not run) | 70.04 |
| With regularizer | **85.00** (n=1) | **85.70** | — (running) | **86.27** | — (not run) | **86.03** |
| *Mini-batch size = 7* | | | | | | |
| Without regularizer | — (not run) | 62.25 | — (not run) | 81.40 | — (not run) | 82.70 |
| With regularizer | — (not run) | **75.43** | — (not run) | **87.83** | — (not run) | **86.55** |
| *Mini-batch size = 5* | | | | | | |
| Without regularizer | — (not run) | 50.30 | — (not run) | 56.25 | **30.00** (n=1) | 26.10 |
| With regularizer | — (not run) | **73.80** | — (not run) | **67.71** | 20.00 (n=1; 1 running) | **75.60** |

ours: mean ± std over seeds (n = finished runs); a missing value says why. Bold: the better method per column, as in the paper.
"""

TABLE1_RUNS = [
    fake_run(1, metrics=acc(80)), fake_run(2, seed=1, metrics=acc(82)),
    fake_run(3, regularizer=True, metrics=acc(85)),
    fake_run(4, regularizer=True, width=16, status="RUNNING", metrics=acc(40)),
    fake_run(5, width=16, status="FAILED"),
    fake_run(6, batch_size=5, width=8, metrics=acc(30)),   # ours: without beats with here
    fake_run(7, batch_size=5, width=8, regularizer=True, metrics=acc(20)),
    fake_run(8, batch_size=5, width=8, regularizer=True, seed=1, status="RUNNING"),
]


def test_table1_markdown_exact():
    table = tables.TABLES["table1"](frame(*TABLE1_RUNS), PAPER)
    assert render.to_markdown(table) == TABLE1_MD


def test_table2_bolds_the_lower_gap():
    runs = frame(fake_run(1, metrics={"generalization_gap": 12.0}),
                 fake_run(2, regularizer=True, metrics={"generalization_gap": 4.0}))
    table = tables.TABLES["table2"](runs, PAPER)
    ours, paper = table.bold()
    assert [ours[0][0], ours[1][0]] == [False, True]
    assert [paper[0][0], paper[1][0]] == [False, True]     # 9.67 vs 4.06


def test_table3_latex_and_csv_exact():
    runs = frame(fake_run(1, arch="vgg16", batch_size=64, metrics={"test_accuracy": 91.5, "generalization_gap": 7.25}),
                 fake_run(2, arch="vgg16", batch_size=64, seed=1,
                          metrics={"test_accuracy": 92.5, "generalization_gap": 6.75}),
                 fake_run(3, arch="vgg16", batch_size=5, status="FAILED"))
    table = tables.table3(runs, PAPER)
    assert render.to_latex(table) == r"""\begin{table}[ht]
\centering
\begin{tabular}{lrrrrrrrrrr}
\toprule
Method & \multicolumn{2}{c}{batch 64} & \multicolumn{2}{c}{batch 16} & \multicolumn{2}{c}{batch 9} & \multicolumn{2}{c}{batch 7} & \multicolumn{2}{c}{batch 5} \\
 & ours & paper & ours & paper & ours & paper & ours & paper & ours & paper \\
\midrule
\multicolumn{11}{l}{\textit{Classification performance (\%)}} \\
VGG16 & 92.00 $\pm$ 0.71 (n=2) & 92.86 & -- (not run) & 75.84 & -- (not run) & 70.74 & -- (not run) & 55.27 & -- (failed) & 33.47 \\
\multicolumn{11}{l}{\textit{Generalization error (\%)}} \\
VGG16 & 7.00 $\pm$ 0.35 (n=2) & 6.01 & -- (not run) & 4.01 & -- (not run) & 4.30 & -- (not run) & 6.76 & -- (failed) & 10.99 \\
\bottomrule
\end{tabular}
\caption{Table 3: vanilla VGG16 on CIFAR-10 by mini-batch size. ours: mean $\pm$ std over seeds (n = finished runs); a missing value says why. Bold: the better method per column, as in the paper.}
\label{tab:table3}
\end{table}
"""
    csv_lines = render.to_csv(table).splitlines()
    assert csv_lines[0] == ("table,group,row,column,ours_mean,ours_std,n,ci95_low,ci95_high,status,paper,"
                            "paper_inside,ours_bold,paper_bold")
    # 92 +- t(0.975, 1) * 0.7071 / sqrt(2) = 92 +- 12.7062 * 0.5: the paper's 92.86 inside
    assert csv_lines[1] == ("table3,Classification performance (%),VGG16,batch 64,92,0.7071,2,85.6469,98.3531,"
                            "ok,92.86,1,0,0")
    assert csv_lines[5] == "table3,Classification performance (%),VGG16,batch 5,,,0,,,failed,33.47,,0,0"
    with_ci = render.to_latex(table, ci=True)
    assert r"VGG16 & 92.00 $\pm$ 0.71 [85.65, 98.35] (n=2) & 92.86 (inside ours) & -- (not run) & 75.84 &" in with_ci
    assert r"VGG16 & 7.00 $\pm$ 0.35 [3.82, 10.18] (n=2) & 6.01 (inside ours)" in with_ci
    assert "[85.65, 98.35] (n=2) | 92.86 (inside ours) |" in render.to_markdown(table, ci=True)
    assert len(csv_lines) == 1 + 2 * 5


def test_table4_baseline_row_and_bold():
    runs = frame(*[fake_run(i, dataset="cifar100", batch_size=5, width=w, regularizer=r,
                            metrics={"test_accuracy": a, "generalization_gap": g})
                   for i, (w, r, a, g) in enumerate([(32, False, 15.0, 5.0), (32, True, 36.0, 8.0)])],
                 fake_run(9, dataset="cifar100", arch="vgg16", batch_size=5,
                          metrics={"test_accuracy": 17.0, "generalization_gap": 9.5}))
    table = tables.table4(runs, PAPER)
    md = render.to_markdown(table)
    assert "| Vanilla VGG16 (batch 5, no W) | 17.00 (n=1) | 17.87 | n/a | — | n/a | — |" in md
    assert "| With regularizer | **36.00** (n=1) | **37.00** |" in md
    assert "| Without regularizer | **5.00** (n=1) | **5.10** |" in md   # lower gap wins, as in the paper


def test_table5_is_the_model_codes_bytes_beside_the_papers():
    computed = tables.Computed({"vgg16": (134586664, 33896), "bottleneck_w32": (62059304, 49848)})
    md = render.to_markdown(tables.table5(frame(), PAPER, computed))
    assert ("| Total | 134,620,560 (model code) | 134,620,560 | 62,109,152 (model code) | 62,109,152 | "
            "— (not computed) | 60,524,000 | — (not computed) | 60,123,872 |") in md
    assert not tables.supported(tables.table5(frame(), PAPER, computed))   # no run behind it


def test_memory_peaks_puts_forecast_and_measured_beside_the_paper():
    timed = dict(memory_timeline=True, image_size=224)
    runs = frame(fake_run(1, arch="vgg16", batch_size=16, **timed,
                          metrics={"model_param_bytes": 134586664, "model_buffer_bytes": 33896,
                                   "peak_memory_mb": 3000.0, "dynamic_peak_memory_mb": 2300.0,
                                   "forward_peak_memory_mb": 1900.0}),
                 fake_run(2, batch_size=16, regularizer=True, **timed,
                          metrics={"model_param_bytes": 62059304, "model_buffer_bytes": 49848}),
                 fake_run(3, arch="vgg16", batch_size=16, metrics={"dynamic_peak_memory_mb": 99.0}))  # no timeline
    computed = tables.Computed(forecasts={("vgg16", 16, None): FakeForecast(2416.0, 1945.0, 512.0),
                                          ("bottleneck", 7, 32): FakeForecast(999.0, 899.0, 107.0)})
    table = tables.memory_peaks(runs, PAPER, computed)
    assert [r.label for r in table.rows] == ["VGG16, batch 16", "Bottleneck W=32, batch 16",
                                            "Bottleneck W=32, batch 7"]
    md = render.to_markdown(table)
    total = 2300 + 134620560 / 2 ** 20
    assert (f"| VGG16, batch 16 | 2,416 (forecast) | 2,280 | 2,300 (n=1) | 2,280 | 1,945 (forecast) | 1,820 | "
            f"1,900 (n=1) | 1,820 | 2,928 (forecast) | — | {total:,.0f} (n=1) | — |") in md
    assert ("| Bottleneck W=32, batch 16 | — (not forecast: no trial of this configuration) | 1,750 | "
            "— (needs CUDA: a CPU run) | 1,750 |") in md
    assert "| Bottleneck W=32, batch 7 | 999 (forecast) | 800 | — (needs CUDA: not measured on a GPU yet) |" in md
    assert any("cannot produce that gap" in n for n in table.notes)


def test_smoke_runs_add_rows_and_notes():
    """The smoke sweep (synthetic data, batch 16, 2 epochs) still renders Table 1, marked as such."""
    runs = frame(fake_run(1, dataset="synthetic", batch_size=16, width=16, epochs=2, metrics=acc(12.5)))
    table = tables.TABLES["table1"](runs, PAPER)
    assert table.rows[-2].group == "Mini-batch size = 16 (not in the paper)"
    assert table.get((16, False), 16)[0].mean == 12.5
    assert table.get((16, False), 16)[1] is None
    assert table.notes == ["ours use epochs=2 (paper: 200)", "ours use dataset=synthetic (paper: cifar10)"]
    assert tables.supported(table) and not tables.supported(tables.table3(runs, PAPER))


def test_paper_training_setup_is_read_from_paper_yaml():
    assert tables.paper_setup(PAPER) == {"epochs": 200, "lr": 0.01, "vgg_width_divisor": 1,
                                         "train_samples": 0, "test_samples": 0}


TRAINING = PAPER["training"]


@pytest.mark.parametrize("name, training, params, notes", [
    ("paper's setup", TRAINING, dict(lr=0.1, train_samples=5000),
     ["ours use lr=0.1 (paper: 0.01)", "ours use train_samples=5000 (paper: the whole set)"]),
    ("paper.yaml edited to our lr", dict(TRAINING, lr=0.1), dict(lr=0.1), []),
    ("a field the entry leaves out is not compared",
     {k: v for k, v in TRAINING.items() if k != "epochs"}, dict(epochs=2), []),
])
def test_notes_compare_runs_with_the_training_entry(name, training, params, notes):
    runs = frame(fake_run(1, arch="vgg16", batch_size=5, metrics=acc(30), **params))
    assert tables.table3(runs, dict(PAPER, training=training)).notes == notes, name


def test_training_entry_with_a_non_config_key_is_an_error():
    paper = dict(PAPER, training=dict(PAPER["training"], learning_rate=0.01))
    with pytest.raises(ResultsError, match=r"paper.yaml training: \['learning_rate'\] are not trainer Config"):
        tables.table3(frame(fake_run(1, arch="vgg16", batch_size=5)), paper)
