"""CIFAR-10/100 on disk, in torchvision's layout: read, validated, downloaded when missing.

    check_cifar("cifar10", "./data")     # the driver, once, before any trial: reads every file
    read_cifar("cifar10", Path("./data"))    # each trial: (train_x, train_y, test_x, test_y)

Every file is validated by one function (`_read_cifar_file`), so the driver's check and a
trial's read cannot disagree; a bad file is a `DatasetCorrupt` naming it and the fix, a
missing one a `DatasetNotFound` (both TrialErrors: a retry would repeat them).
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import DATASET_CLASSES
from .errors import DatasetError

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
