"""A full disk as the orchestrator meets it (orchestrator/disk.py), from real errors:
SQLite's own "database or disk is full" through MLflow, and an ENOSPC write."""
import errno
import os

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from orchestrator import disk
from orchestrator.store import client as store_client, write
from orchestrator.store.uri import local_store


@pytest.fixture
def full_sqlite(tmp_path):
    """A SQLite tracking store with one run, that a write can no longer grow once
    state["cap"] is set: each connection taken from the pool is capped at the pages the
    file has (SQLite's max_page_count), so SQLite itself refuses with SQLITE_FULL, as on a
    full disk."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("full")).info.run_id
    state = {"cap": False}

    def cap(dbapi_connection, record, proxy):
        if state["cap"]:
            cursor = dbapi_connection.cursor()
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {pages}")
            cursor.close()
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", cap)
    yield uri, run_id, state
    sqlalchemy.event.remove(sqlalchemy.pool.Pool, "checkout", cap)


def test_a_full_sqlite_store_is_named_and_not_retried(full_sqlite, monkeypatch):
    uri, run_id, state = full_sqlite
    state["cap"] = True
    monkeypatch.setenv("SWEEP_TRACKING_RETRY_S", "600")
    monkeypatch.setattr(store_client.time, "sleep", lambda s: pytest.fail("a full store was retried"))
    logger = write.TrialLogger(uri, run_id)
    with pytest.raises(Exception) as caught:
        for epoch in range(1, 200):            # the first writes may fit in the file's free pages
            logger.log_epoch(epoch, {f"m{i}": float(i) for i in range(200)})
    assert "database or disk is full" in str(caught.value)
    assert disk.no_space(caught.value) == ""
    store = local_store(uri)
    assert disk.describe("", store.parent / "ckpt", uri) == \
        f"no space left on device: {store} (the tracking store {uri})"
    assert disk.describe("", store.parent, "http://host:5000") == \
        "no space left for the tracking store http://host:5000 (its database or disk is full)"


def test_an_enospc_anywhere_in_the_chain_names_its_file(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.pt"))
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0") from err
    except RuntimeError as outer:
        assert disk.no_space(outer) == str(tmp_path / "x.pt")
    assert disk.describe(str(tmp_path / "s" / "k" / "checkpoint.pt.tmp"), tmp_path / "s", "sqlite:///m.db") == \
        f"no space left on device: {tmp_path / 's' / 'k' / 'checkpoint.pt.tmp'} (in the storage folder {tmp_path / 's'})"
    assert disk.no_space(OSError(errno.EDQUOT, "Disk quota exceeded")) == ""
    for other in (OSError(errno.EACCES, "Permission denied", "/x"), RuntimeError("database is locked"), ValueError()):
        assert disk.no_space(other) is None


def test_a_checkpoint_on_a_full_disk_is_enospc_naming_the_file_and_leaves_no_partial(tmp_path, monkeypatch):
    """torch.save into a path says "unexpected pos 64 vs 0" on a full disk; the trainer
    writes through a Python file, so the error is ENOSPC with the file's name."""
    from trainer import checkpoint, faults
    from trainer.config import Config

    monkeypatch.setenv(faults.NO_SPACE_ENV, "epoch=2")
    cfg = Config(dataset="synthetic")
    checkpoint.save(tmp_path, 1, cfg, {}, {}, [])
    with pytest.raises(OSError) as caught:
        checkpoint.save(tmp_path, 2, cfg, {}, {}, [])
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "checkpoint.pt.tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert checkpoint.load(tmp_path, cfg)["epoch"] == 1
