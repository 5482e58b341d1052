"""A test hook: a CUDA out-of-memory error injected at a chosen step of a chosen group, so
the orchestrator's handling of one (trainer/train.py raises it as a real one would be) can
be tested on a machine without a GPU. Off unless the environment variable is set:

    TRAINER_INJECT_OOM="epoch=2,step=3,members=3,batch_size=5"

raises torch.cuda.OutOfMemoryError at step 3 (1-based) of epoch 2 in every group of at
least 3 members (`members`, default 1) one of whose members has each other key=value of
its config (here batch_size 5). `epoch` and `step` default to 1. A group that is re-packed
smaller than `members` no longer hits it, as a group that fits its new share would not.

    TRAINER_INJECT_ENOSPC="epoch=2"

makes every checkpoint of epoch 2 fail as on a full disk (OSError ENOSPC, "No space left on
device", naming the file), so the handling of a full storage disk can be tested without
filling one.
"""
from __future__ import annotations

import errno
import os

import torch

from .config import TYPES, Config, check_type
from .errors import ConfigError

ENV = "TRAINER_INJECT_OOM"
NO_SPACE_ENV = "TRAINER_INJECT_ENOSPC"


def injected_oom(cfgs: list[Config]) -> tuple[int, int] | None:
    """(epoch, step) at which this group raises an injected OOM, or None (the usual case)."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    try:
        epoch, step = int(fields.pop("epoch", 1)), int(fields.pop("step", 1))
        members = int(fields.pop("members", 1))
        wanted = {k: check_type(_value(v), TYPES[k], k, ENV) for k, v in fields.items()}
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{ENV}={spec!r} cannot be read ({err}); write e.g. "
                          f"{ENV}=epoch=2,step=3,members=3,batch_size=5") from None
    hit = len(cfgs) >= members and any(all(getattr(c, k) == v for k, v in wanted.items()) for c in cfgs)
    return (epoch, step) if hit else None


def _value(text: str):
    """A YAML-ish scalar: true/false, an int, a float, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def raise_oom(epoch: int, step: int) -> None:
    raise torch.cuda.OutOfMemoryError(
        f"CUDA out of memory (injected by {ENV} at epoch {epoch}, step {step})")


def no_space_at(epoch: int, path) -> None:
    """Raise ENOSPC for `path` if NO_SPACE_ENV asks for it at this epoch (a test hook)."""
    spec = os.environ.get(NO_SPACE_ENV, "").strip()
    if not spec:
        return
    try:
        wanted = int(dict(part.split("=", 1) for part in spec.split(",") if "=" in part)["epoch"])
    except (KeyError, ValueError):
        raise ConfigError(f"{NO_SPACE_ENV}={spec!r} cannot be read; write e.g. {NO_SPACE_ENV}=epoch=2") from None
    if epoch == wanted:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by {NO_SPACE_ENV})", str(path))
