"""Faults at the edges, in process: names and values that would escape or fail late are
one `error:` line and exit 2 at load time, before anything is created."""
import pytest

from e2e import write_sweep
from orchestrator.cli import main


@pytest.mark.parametrize("command", [["plan"], ["status"], ["run", "--dry-run"]])
def test_an_unknown_tracking_uri_scheme_is_one_line_exit_2(tmp_path, capsys, command):
    sweep = write_sweep(tmp_path / "s.yaml", "edges", {"width": [16]})
    rc = main([command[0], str(sweep), *command[1:], "--tracking-uri", "foo://bar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: tracking URI 'foo://bar': MLflow has no store for scheme 'foo'; "
                             "use sqlite:///path/to/mlflow.db")
    assert list(tmp_path.iterdir()) == [sweep]


def test_tables_with_an_unknown_scheme_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["tables", "some-experiment", "--tracking-uri", "foo://bar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no store for scheme 'foo'" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "file:///tmp/store", "/abs/folder", "relative/folder",
                                 "http://host:5000", "https://host", "postgresql+psycopg2://u@h/db",
                                 "mysql://h/db", "databricks"])
def test_known_schemes_resolve(uri):
    from orchestrator.store.uri import resolve_tracking_uri
    assert resolve_tracking_uri(uri, None).endswith(uri.split("///")[-1])


def test_one_precedence_for_every_command(tmp_path, monkeypatch):
    """--tracking-uri, then $MLFLOW_TRACKING_URI, then the sweep's, then ./mlflow.db; the
    sweep's is read only when it decides (tables: sweep files that disagree are an error
    only then)."""
    from orchestrator.store.uri import resolve_tracking_uri

    def sweeps_disagree():
        raise AssertionError("the sweep files were read although a flag or $MLFLOW_TRACKING_URI decides")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("http://flag:5000", sweeps_disagree) == "http://flag:5000"
    assert resolve_tracking_uri(None, sweeps_disagree) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, lambda: "sqlite:///sweep.db") == f"sqlite:///{tmp_path / 'sweep.db'}"
    assert resolve_tracking_uri(None, "sqlite:///sweep.db") == f"sqlite:///{tmp_path / 'sweep.db'}"
    assert resolve_tracking_uri(None, lambda: None) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_name_from_the_store_cannot_send_the_tables_outside_results(tmp_path):
    from orchestrator.results import ResultsError
    from orchestrator.results.report import output_folder

    with pytest.raises(ResultsError, match=r"experiment name '\.\./escape' cannot name a folder safely.*"
                                           r"or pass --out a folder"):
        output_folder(None, ["../escape"])
    assert output_folder(None, ["table1", "table2"]).as_posix() == "results/table1+table2"
    assert output_folder(tmp_path / "out", ["../escape"]) == tmp_path / "out"   # --out: the user's choice


def test_an_odd_run_is_left_out_of_the_tables_with_a_note(tmp_path):
    """A FAILED run of an older version that accepted lr=nan (and one with an unreadable
    bool) no longer breaks the tables: they are listed in report.md and pooled nowhere."""
    from mlflow.tracking import MlflowClient

    from orchestrator.results import report
    from trainer.config import Config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("odd")
    for i, (overrides, status) in enumerate([({}, "FINISHED"), ({"lr": "nan"}, "FAILED"),
                                              ({"regularizer": "maybe"}, "FINISHED")]):
        params = {**Config(dataset="cifar10", batch_size=9, width=16, epochs=2, seed=i).to_dict(), **overrides}
        rid = c.create_run(exp, run_name=f"w16-b9-noreg-s{i}", tags={"trial_key": f"k{i}"}).info.run_id
        for k, v in params.items():
            c.log_param(rid, k, v)
        for epoch in (1, 2):
            c.log_metric(rid, "test_accuracy", 30.0 + 10 * i, step=epoch)
        c.set_terminated(rid, status)
    report.write_results(["odd"], uri, formats=["csv"], out_dir=tmp_path / "out", cell_runs=True)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Left out of every table and figure: 2 run(s) whose params cannot be read:" in text
    assert "- w16-b9-noreg-s1 (FAILED, run " in text and "lr='nan' is not a finite number" in text
    assert "regularizer='maybe' is not a bool" in text
    import pandas as pd
    row = pd.read_csv(tmp_path / "out" / "table1.csv").query("n > 0")
    assert list(row["ours_mean"]) == [30.0] and list(row["n"]) == [1]


