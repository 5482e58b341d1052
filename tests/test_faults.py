"""Faults a real sweep meets, each reproduced end to end (real Ray, real SQLite, a real
`mlflow server`): nothing lost, nothing run twice, nothing left hanging, no traceback for
a set-up mistake. Every wait polls for its event with a generous limit.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from e2e import EPOCHS, cli, finish, free_port, mlflow_server, runs, steps, stop, wait_for, write_sweep
from orchestrator.run.sweep import expand, load_sweep

pytestmark = pytest.mark.slow      # the CLI and the driver end to end: a Ray start or a subprocess per test


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def running_with_epoch(uri: str, name: str):
    return lambda: any(r.info.status == "RUNNING" and steps(uri, r.info.run_id) for r in runs(uri, name))


def long_sweep(tmp_path: Path, name: str, **top) -> Path:
    return write_sweep(tmp_path / "s.yaml", name, {"regularizer": [False, True]},
                       base={"epochs": EPOCHS, "train_samples": 600}, resources={"cpu": 1}, **top)


def test_an_outage_of_the_tracking_server_loses_no_epoch(tmp_path):
    """The server dies mid-trial for longer than the retries: the trials fail. When it is
    back, `run` resumes them and re-logs every epoch their checkpoints hold that never
    reached MLflow: steps 1..N exactly, no gap (the defect: [1,2,4,5,6]) and no duplicate."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    sweep = long_sweep(tmp_path, "outage", max_failures=0)
    server = mlflow_server(tmp_path, port)
    env = {"SWEEP_TRACKING_RETRY_S": "3"}                     # give up on the store quickly
    try:
        proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri, env=env)
        wait_for(running_with_epoch(uri, "outage"), 600, "a trial's first epoch", proc)
        stop(server, signal.SIGKILL)                           # down for good, mid-trial
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode != 0, out
    finally:
        stop(server)
    server = mlflow_server(tmp_path, port)                     # back, same store
    try:
        out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
        assert "2 resuming" in out
        after = runs(uri, "outage")
        assert len(after) == 2 and {r.info.status for r in after} == {"FINISHED"}
        for r in after:
            assert steps(uri, r.info.run_id) == list(range(1, EPOCHS + 1))
            assert steps(uri, r.info.run_id, "test_accuracy") == list(range(1, EPOCHS + 1))
            assert "error" not in r.data.tags                    # the outage's error is gone
    finally:
        stop(server)


class HeldTrials:
    """Keeps the trial processes of a sweep stopped (SIGSTOP) from the moment each one
    shows in MLflow (the `pid` tag its run gets when it starts) until release(): their
    driver cannot finish, so it holds its lease (and beats it: only the trials are
    stopped, not the driver or Ray) for as long as a test needs, however slow the
    machine. A trial is never left stopped holding a lock of the SQLite store (the other
    driver would then wait on it): after each stop the store must take an exclusive lock
    at once, else the trials go on for a moment and are stopped again at the next poll."""

    def __init__(self, uri: str, name: str, drivers: list):
        self.uri, self.name, self.drivers = uri, name, drivers
        self.db = Path(uri[len("sqlite:///"):])
        self.held: set[int] = set()

    def __enter__(self) -> "HeldTrials":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def until(self, event, what: str, timeout: float = 600) -> None:
        """Hold every trial process that appears, polling, until `event()` is true."""
        deadline = time.time() + timeout
        while not event():
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            self._hold_new()
            time.sleep(0.2)

    def running(self) -> bool:
        """Whether a held trial has not finished: its driver cannot end before release()."""
        return any(r.info.status == "RUNNING" and int(r.data.tags.get("pid", 0)) in self.held
                   for r in runs(self.uri, self.name))

    def _hold_new(self) -> None:
        ours = {d.pid for d in self.drivers}
        new = {int(r.data.tags["pid"]) for r in runs(self.uri, self.name) if "pid" in r.data.tags}
        new = {pid for pid in new - self.held if _sid(pid) in ours}   # of our drivers' sessions
        if not new:
            return
        for pid in new:
            os.kill(pid, signal.SIGSTOP)
        self.held |= new
        if not _store_unlocked(self.db):
            self.release()

    def release(self) -> None:
        for pid in self.held:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.held = set()


