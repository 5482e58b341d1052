"""Checkpoints: a damaged newest file costs one checkpoint, never the run, and never runs code."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint import CHECKPOINT, PREVIOUS
from trainer.config import Config
from trainer.errors import CorruptCheckpoint, ResumeMismatch
from trainer.train import train

CFG = dict(dataset="synthetic", train_samples=10, test_samples=10, vgg_width_divisor=16, width=4,
           batch_size=5, threads=1, device="cpu", momentum=0.9)


def cfg(**kw) -> Config:
    return Config.from_dict({**CFG, **kw})


def epochs_run(c, folder) -> list[int]:
    return [m.epoch for m in train(c, folder) if not (m.final or m.replayed)]


def test_each_save_keeps_the_one_before(tmp_path):
    epochs_run(cfg(epochs=2), tmp_path)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / PREVIOUS, weights_only=True)["epoch"] == 1
    assert not (tmp_path / (CHECKPOINT + ".tmp")).exists()


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"garbage" * 10, lambda b: b""],
                         ids=["truncated", "garbage", "empty"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    epochs_run(cfg(epochs=2), tmp_path)
    path = tmp_path / CHECKPOINT
    path.write_bytes(damage(path.read_bytes()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert epochs_run(cfg(epochs=3), tmp_path) == [2, 3]            # epoch 2 again, then 3
    assert any(str(path) in str(w.message) and PREVIOUS in str(w.message) for w in caught)


def test_no_readable_checkpoint_names_the_files_and_the_fix(tmp_path):
    epochs_run(cfg(epochs=2), tmp_path)
    for name in (CHECKPOINT, PREVIOUS):
        (tmp_path / name).write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptCheckpoint) as err:
        epochs_run(cfg(epochs=3), tmp_path)
    message = str(err.value)
    assert str(tmp_path / CHECKPOINT) in message and str(tmp_path / PREVIOUS) in message
    assert f"Delete {tmp_path}" in message


class Payload:
    def __reduce__(self):
        return (print, ("a checkpoint ran code",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    tmp_path.joinpath(CHECKPOINT).write_bytes(pickle.dumps({"format": 2, "x": Payload()}))
    with pytest.raises(CorruptCheckpoint, match="weights_only|Unsupported|global"):
        checkpoint.load(tmp_path, cfg())
    assert "ran code" not in capsys.readouterr().out


def test_a_checkpoint_of_an_older_trainer_says_so(tmp_path):
    torch.save({"epoch": 1, "config": cfg().to_dict(), "model": {}, "optimizer": {}}, tmp_path / CHECKPOINT)
    with pytest.raises(ResumeMismatch, match="another version of the trainer"):
        checkpoint.load(tmp_path, cfg())
