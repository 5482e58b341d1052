"""A sweep file (YAML) -> a validated `Sweep` -> trials, big_vision style: base + named axes.

Schema (top-level keys; only `name` is required):

    name: table1              # the MLflow experiment
    description: "..."        # free text, shown by `plan`
    base: {dataset: cifar10}  # trainer Config keys shared by every trial (trainer/config.py)
    grid:                     # key -> list of values; the cartesian product, keys in file order
      width: [32, 16, 8]
      regularizer: [false, true]
    extra:                    # optional: trials the product cannot express, each base + overrides
      - {arch: vgg16}
    seeds: [0]                # every trial (grid and extra) runs once per seed
    fuse: 8                   # at most this many trials train as one fused group (1 = each alone)
    resources: {cpu: 4, gpu: 1}   # per Tune trial (a fused group); omitted = the driver decides
    max_failures: 2           # retries of a failed group, each member from its last checkpoint
    max_concurrent: 0         # groups at once; 0 = as many as resources allow
    tracking_uri: null        # MLflow store; null = mlflow.db where `run` starts (CLI flags override)
    storage_path: null        # checkpoint folder every node mounts; null = ./ray_results
    reproduces: [table1, table2]  # artefacts `tables` renders from this sweep's runs

`extra` exists because "this grid plus one vanilla baseline" (Table 4) and "vanilla vs
bottleneck x W" (Table 5, where W means nothing to vgg16) are not products. `seed` is set
only through `seeds`. Every trial is validated by `Config.from_dict` before anything
launches; every error is a `SweepError` naming the file, the key and what is allowed.

`expand()` is the one function that turns a sweep into trials, for `run`, `plan`,
`--dry-run` and the tests. A trial's key hashes its identity (its config's non-default
values, less how it executes: see `trial_key`), so it does not depend on the order of
trials or on the other values of an axis: adding a value to an axis keeps every existing
trial's key (and so its finished MLflow run). How trials are grouped for fused training
is decided later, over the trials still to run (orchestrator/run/groups.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import pathlib
import re
from dataclasses import dataclass, field

import yaml

from trainer.config import DEFAULTS, EXPERIMENT, IDENTITY, TYPES, Config, ConfigError, check_type

TOP_LEVEL = ("name", "description", "base", "grid", "extra", "seeds", "fuse", "resources",
             "max_failures", "max_concurrent", "tracking_uri", "storage_path", "reproduces")
# What a sweep's `reproduces:` may name: the tables (orchestrator/results/tables.py, TABLES)
# and figures (results/figures.py, FIGURES) `tables` builds; tests/test_layout.py keeps them equal.
ARTEFACTS = ("table1", "table2", "table3", "table4", "table5", "memory_peaks",
             "figure3", "figure4", "figure5")
RESOURCE_KEYS = ("cpu", "gpu")
CONFIG_KEYS = tuple(TYPES)
SWEEPS_DIR = pathlib.Path(__file__).resolve().parents[2] / "sweeps"


class SweepError(ValueError):
    """A sweep file that cannot run: the message names the file, the key and the fix."""


@dataclass
class Sweep:
    name: str                                           # MLflow experiment name
    description: str = ""
    base: dict = field(default_factory=dict)            # trainer Config keys for every trial
    grid: dict = field(default_factory=dict)            # key -> list of values (product, file order)
    extra: list = field(default_factory=list)           # override dicts on base, appended as trials
    seeds: list = field(default_factory=lambda: [0])
    fuse: int = 8                                       # largest fused group; 1 = every trial alone
    resources: dict | None = None                       # {cpu: N, gpu: F}; None = driver default
    max_failures: int = 2
    max_concurrent: int = 0                             # 0 = no limit
    tracking_uri: str | None = None
    storage_path: str | None = None
    reproduces: list = field(default_factory=list)      # artefact ids, see ARTEFACTS
    path: pathlib.Path = pathlib.Path("<memory>")       # absolute path of the sweep file
    text: str = ""                                      # raw file content, logged as an artifact

    @functools.cached_property
    def trials(self) -> list["Trial"]:
        """expand(self), once: the sweep's trials for every decision made on it."""
        return expand(self)


