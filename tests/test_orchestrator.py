"""The orchestrator end to end, on CPU, through a real local Ray and a real MLflow store.

Trials are tiny (conv widths / 16, a few hundred generated images) so each takes seconds;
most of the time here is Ray and worker start-up.
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from e2e import EPOCHS, ROOT, cli, finish, free_port, mlflow_server, runs, steps, stop, wait_for, write_sweep

pytestmark = pytest.mark.slow      # whole sweeps through a real Ray and MLflow


HEAD = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                      text=True, check=True).stdout.strip()


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("fuse,resources", [(1, {"cpu": 0.5}), (4, {"cpu": 1})],
                         ids=["4-processes-at-once", "one-fused-group"])
def test_sweep_end_to_end_idempotent_and_grows(tmp_path, uri, fuse, resources):
    """4 trials (4 processes writing one SQLite store at once, or one fused group: one
    group at a time) all finish with their metrics; a second run launches nothing; a grown
    axis runs only the new trials; tables are written."""
    sweep = write_sweep(tmp_path / "s.yaml", "e2e", {"width": [16, 8], "regularizer": [False, True]},
                        base={"representation_analysis": True, "analysis_samples": 12},
                        resources=resources, fuse=fuse, max_concurrent=0 if fuse == 1 else 1,
                        reproduces=["table1", "table2", "figure4", "figure5"])
    finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    first = runs(uri, "e2e")
    assert len(first) == 4 and {r.info.status for r in first} == {"FINISHED"}
    for r in first:
        assert steps(uri, r.info.run_id) == [1, 2]
        assert steps(uri, r.info.run_id, "test_accuracy") == [1, 2]
        m = r.data.metrics
        assert 0 <= m["test_accuracy"] <= 100
        assert m["generalization_gap"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
        assert m["model_param_bytes"] > 0 and "peak_memory_mb" not in m      # CPU: absent
        assert r.data.params["width"] in ("16", "8") and r.data.params["epochs"] == "2"
        assert {"trial_key", "sweep", "git_commit", "version.torch", "node_ip"} <= set(r.data.tags)
        # provenance tells the truth: the code's own commit (the sweep file is outside the
        # repository), and params are what the trial ran with
        assert r.data.tags["git_commit"].removesuffix("-dirty") == HEAD
        assert r.data.params["threads"] == "1"           # its placement: one core (or half)
        assert r.data.params["data_dir"] == str((tmp_path / "data").resolve())
        others = {t.info.run_name for t in first} - {r.info.run_name}
        assert set(r.data.tags["fused_with"].split(",")) == (others if fuse > 1 else {"none"})
    results = tmp_path / "results" / "e2e"
    assert {"table1.md", "table2.tex", "table1.csv", "report.md"} <= {p.name for p in results.iterdir()}
    figures = sorted(p.name for p in results.glob("figure*.png"))
    assert any(f.startswith("figure4") for f in figures) and any(f.startswith("figure5") for f in figures)
    from mlflow.tracking import MlflowClient
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(first[0].info.run_id)}
    assert {"representation_analysis.json", "trial_config.json", "sweep"} <= artifacts

    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    assert "nothing to run" in out and len(runs(uri, "e2e")) == 4

    write_sweep(sweep, "e2e", {"width": [16, 8, 4], "regularizer": [False, True]},
                base={"representation_analysis": True, "analysis_samples": 12},
                resources={"cpu": 1}, fuse=fuse, max_concurrent=0 if fuse == 1 else 1)
    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    assert "2 new, 0 resuming, 4 finished (skipped)" in out
    after = runs(uri, "e2e")
    assert len(after) == 6 and {r.info.status for r in after} == {"FINISHED"}
    assert {r.info.run_id for r in first} <= {r.info.run_id for r in after}


def test_two_seed_sweep_leaves_one_cell_run_per_cell_and_a_rerun_adds_none(tmp_path, uri):
    """2 cells x 2 seeds: `run` leaves one FINISHED parent run per cell, nested above its
    two seeds (MLflow's parent tag), whose per-epoch mean/std/n are the seeds'; `status`
    counts trials only; a rerun writes no second parent."""
    import statistics

    from mlflow.tracking import MlflowClient

    sweep = write_sweep(tmp_path / "s.yaml", "seeds", {"regularizer": [False, True]}, seeds=[0, 1],
                        resources={"cpu": 1}, fuse=4, max_concurrent=1)
    finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    trials, cells = runs(uri, "seeds"), runs(uri, "seeds", cells=True)
    assert len(trials) == 4 and sorted(c.info.run_name for c in cells) == ["w32-b6-noreg", "w32-b6-reg"]
    c = MlflowClient(uri)
    for cell in cells:
        seeds = [t for t in trials if t.data.tags.get("mlflow.parentRunId") == cell.info.run_id]
        assert sorted(t.info.run_name for t in seeds) == [f"{cell.info.run_name}-s0", f"{cell.info.run_name}-s1"]
        assert cell.info.status == "FINISHED" and "trial_key" not in cell.data.tags
        for metric in ("test_accuracy", "train_loss"):
            per_seed = [{m.step: m.value for m in c.get_metric_history(t.info.run_id, metric)} for t in seeds]
            mean = {m.step: m.value for m in c.get_metric_history(cell.info.run_id, f"{metric}_mean")}
            std = {m.step: m.value for m in c.get_metric_history(cell.info.run_id, f"{metric}_std")}
            n = {m.step: m.value for m in c.get_metric_history(cell.info.run_id, f"{metric}_n")}
            assert sorted(mean) == sorted(std) == sorted(n) == [1, 2]
            for epoch in (1, 2):
                values = [h[epoch] for h in per_seed]
                assert mean[epoch] == pytest.approx(statistics.mean(values))
                assert std[epoch] == pytest.approx(statistics.stdev(values))
                assert n[epoch] == 2
    status = finish(cli(tmp_path, "status", str(sweep), "--tracking-uri", uri))
    assert "sweep seeds: 4 trials: 4 finished" in status

    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    assert "nothing to run" in out and "cell run" not in out
    assert {r.info.run_id for r in runs(uri, "seeds", cells=True)} == {r.info.run_id for r in cells}
    assert len(runs(uri, "seeds")) == 4


def test_killed_driver_resumes_in_same_runs(tmp_path, uri):
    """Kill the driver mid-sweep (a fused group of 2); `run` again continues each trial in
    its own MLflow run from its checkpoint: no duplicate runs, no duplicate or missing steps."""
    sweep = write_sweep(tmp_path / "s.yaml", "crash", {"regularizer": [False, True]},
                        base={"epochs": EPOCHS, "train_samples": 600}, resources={"cpu": 1},
                        max_concurrent=1)
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    wait_for(lambda: any(steps(uri, r.info.run_id) and r.info.status == "RUNNING"
                         for r in runs(uri, "crash")), 600, "a trial's first epoch", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r.info.run_id: steps(uri, r.info.run_id) for r in runs(uri, "crash")}
    assert any(len(s) < EPOCHS for s in before.values())   # interrupted mid-trial

    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    assert "resuming" in out
    after = runs(uri, "crash")
    assert {r.info.run_id for r in after} == set(before)    # the same runs, no new ones
    for r in after:
        assert r.info.status == "FINISHED"
        assert steps(uri, r.info.run_id) == list(range(1, EPOCHS + 1))
        if before[r.info.run_id]:                          # resumed, not restarted
            assert int(r.data.tags["resumed_from_epoch"]) >= 1


def test_killed_trial_worker_is_retried_from_checkpoint(tmp_path, uri):
    """SIGKILL the worker process of a fused group of 2: Tune retries the group
    (max_failures) and each member resumes from its last checkpoint in its own run."""
    sweep = write_sweep(tmp_path / "s.yaml", "retry", {"regularizer": [False, True]},
                        base={"epochs": EPOCHS, "train_samples": 600}, resources={"cpu": 1},
                        max_concurrent=1)       # one group at a time: both trials in one
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)

    def running_with_epoch():
        rs = [r for r in runs(uri, "retry") if r.info.status == "RUNNING"]
        return rs[0] if rs and steps(uri, rs[0].info.run_id) else None
    run = wait_for(running_with_epoch, 600, "the trial's first epoch", proc)
    os.kill(int(run.data.tags["pid"]), signal.SIGKILL)
    finish(proc)
    after = runs(uri, "retry")
    assert len(after) == 2 and {r.info.status for r in after} == {"FINISHED"}
    for r in after:
        assert steps(uri, r.info.run_id) == list(range(1, EPOCHS + 1))
        assert r.data.tags["pid"] != run.data.tags["pid"]             # a new worker
    resumed = [int(r.data.tags["resumed_from_epoch"]) for r in after]
    assert min(resumed) >= 1                                           # both from checkpoints


@pytest.mark.parametrize("body, message", [
    ("name: bad\nbase: {batch_size: 1}\n", "batch_size=1"),
    ("name: bad\ngrid: {width: []}\n", "grid.width"),
    ("name: bad\nbase: {dataset: imagenet}\n", "dataset='imagenet'"),
    ("name: bad\ngird: {width: [8]}\n", "gird"),
], ids=["batch-1", "empty-axis", "unknown-dataset", "unknown-key"])
def test_bad_sweep_launches_nothing(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    proc = cli(tmp_path, "run", str(path))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and message in out and "bad.yaml" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_paper_size_on_cpu_needs_yes(tmp_path, uri):
    proc = cli(tmp_path, "run", str(ROOT / "sweeps" / "table1.yaml"), "--tracking-uri", uri)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2 and "--yes" in out and "hours" in out
    assert runs(uri, "table1") == []                        # nothing launched


def test_http_tracking_server(tmp_path):
    """The same sweep against a `mlflow server` on localhost."""
    port = free_port()
    server = mlflow_server(tmp_path, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        sweep = write_sweep(tmp_path / "s.yaml", "http", {"regularizer": [False, True]},
                            resources={"cpu": 1})
        out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
        assert "2 new" in out
        rs = runs(uri, "http")
        assert len(rs) == 2 and {r.info.status for r in rs} == {"FINISHED"}
        assert all(steps(uri, r.info.run_id) == [1, 2] for r in rs)
        status = finish(cli(tmp_path, "status", str(sweep), "--tracking-uri", uri))
        assert "2 finished" in status
    finally:
        stop(server)
