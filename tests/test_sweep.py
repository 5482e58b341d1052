"""Sweep files -> trials: shipped sweeps, stable keys, and one named case per bad file."""
import dataclasses
import pathlib

import hashlib
import json

import pytest

from orchestrator.run.sweep import Sweep, SweepError, apply_overrides, cell_key, expand, load_sweep, trial_key
from trainer.config import Config

SWEEPS = pathlib.Path(__file__).resolve().parents[1] / "sweeps"

# file -> (trials, artefacts): counts follow the paper's grids (see each file's header)
SHIPPED = {
    "table1.yaml": (54, ["table1", "table2"]),    # 3 W x 3 batch x reg off/on x 3 seeds
    "table3.yaml": (5, ["table3", "table5"]),     # 5 batch sizes, vanilla VGG16
    "table4.yaml": (21, ["table4"]),              # (3 W x reg off/on + vanilla baseline) x 3 seeds
    "table5.yaml": (8, ["table5", "memory_peaks", "figure3"]),  # 2 batch x (3 W + vanilla)
    "figure4.yaml": (2, ["figure4", "figure5"]),  # reg off/on
    "smoke.yaml": (8, ["table1", "table2"]),      # 2 W x 2 batch x reg off/on
}


def test_every_shipped_sweep_is_tested():
    assert sorted(p.name for p in SWEEPS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("file", sorted(SHIPPED), ids=sorted(SHIPPED))
def test_shipped_sweep_expands(file):
    n_trials, artefacts = SHIPPED[file]
    sweep = load_sweep(SWEEPS / file)
    trials = expand(sweep)
    assert sweep.name == file.removesuffix(".yaml")
    assert sweep.reproduces == artefacts
    assert sweep.path == (SWEEPS / file).resolve() and sweep.text.startswith("#")
    assert len(trials) == n_trials
    assert len({t.key for t in trials}) == n_trials
    assert len({t.name for t in trials}) == n_trials
    assert all(len(t.key) == 12 and int(t.key, 16) >= 0 for t in trials)
    assert all(t.axes["seed"] == t.config["seed"] for t in trials)
    # the regularizer weights are stated in every file, not left to the trainer's defaults
    assert {k: sweep.base[k] for k in ("alpha_first", "alpha_second", "reg_lambda")} == \
        {"alpha_first": 0.0001, "alpha_second": 0.001, "reg_lambda": 0.001}


def test_table1_names_and_order():
    trials = expand(load_sweep(SWEEPS / "table1.yaml"))
    assert [t.name for t in trials[:4]] == ["w32-b9-noreg-s0", "w32-b9-noreg-s1", "w32-b9-noreg-s2",
                                            "w32-b9-reg-s0"]
    assert trials[-1].name == "w8-b5-reg-s2"
    assert trials[0].axes == {"width": 32, "batch_size": 9, "regularizer": False, "seed": 0}
    assert trials[0].config["dataset"] == "cifar10" and trials[0].config["epochs"] == 200


def test_extra_trials_are_appended():
    trials = expand(load_sweep(SWEEPS / "table4.yaml"))
    vanilla = trials[-3:]
    assert [v.name for v in vanilla] == ["vgg16-b5-noreg-s0", "vgg16-b5-noreg-s1", "vgg16-b5-noreg-s2"]
    assert all(v.config["arch"] == "vgg16" and v.config["dataset"] == "cifar100" for v in vanilla)
    assert [t.config["arch"] for t in trials[:-3]] == ["bottleneck"] * 18


def test_keys_are_stable():
    sweep = load_sweep(SWEEPS / "table1.yaml")
    before = {t.name: t.key for t in expand(sweep)}
    assert before == {t.name: t.key for t in expand(load_sweep(SWEEPS / "table1.yaml"))}
    # changing one value of an axis changes only the trials that carry it
    changed = dataclasses.replace(sweep, grid={**sweep.grid, "width": [32, 16, 4]})
    after = {t.name: t.key for t in expand(changed)}
    kept = {n: k for n, k in before.items() if not n.startswith("w8-")}
    assert {n: after[n] for n in kept} == kept
    assert len({k for n, k in after.items() if n.startswith("w4-")} & set(before.values())) == 0
    # adding a value (or a seed) keeps every existing trial's key
    grown = dataclasses.replace(sweep, grid={**sweep.grid, "batch_size": [9, 7, 5, 3]},
                                seeds=[0, 1, 2, 3])
    grown_keys = {t.key for t in expand(grown)}
    assert set(before.values()) <= grown_keys and len(grown_keys) == 4 * 24


def test_overrides_replace_file_values():
    sweep = load_sweep(SWEEPS / "smoke.yaml")
    out = apply_overrides(sweep, resources={"cpu": 2, "gpu": 0.25}, max_concurrent=3,
                          tracking_uri="http://localhost:5000")
    assert out.resources == {"cpu": 2, "gpu": 0.25} and out.max_concurrent == 3
    assert out.tracking_uri == "http://localhost:5000" and out.storage_path is None
    assert sweep.resources == {"cpu": 1}                      # the original is untouched
    assert [t.key for t in expand(out)] == [t.key for t in expand(sweep)]
    with pytest.raises(SweepError, match=r"resources\.tpu"):
        apply_overrides(sweep, resources={"tpu": 1})
    with pytest.raises(SweepError, match=r"command-line override.*storage_path='s3://b/c' is a URI"):
        apply_overrides(sweep, storage_path="s3://b/c")


GOOD = """\
name: bad
base: {dataset: synthetic, epochs: 1}
grid: {width: [16, 8]}
"""

# case id -> (YAML text, substrings the message must contain besides the file name)
BAD = {
    "unknown_top_level_key": (GOOD + "seed: [0]\n", ["'seed'", "did you mean 'seeds'", "allowed:"]),
    "unknown_grid_key": ("name: bad\ngrid: {widht: [16]}\n",
                         ["grid.widht", "did you mean 'width'", "batch_size"]),
    "unknown_base_key": ("name: bad\nbase: {batchsize: 5}\n",
                         ["base.batchsize", "did you mean 'batch_size'"]),
    "unknown_extra_key": (GOOD + "extra: [{archh: vgg16}]\n", ["extra[0].archh", "'arch'"]),
    "seed_in_base": ("name: bad\nbase: {seed: 3}\n", ["base.seed", "seeds: [0, 1, ...]"]),
    "wrong_type_in_config": ("name: bad\nbase: {epochs: two}\n",
                             ["epochs='two'", "expected int"]),
    "float_read_as_string": ("name: bad\nbase: {reg_lambda: 1e-4}\n",
                             ["base.reg_lambda='1e-4'", "1.0e-4"]),
    "wrong_type_top_level": (GOOD + "max_failures: many\n", ["max_failures='many'", "expected int"]),
    "grid_not_a_mapping": ("name: bad\ngrid: [width, 16]\n", ["grid=", "expected dict"]),
    "empty_axis": ("name: bad\ngrid: {width: []}\n", ["grid.width", "non-empty list"]),
    "axis_not_a_list": ("name: bad\ngrid: {width: 16}\n", ["grid.width=16", "non-empty list"]),
    "batch_size_1": ("name: bad\ngrid: {batch_size: [5, 1]}\n",
                     ["batch_size=1", "use 2 or more"]),
    "storage_is_a_uri": ("name: bad\nstorage_path: s3://bucket/ckpt\n",
                         ["storage_path='s3://bucket/ckpt'", "every node mounts"]),
    "unknown_dataset": ("name: bad\nbase: {dataset: imagenet}\n",
                        ["dataset='imagenet'", "cifar10", "cifar100", "synthetic"]),
    "key_in_base_and_grid": ("name: bad\nbase: {width: 16}\ngrid: {width: [8]}\n",
                             ["width is in both base and grid"]),
    "resources_unknown_key": (GOOD + "resources: {gpus: 1}\n",
                              ["resources.gpus", "did you mean 'gpu'", "['cpu', 'gpu']"]),
    "resources_negative": (GOOD + "resources: {gpu: -1}\n", ["resources.gpu=-1", "0 or more"]),
    "resources_empty": (GOOD + "resources: {cpu: 0}\n", ["cpu > 0 or gpu > 0"]),
    "seeds_empty": (GOOD + "seeds: []\n", ["seeds is empty", "seeds: [0]"]),
    "seeds_not_int": (GOOD + "seeds: [0, 1.5]\n", ["seeds=1.5", "expected int"]),
    "reproduces_unknown": (GOOD + "reproduces: [tabel1]\n", ["'tabel1'", "did you mean 'table1'"]),
    "duplicate_trial": ("name: bad\ngrid: {width: [16, 16]}\n", ["identical configs"]),
    "vgg16_on_grid": ("name: bad\ngrid: {arch: [vgg16], width: [16, 8]}\n",
                      ["'vgg16-b5-noreg-s0'", "extra:"]),
    "name_missing": ("grid: {width: [16]}\n", ["name is missing"]),
    # a name becomes folders under --storage and results/: it may not leave them
    "name_escapes_upwards": ("name: ../escape\ngrid: {width: [16]}\n",
                             ["name '../escape' cannot name a folder safely", "no '..'", "e.g. 'escape'"]),
    "name_is_a_path": ("name: /abs/path\ngrid: {width: [16]}\n", ["name '/abs/path'", "e.g. 'abs-path'"]),
    "name_too_long_unicode": ("name: " + "é" * 100 + "\n", ["cannot name a folder safely", "at most 64"]),
    "lr_nan": ("name: bad\nbase: {lr: .nan}\n", ["lr=nan", "finite number"]),
    "alpha_infinite": ("name: bad\nbase: {alpha_second: .inf}\n", ["alpha_second=inf", "finite number"]),
    "batch_larger_than_the_data": ("name: bad\nbase: {dataset: synthetic, train_samples: 8}\n"
                                   "grid: {batch_size: [5, 9]}\n",
                                   ["batch_size=9", "an epoch has 8 training images", "at most that many"]),
    "not_a_mapping": ("- width\n", ["a sweep file is a mapping", "grid"]),
    "not_yaml": ("name: [unclosed\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_bad_sweep_names_file_key_and_fix(case, tmp_path):
    text, expected = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    message = str(info.value)
    for part in [path.name] + expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_file_lists_shipped_sweeps(tmp_path):
    with pytest.raises(SweepError) as info:
        load_sweep(tmp_path / "tabel1.yaml")
    assert "tabel1.yaml" in str(info.value) and "no such sweep file" in str(info.value)
    assert "'table1.yaml'" in str(info.value)


def test_good_case_loads(tmp_path):
    # the bad cases above are GOOD plus one fault; GOOD itself must load
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    sweep = load_sweep(path)
    assert [t.name for t in expand(sweep)] == ["w16-b5-noreg-s0", "w8-b5-noreg-s0"]
    assert (sweep.seeds, sweep.resources, sweep.max_failures, sweep.max_concurrent) == ([0], None, 2, 0)


def test_expand_orders_grid_then_seeds_and_keys_name_the_identity():
    sweep = Sweep(name="inline", base={"dataset": "synthetic"}, grid={"batch_size": [2, 4]},
                  seeds=[0, 1])
    trials = expand(sweep)
    assert [t.name for t in trials] == ["w32-b2-noreg-s0", "w32-b2-noreg-s1", "w32-b4-noreg-s0",
                                        "w32-b4-noreg-s1"]
    # the key is sha256 of the non-default identity values, sorted: stable across releases
    expected = hashlib.sha256(json.dumps({"batch_size": 2, "seed": 1}, sort_keys=True,
                                         separators=(",", ":")).encode()).hexdigest()[:12]
    assert trials[1].key == expected
    assert trials[0].config["data_dir"] == "./data" and trials[0].config["seed"] == 0


@pytest.mark.parametrize("change,same", [
    (dict(device="cuda"), True), (dict(threads=4), True), (dict(data_dir="/mnt/data"), True),
    (dict(eval_every=5), True), (dict(compile="default"), True),
    (dict(seed=1), False), (dict(epochs=3), False), (dict(memory_timeline=True), False),
], ids=lambda v: str(v))
def test_how_a_trial_executes_is_not_part_of_its_key(change, same):
    base = Config.from_dict({"dataset": "synthetic", "batch_size": 5}).to_dict()
    assert (trial_key({**base, **change}) == trial_key(base)) is same


@pytest.mark.parametrize("change,same", [
    (dict(seed=1), True), (dict(memory_timeline=True), True), (dict(threads=4), True),
    (dict(epochs=3), False), (dict(width=8), False), (dict(regularizer=True), False),
], ids=lambda v: str(v))
def test_a_cell_is_the_trial_without_its_seed_or_measurements(change, same):
    """A cell's seeds (and runs that only measure more) share its key; the experiment does not."""
    base = Config.from_dict({"dataset": "cifar10", "batch_size": 9}).to_dict()
    assert (cell_key({**base, **change}) == cell_key(base)) is same
    assert cell_key({**base, "seed": 3}) == hashlib.sha256(json.dumps(
        {"batch_size": 9, "dataset": "cifar10"}, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
