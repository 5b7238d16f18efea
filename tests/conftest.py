from pathlib import Path

import pytest

from course.data import cache_root, fetch_mnist


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny ops: one torch thread is fastest, and does not oversubscribe a shared CI machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_raw_dir() -> Path:
    """The user's MNIST raw folder, fetched once if need be (CI fetches it before pytest)."""
    fetch_mnist(verbose=False)
    return cache_root() / "MNIST" / "raw"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch, real_raw_dir):
    """A private COURSE_CACHE whose MNIST files are links to the real ones (nothing is re-downloaded)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in real_raw_dir.iterdir():
        if not f.name.startswith("."):
            (raw / f.name).symlink_to(f)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    from course import data

    data._MEMO.clear()
    yield tmp_path
    data._MEMO.clear()


@pytest.fixture
def no_network(monkeypatch):
    """Every network source fails, as on an offline laptop; records what was attempted."""
    from course import data

    calls = []
    monkeypatch.setattr(data, "_try_torchvision", lambda: calls.append("torchvision") or "failed (offline)")
    monkeypatch.setattr(data, "_try_npm", lambda: calls.append("npm") or "failed (offline)")
    return calls


@pytest.fixture
def references_allowed(monkeypatch):
    """The checks are calibrated on the course's own implementations: let those through in the tests
    that say so (a graded answer never gets this; tests/test_forgeries.py checks that it scores zero)."""
    import course.checks

    monkeypatch.setattr(course.checks, "_is_course_code", lambda answer: False)
    monkeypatch.setattr(course.checks, "_forbidden_codes", lambda exercise_id: {})
    monkeypatch.setattr(course.checks, "_is_checker_reference", lambda code: False)
