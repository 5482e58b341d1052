"""Which MLflow store a command uses, and where a local one lives on disk.

One precedence rule (resolve_tracking_uri) for every command, and one parser of a tracking
URI into its file or folder (local_store). Plain string work: no MLflow import.
"""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Callable

from orchestrator.store import StoreUnreachable

DATABASES = ("postgresql://", "mysql://", "mssql://")
SCHEMES = ("", "file", "sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """MLflow's own default store, mlflow.db in the folder `run` starts from, as an absolute
    URI: trials run in other processes and folders, and `mlflow ui` there shows the runs."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None, sweep_uri: str | None | Callable[[], str | None]) -> str:
    """--tracking-uri, then $MLFLOW_TRACKING_URI, then the sweep file's, then mlflow.db here.

    `sweep_uri` may be a function, called only when neither the flag nor the variable names
    a store (`tables` reads it from several sweep files, which must then agree). A relative
    sqlite path is made absolute against the current folder; an unknown scheme is an error."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = sweep_uri() if callable(sweep_uri) else sweep_uri
    if not uri:
        return default_tracking_uri()
    scheme = urllib.parse.urlparse(uri).scheme.split("+", 1)[0]
    if scheme not in SCHEMES and not (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):   # C:\ is a path
        raise StoreUnreachable(f"tracking URI {uri!r}: MLflow has no store for scheme {scheme!r}; "
                               f"use sqlite:///path/to/mlflow.db, a folder, http(s)://host:port (a "
                               f"tracking server) or a database URL ({', '.join(DATABASES)})")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def local_store(uri: str) -> Path | None:
    """The file or folder a local store lives in (a SQLite file, a file store), else None
    (a server, another database, an in-memory SQLite)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    # A bare path is a file store; "databricks" is MLflow's name for a remote workspace.
    return Path(uri) if parsed.scheme == "" and uri != "databricks" else None


def not_created_yet(uri: str) -> bool:
    """A local store whose file does not exist yet: it holds nothing, and reading it must
    not create it."""
    path = local_store(uri)
    return path is not None and not path.exists()