@dataclass(frozen=True)
class Trial:
    key: str        # trial_key(config): 12 hex digits of its identity's hash
    name: str       # readable run name, e.g. w16-b5-reg-s0; unique within the sweep
    config: dict    # full Config.to_dict(), seed included
    axes: dict      # the values of the sweep's axes (grid keys, extra keys, seed)


def trial_key(config: dict) -> str:
    """The trial's identity: its identity fields (trainer/config.py) that differ from the
    defaults. Fields that say how it executes (device, threads, paths) are left out, and a
    Config field added later with a default keeps every existing key (and finished run)."""
    return _digest(config, IDENTITY)


def cell_key(config: dict) -> str:
    """The identity of the table cell a trial belongs to: its experiment fields
    (trainer/config.py) that differ from the defaults, so a cell's seeds (and runs that
    differ only in a measurement) share it. A field missing from `config` is its default."""
    return _digest(config, EXPERIMENT)


def _digest(config: dict, fields: frozenset) -> str:
    """12 hex digits of the sha256 of `config`'s `fields` that differ from the defaults."""
    kept = {k: v for k, v in config.items() if k in fields and v != DEFAULTS[k]}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def trial_name(config: dict, axes: dict) -> str:
    """w{W}-b{B}-reg|noreg plus what else varies, then s{seed}: a cell of the paper's tables."""
    parts = []
    if config["arch"] == "vgg16" or "arch" in axes:
        parts.append("vgg16" if config["arch"] == "vgg16" else "bneck")
    if "dataset" in axes:
        parts.append(config["dataset"])
    if config["arch"] != "vgg16":               # W is the bottleneck's width; vgg16 has none
        parts.append(f"w{config['width']}")
    parts.append(f"b{config['batch_size']}")
    parts.append("reg" if config["regularizer"] else "noreg")
    named = ("arch", "dataset", "width", "batch_size", "regularizer", "seed")
    parts += [f"{k}={v}" for k, v in axes.items() if k not in named]
    return "-".join(parts + [f"s{config['seed']}"])


def expand(sweep: Sweep) -> list[Trial]:
    """All trials of a sweep in a fixed order: grid product (first key slowest) x seeds, then
    extra x seeds. Pure; raises SweepError for an invalid or duplicated trial."""
    axis_keys = list(sweep.grid) + [k for e in sweep.extra for k in e if k not in sweep.grid]
    axis_keys = list(dict.fromkeys(axis_keys))          # dedupe, keep order
    # a sweep without grid has one grid point: the base trial itself
    products = itertools.product(*sweep.grid.values())
    grid_points = [dict(zip(sweep.grid, values)) for values in products]
    trials, seen_keys, seen_names = [], {}, {}
    for overrides in grid_points + list(sweep.extra):
        for seed in sweep.seeds:
            raw = {**sweep.base, **overrides, "seed": seed}
            where = ", ".join(f"{k}={v!r}" for k, v in {**overrides, "seed": seed}.items())
            source = f"{sweep.path.name} (trial: base + {where})"
            try:
                config = Config.from_dict(raw, source=source).to_dict()
            except ConfigError as e:
                raise SweepError(str(e)) from None
            axes = {k: config[k] for k in axis_keys} | {"seed": seed}
            trial = Trial(trial_key(config), trial_name(config, axes), config, axes)
            _check_unique(sweep, trial, seen_keys, seen_names)
            trials.append(trial)
    return trials