def _refuse_writes_under(monkeypatch, folder, code):
    """Every os.open of a path under `folder` fails with `code`, as on a read-only mount
    (EROFS) or a full disk (ENOSPC): root ignores file modes, so the test injects the error."""
    import os

    real = os.open

    def fake(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize("code, what", [("EROFS", "Read-only file system"), ("ENOSPC", "No space left on device")])
@pytest.mark.parametrize("exists", [True, False])
def test_an_unwritable_tracking_store_is_caught_before_launch(tmp_path, capsys, monkeypatch, code, what, exists):
    """A SQLite store on a read-only or full filesystem (one that exists, or one still to
    be made in a folder not there yet) is one line and exit 2 from the pre-launch check,
    before Ray starts or a run exists; the storage folder on another disk is fine."""
    import errno

    from orchestrator.run import driver
    from orchestrator.store.client import ensure_store

    (tmp_path / "full").mkdir()
    store = tmp_path / "full" / ("mlflow.db" if exists else "new/mlflow.db")
    uri = f"sqlite:///{store}"
    if exists:
        ensure_store(uri)
    sweep = write_sweep(tmp_path / "s.yaml", "edges", {"width": [16]}, storage_path=str(tmp_path / "ckpt"))
    monkeypatch.setattr(driver, "start_ray", lambda address: pytest.fail("Ray started"))
    _refuse_writes_under(monkeypatch, tmp_path / "full", getattr(errno, code))
    rc = main(["run", str(sweep), "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err[-1].startswith(f"error: tracking store {uri}: cannot write {tmp_path / 'full'}") \
        and f"({what})" in err[-1], err
    assert "pass --tracking-uri" in err[-1] and (("free space there" in err[-1]) == (code == "ENOSPC"))
    assert not (tmp_path / "ckpt").exists()


def test_a_full_storage_disk_is_caught_before_launch(tmp_path, capsys, monkeypatch):
    import errno

    from orchestrator.run import driver

    sweep = write_sweep(tmp_path / "s.yaml", "edges", {"width": [16]}, storage_path=str(tmp_path / "ckpt"))
    monkeypatch.setattr(driver, "start_ray", lambda address: pytest.fail("Ray started"))
    _refuse_writes_under(monkeypatch, tmp_path, errno.ENOSPC)
    rc = main(["run", str(sweep), "--tracking-uri", f"sqlite:///{tmp_path / 'elsewhere.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == (f"error: storage {tmp_path / 'ckpt'}: cannot write in {tmp_path} (No space "
                                   f"left on device); pass --storage (or storage_path:) a folder every "
                                   f"node can write, or free space there"), err


def test_an_edited_sweep_names_its_superseded_runs_in_plan_and_status(tmp_path, capsys):
    """Epochs 2 -> 3 in the sweep file makes both trials new (the trial key holds every
    field that can change a result); `plan` and `status` say which earlier runs that
    leaves behind and why, rather than only "2 new"."""
    from mlflow.tracking import MlflowClient

    from orchestrator.run.sweep import expand, load_sweep
    from orchestrator.store import write
    from orchestrator.store.client import ensure_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = write_sweep(tmp_path / "s.yaml", "edited", {"width": [16, 8]}, storage_path=str(tmp_path / "ckpt"))
    ensure_store(uri)
    c = MlflowClient(uri)
    exp = c.create_experiment("edited")
    for t in expand(load_sweep(sweep)):     # the sweep as it was: 2 epochs, both finished
        rid = write.create_run(uri, exp, t, load_sweep(sweep), {}, t.config)
        c.set_terminated(rid, "FINISHED")
    write_sweep(tmp_path / "s.yaml", "edited", {"width": [16, 8]}, base={"epochs": 3},
                storage_path=str(tmp_path / "ckpt"))
    line = ("superseded: 2 earlier run(s) (their trials changed: epochs 2 -> 3): w16-b6-noreg-s0, w8-b6-noreg-s0; "
            "kept in MLflow, not resumed, left out of the tables where newer runs of their cell exist")
    for command in ("plan", "status"):
        assert main([command, str(sweep), "--tracking-uri", uri]) == 0
        out = capsys.readouterr().out
        assert line in out.splitlines(), out
    assert "2 trials: 2 pending" in out
