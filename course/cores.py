"""A kernel's share of the CPU cores, grown when the lessons beside it end.

``course run -j 2`` on a 2-core CPU starts two lessons with one torch thread each. When the last
lessons are queued and one of the two ends, the other would run on alone with one thread while a
core idles: lesson 12 spent its last 26 minutes so on a 2-core AMD EPYC without AVX512-BF16
(EfficientNet-Lite0 in float32: 42-62 images/s on one thread, 84-101 on two).

So the runner gives each kernel a file, named by ``COURSE_THREADS_FILE``, and writes into it the
threads that kernel may now use once nothing is left to start (:func:`write_share`). The kernel
reads it (:func:`follow`, one ``stat`` when nothing changed) before each notebook cell (the cell
hook that ``import course`` installs in a kernel the runner started) and once per generation,
epoch or step of the long loops (MAP-Elites, training, gradient ascent). Outside ``course run``
the variable is unset and nothing here does anything.

Torch's threads are per process and set from the main thread (``torch.set_num_threads`` sets
OpenMP's count for the calling thread), which is why the kernel polls instead of being told.
A lesson's numbers can differ in their last bits with the number of threads a reduction was
split over, so a lesson that grew mid-run may not repeat the same run's last digits.

Code that wants a fixed count for a while says so with ``with threads(n):`` (the thousands of tiny
eigenvalue problems of the spectral bounds run fastest on one). A share that arrives inside such a
block waits for its end, and is then taken up instead of the count the block would restore.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .results import write_json_atomic

THREADS_FILE_ENV = "COURSE_THREADS_FILE"

_seen: dict[str, tuple] = {}   # file -> (inode, size, mtime) last read: a stat decides whether to read again
_held: list[int] = []          # the counts of the `threads` blocks open now, outermost first
_waiting: list[int] = []       # a share that arrived inside one (at most one entry): taken up at the end


def read_share(path: str | Path) -> int | None:
    """The thread count written in ``path``; None if there is none (missing, empty, not a whole
    number of at least 1)."""
    try:
        threads = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return threads if type(threads) is int and threads >= 1 else None


def write_share(path: str | Path, threads: int) -> None:
    """Tell the kernel reading ``path`` that it may use ``threads`` threads (written whole, atomically)."""
    write_json_atomic(Path(path), int(threads))


def follow() -> int:
    """Adopt the thread count the runner wrote for this kernel, if it changed; return the count in use.

    Costs one ``os.stat`` when the file is unchanged or absent; nothing at all outside ``course run``.
    """
    path = os.environ.get(THREADS_FILE_ENV)
    if path:
        try:
            st = os.stat(path)
        except OSError:
            return torch.get_num_threads()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if _seen.get(path) != stamp:
            _seen[path] = stamp
            threads = read_share(path)
            if threads and _held:
                _waiting[:] = [threads]
            elif threads and threads != torch.get_num_threads():
                torch.set_num_threads(threads)
    return torch.get_num_threads()


class threads:
    """``with threads(n): ...`` runs the block with ``n`` torch CPU threads, then restores the count
    it found (``n`` None: leaves the count alone).

    Inside the block :func:`follow` keeps a share the runner writes instead of taking it up; the
    block's end takes it up in place of the old count (else the share would be lost until the runner
    wrote again: it writes once per change). Blocks nest.
    """

    def __init__(self, n: int | None):
        self.n = None if n is None else int(n)

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None:
            _held.append(self.n)
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.n is None:
            return False
        _held.pop()
        if _held:
            torch.set_num_threads(self.old)
        else:
            torch.set_num_threads(_waiting.pop() if _waiting else self.old)
        return False


def install_cell_hook() -> bool:
    """In an IPython kernel started by ``course run`` (``COURSE_THREADS_FILE`` set), call
    :func:`follow` before every cell; True if the hook is (now or already) installed."""
    if not os.environ.get(THREADS_FILE_ENV):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if _cell_hook not in shell.events.callbacks.get("pre_run_cell", []):
        shell.events.register("pre_run_cell", _cell_hook)
    return True


def _cell_hook(*_info) -> None:
    follow()
