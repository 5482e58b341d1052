"""The datasets, held on the training device: CIFAR-10/100 (read by trainer/cifar.py) and a
generated CIFAR-shaped dataset.

The images sit on the device as one uint8 tensor [N, 3, 32, 32]; batches are drawn by a
per-epoch permutation and augmented + normalised there (airbench-style). At batch size 5
a DataLoader with worker processes would cost more than the step itself.

Each trial's randomness for one epoch (order, crops, flips; dropout later in the epoch)
comes from its own generator on the device, seeded from (seed, epoch): nothing is copied
from the host during a step (on CUDA each such copy stalls the stream), a resumed epoch
draws exactly what an uninterrupted one would, and the trials of a fused group draw
independently. The whole epoch's draws are made at its start (`EpochDraws`), so a step
only slices them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cifar import read_cifar
from .config import DATASET_SIZES

# Per-channel mean/std of the CIFAR-10 training set (0-1 scale); used for every dataset.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# The dataset and its stratified subsets do not depend on the trial's seed: every trial of
# a sweep sees the same images, and seeds vary only init, data order and augmentation.
DATA_SEED = 0

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
    offsets dy, dx in 0..8 and flip (bool) are (B,), drawn by `EpochDraws`."""
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
class EpochDraws:
    """One epoch's draws for the N trials of a group: rows are members, columns samples in
    the order they are trained. steps * batch_size columns (the last partial batch is
    dropped: BatchNorm cannot train on a batch of one; the paper's batches are all full)."""
    order: torch.Tensor                  # (N, steps * B) int64: indices into the training set
    dy: torch.Tensor | None              # (N, steps * B) crop offsets, None without augmentation
    dx: torch.Tensor | None
    flip: torch.Tensor | None            # (N, steps * B) bool

    @classmethod
    def draw(cls, generators: list[torch.Generator], n_train: int, steps: int, batch_size: int,
             augment_on: bool) -> "EpochDraws":
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

    def keep(self, members: list[int]) -> "EpochDraws":
        """The draws of a subset of the members (a failed member leaves the group)."""
        idx = torch.tensor(members, dtype=torch.long, device=self.order.device)
        return EpochDraws(*(t[idx] if t is not None else None
                           for t in (self.order, self.dy, self.dx, self.flip)))


def group_batch(data: Data, draws: EpochDraws, step: int, batch_size: int, dtype: torch.dtype,
                image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step` of every member: x (N, B, 3, S, S) normalised, y (N, B). One gather and
    one augmentation for the whole group."""
    cols = slice(step * batch_size, (step + 1) * batch_size)
    idx = draws.order[:, cols]                                              # (N, B)
    n, b = idx.shape
    x = data.train_x[idx.flatten()]                                        # (N*B, 3, 32, 32) uint8
    if draws.dy is not None:
        x = augment(x, draws.dy[:, cols].flatten(), draws.dx[:, cols].flatten(),
                    draws.flip[:, cols].flatten())
    x = data.normalize(x, dtype, image_size)
    return x.view(n, b, *x.shape[1:]), data.train_y[idx]


def steps_per_epoch(data: Data, batch_size: int) -> int:
    return len(data.train_y) // batch_size


def resident_bytes(data: Data) -> int:
    """Bytes the dataset keeps on the device (uint8 images + int64 labels)."""
    return sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.test_x, data.test_y))
