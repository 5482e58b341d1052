"""Errors a trial can end with that a retry would only repeat.

Each is a `TrialError`: the orchestrator does not retry it (a bad config, a corrupt
checkpoint or dataset, a loss that turns non-finite at the same step every time) and its
message names what is wrong and what to do.
"""
from __future__ import annotations


class TrialError(Exception):
    """A failure that is a property of the trial's inputs, not of the machine it ran on."""


class ConfigError(TrialError, ValueError):
    """A trial config that cannot run: the message names the key and what is allowed."""


class ResumeMismatch(TrialError, ValueError):
    """A checkpoint folder holds another trial's (or another trainer version's) state."""


class CorruptCheckpoint(TrialError, RuntimeError):
    """No readable checkpoint where one was written; the message names the file."""


class NonFiniteLoss(TrialError, FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class DatasetError(TrialError, FileNotFoundError):
    """The dataset is missing or unreadable; the message names the file and the fix."""
