"""Step cost as a measured quantity: ops and FLOPs counted on fake tensors (trainer/cost.py),
turned into seconds by trainer/calibration.py, printed by `plan` (orchestrator/run/costs.py).
Toy sizes (conv widths / 16); the regularizer's op counts are pinned elsewhere
(tests/test_regularizer_ops.py), not here."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from e2e import ROOT, cli, finish, write_sweep
from trainer import calibration
from trainer.calibration import GroupTime, Rates, evaluated_epochs, group_time, makespan, step_seconds
from trainer.config import Config
from trainer.cost import OpCounter, StepCounter, measure
from trainer.data import group_batch
from trainer.estimates import NO_COST, StepCost, cost_key
from trainer.forecast import step_objects

torch.set_num_threads(1)
BASE = dict(dataset="synthetic", vgg_width_divisor=16, train_samples=200, test_samples=100,
            batch_size=5, width=16, regularizer=True)
GPU = Rates("cuda", t_op_s=5e-6, t_op_compiled_s=1e-6, flops_per_s=1e12, assumed=(), measured_on="x")
CPU = Rates("cpu", t_op_s=2e-5, t_op_compiled_s=2e-5, flops_per_s=1e10, assumed=(), measured_on="x")


def cfgs(n: int = 1, **kw) -> list[Config]:
    return [Config.from_dict({**BASE, "seed": i, **kw}) for i in range(n)]


@pytest.mark.parametrize("ops,flops,r,compiled,threads,seconds", [
    (1000, 1e9, GPU, False, 1, 5e-3),            # launch-bound: 1000 x 5 us
    (1000, 1e10, GPU, False, 1, 1e-2),           # arithmetic-bound: 1e10 / 1e12
    (1000, 1e9, GPU, True, 1, 1e-3),             # compiled: 1000 x 1 us
    (1000, 1e9, CPU, False, 1, 2e-2 + 1e-1),     # a CPU does both: sum
    (1000, 1e9, CPU, False, 4, 2e-2 + 2.5e-2),   # threads share the FLOPs, not the dispatch
])
def test_step_seconds(ops, flops, r, compiled, threads, seconds):
    assert step_seconds(ops, flops, r, compiled, threads) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("epochs,every,done,n", [(200, 1, 0, 200), (10, 3, 0, 4), (10, 3, 6, 2),
                                                 (10, 5, 10, 0), (1, 7, 0, 1)])
def test_evaluated_epochs(epochs, every, done, n):
    assert evaluated_epochs(epochs, every, done) == n


@pytest.mark.parametrize("hours,slots,wall", [([3, 2, 2], 1, 7), ([3, 2, 2], 2, 4), ([3, 2, 2], 5, 3),
                                              ([], 2, 0), ([1, 1, 1, 1], 2, 2)])
def test_makespan(hours, slots, wall):
    assert makespan(hours, slots) == wall


def test_group_time_on_hand_made_cost():
    """steps = epochs x (train // batch); each evaluation = chunks x eval ops (train and
    test sets, EVAL_BATCH // N images a chunk) or its FLOPs, whichever is slower."""
    cost = StepCost({"batch": 10, "forward": 400, "backward": 500, "optimizer": 90},
                    {"forward": 2e9, "backward": 4e9}, eval_ops=100, eval_flops=5e11,
                    eval_images=500, members=2)
    c = cfgs(2, epochs=4, eval_every=2, train_samples=1000, test_samples=600, batch_size=8)
    t = group_time(c, cost, GPU)
    assert (t.steps, t.ops_per_step, t.gflop_per_step, t.evaluations) == (4 * 125, 1000, 6.0, 2)
    assert t.train_s == pytest.approx(500 * max(1000 * 5e-6, 6e9 / 1e12))
    chunks = math.ceil(1000 / 500) + math.ceil(600 / 500)            # 2 + 2, chunk = 1000 // 2
    assert t.eval_s == pytest.approx(2 * max(chunks * 100 * 5e-6, 1600 * 1e9 / 1e12))
    resumed = group_time(c, cost, GPU, epochs_done=3)
    assert (resumed.steps, resumed.evaluations) == (125, 1)
    assert GroupTime(1, 0, 0, 0, 0, 1800.0, 1800.0).hours == 1.0


def test_grouped_conv_flops_count_groups():
    """A grouped convolution's forward, grad-input and grad-weight each cost 2 x outputs x
    (C_in / groups) x k x k: torch's flop_counter counts grad-weight `groups` times too much."""
    conv = torch.nn.Conv2d(12, 24, 3, padding=1, groups=4)
    x = torch.randn(5, 12, 8, 8, requires_grad=True)
    counter = StepCounter()
    with counter:
        conv(x).sum().backward()
    one = 2 * (5 * 24 * 8 * 8) * (12 // 4) * 3 * 3
    assert counter.flops["batch"] == 3 * one


def test_fused_group_flops_are_n_times_one_member():
    """A group of N members of one shape: N x one member's FLOPs in every phase and per
    evaluated image."""
    n = 3
    _, solo = measure(cfgs(1))
    _, fused = measure(cfgs(n))
    for phase in solo.flops:
        assert fused.flops[phase] == n * solo.flops[phase], phase
    assert solo.flops["forward"] > 0 and solo.flops["backward"] > solo.flops["forward"]
    assert fused.eval_flops / fused.eval_images == pytest.approx(n * solo.eval_flops / solo.eval_images,
                                                                 rel=1e-9)


def test_phases_are_what_the_trainer_runs():
    """measure's forward is group.losses, backward + optimizer is group.update (it calls the
    pieces itself to split them: this catches group.update changing under it)."""
    c = cfgs(2, momentum=0.9)
    _, cost = measure(c)
    with FakeTensorMode():
        group, data, plan, _ = step_objects(c, "cpu", 2)
        group.step(*group_batch(data, plan, 0, 5, torch.float32, 32))
        x, y = group_batch(data, plan, 1, 5, torch.float32, 32)
        with OpCounter() as forward:
            losses = group.losses(x, y)
        with OpCounter() as update:
            group.update(losses)
    assert cost.ops["forward"] == forward.total
    assert cost.ops["backward"] + cost.ops["optimizer"] == update.total
    assert cost.ops["optimizer"] > 0


def test_eval_ops_are_per_chunk():
    """accuracy() over k chunks dispatches (k - 1) x eval_ops more than over one chunk."""
    from trainer.train import accuracy, eval_chunk_size

    c = cfgs(2)
    _, cost = measure(c)
    group, data, _, _ = step_objects(c, "cpu", 1)
    chunk = eval_chunk_size(2, 32)
    assert cost.eval_images == min(chunk, 100)
    x = torch.zeros(3 * chunk - 7, 3, 32, 32, dtype=torch.uint8)
    y = torch.zeros(len(x), dtype=torch.int64)
    counts = []
    for n in (chunk, len(x)):
        with OpCounter() as ops:
            accuracy(group, data, x[:n], y[:n])
        counts.append(ops.total)
    assert counts[1] - counts[0] == 2 * cost.eval_ops


@pytest.mark.parametrize("change,shared", [
    ({"seed": 5}, True), ({"epochs": 7}, True), ({"lr": 0.1}, True), ({"compile": "default"}, True),
    ({"regularizer": False}, False), ({"reg_pairs": "even"}, False), ({"width": 8}, False),
    ({"batch_size": 7}, False), ({"image_size": 224}, False), ({"arch": "vgg16", "regularizer": False}, False),
    ({"vgg_width_divisor": 8}, False), ({"dtype": "float64"}, False), ({"momentum": 0.9}, False),
    ({"weight_decay": 1e-4}, False), ({"alpha_first": 0.0}, False), ({"train_samples": 300}, False),
])
def test_cost_is_shared_only_by_configs_of_equal_cost(change, shared):
    a = cfgs(1)[0].to_dict()
    b = Config.from_dict({**a, **change}).to_dict()
    assert (cost_key([a]) == cost_key([b])) is shared
    assert cost_key([a, b]) == cost_key([b, a])                       # member order: same group
    assert not (NO_COST & {"regularizer", "reg_pairs", "width", "batch_size", "momentum"})


def test_shipped_constants_say_whether_they_are_assumed(tmp_path):
    data = calibration.load()
    for kind in calibration.KINDS:
        for name in calibration.CONSTANTS:
            entry = data[kind][name]
            assert entry["value"] > 0 and isinstance(entry["assumed"], bool) and entry["source"]
        r = calibration.rates(kind)
        assert r.assumed == tuple(c for c in calibration.CONSTANTS if data[kind][c]["assumed"])
        assert ("assumed" in r.note()) == bool(r.assumed)
    path = tmp_path / "calibration.json"
    shutil.copy(calibration.PATH, path)
    calibration.write("cuda", {n: 1e-6 for n in calibration.CONSTANTS}, "GPU X, torch Y", {"cases": []}, path)
    measured = calibration.rates("cuda", path)
    assert measured.assumed == () and "measured on GPU X" in measured.note()
    assert json.loads(path.read_text())["cuda"]["measurement"]["date"]


def test_calibration_derives_constants_from_timed_steps():
    sys.path.insert(0, str(ROOT / "bench"))
    from calibrate import derive

    cases = [dict(compile="off", ops=1000, flops=1e9, seconds=6e-3),     # 6 us/op: launch-bound
             dict(compile="off", ops=2000, flops=1e12, seconds=0.1),     # 20x its launches
             dict(compile="reduce-overhead", ops=2000, flops=1e12, seconds=4e-3)]
    gpu = derive("cuda", cases, GPU)
    assert gpu == pytest.approx({"t_op_s": 6e-6, "flops_per_s": 1e13, "t_op_compiled_s": 2e-6})
    cpu = derive("cpu", cases[:2], CPU)
    assert cpu["flops_per_s"] == pytest.approx(1e12 / (0.1 - 2000 * 6e-6) / torch.get_num_threads())
    launch_bound = derive("cuda", [cases[0], dict(cases[1], seconds=0.013)], GPU)
    assert "flops_per_s" not in launch_bound          # arithmetic hidden: the rate stays assumed


@pytest.mark.slow       # `plan` in a subprocess: torch's import and a fake step (~10 s)
def test_plan_prints_the_forecast(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "costs", {"width": [16, 8], "regularizer": [False, True]},
                       fuse=2)                  # base: 2 epochs of 120 images at batch 6
    proc = cli(tmp_path, "plan", str(path), "--gpus", "2")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    head = next(line for line in out.splitlines() if "ops/step" in line)
    assert re.search(r"steps +ops/step +GFLOP/step +GPU h", head)
    rows = [line.split() for line in out.splitlines() if re.match(r"^ +g\d+ ", line)]
    assert len(rows) == 2 and all(r[1] == "2" for r in rows)                 # 2 groups of 2
    assert all(r[2] == str(2 * (120 // 6)) for r in rows)
    total = re.search(r"total: ([\d.,]+) GPU-hours", out)
    assert total and float(total[1]) == pytest.approx(sum(float(r[5]) for r in rows), abs=0.15)
    assert "wall time on the 2 GPU(s)" in out
    assert re.search(r"cuda constants .*(assumed, not measured|measured on)", out)


@pytest.mark.slow
def test_readme_and_sweep_files_show_the_forecast():
    """The README's "What it costs" table and the sweep files' header lines are the
    forecast's current numbers (regenerate: python bench/gpu_hours.py --write)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_hours

    rows = {name: gpu_hours.hours(name) for name in gpu_hours.SWEEPS}
    for path, text in gpu_hours.expected(rows).items():
        assert path.read_text() == text, f"{path.name} is stale: run python bench/gpu_hours.py --write"


def test_trainer_cost_command(capsys):
    from trainer.__main__ import main

    assert main(["cost", "--dataset", "synthetic", "--vgg-width-divisor", "16", "--train-samples", "200",
                 "--test-samples", "100", "--epochs", "3", "--batch-size", "5", "--regularizer",
                 "--members", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == 2 and out["ops_per_step"] == sum(out["ops"].values())
    assert (out["steps"], out["evaluations"]) == (3 * 40, 3) and out["gpu_hours"] > 0
    assert "cuda constants" in out["constants"]


@pytest.mark.slow       # `plan` of a paper-sized group: fake steps (~10 s)
def test_plan_shows_a_peak_measured_before_beside_the_forecast_and_sizes_the_share_by_it(tmp_path):
    """A run in the store (any experiment) that measured 5,000 MB for a group of g1's shape:
    plan shows it beside the forecast, and g1's share is sized from it; g2 has none."""
    from mlflow.tracking import MlflowClient

    from orchestrator.run.groups import fuse_groups, group_shape
    from orchestrator.run.sweep import expand, load_sweep

    path = write_sweep(tmp_path / "s.yaml", "measured", {"width": [16, 8], "regularizer": [False, True]},
                       fuse=2)
    groups = fuse_groups(expand(load_sweep(path)), fuse=2, at_once=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run = c.create_run(c.create_experiment("an-earlier-sweep"), tags={"group_shape": group_shape(groups[0])})
    c.log_metric(run.info.run_id, "group_peak_memory_mb", 5000.0, step=1)
    proc = cli(tmp_path, "plan", str(path), "--gpus", "1", "--tracking-uri", uri)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    head = next(line for line in out.splitlines() if "ops/step" in line).split()
    assert head[8:10] == ["peak", "measured"]       # group trials steps ops GFLOP "GPU h" model
    rows = {r[0]: r for r in (line.split() for line in out.splitlines()) if r and re.match(r"^g\d+$", r[0])}
    assert rows["g1"][8] == "5,000" and rows["g2"][8] == "-"
    assert float(rows["g1"][7]) < 100                                       # the forecast: tiny
    needs = 5000 * 2 ** 20 * 1.2 / 1e9 + 2 ** 30 / 1e9                     # x headroom + CUDA reserve
    assert re.search(rf"^ +g1 .* {needs:.1f} GB", out, re.M)
    assert "1 at once (1 GPU(s)" in out


def test_a_measured_cost_is_kept_on_disk_and_read_back(tmp_path, monkeypatch):
    """The next process reads a group's cost instead of measuring it again; a damaged
    file is measured again and rewritten; another trainer code version is another file."""
    from trainer import cost, estimates

    monkeypatch.setenv(estimates.CACHE_ENV, str(tmp_path))
    config = Config.from_dict(dict(dataset="synthetic", width=4, batch_size=4, vgg_width_divisor=16,
                                   train_samples=64, test_samples=32, regularizer=True)).to_dict()
    key = estimates.cost_key([config])
    estimates._cached.cache_clear()
    first = estimates._cached(key)
    files = list(tmp_path.glob(f"*-{estimates.code_digest()}.json"))
    assert len(files) == 1
    estimates._cached.cache_clear()
    monkeypatch.setattr(cost, "measure", lambda cfgs: pytest.fail("measured again"))
    assert estimates._cached(key) == first                          # from the file: equal Forecast, StepCost
    assert estimates._cached(key)[1].counts == first[1].counts
    files[0].write_text("{not json")
    estimates._cached.cache_clear()
    monkeypatch.setattr(cost, "measure", lambda cfgs: first)
    assert estimates._cached(key) == first and files[0].read_text().startswith('{"forecast"')
    monkeypatch.setenv(estimates.CACHE_ENV, "off")
    assert estimates.cache_dir() is None


@pytest.mark.slow       # `plan` in a subprocess: torch's import and a fake step (~10 s)
def test_plan_of_measured_shapes_imports_no_torch(tmp_path):
    """Once a sweep's group shapes are measured (the disk cache), `plan` reads their costs
    and starts neither torch (~2 s to import) nor Ray: what makes it seconds on 540 trials."""
    write_sweep(tmp_path / "s.yaml", "notorch", {"width": [8, 16], "regularizer": [True, False]})
    env = {"MANIFOLD_SWEEPS_CACHE": str(tmp_path / "costs")}
    first = finish(cli(tmp_path, "plan", "s.yaml", env=env))
    assert list((tmp_path / "costs").glob("*.json"))          # measured once, kept
    probe = ("import runpy, sys\nsys.argv = ['orchestrator', 'plan', 's.yaml']\n"
             "try:\n    runpy.run_module('orchestrator', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print('imported:', sorted(m for m in ('torch', 'ray', 'trainer.cost', 'trainer.forecast')"
             " if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "imported: []"
    total = [line for line in first.splitlines() if line.startswith("total:")]
    assert total and total[0] in proc.stdout.splitlines()     # the same forecast, from the cache
