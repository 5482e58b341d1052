"""Seeds as one result: intervals with known values, per-cell summaries from hand-made
histories, and one MLflow parent run per cell above its seeds on a real SQLite store
(idempotent; replaced, never doubled, when a seed is added; never taken for a trial)."""
import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.results import report, seeds, stats
from orchestrator.results.cells import load_runs
from orchestrator.results.stats import Estimate
from orchestrator.store import read, write
from orchestrator.run.sweep import cell_key
from trainer.config import Config


# --- stats: the t quantiles of any textbook table -------------------------------------

def test_mean_interval_uses_student_t():
    low, high = stats.mean_interval(10.0, 2.0, 3)          # t(0.975, 2) = 4.302653
    assert (low, high) == pytest.approx((10 - 4.302653 * 2 / math.sqrt(3), 10 + 4.302653 * 2 / math.sqrt(3)), rel=1e-6)
    assert stats.mean_interval(10.0, None, 1) is None       # one run: no interval


@pytest.mark.parametrize("a, verdict", [(12.0, "not resolved"), (20.0, "holds"), (2.0, "reversed")])
def test_welch_difference_and_its_verdict(a, verdict):
    """Equal std and n = 3 on both sides: Welch's df = 4, t = 2.776445, se = sqrt(8/3)."""
    d = stats.difference(Estimate(a, 2.0, 3), Estimate(10.0, 2.0, 3))
    half = 2.776445 * math.sqrt(8 / 3)
    assert (d.diff, d.low, d.high) == pytest.approx((a - 10, a - 10 - half, a - 10 + half), rel=1e-6)
    assert d.verdict() == verdict and d.n == (3, 3)


def test_difference_with_one_run_or_exact_values():
    assert stats.difference(Estimate(20.0, None, 1), Estimate(10.0, 2.0, 3)).verdict() == "not resolved"
    exact = stats.difference(Estimate.of(3.0), Estimate.of(5.0))
    assert (exact.low, exact.high, exact.verdict(), exact.n) == (-2.0, -2.0, "reversed", (None, None))
    # against a threshold: the one-sample t interval (df = 2)
    d = stats.difference(Estimate(8.0, 1.0, 3), Estimate.of(10.0))
    assert d.high == pytest.approx(-2 + 4.302653 / math.sqrt(3), rel=1e-5) and d.verdict() == "not resolved"
    d = stats.difference(Estimate(8.0, 0.5, 3), Estimate.of(10.0))
    assert d.high == pytest.approx(-2 + 4.302653 * 0.5 / math.sqrt(3), rel=1e-5) and d.verdict() == "reversed"


# --- pure summaries -------------------------------------------------------------------

def _row(run_id, name, status="FINISHED", start=0, parent=None, last_epoch=3, **params):
    p = dict(arch="bottleneck", width=16, batch_size=5, regularizer=True, seed=0, epochs=3,
             dataset="synthetic", lr=0.01)
    p.update(params)
    row = {"run_id": run_id, "experiment_id": "1", "status": status, "tags.mlflow.runName": name,
           "tags.trial_key": f"k-{run_id}", "start_time": pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=start),
           "metrics.last_epoch": float(last_epoch), "tags.mlflow.parentRunId": parent}
    row.update({f"params.{k}": str(v) for k, v in p.items()})
    return row


def _frame(*rows):
    from orchestrator.results.cells import prepare
    return prepare(pd.DataFrame(list(rows)))


HISTORY = {   # test accuracy peaks at epoch 2 for r0, epoch 3 for r1
    "r0": {"test_accuracy": {1: 20.0, 2: 40.0, 3: 30.0}, "train_accuracy": {1: 30.0, 2: 50.0, 3: 60.0},
           "generalization_gap": {1: 10.0, 2: 10.0, 3: 30.0}, "train_loss": {1: 2.0, 2: 1.5, 3: 1.0}},
    "r1": {"test_accuracy": {1: 24.0, 2: 34.0, 3: 44.0}, "train_accuracy": {1: 34.0, 2: 44.0, 3: 54.0},
           "generalization_gap": {1: 10.0, 2: 10.0, 3: 10.0}, "train_loss": {1: 2.2, 2: 1.7, 3: 1.2}},
}


