"""The one MLflow reader (orchestrator/store/read.py) on a real SQLite store: shape, final values, paging, and no side effects
(mlflow's global tracking URI untouched, no store created by a read)."""
import pathlib

import pandas as pd
import pytest

from orchestrator.results.cells import load_runs
from orchestrator.store import NotInStore, read
from orchestrator.store.uri import local_store


def test_load_runs_reads_final_metrics_and_typed_params(store):
    uri, ids = store
    runs = load_runs(["fake-smoke"], uri).runs
    assert len(runs) == 5 and set(runs["experiment"]) == {"fake-smoke"}
    reg16 = runs[runs["run_id"] == ids[1]].iloc[0]
    assert reg16["metrics.test_accuracy"] == 45.0          # the final epoch's value
    assert (reg16["params.width"], bool(reg16["params.regularizer"]), reg16["classes"]) == (16, True, 10)
    assert (runs["params.width"].dtype, runs["params.regularizer"].dtype) == ("Int64", "boolean")
    assert dict(zip(runs["run_id"], runs["status"])) == dict(zip(ids, ["FINISHED", "FINISHED", "FAILED",
                                                                       "RUNNING", "FINISHED"]))


def test_runs_frame_is_the_frame_mlflow_search_runs_returns(store):
    """Same columns, values and dtypes as the fluent `mlflow.search_runs` (read here only to compare)."""
    import mlflow
    uri, _ = store
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fake-smoke").experiment_id
    ours = read.runs_frame(client.search_runs([exp]))
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        theirs = mlflow.search_runs(experiment_ids=[exp], output_format="pandas")
    finally:
        mlflow.set_tracking_uri(before)
    assert sorted(ours.columns) == sorted(theirs.columns)
    pd.testing.assert_frame_equal(ours, theirs[ours.columns])


def test_load_runs_pages_through_every_run(store, monkeypatch):
    uri, ids = store
    monkeypatch.setattr(read, "PAGE", 2)                # 5 runs: pages of 2, 2, 1
    assert sorted(load_runs(["fake-smoke"], uri).runs["run_id"]) == sorted(ids)


def test_unknown_experiment_names_the_known_ones(store):
    uri, _ = store
    with pytest.raises(NotInStore, match=r"no MLflow experiment named \['nope'\] at tracking URI "
                                           r"'sqlite:///.*'; it holds \['Default', 'fake-smoke'\]\. "
                                           r"Pass --tracking-uri"):
        load_runs(["nope"], uri)


def test_load_artifact_json_returns_the_logged_dict_or_none(store):
    uri, ids = store
    timeline = read.artifact_json(ids[1], "memory_timeline.json", uri)
    assert (timeline["width"], len(timeline["records"]), timeline["records"][-1]["phase"]) == (16, 22, "step_end")
    assert read.artifact_json(ids[0], "memory_timeline.json", uri) is None


def test_reading_never_touches_mlflows_global_tracking_uri(store, tmp_path, monkeypatch):
    import mlflow
    uri, ids = store
    elsewhere = tmp_path / "elsewhere.db"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{elsewhere}")
    try:
        def refuse(value):
            raise AssertionError(f"the reader set mlflow's global tracking URI to {value!r}")
        monkeypatch.setattr(mlflow, "set_tracking_uri", refuse)
        assert len(load_runs(["fake-smoke"], uri).runs) == 5
        assert read.artifact_json(ids[1], "memory_timeline.json", uri) is not None
        assert mlflow.get_tracking_uri() == f"sqlite:///{elsewhere}"
        assert not elsewhere.exists()
    finally:
        monkeypatch.undo()
        mlflow.set_tracking_uri(before)


@pytest.mark.parametrize("scheme", ["sqlite:///", "file://", ""])
def test_a_missing_store_is_an_error_and_is_not_created(tmp_path, scheme):
    missing = tmp_path / ("mlflow.db" if scheme.startswith("sqlite") else "mlruns")
    with pytest.raises(NotInStore, match=rf"no MLflow store at {missing} .*; pass --tracking-uri"):
        load_runs(["table1"], f"{scheme}{missing}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri, path", [
    ("sqlite:////abs/mlflow.db", "/abs/mlflow.db"),
    ("sqlite:///rel/mlflow.db?timeout=20", "rel/mlflow.db"),
    ("sqlite:///:memory:", None),
    ("file:///abs/mlruns", "/abs/mlruns"),
    ("mlruns", "mlruns"),
    ("http://localhost:5000", None),
    ("databricks", None),
])
def test_local_store_path(uri, path):
    assert local_store(uri) == (None if path is None else pathlib.Path(path))