def _sid(pid: int) -> int | None:
    """The session of a process: a driver's own pid (cli starts each in a new session),
    for its Ray processes too (each trial process leads a process group of its own)."""
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _store_unlocked(db: Path) -> bool:
    """Whether no process holds a lock of the SQLite store now (an exclusive lock is
    taken and given back at once)."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def refusal(holder: int, lease: Path) -> re.Pattern:
    """The line of a driver refused by the lease of driver `holder` (orchestrator/run/lease.py)."""
    return re.compile(
        rf"^error: another `run` of this sweep is active \(pid {holder} on {re.escape(socket.gethostname())}, "
        rf"started \d\d:\d\d:\d\d, last heartbeat \d+ s ago; lease {re.escape(str(lease))}\)\. "
        rf"Wait for it to finish, or stop it \(Ctrl-C\); if it died, its lease expires \d+ s from now$")


def assert_ran_once(uri: str, name: str, sweep: Path, holder: int, lease: Path) -> None:
    """Each trial of the sweep has one run, FINISHED, with its epoch metrics at steps
    1..EPOCHS exactly once; the lease is given back (its file gone, the heartbeat released)."""
    after = runs(uri, name)
    assert sorted(r.data.tags["trial_key"] for r in after) == sorted(t.key for t in expand(load_sweep(sweep)))
    for r in after:
        assert r.info.status == "FINISHED", r.info
        for metric in ("train_loss", "test_accuracy", "last_epoch"):
            assert steps(uri, r.info.run_id, metric) == list(range(1, EPOCHS + 1)), (r.info.run_name, metric)
    assert not lease.exists()
    beat = json.loads(MlflowClient(uri).get_experiment_by_name(name).tags["driver_heartbeat"])
    assert beat["pid"] == holder and beat["released"] is True


def assert_refused(proc, out: str, holder: int, lease: Path) -> None:
    """`proc` exited 2 with the lease's one error line, naming the holder, as its last
    line, having started nothing (no Ray, no run, no traceback)."""
    assert proc.returncode == 2, out
    lines = out.strip().splitlines()
    assert refusal(holder, lease).match(lines[-1]), out
    assert [line for line in lines if line.startswith("error")] == lines[-1:], out
    assert "Traceback" not in out and "on: Ray cluster" not in out and "groups done" not in out, out


def test_a_second_driver_on_a_running_sweep_is_refused(tmp_path, uri):
    """While one `run` trains, a second one of the same sweep exits 2 at once, naming the
    first; the first finishes alone: one FINISHED run per trial, every step once. The
    first's trials are held (stopped) from their start until the second has exited, so the
    second always meets a live, beating lease, however slow its start."""
    sweep = long_sweep(tmp_path, "two")
    lease = tmp_path / "ray_results" / "two" / "driver.lease"
    first = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    second = None
    try:
        with HeldTrials(uri, "two", [first]) as held:
            held.until(lambda: held.running() or first.poll() is not None, "a trial of the first driver held")
            assert first.poll() is None, first.communicate()[0]
            t0 = time.time()
            second = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
            held.until(lambda: second.poll() is not None, "the second driver to exit", timeout=300)
            took = time.time() - t0
            assert first.poll() is None                        # the first still runs (held)
        out = second.communicate()[0]
        assert_refused(second, out, first.pid, lease)
        assert took < 120, took
        first_out = finish(first, timeout=600)
        assert "2 of 2 trials finished" in first_out and not driver_traceback(first_out), first_out
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc, signal.SIGKILL)
    assert_ran_once(uri, "two", sweep, first.pid, lease)


def driver_traceback(out: str) -> bool:
    """A traceback the driver printed. Lines Ray forwards from its workers start with
    `(name pid=N)`: at shutdown a worker may print "Exception ignored ... SystemExit" from
    Ray's own SIGTERM handler, which is not ours (a trial's failure shows in the exit code)."""
    return any("Traceback" in line and not re.search(r"pid=\d+\)", line) for line in out.splitlines())


def test_two_drivers_started_at_once_on_an_empty_store_run_the_sweep_once(tmp_path, uri):
    """Two `run`s of one sweep started together on an empty store race for its lease:
    exactly one wins (the lease file is created with O_EXCL: of two drivers, one creates
    it, the other finds it), trains every trial once, and exits 0; the other exits 2 with
    the lease's error line naming the winner, and starts nothing. That the loser meets a
    live lease does not depend on how the two are scheduled: the winner's trials are held
    (stopped) from their start until the loser has exited, so the winner cannot finish
    and give the lease back first (after which the loser would find nothing to run)."""
    sweep = long_sweep(tmp_path, "race")
    lease = tmp_path / "ray_results" / "race" / "driver.lease"
    procs = [cli(tmp_path, "run", str(sweep), "--tracking-uri", uri) for _ in range(2)]
    try:
        with HeldTrials(uri, "race", procs) as held:
            held.until(lambda: any(p.poll() is not None for p in procs), "a driver to exit")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        out = loser.communicate()[0]
        assert_refused(loser, out, winner.pid, lease)
        winner_out = finish(winner, timeout=600)
        assert "2 new" in winner_out and "2 of 2 trials finished" in winner_out, winner_out
        assert not driver_traceback(winner_out), winner_out
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc, signal.SIGKILL)
    assert_ran_once(uri, "race", sweep, winner.pid, lease)


@pytest.mark.parametrize("command", [["run"], ["plan"], ["status"], ["tables"]],
                         ids=["run", "plan", "status", "tables"])
def test_an_unreachable_tracking_server_fails_within_seconds(tmp_path, command):
    sweep = write_sweep(tmp_path / "s.yaml", "gone", {"regularizer": [False]})
    uri = f"http://127.0.0.1:{free_port()}"                    # nothing listens there
    t0 = time.time()
    proc = cli(tmp_path, *command, str(sweep), "--tracking-uri", uri)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert f"the MLflow tracking server at {uri} does not answer" in out and "Traceback" not in out
    assert time.time() - t0 < 60                                # the defect: silent for ~50 min
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_says_so_and_resumes(tmp_path, uri, sig):
    """Ctrl-C (or SIGTERM) stops the sweep: exit 130 (not 0, not a native stack dump), the
    runs KILLED, no tables, the command to resume printed; running it again finishes them
    in the same runs, without a stale error tag."""
    sweep = long_sweep(tmp_path, "stop")
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    wait_for(running_with_epoch(uri, "stop"), 600, "a trial's first epoch", proc)
    os.kill(proc.pid, sig)                                      # the driver alone, as a shell does
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "run again" in out and f"python -m orchestrator run {sweep}" in out
    assert "trials finished" not in out.split("interrupted")[0]    # no success line before it
    assert not (tmp_path / "results").exists()                     # no tables of a half sweep
    stopped = runs(uri, "stop")
    assert {r.info.status for r in stopped} == {"KILLED"}
    status = finish(cli(tmp_path, "status", str(sweep), "--tracking-uri", uri))
    assert "2 killed" in status
    finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    for r in runs(uri, "stop"):
        assert r.info.status == "FINISHED" and steps(uri, r.info.run_id) == list(range(1, EPOCHS + 1))
        assert not {"error", "interrupted"} & set(r.data.tags)


def test_a_killed_driver_shows_interrupted_and_leaves_nothing_behind(tmp_path, uri):
    sweep = long_sweep(tmp_path, "dead")
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    wait_for(running_with_epoch(uri, "dead"), 600, "a trial's first epoch", proc)
    os.kill(proc.pid, signal.SIGKILL)                            # the driver only
    proc.wait()
    status = finish(cli(tmp_path, "status", str(sweep), "--tracking-uri", uri))
    assert "interrupted" in status and "resumes them" in status  # not "running" forever
    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri), timeout=600)
    assert "took over the lease" in out                          # no wait for the lease to age
    assert all(r.info.status == "FINISHED" for r in runs(uri, "dead"))
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == proc.pid]
    assert left == [], "the dead driver's Ray processes are still there"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_corrupt_checkpoint_fails_once_naming_the_file(tmp_path, uri):
    """A trial whose only checkpoint is garbage fails at once (not 3 attempts per run),
    its error names the file and what to do; its sweep-mate trains on."""
    sweep = write_sweep(tmp_path / "s.yaml", "corrupt", {"regularizer": [False, True]}, resources={"cpu": 1},
                        max_concurrent=1)       # one group of both
    bad = expand(load_sweep(sweep))[0]
    folder = tmp_path / "ray_results" / "corrupt" / bad.key
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    assert out.count("started") == 1                             # one attempt: not retried
    by_name = {r.info.run_name: r for r in runs(uri, "corrupt")}
    assert by_name[bad.name].info.status == "FAILED"
    error = by_name[bad.name].data.tags["error"]
    assert str(folder / "checkpoint.pt") in error and f"Delete {folder}" in error
    assert {r.info.status for n, r in by_name.items() if n != bad.name} == {"FINISHED"}
    # `run` says so itself: the member's message, and the count in the progress line
    said = [line for line in out.splitlines() if f"{bad.name} FAILED: " in line]
    assert len(said) == 1 and str(folder / "checkpoint.pt") in said[0], out
    assert "1 trial(s) failed |" in said[0] and "1/1 groups done, 0 running, 1 trial(s) failed" in out


def write_cifar10(root: Path, damage=None) -> Path:
    """A tiny CIFAR-10 folder in torchvision's layout; `damage(folder)` breaks a file."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = (np.arange(12 * 3072) % 251 + i).astype(np.uint8).reshape(12, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [j % 10 for j in range(12)]}, f)
    if damage:
        damage(folder)
    return folder


