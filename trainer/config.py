"""One flat, typed trial config: every knob a trial has, with its unit or meaning.

The orchestrator builds one of these per trial from a sweep file; `python -m trainer`
builds one from flags (their --help is the `help` below). Unknown keys and wrong types
fail here, naming the key.

Each field also says what it is to the rest of the system (its `role`), so that the rules
which read it live here, once:
- experiment  — defines the experiment: a table cell pools only runs that agree on it, and
                a checkpoint resumes only under the same value;
- replicate   — the seed: pooled over in a cell (mean ± std), part of the trial's identity;
- measurement — what is measured on the side (timeline, t-SNE): part of the identity, but
                runs that differ in it are still the same experiment;
- execution   — how and where it runs (device, threads, paths, cadence): not part of the
                trial's identity, may change when a trial resumes.
`per_member`: may differ between the members of one fused group (trainer/fused.py);
every other field fixes shapes or the optimizer and must agree inside a group.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field

from .errors import ConfigError

DATASETS = ("cifar10", "cifar100", "synthetic")
# Classes and (train, test) sizes of each dataset; synthetic's classes are its own knob.
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
                 "synthetic": (50_000, 10_000)}
ARCHS = ("bottleneck", "vgg16")
REG_PAIRS = ("adjacent", "even")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
IMAGE_SIZES = (32, 224)
HEAD_INPUTS = ("flatten", "pool")
COMPILE_MODES = ("off", "default", "reduce-overhead")
ROLES = ("experiment", "replicate", "measurement", "execution")


def knob(default, help: str, role: str = "experiment", per_member: bool = False,
         resumable: bool = False, memory: bool | None = None):
    """A Config field with its meaning (`help`, shown by `python -m trainer --help`) and
    its rules (see the module docstring). `resumable`: an experiment field that may still
    change on resume (epochs: the trainer extends a finished checkpoint; a sweep, whose
    trial key holds epochs, runs another epochs as a new trial and names the old runs as
    superseded: orchestrator/run/groups.py). `memory`: whether it changes a tensor's shape,
    dtype or count, so the memory forecast depends on it (default: all but execution fields)."""
    assert role in ROLES, role
    return field(default=default, metadata=dict(help=help, role=role, per_member=per_member,
                                                resumable=resumable or role == "execution",
                                                memory=role != "execution" if memory is None else memory))



def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count): what
    `threads: 0` means."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

@dataclass
class Config:
    # --- data (trainer/data.py) ---
    dataset: str = knob("synthetic", "cifar10 | cifar100 | synthetic (generated, CIFAR-shaped, offline)")
    data_dir: str = knob("./data", "folder holding cifar-10-batches-py/ or cifar-100-python/",
                         role="execution")
    synthetic_classes: int = knob(10, "classes of the generated dataset (10 or 100)")
    train_samples: int = knob(0, "stratified training subset; 0 = the whole set (50,000)")
    test_samples: int = knob(0, "stratified test subset; 0 = the whole set (10,000)")
    augment: bool = knob(True, "random crop (4-px padding) + horizontal flip, on the device")
    image_size: int = knob(32, "input side in px: 32 = CIFAR as is; 224 = upsampled on the device, "
                               "as the paper's memory profiling (Figure 3)")
    # --- model (trainer/model.py) ---
    arch: str = knob("bottleneck", "bottleneck (the paper's) | vgg16 (vanilla 4096-4096 head)")
    width: int = knob(32, "W, narrowest bottleneck width; the head starts at K = 16*W",
                      per_member=True)
    vgg_width_divisor: int = knob(1, "divides every conv width; 1 = the paper, 8-16 for CPU demos/tests")
    head_input: str = knob("flatten", "how the conv output enters the head at image_size 224: flatten "
                                      "(7x7x512 = 25,088 features, our reading) | pool (to 512); "
                                      "the same at 32 (1x1x512)")
    # --- manifold regularizer (trainer/manifold.py, Eq. 3-4) ---
    regularizer: bool = knob(False, "add sum_k alpha_k * L_u^(k) to the cross-entropy", per_member=True)
    reg_pairs: str = knob("adjacent", "adjacent: (FC1,FC2)...(FC9,FC10); even: (FC2,FC4)...(FC8,FC10)",
                          per_member=True)
    alpha_first: float = knob(1e-4, "alpha_k on the first half of the bottleneck (paper: smaller)",
                              per_member=True, memory=False)
    alpha_second: float = knob(1e-3, "alpha_k on the second half", per_member=True, memory=False)
    reg_lambda: float = knob(1e-3, "lambda, weight of ||theta^(k)||^2 inside each L_u^(k) (Eq. 4)",
                             per_member=True, memory=False)
    # --- optimisation (trainer/train.py) ---
    batch_size: int = knob(5, "mini-batch size L (paper: 5, 7, 9; vanilla also 16, 64)")
    epochs: int = knob(200, "epochs to train (paper: 200); may grow when a trial resumes",
                       resumable=True, memory=False)
    lr: float = knob(0.01, "SGD learning rate (paper: 0.01)", memory=False)
    momentum: float = knob(0.0, "SGD momentum (paper: plain SGD, 0)")
    weight_decay: float = knob(0.0, "SGD's own L2 (separate from lambda above)", memory=False)
    dtype: str = knob("float32", "float32 | float64 (for verification on a CPU)")
    seed: int = knob(0, "seeds init, data order, augmentation and dropout (not the data itself)",
                     role="replicate", per_member=True, memory=False)
    device: str = knob("auto", "auto (cuda if available) | cpu | cuda", role="execution")
    threads: int = knob(0, "torch CPU threads; 0 = the CPUs this process may use", role="execution")
    compile: str = knob("off", "torch.compile the training step: off | default | reduce-overhead "
                               "(CUDA graphs)", role="execution")
    eval_every: int = knob(1, "evaluate train/test accuracy every N epochs (and the last)",
                           role="execution")
    checkpoint_every: int = knob(1, "save the whole state every N epochs (and the last)",
                                 role="execution")
    # --- measurements (trainer/memory.py, trainer/analysis.py) ---
    memory_timeline: bool = knob(False, "record Figure 3's allocated-memory timeline (CUDA only)",
                                 role="measurement")
    timeline_steps: int = knob(50, "steps of the first epoch the timeline covers", role="measurement",
                               memory=False)
    representation_analysis: bool = knob(False, "Figures 4-5: t-SNE + LDA of cat/dog activations "
                                                "at the end", role="measurement", per_member=True,
                                          memory=False)
    analysis_samples: int = knob(500, "test (and train) samples per class used by the analysis",
                                 role="measurement", per_member=True, memory=False)

    @property
    def num_classes(self) -> int:
        return DATASET_CLASSES.get(self.dataset, self.synthetic_classes)

    @property
    def train_size(self) -> int:
        """Training images one epoch goes through."""
        return self.train_samples or DATASET_SIZES[self.dataset][0]

    @property
    def test_size(self) -> int:
        """Test images an evaluation goes through."""
        return self.test_samples or DATASET_SIZES[self.dataset][1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        """Build and validate; `source` (a file name, 'flags') is named in every error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
        values = {key: check_type(value, TYPES[key], key, source) for key, value in d.items()}
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        def bad(key, allowed):
            raise ConfigError(f"{source}: {key}={getattr(self, key)!r} is not allowed; {allowed}")
        for key, allowed in (("dataset", DATASETS), ("arch", ARCHS), ("reg_pairs", REG_PAIRS),
                             ("device", DEVICES), ("dtype", DTYPES), ("image_size", IMAGE_SIZES),
                             ("head_input", HEAD_INPUTS), ("compile", COMPILE_MODES)):
            if getattr(self, key) not in allowed:
                bad(key, f"choose one of {list(allowed)}")
        if self.dataset == "synthetic" and self.synthetic_classes not in (10, 100):
            bad("synthetic_classes", "use 10 or 100")
        if self.regularizer and self.arch != "bottleneck":
            bad("regularizer", "the manifold regularizer needs arch=bottleneck (its FC1..FC10)")
        if self.batch_size < 2:
            bad("batch_size", "use 2 or more (BatchNorm and the pairwise regularizer need pairs)")
        if self.width < 1 or self.width & (self.width - 1):
            bad("width", "use a power of two (the head halves from 16*W down to W)")
        if self.vgg_width_divisor < 1 or 64 % self.vgg_width_divisor:
            bad("vgg_width_divisor", "use a divisor of 64: 1, 2, 4, 8, 16, 32 or 64")
        for key in ("epochs", "eval_every", "checkpoint_every", "timeline_steps", "analysis_samples"):
            if getattr(self, key) < 1:
                bad(key, "use 1 or more")
        for key in ("train_samples", "test_samples", "threads"):
            if getattr(self, key) < 0:
                bad(key, "use 0 (all / automatic) or a positive number")
        for key in (k for k, kind in TYPES.items() if kind is float):
            if not math.isfinite(getattr(self, key)):
                bad(key, "use a finite number (not NaN or infinity)")
        for key in ("lr", "momentum", "weight_decay", "alpha_first", "alpha_second", "reg_lambda"):
            if getattr(self, key) < 0:
                bad(key, "use a non-negative number")
        if self.batch_size > self.train_size:
            bad("batch_size", f"an epoch has {self.train_size} training images "
                              f"(train_samples); use a batch of at most that many")


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
TYPES: dict[str, type] = typing.get_type_hints(Config)          # name -> bool | int | float | str
DEFAULTS = {name: f.default for name, f in FIELDS.items()}
HELP = {name: f.metadata["help"] for name, f in FIELDS.items()}


