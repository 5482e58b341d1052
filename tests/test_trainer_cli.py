"""`python -m trainer`: Table 5 as JSON, a tiny run with --json, and flag errors (exit 2)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.__main__ import main
from trainer.memory import PAPER_TABLE5

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--train-samples", "20", "--test-samples", "10",
        "--vgg-width-divisor", "16", "--width", "4", "--batch-size", "5", "--epochs", "2",
        "--threads", "1", "--device", "cpu"]


def trainer(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_memory_json_has_table5_rows():
    out = trainer("memory", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["model"] for r in rows] == list(PAPER_TABLE5) * 2          # 32 px, then 224 px
    by_model = {r["model"]: r for r in rows if r["image_size"] == 32}
    assert by_model["vgg16"]["param_bytes"] == 134_586_664
    assert by_model["bottleneck_w32"]["buffer_bytes"] == 49_848


@pytest.mark.slow       # `python -m trainer` in a subprocess
def test_a_tiny_run_writes_history_and_final_measurements(tmp_path):
    out = trainer(*TINY, "--regularizer", "--json", str(tmp_path / "m.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["config"]["regularizer"] is True and written["config"]["batch_size"] == 5
    assert [h["epoch"] for h in written["history"]] == [1, 2]
    for h in written["history"]:
        assert set(h) == {"epoch", "train_loss", "epoch_seconds", "train_accuracy",
                          "test_accuracy", "generalization_gap"}
    assert json.loads(out.stdout) == written["final"]                 # stdout: the summary
    assert {"model_param_bytes", "model_buffer_bytes"} <= set(written["final"])
    assert "peak_memory_mb" not in written["final"]
    assert "epoch 2/2" in out.stderr                                   # progress and epochs


@pytest.mark.slow       # `python -m trainer` in a subprocess
def test_forecast_prints_the_four_numbers_as_json():
    out = trainer("memory", "--forecast", "--arch", "vgg16", "--batch-size", "16", "--image-size",
                  "224", "--format", "json")
    assert out.returncode == 0, out.stderr
    numbers = json.loads(out.stdout)
    assert numbers["config"]["image_size"] == 224 and numbers["config"]["arch"] == "vgg16"
    assert numbers["model_mb"] == pytest.approx(537_273_744 / 2 ** 20, abs=0.1)
    assert numbers["peak_mb"] > numbers["dynamic_peak_mb"] > numbers["forward_peak_mb"] > 0


@pytest.mark.slow       # `python -m trainer` in a subprocess
def test_progress_in_a_log_file_is_a_line_per_tenth_of_an_epoch(tmp_path):
    """stderr is a pipe here, as in a Ray worker log: no carriage-return frames."""
    out = trainer(*[a if a != "20" else "200" for a in TINY], cwd=tmp_path)   # 40 steps an epoch
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    steps = [line for line in out.stderr.splitlines() if ": step " in line]
    assert [line.split("step ")[1].split(" ")[0] for line in steps[:10]] == \
        [f"{4 * k}/40" for k in range(1, 11)]                  # 10%, 20%, ..., 100%
    assert len(steps) == 20                                     # 2 epochs x 10 lines


def test_help_says_what_each_flag_means():
    out = trainer("--help")
    assert "W, narrowest bottleneck width" in out.stdout and "(default: 32)" in out.stdout
    assert "SGD learning rate" in out.stdout


@pytest.mark.parametrize("args,named", [
    (["--batch-size", "1"], "batch_size"),
    (["--epochs", "two"], "--epochs"),
    (["--arch", "resnet"], "arch"),
    (["--no-such-flag"], "--no-such-flag"),
], ids=["batch-of-one", "not-an-int", "unknown-arch", "unknown-flag"])
def test_bad_flags_exit_2_naming_the_key(args, named, capsys):
    """In-process (a subprocess per case would mostly time torch's import)."""
    try:
        code = main([*TINY, *args])                  # our own validation returns 2
    except SystemExit as exit:                       # argparse's type errors exit 2
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert named in err
    assert "Traceback" not in err