@pytest.mark.parametrize("damage,said", [
    (lambda f: (f / "data_batch_1").write_bytes((f / "data_batch_1").read_bytes()[:500]), "data_batch_1"),
    (lambda f: pickle.dump({b"data": pickle.load(open(f / "test_batch", "rb"), encoding="bytes")[b"data"],
                            b"labels": list(range(11))}, open(f / "test_batch", "wb")), "test_batch"),
], ids=["truncated", "labels-one-short"])
def test_bad_cifar_files_stop_the_sweep_before_any_trial(tmp_path, uri, damage, said):
    write_cifar10(tmp_path / "data", damage)
    sweep = write_sweep(tmp_path / "s.yaml", "data", {"regularizer": [False]},
                        base={"dataset": "cifar10", "data_dir": str(tmp_path / "data"),
                              "train_samples": 0, "test_samples": 0})
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert out.startswith("error:") or "\nerror:" in out
    assert str(tmp_path / "data" / "cifar-10-batches-py" / said) in out and "Traceback" not in out
    assert not (tmp_path / "mlflow.db").exists()                 # before any run was created


@pytest.mark.parametrize("args,said", [
    (["--storage", "FILE"], "is a file, not a folder"),
    (["--resources", "not json"], "--resources 'not json' is not JSON"),
    (["--resources", '{"gpus": 1}'], "resources.gpus is not allowed"),
], ids=["storage-is-a-file", "resources-not-json", "resources-unknown-key"])
def test_set_up_mistakes_are_one_error_line_before_anything_runs(tmp_path, uri, args, said):
    sweep = write_sweep(tmp_path / "s.yaml", "setup", {"regularizer": [False]})
    (tmp_path / "FILE").write_text("not a folder")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri, *args)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and said in out, out
    assert "Traceback" not in out and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["plan", "status"])
