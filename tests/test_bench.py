"""The benchmark scripts still run (at toy sizes, on CPU): a benchmark nobody can run is a
figure nobody can check. Their numbers go to BENCHMARKS.md, not into assertions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.slow      # each script in a subprocess (5-13 s)


@pytest.mark.parametrize("argv", [
    ["bench_fused.py", "--n", "1,2", "--divisors", "16", "--batch-sizes", "5", "--steps", "2", "--repeats", "1"],
    ["gpu_check.py", "--device", "cpu", "--n", "2"],
], ids=["bench_fused", "gpu_check-cpu"])
def test_bench_script_runs(argv):
    out = subprocess.run([sys.executable, *argv], cwd=BENCH, capture_output=True, text=True,
                         timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout
