"""CIFAR-10/100 and a generated CIFAR-shaped dataset, held on the training device.

The images sit on the device as one uint8 tensor [N, 3, 32, 32]; batches are drawn by a
per-epoch permutation and augmented + normalised there (airbench-style). At batch size 5
a DataLoader with worker processes would cost more than the step itself.

Each trial's randomness for one epoch (order, crops, flips; dropout later in the epoch)
comes from its own generator on the device, seeded from (seed, epoch): nothing is copied
from the host during a step (on CUDA each such copy stalls the stream), a resumed epoch
draws exactly what an uninterrupted one would, and the trials of a fused group draw
independently. The whole epoch's draws are made at its start (`EpochPlan`), so a step
only slices them.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DATASET_CLASSES, DATASET_SIZES
from .errors import DatasetError

# Per-channel mean/std of the CIFAR-10 training set (0-1 scale); used for every dataset.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# The dataset and its stratified subsets do not depend on the trial's seed: every trial of
# a sweep sees the same images, and seeds vary only init, data order and augmentation.
DATA_SEED = 0

CIFAR = {  # folder, files (name, official md5), archive to place, URL
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[("data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
        test=[("test_batch", "40351d587109b95175f43aff81a1287e")],
        label_key=b"labels",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": dict(
        folder="cifar-100-python",
        train=[("train", "16019d7e3df5f24257cddd939b257f8d")],
        test=[("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
        label_key=b"fine_labels",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


class DatasetNotFound(DatasetError):
    """The CIFAR folder is missing and could not be downloaded; the message says what to do."""


class DatasetCorrupt(DatasetError):
    """A CIFAR file is there but unusable (truncated, not a pickle, wrong shape, labels that
    do not match the images); the one-line message names the file, the fault and the fix."""


@dataclass
class Data:
    train_x: torch.Tensor  # (N, 3, 32, 32) uint8, on the device
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    _constants: dict = field(default_factory=dict, repr=False)   # dtype -> (mean, std)

    def normalize(self, x: torch.Tensor, dtype: torch.dtype, image_size: int) -> torch.Tensor:
        """`normalize` with this dataset's constants, built once per dtype on its device
        (a tensor built from Python numbers on every step would be a host-to-device copy)."""
        if dtype not in self._constants:
            self._constants[dtype] = mean_std(self.train_x.device, dtype)
        return normalize(x, dtype, image_size, self._constants[dtype])


def load_data(dataset: str, data_dir: str, num_classes: int, train_samples: int,
              test_samples: int, device: torch.device) -> Data:
    if dataset == "synthetic":
        full_train, full_test = DATASET_SIZES["synthetic"]
        n_train, n_test = train_samples or full_train, test_samples or full_test
        x, y = synthetic_images(n_train + n_test, num_classes, seed=DATA_SEED)
        parts = (x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    else:
        parts = read_cifar(dataset, Path(data_dir))
        if train_samples:
            parts = (*stratified_subset(parts[0], parts[1], train_samples), *parts[2:])
        if test_samples:
            parts = (*parts[:2], *stratified_subset(parts[2], parts[3], test_samples))
    train_x, train_y, test_x, test_y = (t.to(device) for t in parts)
    return Data(train_x, train_y, test_x, test_y, num_classes)


def check_cifar(dataset: str, data_dir: str | Path) -> None:
    """Validate every file of `dataset` under `data_dir`, reading each once; download nothing.

    The orchestrator calls this once on the driver before launching any trial, so that a
    bad file fails the sweep in about a second (CIFAR-10 is ~180 MB) with its name and the
    fix, instead of failing every trial after it has been scheduled. The checks are the
    ones `read_cifar` makes in each trial (both use `_read_cifar_file`).

    A missing dataset folder passes: each trial's `read_cifar` then downloads it. A folder
    that exists but lacks a file raises `DatasetNotFound`; a bad file `DatasetCorrupt`.
    A dataset without files (synthetic) passes: there is nothing to check.
    """
    if dataset not in CIFAR:
        return
    data_dir = Path(data_dir)
    if not (data_dir / CIFAR[dataset]["folder"]).is_dir():
        return
    for path, _ in _cifar_files(dataset, data_dir):
        _read_cifar_file(path, dataset, data_dir)


def read_cifar(dataset: str, data_dir: Path):
    """Read torchvision's on-disk layout; download it with torchvision when it is missing.

    Every file is validated (`_read_cifar_file`) before any is used: a bad one raises
    `DatasetCorrupt` naming it, never a bare pickle error or silently misaligned labels.
    """
    spec = CIFAR[dataset]
    data_dir = Path(data_dir)
    folder = data_dir / spec["folder"]
    if not folder.is_dir():
        _download(dataset, data_dir)
    files = _cifar_files(dataset, data_dir)
    entries = {path.name: _read_cifar_file(path, dataset, data_dir) for path, _ in files}
    changed = [path.name for path, md5 in files if entries[path.name][2] != md5]
    if changed:  # e.g. the shared JPEG re-encoded sample: same layout, other pixels
        warnings.warn(f"{folder}: {changed} differ from the official {dataset} release "
                      f"(checksums); using them as they are.", stacklevel=2)

    def read(names):
        xs = [torch.as_tensor(entries[name][0]).view(-1, 3, 32, 32) for name, _ in names]
        ys = [torch.as_tensor(entries[name][1], dtype=torch.int64) for name, _ in names]
        return torch.cat(xs), torch.cat(ys)

    return (*read(spec["train"]), *read(spec["test"]))


def _cifar_files(dataset: str, data_dir: Path) -> list[tuple[Path, str]]:
    """(path, official md5) of every file of the dataset's folder, which must all be there.
    A folder that exists is never downloaded over: it may be a deliberate copy (the
    re-encoded sample), and concurrent trials must not rewrite what the others read."""
    spec = CIFAR[dataset]
    folder = data_dir / spec["folder"]
    files = [(folder / name, md5) for name, md5 in spec["train"] + spec["test"]]
    missing = [path.name for path, _ in files if not path.is_file()]
    if missing:
        raise DatasetNotFound(f"{folder.resolve()} exists but lacks {missing}. "
                              f"{_cifar_fix(dataset, data_dir)}")
    return files


def _cifar_fix(dataset: str, data_dir: Path) -> str:
    """What to do about a missing or bad file: the same advice in every message."""
    spec = CIFAR[dataset]
    return (f"Fix: re-extract {spec['archive']} ({spec['url']}) into {data_dir.resolve()}/ "
            f"(tar xzf {spec['archive']}) so that {spec['folder']}/ is complete and intact, "
            f"or set data_dir to a folder that holds a good {spec['folder']}/.")


def _read_cifar_file(path: Path, dataset: str, data_dir: Path):
    """One batch file -> (data uint8 (n, 3072), labels int64 (n,), md5 of its bytes).

    The only place that decides whether a CIFAR file is usable, so that the driver's
    `check_cifar` and each trial's `read_cifar` cannot disagree. The file is read once and
    the checksum taken from the same bytes. An OSError while reading (permissions, a flaky
    network disk) is left as it is: it names the file and may not recur.
    """
    raw = path.read_bytes()
    try:
        data, labels = _unpack_batch(_unpickle_batch(raw), dataset)
    except _BadBatch as bad:
        problem = " ".join(str(bad).split())  # one line, whatever the pickle error said
        raise DatasetCorrupt(f"{path.resolve()} {problem}. "
                             f"{_cifar_fix(dataset, data_dir)}") from bad
    return data, labels, hashlib.md5(raw).hexdigest()


class _BadBatch(Exception):
    """What is wrong with one batch file, before the file name and the fix are added."""


def _unpickle_batch(raw: bytes):
    """The object a batch file holds (the official files are Python 2 pickles, hence bytes
    keys), or `_BadBatch`: pickle raises many types on bad bytes, and the type is the clue."""
    if not raw:
        raise _BadBatch("is empty (0 bytes)")
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as err:
        raise _BadBatch(f"is truncated or not a pickle ({type(err).__name__}: {err})") from err


def _unpack_batch(entry, dataset: str):
    """(data, labels) of an unpickled batch, or `_BadBatch` saying what does not fit: a dict
    with uint8 data (n, 3072), n > 0, and n integer labels inside the dataset's classes
    (labels that do not line up with the images would train silently on the wrong ones)."""
    label_key = CIFAR[dataset]["label_key"]
    if not isinstance(entry, dict):
        raise _BadBatch(f"holds a {type(entry).__name__}, not the dict of a CIFAR batch")
    for key in (b"data", label_key):
        if key not in entry:
            raise _BadBatch(f"lacks the key {key!r} (it has {sorted(entry, key=repr)[:6]})")
    data = entry[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        what = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else f"a {type(data).__name__}")
        raise _BadBatch(f"has b'data' as {what}, not a uint8 array of shape (n, 3072)")
    if len(data) == 0:
        raise _BadBatch("holds no images (b'data' has shape (0, 3072))")
    labels = _labels(entry[label_key])
    if labels is None:
        raise _BadBatch(f"has {label_key!r} that is not a flat list of integers")
    if len(labels) != len(data):
        raise _BadBatch(f"holds {len(data)} images but {len(labels)} labels")
    classes = DATASET_CLASSES[dataset]
    if labels.min() < 0 or labels.max() >= classes:
        raise _BadBatch(f"has labels in [{labels.min()}, {labels.max()}], "
                        f"outside the {classes} classes [0, {classes - 1}]")
    return data, labels


def _labels(value) -> np.ndarray | None:
    """The labels as int64 (n,), or None when they are not a flat sequence of integers."""
    try:
        labels = np.asarray(value)
    except Exception:  # ragged or odd objects: not labels either way
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return None
    return labels.astype(np.int64)


def _download(dataset: str, data_dir: Path) -> None:
    import torchvision  # only needed here

    spec = CIFAR[dataset]
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
    try:
        cls[dataset](root=str(data_dir), train=True, download=True)
    except Exception as err:  # offline, proxy, disk: the cause is in the message
        raise DatasetNotFound(
            f"{dataset} not found: looked for {(data_dir / spec['folder']).resolve()}/ and "
            f"the download failed ({type(err).__name__}: {err}). Place {spec['archive']} "
            f"from {spec['url']} in {data_dir.resolve()}/ and extract it there "
            f"(tar xzf {spec['archive']}), or set data_dir to a folder that holds "
            f"{spec['folder']}/.") from err


def stratified_subset(x: torch.Tensor, y: torch.Tensor, n: int):
    """n samples with the classes in their original proportions (a fixed, seed-free draw)."""
    if n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(DATA_SEED)
    order = torch.randperm(len(y), generator=g)
    classes = torch.unique(y)
    per_class = (torch.bincount(y)[classes] * n // len(y)).tolist()  # floor of each share
    keep = torch.cat([order[y[order] == c][:k] for c, k in zip(classes, per_class)])
    rest = order[~torch.isin(order, keep)][: n - len(keep)]  # fill up the rounding remainder
    keep = torch.sort(torch.cat([keep, rest])).values
    return x[keep], y[keep]


def synthetic_images(n: int, num_classes: int, seed: int):
    """A learnable CIFAR-shaped dataset: each class has a smooth colour prototype; a sample
    is its prototype, shifted by up to 4 px, scaled in contrast, plus smooth and pixel noise.

    Returns x (n, 3, 32, 32) uint8 and y (n,) int64 with balanced classes. Deterministic in
    (n, num_classes, seed): the same arguments give the same bytes on every machine.
    """
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(num_classes, 3, 4, 4, generator=g)  # class structure at 8-px scale
    protos = torch.nn.functional.interpolate(low, size=(40, 40), mode="bicubic")
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    xs = []
    for start in range(0, n, 4096):  # chunks keep the float working set small
        yc = y[start:start + 4096]
        b = len(yc)
        dx, dy = torch.randint(0, 9, (2, b), generator=g)
        base = _crop(protos[yc], dy, dx)                                   # (b, 3, 32, 32)
        smooth = torch.nn.functional.interpolate(
            torch.randn(b, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear")
        contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g)
        img = contrast * base + 0.7 * smooth + 0.3 * torch.randn(b, 3, 32, 32, generator=g)
        xs.append((128 + 45 * img).clamp(0, 255).to(torch.uint8))
    return torch.cat(xs), y


def _crop(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int = 32):
    """Per-sample crops: images (B, C, H, W), offsets (B,) -> (B, C, size, size)."""
    idx = torch.arange(size, device=images.device)
    rows = (dy[:, None] + idx)[:, None, :, None]                         # (B, 1, size, 1)
    cols = (dx[:, None] + idx)[:, None, None, :]                         # (B, 1, 1, size)
    b = torch.arange(len(images), device=images.device)[:, None, None, None]
    c = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[b, c, rows, cols]


def augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop with 4-px zero padding + horizontal flip. x (B, 3, 32, 32) uint8; the
    offsets dy, dx in 0..8 and flip (bool) are (B,), drawn by `EpochPlan`."""
    x = _crop(torch.nn.functional.pad(x, (4, 4, 4, 4)), dy, dx)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants (1, 3, 1, 1) on `device`."""
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1).to(device)
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32, image_size: int = 32,
              constants: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float, per-channel standardised, upsampled (bilinear) to
    image_size on the device when that is not 32 (the paper's 224x224 profiling).
    `constants`: mean_std(...) made once (Data.normalize keeps them)."""
    mean, std = constants or mean_std(x.device, dtype)
    x = (x.to(dtype) / 255 - mean) / std
    if image_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False)
    return x


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one trial's epoch: distinct for every (seed, epoch)."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


@dataclass
class EpochPlan:
    """One epoch's draws for the N trials of a group: rows are members, columns samples in
    the order they are trained. steps * batch_size columns (the last partial batch is
    dropped: BatchNorm cannot train on a batch of one; the paper's batches are all full)."""
    order: torch.Tensor                  # (N, steps * B) int64: indices into the training set
    dy: torch.Tensor | None              # (N, steps * B) crop offsets, None without augmentation
    dx: torch.Tensor | None
    flip: torch.Tensor | None            # (N, steps * B) bool

    @classmethod
    def draw(cls, generators: list[torch.Generator], n_train: int, steps: int, batch_size: int,
             augment_on: bool) -> "EpochPlan":
        """Each member's order and augmentation from its own generator (already seeded for
        this epoch with `epoch_seed`)."""
        used, rows = steps * batch_size, []
        for g in generators:
            order = torch.randperm(n_train, generator=g, device=g.device)[:used]
            if augment_on:
                dy, dx = torch.randint(0, 9, (2, used), generator=g, device=g.device)
                rows.append((order, dy, dx, torch.rand(used, generator=g, device=g.device) < 0.5))
            else:
                rows.append((order, None, None, None))
        cols = list(zip(*rows))
        return cls(*(torch.stack(c) if c[0] is not None else None for c in cols))

    def keep(self, members: list[int]) -> "EpochPlan":
        """The plan of a subset of the members (a failed member leaves the group)."""
        idx = torch.tensor(members, dtype=torch.long, device=self.order.device)
        return EpochPlan(*(t[idx] if t is not None else None
                           for t in (self.order, self.dy, self.dx, self.flip)))


def group_batch(data: Data, plan: EpochPlan, step: int, batch_size: int, dtype: torch.dtype,
                image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step` of every member: x (N, B, 3, S, S) normalised, y (N, B). One gather and
    one augmentation for the whole group."""
    cols = slice(step * batch_size, (step + 1) * batch_size)
    idx = plan.order[:, cols]                                              # (N, B)
    n, b = idx.shape
    x = data.train_x[idx.flatten()]                                        # (N*B, 3, 32, 32) uint8
    if plan.dy is not None:
        x = augment(x, plan.dy[:, cols].flatten(), plan.dx[:, cols].flatten(),
                    plan.flip[:, cols].flatten())
    x = data.normalize(x, dtype, image_size)
    return x.view(n, b, *x.shape[1:]), data.train_y[idx]


def steps_per_epoch(data: Data, batch_size: int) -> int:
    return len(data.train_y) // batch_size


def resident_bytes(data: Data) -> int:
    """Bytes the dataset keeps on the device (uint8 images + int64 labels)."""
    return sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.test_x, data.test_y))