def _check_unique(sweep: Sweep, trial: Trial, seen_keys: dict, seen_names: dict) -> None:
    if trial.key in seen_keys:
        raise SweepError(f"{sweep.path.name}: trials {seen_keys[trial.key]} and {trial.axes} have "
                         f"identical configs; remove the repeated value from grid/extra/seeds")
    if trial.name in seen_names:
        raise SweepError(f"{sweep.path.name}: trials {seen_names[trial.name]} and {trial.axes} are "
                         f"both named {trial.name!r} (width is ignored by arch vgg16); list vgg16 "
                         f"trials under extra: instead of putting arch on the grid")
    seen_keys[trial.key] = seen_names[trial.name] = trial.axes


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str = "name") -> str:
    """A sweep's name names folders (<storage>/<name>/, results/<name>/, Tune's) and an MLflow
    experiment: letters, digits, '.', '_' and '-', at most 64, no '..', so every path built
    from it stays inside its root. Raises ValueError saying so."""
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} {name[:80]!r} cannot name a folder safely; use letters, digits, "
                         f"'.', '_' and '-' (at most 64, starting with a letter or digit, no '..'), "
                         f"e.g. {re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-.')[:64] or 'my-sweep'!r}")
    return name


def load_sweep(path) -> Sweep:
    """Read, check and expand a sweep file; any problem is a SweepError before anything runs."""
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        shipped = sorted(p.name for p in SWEEPS_DIR.glob("*.yaml"))
        raise SweepError(f"{path}: no such sweep file; the shipped sweeps are {shipped} in {SWEEPS_DIR}")
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SweepError(f"{path.name}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise SweepError(f"{path.name}: a sweep file is a mapping with keys {list(TOP_LEVEL)}; "
                         f"got {type(doc).__name__}")
    _check_top_level(doc, path.name)
    sweep = Sweep(**{k: doc[k] for k in TOP_LEVEL if doc.get(k) is not None}, path=path, text=text)
    sweep.trials                                    # expands and checks every trial, once
    return sweep


def apply_overrides(sweep: Sweep, resources=None, max_concurrent=None,
                    tracking_uri=None, storage_path=None) -> Sweep:
    """CLI flags over the file; None keeps the file's value. Validated like the file's."""
    given = {"resources": resources, "max_concurrent": max_concurrent,
             "tracking_uri": tracking_uri, "storage_path": storage_path}
    given = {k: v for k, v in given.items() if v is not None}
    source = f"{sweep.path.name} (command-line override)"
    if "resources" in given:
        _check_resources(given["resources"], source)
    if "max_concurrent" in given:
        _check_count(given["max_concurrent"], "max_concurrent", source)
    if "tracking_uri" in given:
        _check_type(given["tracking_uri"], str, "tracking_uri", source)
    if "storage_path" in given:
        _check_storage(given["storage_path"], source)
    out = dataclasses.replace(sweep, **given)
    if "trials" in sweep.__dict__:                  # no override changes a trial: keep them
        out.trials = sweep.trials
    return out


# --- structural checks of the raw YAML, one key at a time ---

def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_type(value, kind, key: str, file: str) -> None:
    try:
        check_type(value, kind, key, file)
    except ConfigError as err:
        raise SweepError(str(err)) from None


def _check_count(value, key: str, file: str) -> None:
    _check_type(value, int, key, file)
    if value < 0:
        raise SweepError(f"{file}: {key}={value} is negative; use 0 or more")


def _check_config_keys(values: dict, where: str, file: str) -> None:
    for key, value in values.items():
        if key == "seed":
            raise SweepError(f"{file}: {where}.seed: set seeds with the top-level key seeds: [0, 1, ...]")
        if key not in CONFIG_KEYS:
            raise SweepError(f"{file}: {where}.{key} is not a trainer config key; "
                             f"{_suggest(key, CONFIG_KEYS)}allowed: {list(CONFIG_KEYS)}")
        for v in value if isinstance(value, list) else [value]:
            if TYPES.get(key) is float and isinstance(v, str) and _is_number(v):
                # YAML 1.1 (PyYAML) reads 1e-4 as a string: it wants a dot, as in 1.0e-4
                raise SweepError(f"{file}: {where}.{key}={v!r} is a string to YAML; "
                                 f"write a float with a dot, e.g. 1.0e-4 or 0.0001")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _check_resources(value, file: str) -> None:
    _check_type(value, dict, "resources", file)
    for key, amount in value.items():
        if key not in RESOURCE_KEYS:
            raise SweepError(f"{file}: resources.{key} is not allowed; "
                             f"{_suggest(key, RESOURCE_KEYS)}allowed: {list(RESOURCE_KEYS)}")
        _check_type(amount, (int, float), f"resources.{key}", file)
        if amount < 0:
            raise SweepError(f"{file}: resources.{key}={amount} is negative; use 0 or more "
                             f"(gpu may be a fraction, e.g. 0.25, to share a card)")
    if not any(value.values()):
        raise SweepError(f"{file}: resources={value} asks for nothing; "
                         f"give cpu > 0 or gpu > 0, or omit resources for the default")


