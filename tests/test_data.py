"""Data: the generated dataset, subsets, augmentation, batching and the CIFAR folder rules."""
import hashlib
import pickle
import warnings

import numpy as np
import pytest
import torch
import torchvision

from trainer.data import (CIFAR, Data, DatasetCorrupt, DatasetNotFound, EpochPlan, augment,
                          check_cifar, epoch_seed, group_batch, load_data, normalize, read_cifar,
                          steps_per_epoch, stratified_subset, synthetic_images)
from trainer.errors import DatasetError, TrialError


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_synthetic_is_deterministic_by_seed():
    x1, y1 = synthetic_images(300, 10, seed=0)
    x2, y2 = synthetic_images(300, 10, seed=0)
    x3, _ = synthetic_images(300, 10, seed=1)
    assert (sha256(x1), sha256(y1)) == (sha256(x2), sha256(y2))
    assert sha256(x1) != sha256(x3)
    assert x1.shape == (300, 3, 32, 32) and x1.dtype == torch.uint8 and y1.dtype == torch.int64


@pytest.mark.parametrize("classes", [10, 100], ids=["c10", "c100"])
def test_synthetic_classes_are_balanced(classes):
    _, y = synthetic_images(1000, classes, seed=0)
    assert torch.bincount(y, minlength=classes).tolist() == [1000 // classes] * classes


@pytest.mark.parametrize("classes,min_accuracy", [(10, 0.6), (100, 0.3)], ids=["c10", "c100"])
def test_synthetic_is_learnable_not_random_labels(classes, min_accuracy):
    """Nearest class mean on raw pixels, fitted on one part, scored on another.
    Chance is 1/classes; random labels would stay there."""
    x, y = synthetic_images(3000, classes, seed=0)
    x = x.float().flatten(1) / 255
    (x_fit, y_fit), (x_val, y_val) = (x[:2000], y[:2000]), (x[2000:], y[2000:])
    means = torch.stack([x_fit[y_fit == c].mean(0) for c in range(classes)])
    accuracy = (torch.cdist(x_val, means).argmin(1) == y_val).float().mean().item()
    assert accuracy > min_accuracy
    # the pixels are not the label alone: a class's images differ (shift, contrast, noise)
    assert x_fit[y_fit == 0].std(0).mean() > 0.05


@pytest.mark.parametrize("counts,n,expected", [
    ([100] * 10, 50, [5] * 10),
    ([600, 300, 100], 100, [60, 30, 10]),
    ([500, 500], 7, None),                      # the remainder is filled: 7 in all, 3-4 each
], ids=["balanced", "imbalanced-keeps-proportions", "remainder"])
def test_stratified_subset_keeps_class_proportions(counts, n, expected):
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    x = torch.arange(len(y))
    xs, ys = stratified_subset(x, y, n)
    got = torch.bincount(ys, minlength=len(counts)).tolist()
    assert len(ys) == n and len(set(xs.tolist())) == n
    assert torch.equal(y[xs], ys)                                   # images keep their labels
    assert got == expected if expected else sorted(got) == [3, 4]
    assert torch.equal(stratified_subset(x, y, n)[0], xs)           # a fixed draw


def test_augment_crops_the_padded_image_at_the_offsets_and_flips():
    x = torch.randint(1, 256, (3, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))  # no zeros: padding shows
    dy, dx, flip = torch.tensor([0, 8, 3]), torch.tensor([8, 0, 4]), torch.tensor([False, True, False])
    out = augment(x, dy, dx, flip)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], padded[0, :, 0:32, 8:40])
    assert torch.equal(out[1], padded[1, :, 8:40, 0:32].flip(2))
    assert torch.equal(out[2], padded[2, :, 3:35, 4:36])
    # offsets (0, 8): the top 4 rows and the right 4 columns are padding, the rest image
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, -4:] == 0).all() and (out[0, :, 4:, :-4] > 0).all()


def test_epoch_plans_are_each_members_own_and_repeat_by_seed_and_epoch():
    """Member m's epoch draws depend on (its seed, epoch) only, not on its group."""
    def draw(seeds, epoch):
        gens = [torch.Generator() for _ in seeds]
        for g, s in zip(gens, seeds):
            g.manual_seed(epoch_seed(s, epoch))
        return EpochPlan.draw(gens, 40, 8, 5, augment_on=True)
    group, alone, again = draw([3, 7], 1), draw([7], 1), draw([3, 7], 1)
    for field in ("order", "dy", "dx", "flip"):
        assert torch.equal(getattr(group, field)[1], getattr(alone, field)[0])
        assert torch.equal(getattr(group, field), getattr(again, field))
    assert not torch.equal(group.order[0], group.order[1])                     # seeds differ
    assert not torch.equal(draw([3], 2).order[0], group.order[0])              # epochs differ
    assert sorted(group.order[0].tolist()) == list(range(40))                  # a permutation
    assert int(group.dy.max()) <= 8 and int(group.dy.min()) >= 0
    kept = group.keep([1])
    assert torch.equal(kept.order[0], group.order[1]) and kept.order.shape == (1, 40)


