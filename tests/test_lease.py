"""One driver per sweep (orchestrator/run/lease.py), in one process: the lease appears
whole, a second driver is refused naming the first, it is refreshed from the moment it is
taken, and a dead holder's lease is taken over."""
import json
import os
import time

import pytest

from orchestrator.run import lease as lease_module
from orchestrator.run.lease import LEASE, Lease, LeaseHeld


def test_a_second_driver_is_refused_naming_the_first_and_released_leases_are_free(tmp_path):
    first = Lease(tmp_path)
    assert first.acquire() is None
    holder = json.loads((tmp_path / LEASE).read_text())      # whole from the start
    assert holder["id"] == first.me["id"] and holder["pid"] == os.getpid()
    with pytest.raises(LeaseHeld, match=rf"another `run` of this sweep is active \(pid {os.getpid()} on "
                                        rf".*; lease {tmp_path / LEASE}\)\. Wait for it to finish"):
        Lease(tmp_path).acquire()
    first.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lease, no private file left
    second = Lease(tmp_path)
    assert second.acquire() is None
    second.release()


def test_the_lease_is_refreshed_from_the_moment_it_is_taken(tmp_path, monkeypatch):
    """Before beat(): a driver whose Ray takes minutes to start keeps its lease fresh."""
    monkeypatch.setattr(lease_module, "BEAT_S", 0.05)
    held = Lease(tmp_path)
    held.acquire()
    try:
        taken = json.loads((tmp_path / LEASE).read_text())["beat"]
        deadline = time.time() + 60
        while json.loads((tmp_path / LEASE).read_text())["beat"] == taken:
            assert time.time() < deadline, "the lease was not refreshed within 60 s"
            time.sleep(0.02)
        calls = []
        held.beat(calls.append)                              # now MLflow hears each refresh too
        assert calls and calls[0]["id"] == held.me["id"]
    finally:
        held.release()
    assert calls[-1]["released"] is True


def test_a_dead_drivers_lease_is_taken_over_with_a_note(tmp_path):
    dead = {**Lease(tmp_path).me, "pid": 2 ** 22 + 7, "proc_start": "never", "beat": time.time()}
    (tmp_path / LEASE).write_text(json.dumps(dead))
    taker = Lease(tmp_path)
    note = taker.acquire()
    try:
        assert note.startswith(f"took over the lease of a driver that stopped answering (pid {dead['pid']}")
        assert json.loads((tmp_path / LEASE).read_text())["id"] == taker.me["id"]
        assert (tmp_path / f"{LEASE}.stale-{taker.me['id']}").is_file()
    finally:
        taker.release()
