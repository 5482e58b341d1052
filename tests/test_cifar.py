"""CIFAR on disk: torchvision's layout, what a bad or missing file says, and that the
driver's check and a trial's read agree on every fault."""
import pickle
import warnings

import numpy as np
import pytest
import torch
import torchvision

from trainer.cifar import CIFAR, DatasetCorrupt, DatasetNotFound, check_cifar, read_cifar
from trainer.data import load_data
from trainer.errors import DatasetError, TrialError


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