def test_cells_group_seeds_and_summarize_them_per_epoch_and_at_the_best_epoch():
    runs = _frame(_row("r0", "w16-b5-reg-s0", seed=0), _row("r1", "w16-b5-reg-s1", seed=1, start=1),
                  _row("r2", "w16-b5-reg-s2", "FAILED", seed=2, start=2),
                  _row("r3", "w16-b5-noreg-s0", regularizer=False, start=3),
                  _row("r4", "w16-b5-noreg-s1", "RUNNING", regularizer=False, seed=1, start=4))
    groups = seeds.cell_groups(runs)
    assert [(g.name, g.seeds, g.finished) for g in groups] == [
        ("w16-b5-reg", ("r0", "r1", "r2"), ("r0", "r1")), ("w16-b5-noreg", ("r3", "r4"), ("r3",))]
    # the key is the trial's config without its seed, as the sweep computes it
    config = dict(Config(arch="bottleneck", width=16, batch_size=5, regularizer=True, epochs=3,
                         dataset="synthetic", seed=7).to_dict())
    assert groups[0].key == cell_key(config) != groups[1].key
    assert groups[0].params["width"] == "16" and "seed" not in groups[0].params

    s = seeds.summarize_cell(groups[0], HISTORY)
    acc = s.curves["test_accuracy"]
    assert [(e, acc[e].mean, acc[e].n) for e in (1, 2, 3)] == [(1, 22.0, 2), (2, 37.0, 2), (3, 37.0, 2)]
    assert acc[3].std == pytest.approx(math.sqrt(98.0))                 # 30 and 44
    assert (s.best["test_accuracy"].mean, s.best["train_accuracy"].mean) == (42.0, 52.0)   # 40@2, 44@3
    assert (s.best_epoch.mean, s.best_epoch.n) == (2.5, 2)
    logged = {(k, step): v for k, v, step in s.metrics()}
    assert logged[("test_accuracy_mean", 2)] == 37.0 and logged[("test_accuracy_n", 2)] == 2.0
    assert logged[("best_test_accuracy_mean", 3)] == 42.0 and logged[("seeds", 3)] == 2.0
    one = seeds.summarize_cell(groups[1], {"r3": HISTORY["r0"]})
    assert one.curves["test_accuracy"][1].std is None and ("test_accuracy_std", 1) not in \
        {(k, step) for k, _, step in one.metrics()}


def test_at_best_epoch_takes_every_metric_at_the_highest_test_accuracy():
    runs = _frame(_row("r0", "a-s0"), _row("r1", "a-s1", seed=1))
    best = seeds.at_best_epoch(runs, HISTORY)
    assert list(best["metrics.test_accuracy"]) == [40.0, 44.0]
    assert list(best["metrics.generalization_gap"]) == [10.0, 10.0]
    assert list(best["metrics.best_epoch"]) == [2.0, 3.0]


def test_plan_writes_creates_keeps_replaces_and_removes_duplicates():
    runs = _frame(_row("r0", "a-s0", parent="p1"), _row("r1", "a-s1", seed=1, parent="p1"))
    g = seeds.cell_groups(runs)[0]
    parent = lambda rid, digest, start=0: {"run_id": rid, "experiment_id": "1", "tags.cell_key": g.key,
                                           "tags.cell_digest": digest, "start_time": start}
    none = pd.DataFrame()
    assert [(w.keep, w.delete) for w in seeds.plan_writes([g], none)] == [(None, ())]
    current = pd.DataFrame([parent("p1", g.digest)])
    assert seeds.plan_writes([g], current) == []                        # nothing to change
    stale = pd.DataFrame([parent("p1", "old")])
    assert [(w.keep, w.delete) for w in seeds.plan_writes([g], stale)] == [(None, ("p1",))]
    twice = pd.DataFrame([parent("p1", g.digest), parent("p2", g.digest, 1)])
    assert [(w.keep, w.delete) for w in seeds.plan_writes([g], twice)] == [("p1", ("p2",))]


# --- one parent per cell on a real store ----------------------------------------------

def _log_seed(c, exp, name, seed, accuracies, status="FINISHED", **params):
    config = Config(dataset="synthetic", arch="bottleneck", width=16, batch_size=5, epochs=len(accuracies),
                    seed=seed, **params).to_dict()
    run = c.create_run(exp, run_name=f"{name}-s{seed}", tags={"trial_key": f"{name}-{seed}", "sweep": "cells"})
    rid = run.info.run_id
    for k, v in config.items():
        c.log_param(rid, k, v)
    for epoch, acc in enumerate(accuracies, 1):
        for k, v in (("test_accuracy", acc), ("train_accuracy", acc + 10), ("generalization_gap", 10.0),
                     ("train_loss", 1.0 / epoch), ("last_epoch", epoch)):
            c.log_metric(rid, k, v, step=epoch)
    c.set_terminated(rid, status=status)
    return rid


def _active_parents(c, exp):
    return [r for r in c.search_runs([exp]) if seeds.CELL_TAG in r.data.tags]