def test_a_mistyped_store_path_is_not_created_by_a_read_only_command(tmp_path, command):
    sweep = write_sweep(tmp_path / "s.yaml", "typo", {"regularizer": [False, True]})
    typo = tmp_path / "mlfow.db"
    out = finish(cli(tmp_path, command, str(sweep), "--tracking-uri", f"sqlite:///{typo}"))
    assert f"no MLflow store at {typo} yet" in out
    assert not typo.exists() and not (tmp_path / "mlruns").exists()


def test_dry_run_leaves_the_folder_as_it_was(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", "dry", {"regularizer": [False, True]}, max_concurrent=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = finish(cli(tmp_path, "run", str(sweep), "--dry-run"))
    assert "would run 2 together" in out and "1 at once (max_concurrent: 1" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_run_prints_the_link_that_opens_the_runs(tmp_path, uri):
    sweep = write_sweep(tmp_path / "s.yaml", "link", {"regularizer": [False]}, resources={"cpu": 1})
    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri))
    experiment = MlflowClient(uri).get_experiment_by_name("link")
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in out
    assert experiment.tags["mlflow.note.content"] == "test sweep"   # the sweep's description


def oom_sweep(tmp_path: Path, name: str) -> Path:
    """Two classes of 4 trials (momentum 0 and 0.5), a fused group each, both at once."""
    return write_sweep(tmp_path / "s.yaml", name, {"momentum": [0.0, 0.5], "width": [16, 8],
                                                   "regularizer": [False, True]},
                       resources={"cpu": 1}, fuse=4)


