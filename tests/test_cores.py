"""A kernel takes up the thread count the runner writes for it, only when it changes, and only
inside `course run` (course.cores); the runner shares out the cores of lessons that ended."""
import pytest
import torch

from course import cores
from course.runner import grown_share


@pytest.fixture
def threads_back():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_outside_course_run_nothing_changes(monkeypatch, threads_back):
    monkeypatch.delenv(cores.THREADS_FILE_ENV, raising=False)
    torch.set_num_threads(1)
    assert cores.follow() == 1 and torch.get_num_threads() == 1
    assert cores.install_cell_hook() is False


def test_the_kernel_takes_up_the_count_written_for_it(tmp_path, monkeypatch, threads_back):
    share = tmp_path / "12_lesson.threads"
    monkeypatch.setenv(cores.THREADS_FILE_ENV, str(share))
    torch.set_num_threads(1)
    assert cores.follow() == 1, "no file yet: the count the kernel started with"
    cores.write_share(share, 2)
    assert share.read_text() == "2" and list(tmp_path.iterdir()) == [share], "a temp file was left beside it"
    assert cores.follow() == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(1)            # the same file again is not read again: one stat, no change
    assert cores.follow() == 1
    cores.write_share(share, 3)
    assert cores.follow() == 3
    share.write_text("two\n")           # not a count: ignored
    assert cores.follow() == 3


def test_a_threads_block_sets_its_count_and_restores_the_old_one(monkeypatch, threads_back):
    monkeypatch.delenv(cores.THREADS_FILE_ENV, raising=False)
    torch.set_num_threads(2)
    with cores.threads(1):
        assert torch.get_num_threads() == 1
        with cores.threads(3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1, "an inner block restores its outer block's count"
    assert torch.get_num_threads() == 2
    with cores.threads(None):
        assert torch.get_num_threads() == 2, "None leaves the count alone"
    with pytest.raises(KeyError):
        with cores.threads(1):
            raise KeyError("a failure inside the block")
    assert torch.get_num_threads() == 2, "restored after an exception too"


def test_a_share_written_inside_a_threads_block_is_taken_up_at_its_end(tmp_path, monkeypatch, threads_back):
    share = tmp_path / "05_lesson.threads"
    monkeypatch.setenv(cores.THREADS_FILE_ENV, str(share))
    torch.set_num_threads(1)
    cores.follow()
    with cores.threads(1):
        with cores.threads(1):
            cores.write_share(share, 2)
            assert cores.follow() == 1, "inside the block the block's count holds"
        assert torch.get_num_threads() == 1, "the share waits for the outermost block"
    assert torch.get_num_threads() == 2, "the share is not lost: taken up at the block's end"
    with cores.threads(1):
        pass
    assert torch.get_num_threads() == 2, "a later block restores the share it found"


@pytest.mark.parametrize("text, want", [("2\n", 2), ("16", 16), ("0\n", None), ("-1", None), ("", None), ("x", None),
                                        ("2.5", None), ("true", None), ("[2]", None)])
def test_read_share_takes_only_a_positive_count(tmp_path, text, want):
    (tmp_path / "f").write_text(text)
    assert cores.read_share(tmp_path / "f") == want
    assert cores.read_share(tmp_path / "missing") is None


@pytest.mark.parametrize("free, running, current, want", [
    (2, 1, 1, 2),       # 2 cores, the other lesson ended: the last one gets both
    (2, 2, 1, None),    # both still running: 1 each, as they have
    (2, 1, 2, None),    # already 2
    (8, 3, 2, None),    # 8 // 3 = 2: no more than they have
    (8, 2, 2, 4),
    (1, 1, 1, None),    # one free core (the rest busy elsewhere): never more
    (4, 0, 1, None),
])
def test_grown_share_is_the_free_cores_over_the_running_lessons(free, running, current, want):
    assert grown_share(free, running, current) == want


def test_the_long_loops_take_up_a_share_between_their_steps(tmp_path, monkeypatch, threads_back):
    from torch import nn

    from course.evolution import DirectEncoding, map_elites
    from course.fooling import gradient_ascent

    share = tmp_path / "lesson.threads"
    monkeypatch.setenv(cores.THREADS_FILE_ENV, str(share))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    for loop in (lambda: map_elites(model, DirectEncoding(), generations=2, offspring=4, progress=False),
                 lambda: gradient_ascent(model, [3], steps=2, progress=False)):
        torch.set_num_threads(1)
        cores.write_share(share, 1)
        cores.follow()
        cores.write_share(share, 2)       # written while the lesson runs: taken up by the loop itself
        loop()
        assert torch.get_num_threads() == 2