def test_epoch_seeds_differ_for_every_seed_and_epoch():
    seeds = {epoch_seed(s, e) for s in range(50) for e in range(1, 201)}
    assert len(seeds) == 50 * 200 and all(0 <= s < 2 ** 63 for s in seeds)


def test_normalize_upsamples_to_224_on_the_device():
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    small, big = normalize(x), normalize(x, torch.float64, 224)
    assert small.shape == (2, 3, 32, 32) and small.dtype == torch.float32
    assert big.shape == (2, 3, 224, 224) and big.dtype == torch.float64
    assert torch.allclose(big[:, :, 100, 100], small[:, :, 10, 10].double(), atol=1e-6)  # flat stays flat


@pytest.mark.parametrize("n,batch,steps", [(23, 5, 4), (25, 5, 5), (9, 2, 4)],
                         ids=["partial-dropped", "exact", "odd"])
def test_last_partial_batch_is_dropped(n, batch, steps):
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    data = Data(x, torch.arange(n), x[:2], torch.arange(2), 10)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    assert steps_per_epoch(data, batch) == steps
    plan = EpochPlan.draw(gens, n, steps, batch, augment_on=True)
    batches = [group_batch(data, plan, s, batch, torch.float32, 32) for s in range(steps)]
    assert all(bx.shape == (2, batch, 3, 32, 32) and bx.dtype == torch.float32 for bx, _ in batches)
    for member in (0, 1):
        seen = torch.cat([by[member] for _, by in batches])
        assert len(set(seen.tolist())) == steps * batch           # no sample twice an epoch


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_offline_error_says_where_it_looked_what_to_place_and_the_url(dataset, tmp_path,
                                                                      monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    spec = CIFAR[dataset]
    with pytest.raises(DatasetNotFound) as err:
        read_cifar(dataset, tmp_path / "data")
    message = str(err.value)
    assert str((tmp_path / "data" / spec["folder"]).resolve()) in message
    assert spec["archive"] in message and spec["url"] in message
    assert "network unreachable" in message


def write_fake_cifar10(root, per_file: int = 4):
    """cifar-10-batches-py/ in torchvision's layout, with pixels that fail the checksums."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [name for name, _ in CIFAR["cifar10"]["train"] + CIFAR["cifar10"]["test"]]
    for i, name in enumerate(names):
        data = (torch.arange(per_file * 3072) % 251 + i).to(torch.uint8).view(per_file, 3072)
        entry = {b"data": data.numpy(), b"labels": [(i + j) % 10 for j in range(per_file)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def test_a_folder_with_other_checksums_loads_with_one_warning(tmp_path):
    write_fake_cifar10(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_x, train_y, test_x, test_y = read_cifar("cifar10", tmp_path)
    assert [str(w.message).count("differ from the official") for w in caught] == [1]
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    assert train_y.tolist()[:6] == [0, 1, 2, 3, 1, 2] and test_y.tolist() == [5, 6, 7, 8]
    assert int(train_x[0, 0, 0, 1]) == 1 and int(train_x[4, 0, 0, 0]) == 1   # CHW, file order


def test_a_folder_missing_files_names_them(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFound, match="data_batch_3"):
        read_cifar("cifar10", tmp_path)


def test_load_data_subsets_a_cifar_folder(tmp_path):
    write_fake_cifar10(tmp_path, per_file=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_data("cifar10", str(tmp_path), 10, 20, 5, torch.device("cpu"))
    assert (len(data.train_y), len(data.test_y)) == (20, 5)
    assert torch.bincount(data.train_y, minlength=10).tolist() == [2] * 10


def batch(n: int = 4, labels=None, label_key=b"labels", data=None) -> bytes:
    """The bytes of one batch file: n images, n labels unless told otherwise."""
    data = np.zeros((n, 3072), dtype=np.uint8) if data is None else data
    return pickle.dumps({b"data": data, label_key: list(range(n)) if labels is None else labels})


# name -> (bytes for data_batch_3, what the message must say is wrong)
BAD_FILES = {
    "truncated": (batch()[: len(batch()) // 2], "is truncated or not a pickle"),
    "garbage": (bytes(range(256)) * 4, "is truncated or not a pickle (UnpicklingError"),
    "empty": (b"", "is empty"),
    "not-a-dict": (pickle.dumps([1, 2, 3]), "holds a list, not the dict"),
    "no-data-key": (pickle.dumps({b"labels": [0, 1]}), "lacks the key b'data'"),
    "no-label-key": (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "lacks the key b'labels'"),
    "data-float32": (batch(data=np.zeros((4, 3072), np.float32)), "float32 array of shape (4, 3072)"),
    "data-hwc-shape": (batch(data=np.zeros((4, 32, 32, 3), np.uint8)), "shape (4, 32, 32, 3)"),
    "data-a-list": (batch(data=[[0] * 3072] * 4), "has b'data' as a list"),
    "no-images": (batch(n=0), "holds no images"),
    "labels-one-short": (batch(labels=[0, 1, 2]), "holds 4 images but 3 labels"),
    "labels-not-integers": (batch(labels=[0.5] * 4), "not a flat list of integers"),
    "label-out-of-range": (batch(labels=[0, 1, 2, 10]), "labels in [0, 10], outside the 10 classes"),
}


def assert_names_file_and_fix(message: str, path, data_dir, dataset: str = "cifar10"):
    """The one-line message a user can act on: which file, and what to re-extract where."""
    spec = CIFAR[dataset]
    assert "\n" not in message
    assert str(path.resolve()) in message
    assert spec["archive"] in message and spec["url"] in message
    assert str(data_dir.resolve()) in message and "data_dir" in message


@pytest.mark.parametrize("reader", [check_cifar, read_cifar], ids=["check_cifar", "read_cifar"])
@pytest.mark.parametrize("content,problem", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_named_with_the_fault_and_the_fix(reader, content, problem, tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the fault is raised, not the checksum warning
        with pytest.raises(DatasetCorrupt) as err:
            reader("cifar10", tmp_path)
    assert problem in str(err.value)
    assert_names_file_and_fix(str(err.value), folder / "data_batch_3", tmp_path)


def test_dataset_errors_are_trial_errors_so_they_are_not_retried():
    assert issubclass(DatasetCorrupt, DatasetError) and issubclass(DatasetNotFound, DatasetError)
    assert issubclass(DatasetCorrupt, TrialError)


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's datasets fail the test if anything tries to download."""
    def download(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", download)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", download)


def test_check_cifar_passes_a_valid_folder_without_warning(tmp_path, no_download):
    write_fake_cifar10(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_cifar("cifar10", str(tmp_path)) is None      # a str data_dir as in configs


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "synthetic"])
def test_check_cifar_leaves_a_missing_folder_to_the_trials_download(dataset, tmp_path, no_download):
    assert check_cifar(dataset, tmp_path / "nowhere") is None