def test_an_out_of_memory_group_is_repacked_and_resumes_while_the_others_go_on(tmp_path, uri):
    """A CUDA OOM (injected: trainer/faults.py) at epoch 2 in the momentum-0.5 group of 4: one
    error line naming it, a re-pack (split in halves: no GPU share to double), each member
    resumes from its epoch-1 checkpoint; the other group is untouched; every trial
    FINISHED with epochs 1..2 exactly once."""
    sweep = oom_sweep(tmp_path, "oom")
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri,
               env={"TRAINER_INJECT_OOM": "epoch=2,step=3,members=3,momentum=0.5"})
    out = finish(proc, timeout=600)
    lines = [line for line in out.splitlines() if "out of memory: group" in line]
    assert len(lines) == 1, out
    b4 = [t for t in expand(load_sweep(sweep)) if t.config["momentum"] == 0.5]
    assert all(t.name in lines[0] for t in b4) and "forecast peak" in lines[0]
    assert "re-packed: split in halves of 2 and 2" in lines[0]
    assert out.count("started (2 trials fused), re-packed: split in halves") == 2
    by_name = {r.info.run_name: r for r in runs(uri, "oom")}
    assert len(by_name) == 8 and {r.info.status for r in by_name.values()} == {"FINISHED"}
    for name, r in by_name.items():
        assert steps(uri, r.info.run_id) == [1, 2], name
        tags = r.data.tags
        if r.data.params["momentum"] == "0.5":
            assert tags["repacked"].startswith("split in halves of 2 and 2 after an OOM in")
            assert "injected by TRAINER_INJECT_OOM at epoch 2, step 3" in tags["oom"]
            assert tags["fused_group_size"] == "2" and tags["resumed_from_epoch"] == "1"
        else:
            assert tags["repacked"] == "no" and "oom" not in tags
            assert tags["fused_group_size"] == "4" and tags["resumed_from_epoch"] == "0"


