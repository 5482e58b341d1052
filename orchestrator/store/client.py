"""The one MlflowClient, and how the orchestrator copes with a store that does not answer.

Every read and write goes through `client(uri)` on an explicit tracking URI; mlflow's
process-global tracking URI (`mlflow.set_tracking_uri`, the fluent API) is never touched,
so using one store cannot redirect a writer elsewhere in the process. `retrying` wraps the
calls that a locked SQLite file or a restarting server may refuse for a moment.
"""
from __future__ import annotations

import functools
import os
import random
import sys
import time
import urllib.request

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator import disk
from orchestrator.store import StoreUnreachable
from orchestrator.store.uri import local_store

disk.quiet("mlflow")     # MLflow's traceback of a full SQLite store: `run` says it in one line


def client(uri: str) -> MlflowClient:
    """A client on the store at `uri` (the only place one is made)."""
    return MlflowClient(tracking_uri=uri)


def retry_seconds() -> float:
    """How long a call keeps retrying a store that does not answer ($SWEEP_TRACKING_RETRY_S,
    default 60 s): long enough for a SQLite lock or a server restart, not for an outage."""
    return float(os.environ.get("SWEEP_TRACKING_RETRY_S", "60"))


def transient(err: Exception) -> bool:
    """Whether waiting may mend `err` (a lock, a dropped connection, a store being created)."""
    if disk.no_space(err) is not None:       # a full disk: waiting does not free it
        return False
    text = str(err).lower()
    return any(w in text for w in ("locked", "busy", "connection", "timed out", "timeout",
                                   "temporarily", "503", "502",
                                   # another process is creating the same new store
                                   "already exists", "no such table", "no such column", "alembic"))


def is_store_error(err: Exception) -> bool:
    """Whether `err` came from the tracking store (unreachable, locked, refused), not from
    the code that used what it returned."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(err, (MlflowException, SQLAlchemyError, OSError, StoreUnreachable)) or transient(err)


def retrying(fn):
    """SQLite allows one writer at a time (concurrent trials see "database is locked"), a
    server can restart, and two drivers can create a new store at once: retry such
    transient errors with jittered backoff for retry_seconds(), saying what it waits for."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline, attempt = time.monotonic() + retry_seconds(), 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MlflowException, sqlalchemy OperationalError, requests
                wait = min(8.0, 0.1 * 2 ** attempt) * (0.5 + random.random())
                if not transient(err) or time.monotonic() + wait > deadline:
                    raise
                attempt += 1
                if attempt >= 3:
                    print(f"tracking: {fn.__name__} waits for the store ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); retry {attempt} in {wait:.1f} s",
                          file=sys.stderr, flush=True)
                time.sleep(wait)
    return wrapper


def ensure_store(uri: str) -> bool:
    """Create a new local SQLite store whole, or not at all: its tables are made in a
    private file which is then linked into place (atomic; it never replaces a store). A
    process that opens the path sees a complete schema, never one half migrated by the
    driver (two processes migrating one new file at once can wreck it). True if created."""
    path = local_store(uri)
    if not uri.startswith("sqlite:///") or path is None or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        client(f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False                       # another driver made it meanwhile: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def check_store(uri: str, timeout: float = 5.0) -> bool:
    """Whether the store exists, within seconds: a local store's file or folder is looked
    for (never created here), a server is asked for /health. An unreachable server is an
    error."""
    path = local_store(uri)
    if path is not None:
        return path.exists()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return True
        except (OSError, ValueError) as err:
            raise StoreUnreachable(f"the MLflow tracking server at {uri} does not answer "
                                   f"({type(err).__name__}: {err}); start it, or pass --tracking-uri "
                                   f"(or set MLFLOW_TRACKING_URI) to a store that answers") from None
    return True     # another database (postgresql://, ...): its first query tells
