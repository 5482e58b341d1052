"""One trial's checkpoint: its whole training state, in its own folder.

    <folder>/checkpoint.pt        the newest state
    <folder>/checkpoint.prev.pt   the one before it, kept so that a damaged newest file
                                  (a full disk, a killed copy) costs one checkpoint, not the run

The state is plain data (tensors, numbers, strings) and is loaded with
`torch.load(weights_only=True)`: a file in a shared folder cannot run code. It is the same
for a trial trained alone or inside a fused group (trainer/fused.py), so a trial resumes
either way:

    {"format": 2, "epoch": int (epochs done), "config": Config.to_dict(),
     "model": the trial's Net.state_dict(), "momentum": {parameter name: SGD momentum buffer},
     "history": [{"epoch": e, "metrics": {...}, "artifacts": {...}}, ...] every epoch so far}

The history lets a resumed trial hand on measurements that never reached their
destination (the checkpoint is written before the caller logs the epoch).

No random-number state is stored: each epoch's draws come from (seed, epoch) (trainer/data.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from . import faults
from .config import RESUMABLE, Config
from .errors import CorruptCheckpoint, ResumeMismatch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = 2


def save(folder: Path, epoch: int, cfg: Config, model: dict, momentum: dict, history: list) -> Path:
    """Write the state atomically; the last good checkpoint becomes checkpoint.prev.pt.
    A crash at any point leaves at least one complete checkpoint of the two."""
    folder.mkdir(parents=True, exist_ok=True)
    path, prev, tmp = folder / CHECKPOINT, folder / PREVIOUS, folder / (CHECKPOINT + ".tmp")
    state = {"format": FORMAT, "epoch": epoch, "config": cfg.to_dict(), "model": model,
             "momentum": momentum, "history": history}
    try:
        # Through a Python file, so a full disk is OSError(ENOSPC) naming the file (torch's
        # own writer says only "unexpected pos 64 vs 0"); synced, so the rename is durable.
        with open(tmp, "wb") as f:
            faults.no_space_at(epoch, tmp)          # a test hook: nothing unless asked for
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        tmp.unlink(missing_ok=True)                 # give back what the partial file took
        raise OSError(err.errno, err.strerror, str(tmp)) from err
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)
    return path


def load(folder: Path, cfg: Config) -> dict | None:
    """The newest readable checkpoint in `folder` that `cfg` may resume, or None if the
    folder holds none. A damaged newest file falls back to the previous one (with a
    warning); if none is readable, CorruptCheckpoint names the files and the fix."""
    tried = []
    for path in (folder / CHECKPOINT, folder / PREVIOUS):
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, garbage, a pickle that is not plain data
            first_line = (str(err).splitlines() or ["(no message)"])[0][:200]
            tried.append(f"{path} ({type(err).__name__}: {first_line})")
            continue
        if tried:
            warnings.warn(f"{tried[0]} is unreadable; resuming from {path.name} "
                          f"(epoch {state.get('epoch')})", stacklevel=2)
        _check(path, state, cfg)
        return state
    if tried:
        raise CorruptCheckpoint(f"no readable checkpoint: {'; '.join(tried)}. Delete {folder} to "
                                f"restart this trial from scratch (its finished epochs are lost).")
    return None


def _check(path: Path, state: dict, cfg: Config) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeMismatch(f"{path} was written by another version of the trainer (format "
                             f"{state.get('format') if isinstance(state, dict) else '?'}, this one "
                             f"reads {FORMAT}); delete {path.parent} to restart the trial")
    old, new = state["config"], cfg.to_dict()
    changed = sorted(k for k in new if old.get(k) != new[k] and k not in RESUMABLE)
    if changed:
        raise ResumeMismatch(f"{path} was written by a different config ({changed} differ); "
                             f"use a new checkpoint folder for a new config")