def fields_where(**rule) -> frozenset[str]:
    """Config field names whose metadata matches, e.g. fields_where(role="execution")."""
    return frozenset(n for n, f in FIELDS.items() if all(f.metadata[k] == v for k, v in rule.items()))


# Fields that make a table cell: runs that agree on them are one experiment's seeds.
EXPERIMENT = fields_where(role="experiment")
# Fields a table cell pools over: they do not make two runs different experiments.
NOT_EXPERIMENT = frozenset(FIELDS) - EXPERIMENT
# Fields that may differ between a checkpoint and the run that resumes it.
RESUMABLE = fields_where(resumable=True)
# Fields that identify a trial (its trial_key): everything but how and where it executes.
IDENTITY = frozenset(FIELDS) - fields_where(role="execution")
# Fields that may differ inside a fused group; all others must agree (trainer/fused.py).
PER_MEMBER = fields_where(per_member=True)
# Fields that change no tensor's shape, dtype or count: a memory forecast ignores them, so
# the seeds and alphas of a sweep share one (trainer/forecast.py, trainer/estimates.py).
NO_MEMORY = fields_where(memory=False)
# Fields that change no op, no FLOP and no byte of a step or an evaluation chunk (the
# measured costs' cache key leaves them out: trainer/estimates.py): NO_MEMORY less those
# that may change which kernels run (a weight decay, the regularizer's weights). A wrongly
# shared cost is silent, a second fake run is ~1-10 s.
NO_COST = NO_MEMORY - {"alpha_first", "alpha_second", "reg_lambda", "weight_decay"}


def trains_alone(config: dict) -> bool:
    """Whether a trial (its Config.to_dict()) must train alone, never fused: a memory
    timeline measures one trial's memory."""
    return bool(config["memory_timeline"])


def check_type(value, kind, key: str, source: str):
    """`value` as a `kind` (an int is accepted for a float; a bool is never an int), else a
    ConfigError naming the key. `kind` may be a tuple of types. The one type check for
    trial configs and sweep files alike."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if kinds == (float,) else value
        if isinstance(value, k) and (k is bool or not isinstance(value, bool)):
            return value
    want = " or ".join(k.__name__ for k in kinds)
    raise ConfigError(f"{source}: {key}={value!r} has type {type(value).__name__}; expected {want}")
