"""One flat, typed trial config: every knob a trial has, with its unit or meaning.

The orchestrator builds one of these per trial from a sweep file; `python -m trainer`
builds one from flags. Unknown keys and wrong types fail here, naming the key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

DATASETS = ("cifar10", "cifar100", "synthetic")
ARCHS = ("bottleneck", "vgg16")
REG_PAIRS = ("adjacent", "even")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A trial config that cannot run: the message names the key and what is allowed."""


@dataclass
class Config:
    # --- data (trainer/data.py) ---
    dataset: str = "synthetic"        # cifar10 | cifar100 | synthetic (generated, CIFAR-shaped, offline)
    data_dir: str = "./data"          # holds cifar-10-batches-py/ or cifar-100-python/
    synthetic_classes: int = 10       # classes of the generated dataset (10 or 100)
    train_samples: int = 0            # stratified training subset; 0 = the whole set (synthetic: 50,000)
    test_samples: int = 0             # stratified test subset; 0 = the whole set (synthetic: 10,000)
    augment: bool = True              # random crop (4-px padding) + horizontal flip, on the device
    # --- model (trainer/model.py) ---
    arch: str = "bottleneck"          # bottleneck (the paper's) | vgg16 (vanilla 4096-4096 head)
    width: int = 32                   # W, narrowest bottleneck width; the head starts at K = 16*W
    vgg_width_divisor: int = 1        # divides every conv width; 1 = the paper, 8-16 for CPU demos/tests
    # --- manifold regularizer (trainer/manifold.py, Eq. 3-4) ---
    regularizer: bool = False         # add sum_k alpha_k * L_u^(k) to cross-entropy
    reg_pairs: str = "adjacent"       # adjacent: (FC1,FC2)...(FC9,FC10); even: (FC2,FC4)...(FC8,FC10)
    alpha_first: float = 1e-4         # alpha_k on the first half of the bottleneck (paper: smaller)
    alpha_second: float = 1e-3        # alpha_k on the second half
    reg_lambda: float = 1e-3          # lambda, weight of ||theta^(k)||^2 inside each L_u^(k) (Eq. 4)
    # --- optimisation (trainer/train.py) ---
    batch_size: int = 5               # mini-batch size L (paper: 5, 7, 9; vanilla also 16, 64)
    epochs: int = 200                 # paper: 200
    lr: float = 0.01                  # SGD learning rate; paper: 0.01
    momentum: float = 0.0             # paper names plain SGD
    weight_decay: float = 0.0         # SGD's own L2 (separate from lambda above)
    seed: int = 0                     # seeds data order, augmentation, init and synthetic data
    device: str = "auto"              # auto (cuda if available) | cpu | cuda
    threads: int = 0                  # torch CPU threads; 0 = the CPUs this process may use
    eval_every: int = 1               # evaluate train/test accuracy every N epochs (and the last)
    checkpoint_every: int = 1         # save full state every N epochs (and the last)
    # --- measurements (trainer/memory.py, trainer/analysis.py) ---
    memory_timeline: bool = False     # record Figure 3's allocated-memory timeline (CUDA only)
    timeline_steps: int = 50          # steps of the first epoch the timeline covers
    representation_analysis: bool = False  # Figures 4-5: t-SNE + LDA of cat/dog activations at the end
    analysis_samples: int = 500       # test (and train) samples per class used by the analysis

    @property
    def num_classes(self) -> int:
        return {"cifar10": 10, "cifar100": 100, "synthetic": self.synthetic_classes}[self.dataset]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        """Build and validate; `source` (a file name, 'flags') is named in every error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in d.items():
            values[key] = _coerce(key, value, hints[key], source)
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        def bad(key, allowed):
            raise ConfigError(f"{source}: {key}={getattr(self, key)!r} is not allowed; {allowed}")
        if self.dataset not in DATASETS:
            bad("dataset", f"choose one of {list(DATASETS)}")
        if self.arch not in ARCHS:
            bad("arch", f"choose one of {list(ARCHS)}")
        if self.reg_pairs not in REG_PAIRS:
            bad("reg_pairs", f"choose one of {list(REG_PAIRS)}")
        if self.device not in DEVICES:
            bad("device", f"choose one of {list(DEVICES)}")
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
        for key in ("lr", "momentum", "weight_decay", "alpha_first", "alpha_second", "reg_lambda"):
            if getattr(self, key) < 0:
                bad(key, "use a non-negative number")


def _coerce(key: str, value, hint, source: str):
    """Accept a value of the field's type (ints for floats too); anything else names the key."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{source}: {key}={value!r} has type {type(value).__name__}; "
                          f"expected {hint.__name__}")
    return value