def _check_storage(value, file: str) -> None:
    """Trials resume from <storage>/<sweep>/<trial_key>/ wherever Ray places them, so the
    storage is a folder every node mounts, not an object-store URI."""
    _check_type(value, str, "storage_path", file)
    if "://" in value:
        raise SweepError(f"{file}: storage_path={value!r} is a URI; checkpoints need a folder "
                         f"every node mounts (NFS, EFS, a shared volume), e.g. /mnt/shared/ray_results")


def _check_top_level(doc: dict, file: str) -> None:
    for key in doc:
        if key not in TOP_LEVEL:
            raise SweepError(f"{file}: unknown top-level key {key!r}; "
                             f"{_suggest(key, TOP_LEVEL)}allowed: {list(TOP_LEVEL)}")
    if not doc.get("name"):
        raise SweepError(f"{file}: name is missing; add name: <MLflow experiment name>")
    _check_type(doc["name"], str, "name", file)
    try:
        check_name(doc["name"])
    except ValueError as err:
        raise SweepError(f"{file}: {err}") from None
    for key in ("description", "tracking_uri"):
        if doc.get(key) is not None:
            _check_type(doc[key], str, key, file)
    if doc.get("storage_path") is not None:
        _check_storage(doc["storage_path"], file)
    for key in ("max_failures", "max_concurrent"):
        if doc.get(key) is not None:
            _check_count(doc[key], key, file)
    if doc.get("fuse") is not None:
        _check_count(doc["fuse"], "fuse", file)
        if doc["fuse"] < 1:
            raise SweepError(f"{file}: fuse={doc['fuse']}; use 1 (every trial alone) or more "
                             f"(at most that many trials train together)")
    if doc.get("resources") is not None:
        _check_resources(doc["resources"], file)
    _check_type(doc.get("base") or {}, dict, "base", file)
    _check_config_keys(doc.get("base") or {}, "base", file)
    _check_grid(doc, file)
    _check_extra(doc.get("extra") or [], file)
    _check_seeds(doc.get("seeds", [0]), file)
    _check_reproduces(doc.get("reproduces") or [], file)


def _check_grid(doc: dict, file: str) -> None:
    grid, base = doc.get("grid") or {}, doc.get("base") or {}
    _check_type(grid, dict, "grid", file)
    _check_config_keys(grid, "grid", file)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{file}: grid.{key}={values!r} must be a non-empty list of values, "
                             f"e.g. {key}: [a, b]; a single value belongs in base")
        if key in base:
            raise SweepError(f"{file}: {key} is in both base and grid; keep it in one of them")


def _check_extra(extra, file: str) -> None:
    _check_type(extra, list, "extra", file)
    for i, overrides in enumerate(extra):
        _check_type(overrides, dict, f"extra[{i}]", file)
        _check_config_keys(overrides, f"extra[{i}]", file)


def _check_seeds(seeds, file: str) -> None:
    _check_type(seeds, list, "seeds", file)
    if not seeds:
        raise SweepError(f"{file}: seeds is empty; give at least one integer, e.g. seeds: [0]")
    for seed in seeds:
        _check_type(seed, int, "seeds", file)


def _check_reproduces(artefacts, file: str) -> None:
    _check_type(artefacts, list, "reproduces", file)
    for name in artefacts:
        if name not in ARTEFACTS:
            raise SweepError(f"{file}: reproduces: {name!r} is not an artefact; "
                             f"{_suggest(name, ARTEFACTS)}allowed: {list(ARTEFACTS)}")