def test_one_parent_run_per_cell_nested_above_its_seeds(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("cells")
    reg = [_log_seed(c, exp, "w16-b5-reg", s, acc, regularizer=True)
           for s, acc in ((0, [20.0, 40.0]), (1, [30.0, 36.0]))]
    plain = [_log_seed(c, exp, "w16-b5-noreg", s, acc) for s, acc in ((0, [10.0, 12.0]), (1, [14.0, 18.0]))]
    failed = _log_seed(c, exp, "w16-b5-noreg", 2, [50.0, 50.0], status="FAILED")

    report.write_results(["cells"], uri, formats=["csv"], out_dir=tmp_path / "out", cell_runs=True)
    assert "2 cell run(s) written" in capsys.readouterr().out
    parents = {p.info.run_name: p for p in _active_parents(c, exp)}
    assert sorted(parents) == ["w16-b5-noreg", "w16-b5-reg"]
    p = parents["w16-b5-reg"]
    assert p.info.status == "FINISHED" and p.data.tags["finished_seeds"] == "2"
    assert p.data.params["width"] == "16" and "seed" not in p.data.params
    history = {m.step: m.value for m in c.get_metric_history(p.info.run_id, "test_accuracy_mean")}
    assert history == {1: 25.0, 2: 38.0}
    assert {m.step: m.value for m in c.get_metric_history(p.info.run_id, "test_accuracy_n")} == {1: 2.0, 2: 2.0}
    assert c.get_metric_history(p.info.run_id, "test_accuracy_std")[-1].value == pytest.approx(math.sqrt(8.0))
    assert p.data.metrics["best_test_accuracy_mean"] == 38.0 and p.data.metrics["seeds"] == 2.0
    # nested: MLflow's parent tag, on every seed of the cell (a FAILED one too); the UI reads it
    children = c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parents['w16-b5-noreg'].info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(plain + [failed])
    noreg = parents["w16-b5-noreg"]
    assert noreg.data.metrics["seeds"] == 2.0 and noreg.data.metrics["test_accuracy_mean"] == 15.0

    # a parent is not a trial: not in the tables' runs, nor among the trial keys (status)
    assert sorted(load_runs(["cells"], uri).runs["run_id"]) == sorted(reg + plain + [failed])
    assert len(read.runs_by_key(uri, "cells")) == 5
    csv = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert set(csv["n"].dropna()) <= {0, 2}

    # rerun: nothing written, same parent runs
    report.write_results(["cells"], uri, formats=["csv"], out_dir=tmp_path / "out", cell_runs=True)
    assert "cell run" not in capsys.readouterr().out
    assert {r.info.run_id for r in _active_parents(c, exp)} == {x.info.run_id for x in parents.values()}

    # a seed added later: the cell's parent is replaced (MLflow's history is append-only), never doubled
    added = _log_seed(c, exp, "w16-b5-reg", 2, [40.0, 48.0], regularizer=True)
    report.write_results(["cells"], uri, formats=["csv"], out_dir=tmp_path / "out", cell_runs=True)
    assert "1 cell run(s) written" in capsys.readouterr().out
    now = {r.info.run_name: r for r in _active_parents(c, exp)}
    assert sorted(now) == ["w16-b5-noreg", "w16-b5-reg"]
    assert now["w16-b5-noreg"].info.run_id == noreg.info.run_id
    new = now["w16-b5-reg"]
    assert new.info.run_id != p.info.run_id and new.data.metrics["seeds"] == 3.0
    assert new.data.metrics["test_accuracy_mean"] == pytest.approx((40 + 36 + 48) / 3)
    assert c.get_run(p.info.run_id).info.lifecycle_stage == "deleted"
    for rid in reg + [added]:
        assert c.get_run(rid).data.tags["mlflow.parentRunId"] == new.info.run_id


def test_tables_metric_best_and_ci_columns(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("cells")
    for s, acc in ((0, [20.0, 40.0, 30.0]), (1, [30.0, 36.0, 34.0])):
        _log_seed(c, exp, "w16-b5-reg", s, acc, regularizer=True)
    for metric, mean in (("final", 32.0), ("best", 38.0)):
        out = tmp_path / metric
        report.write_results(["cells"], uri, formats=["csv", "md"], out_dir=out, metric=metric, ci=True)
        row = pd.read_csv(out / "table1.csv").query("n == 2").iloc[0]
        half = 12.706205 * math.sqrt(8.0) / math.sqrt(2)                  # t(0.975, 1); both std sqrt(8)
        assert (row["ours_mean"], row["ci95_low"], row["ci95_high"]) == pytest.approx(
            (mean, mean - half, mean + half), abs=1e-3)
        header = {"final": "Ours: final-epoch metrics of FINISHED runs",
                  "best": "Ours: each FINISHED run's metrics at its best epoch"}[metric]
        assert header in (out / "report.md").read_text()
        assert f"Note: ours: each run's {metric} epoch" in (out / "table1.md").read_text()
        assert f"[{mean - half:.2f}, {mean + half:.2f}]" in (out / "table1.md").read_text()
    assert _active_parents(c, exp) == []                # cell_runs off: read only


def test_a_store_that_refuses_the_cell_runs_is_one_error_naming_the_way_out(tmp_path, monkeypatch):
    from orchestrator.results import ResultsError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    _log_seed(c, c.create_experiment("cells"), "w16-b5-reg", 0, [20.0], regularizer=True)

    def refuse(*_):
        raise OSError("attempt to write a readonly database")
    monkeypatch.setattr(write, "write_cell_runs", refuse)
    with pytest.raises(ResultsError, match=r"could not write the cells' parent runs to sqlite:///.*mlflow.db "
                                           r"\(OSError: attempt to write a readonly database\); pass "
                                           r"--no-cell-runs"):
        report.write_results(["cells"], uri, formats=["csv"], out_dir=tmp_path / "out", cell_runs=True)
