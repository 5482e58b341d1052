"""A full disk, wherever it shows: a trial's checkpoint (the storage folder), the tracking
store (a SQLite file, a file store, or a server's database), or Tune's own files.

A full disk is never a fault a retry mends, so the driver does not retry it: the group that
meets it marks its runs FAILED with one line naming the path (when the store can still take
a tag), the sweep stops, and `run` prints that line and the command that resumes every
unfinished trial from its checkpoint once there is space again.

    no_space(err)             # the path a full disk refused, "" if unnamed, None: not a full disk
    write_probe(folder)       # can a block be written there now? (the pre-launch check)
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from orchestrator.store.uri import local_store

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# What a full disk says when it reaches us as text: SQLite (through SQLAlchemy and MLflow,
# or a tracking server's reply), and the OS's own words for ENOSPC and EDQUOT.
NO_SPACE_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")
PROBE_BYTES = 4096     # a block: a full disk refuses it (an empty file would still be made)


def no_space(err: BaseException) -> str | None:
    """If `err`, or an error it was raised from, says a disk is full: the path it names
    ("" when it names none: a SQLite store, a server's message); else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return str(err.filename or "")
        if any(text in str(err).lower() for text in NO_SPACE_TEXT):
            return ""
        err = err.__cause__ or err.__context__
    return None


def describe(path: str, storage: Path, uri: str) -> str:
    """"no space left on device: PATH (the storage folder ...)" for a path no_space found."""
    store = local_store(uri)
    if path and Path(path).is_relative_to(storage):
        return f"no space left on device: {path} (in the storage folder {storage})"
    if store is not None:
        return f"no space left on device: {path or store} (the tracking store {uri})"
    return f"no space left for the tracking store {uri} (its database or disk is full)"


class QuietNoSpace(logging.Filter):
    """Drops the log records of a library (MLflow's SQLAlchemy errors, Tune's experiment
    state) whose exception is a full disk: `run` names it in one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and no_space(record.exc_info[1]) is not None)


def quiet(logger_name: str) -> None:
    """Put QuietNoSpace on a logger and on its handlers (records of its children pass only
    those), once."""
    logger = logging.getLogger(logger_name)
    for target in (logger, *logger.handlers):
        if not any(isinstance(f, QuietNoSpace) for f in target.filters):
            target.addFilter(QuietNoSpace())


def full_folders(folders: list[Path]) -> list[Path]:
    """Those of `folders` where a block cannot be written now for want of space."""
    return [f for f in folders if (err := write_probe(f)) is not None and err.errno in NO_SPACE]


def write_probe(folder: Path) -> OSError | None:
    """Whether a block can be written and synced in `folder` (or, if it does not exist yet,
    the nearest folder above it, where it would be made): None, or the error, whose
    filename is the folder."""
    folder = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return OSError(err.errno, err.strerror, str(folder))
    return None


def open_for_writing(path: Path) -> OSError | None:
    """Whether an existing file can be opened for writing: None, or the error (its path)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as err:
        return OSError(err.errno, err.strerror, str(path))
    return None
