"""One driver per sweep at a time, and a heartbeat that tells a live sweep from a dead one.

    lease = Lease(storage / sweep.name)
    lease.acquire()                  # raises LeaseHeld while another driver's lease is fresh;
                                     # from here the file is refreshed every BEAT_S seconds
    lease.beat(write)                # and each refresh also calls write() (MLflow's tag)
    ...
    lease.release()

The lease is a file, `<storage>/<sweep>/driver.lease`, written whole in a private file and
linked into place (atomic, so two drivers started at once cannot both take it, and a reader
never sees it half written), and rewritten every BEAT_S seconds from the moment it is taken. A lease
not rewritten for TTL_S seconds belongs to a driver that died (SIGKILL, a lost node): the
next driver takes it over, and the dead driver's unfinished trials resume. `write` is how
the caller mirrors the heartbeat into MLflow (an experiment tag), so `status` can tell
"running" from "interrupted" from any machine that sees the tracking store, and a driver
using another storage folder still sees the sweep is taken.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

BEAT_S = 15.0       # seconds between heartbeats
TTL_S = 90.0        # a heartbeat older than this: its driver is gone
LEASE = "driver.lease"


class LeaseHeld(RuntimeError):
    """Another driver runs this sweep; the message names it and what to do."""


def describe(holder: dict, age: float) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{time.strftime('%H:%M:%S', time.localtime(holder.get('started', 0)))}, last heartbeat "
            f"{age:.0f} s ago")


class Lease:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LEASE
        self.me = {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
                   "pgid": os.getpgid(0), "proc_start": _proc_start(os.getpid()),
                   "started": time.time()}
        self._write = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lease; returns a note when it took over a dead driver's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):
            try:
                self._link_new()
            except FileExistsError:
                holder, age = self.read()
                if holder is None:             # vanished meanwhile (released): try again
                    continue
                if age < TTL_S and not is_dead(holder):
                    raise LeaseHeld(f"another `run` of this sweep is active ({describe(holder, age)}; "
                                    f"lease {self.path}). Wait for it to finish, or stop it (Ctrl-C); "
                                    f"if it died, its lease expires {TTL_S - age:.0f} s from now")
                if self._take_over(holder):     # moved aside: now take it like a free one
                    note = (f"took over the lease of a driver that stopped answering "
                            f"({describe(holder, age)}); its unfinished trials resume")
                continue
            self._start_beating()
            return note
        raise LeaseHeld(f"could not take the lease {self.path}: another driver keeps taking it")

    def _link_new(self) -> None:
        """Create the lease, whole, or raise FileExistsError if one is there."""
        tmp = self.path.with_name(f"{LEASE}.{self.me['id']}.new")
        try:
            tmp.write_text(json.dumps({**self.me, "beat": time.time()}))
            os.link(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> tuple[dict | None, float]:
        """The lease's holder and the age of its last heartbeat (seconds)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None, 0.0
        return holder, time.time() - float(holder.get("beat", 0))

    def _take_over(self, holder: dict) -> bool:
        """Move the stale lease aside (atomic: of two drivers, one wins) and clear what its
        driver left on this host (Ray's agents outlive a SIGKILLed driver for ~a minute)."""
        try:
            os.rename(self.path, self.path.with_name(f"{LEASE}.stale-{self.me['id']}"))
        except FileNotFoundError:
            return False
        if holder.get("host") == self.me["host"] and holder.get("pgid"):
            _kill_orphans(int(holder["pgid"]))
        return True

    def _start_beating(self) -> None:
        """Refresh the lease every BEAT_S seconds until release() (a slow start of Ray must
        not let the lease age while this driver holds it)."""
        def loop():
            while not self._stop.wait(BEAT_S):
                self._refresh(self._write)
        self._thread = threading.Thread(target=loop, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def beat(self, write) -> None:
        """From now on each refresh also calls write(self.me) (errors are the tracking
        store's: the next beat tries again); the first call is now."""
        self._write = write
        self._refresh(write)

    def _refresh(self, write) -> None:
        tmp = self.path.with_name(f"{LEASE}.{self.me['id']}.tmp")
        try:
            tmp.write_text(json.dumps({**self.me, "beat": time.time()}))
            os.replace(tmp, self.path)
        except OSError:         # a full disk: the sweep stops on it (disk.py); the next beat retries
            tmp.unlink(missing_ok=True)
        if write is not None:
            try:
                write({**self.me, "beat": time.time()})
            except Exception:   # the store is down: the file still holds the lease
                pass

    def release(self) -> None:
        """Stop the heartbeat, remove the lease file, and mark the heartbeat released (a
        next `run` need not wait for it to age)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        holder, _ = self.read()
        if holder is not None and holder.get("id") == self.me["id"]:
            self.path.unlink(missing_ok=True)
        if self._write is not None:
            try:
                self._write({**self.me, "beat": 0, "released": True})
            except Exception:
                pass


def is_dead(holder: dict) -> bool:
    """Whether a lease holder on this host is a process that no longer exists (a driver
    killed a moment ago need not wait for its lease to expire); elsewhere only TTL_S tells."""
    if holder.get("host") != socket.gethostname():
        return False
    return _proc_start(int(holder.get("pid", 0))) != holder.get("proc_start")


def alive(holder: dict | None, age: float) -> bool:
    """Whether the driver behind a heartbeat still runs its sweep."""
    return holder is not None and not holder.get("released") and age < TTL_S and not is_dead(holder)


def _proc_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), to tell it from a later one that
    reuses its pid; None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _kill_orphans(pgid: int) -> None:
    """SIGKILL the orphaned Ray processes (`ray::...`, parent gone) of a dead driver's
    process group; never ours, never one whose parent still lives."""
    if pgid == os.getpgid(0):
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if os.getpgid(int(entry.name)) == pgid and ppid == 1 and \
                    (entry / "cmdline").read_bytes().startswith(b"ray::"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