@pytest.mark.parametrize("reader", [check_cifar, read_cifar], ids=["check_cifar", "read_cifar"])
def test_a_folder_missing_a_file_names_it_and_the_fix(reader, tmp_path, no_download):
    folder = write_fake_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetNotFound) as err:
        reader("cifar10", tmp_path)
    assert "test_batch" in str(err.value)
    assert_names_file_and_fix(str(err.value), folder, tmp_path)


def write_fake_cifar100(root, label_key=b"fine_labels"):
    """cifar-100-python/ with train and test files of 3 images, labels up to 99."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, _ in CIFAR["cifar100"]["train"] + CIFAR["cifar100"]["test"]:
        (folder / name).write_bytes(batch(3, labels=[0, 50, 99], label_key=label_key))
    return folder


def test_cifar100_reads_fine_labels_up_to_99(tmp_path):
    write_fake_cifar100(tmp_path)
    check_cifar("cifar100", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, train_y, test_x, _ = read_cifar("cifar100", tmp_path)
    assert train_y.tolist() == [0, 50, 99] and test_x.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("reader", [check_cifar, read_cifar], ids=["check_cifar", "read_cifar"])
def test_cifar100_without_fine_labels_is_corrupt(reader, tmp_path):
    folder = write_fake_cifar100(tmp_path, label_key=b"labels")
    with pytest.raises(DatasetCorrupt, match="lacks the key b'fine_labels'") as err:
        reader("cifar100", tmp_path)
    assert_names_file_and_fix(str(err.value), folder / "train", tmp_path, "cifar100")