def test_a_group_that_runs_out_of_memory_at_every_packing_fails_with_the_line(tmp_path, uri):
    """An OOM whatever the packing: 4 -> 2 + 2 -> 1 + 1 + 1 + 1, then nothing is left to
    change: those trials are FAILED with the error line (not retried by max_failures), and
    the other group FINISHED."""
    sweep = oom_sweep(tmp_path, "oom-fail")
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri,
               env={"TRAINER_INJECT_OOM": "epoch=1,step=2,momentum=0.5"})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    ooms = [line for line in out.splitlines() if "out of memory: group" in line]
    assert sum("re-packed: split in halves" in line for line in ooms) == 3   # 4 -> 2+2, each 2 -> 1+1
    failed = [line for line in ooms if "FAILED (" in line]
    assert len(failed) == 4 and all("FAILED (one trial alone: nothing left to change)" in f for f in failed), out
    by_name = {r.info.run_name: r for r in runs(uri, "oom-fail")}
    for name, r in by_name.items():
        if r.data.params["momentum"] == "0.5":
            assert r.info.status == "FAILED" and "out of memory: group" in r.data.tags["error"]
            assert steps(uri, r.info.run_id) == []                      # it never finished an epoch
        else:
            assert r.info.status == "FINISHED" and steps(uri, r.info.run_id) == [1, 2]


def test_a_full_storage_disk_stops_the_sweep_with_one_line_and_resumes(tmp_path, uri):
    """ENOSPC (injected: trainer/faults.py) at every epoch-2 checkpoint of two groups that
    run at once: no attempt is retried, the sweep stops, and `run` exits 3 with one line
    naming the file and "no space left" and the command to resume; the runs are FAILED
    with that line. With space again, `run` resumes each from its epoch-1 checkpoint."""
    sweep = write_sweep(tmp_path / "s.yaml", "full", {"regularizer": [False, True]},
                        base={"epochs": 3}, resources={"cpu": 1})
    proc = cli(tmp_path, "run", str(sweep), "--tracking-uri", uri,
               env={"TRAINER_INJECT_ENOSPC": "epoch=2"})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, out
    said = [line for line in out.splitlines() if "no space left" in line.lower()]
    assert len(said) == 1 and said[0].startswith("error: no space left on device: "), out
    storage = tmp_path / "ray_results"
    assert f"checkpoint.pt.tmp (in the storage folder {storage})" in said[0]
    assert "0 of 2 trials finished, 2 not (their runs are FAILED with this error)" in said[0]
    assert f"python -m orchestrator run {sweep} --tracking-uri {uri}" in out.split(said[0])[1]
    assert 1 <= out.count(" started") <= 2 and not driver_traceback(out), out   # no attempt retried
    line = {r.data.tags["trial_key"]: f"no space left on device: {storage / 'full' / r.data.tags['trial_key'] / 'checkpoint.pt.tmp'} "
                                      f"(in the storage folder {storage})" for r in runs(uri, "full")}
    done = {}
    for r in runs(uri, "full"):
        # The group that met the full disk names its own file; the other one (stopped by the
        # sweep, perhaps before its own epoch 2 on a loaded machine) carries that first line.
        assert r.info.status == "FAILED" and r.data.tags["error"] in line.values()
        done[r.info.run_id] = steps(uri, r.info.run_id)
        if r.data.tags["error"] == line[r.data.tags["trial_key"]]:       # its partial file is gone
            assert done[r.info.run_id] == [1] and not (storage / "full" / r.data.tags["trial_key"]
                                                       / "checkpoint.pt.tmp").exists()
        assert done[r.info.run_id] in ([], [1])
    assert [1] in done.values()
    out = finish(cli(tmp_path, "run", str(sweep), "--tracking-uri", uri), timeout=600)
    for r in runs(uri, "full"):
        assert r.info.status == "FINISHED" and steps(uri, r.info.run_id) == [1, 2, 3]
        assert r.data.tags["resumed_from_epoch"] == str(len(done[r.info.run_id])) and "error" not in r.data.tags
