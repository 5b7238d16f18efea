"""course.memory's huge-page buffers (the L-BFGS optimiser's memory)."""
from __future__ import annotations

import mmap
import sys

import pytest
import torch

from course import memory


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_huge_page_buffer_is_an_aligned_writable_empty(dtype):
    """Huge-page aligned where Linux offers MADV_HUGEPAGE, the asked size and dtype, writable."""
    n = memory.HUGE_PAGE * 4 // dtype.itemsize + 3   # just above the 8 MB threshold
    t = memory.huge_page_empty(n, dtype)
    assert t.shape == (n,) and t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
    t.fill_(0.5)
    t[-1] = 2.0
    assert bool((t[:-1] == 0.5).all()) and float(t[-1]) == 2.0   # every entry ours to write
    if hasattr(mmap, "MADV_HUGEPAGE") and sys.platform.startswith("linux"):
        assert t.data_ptr() % memory.HUGE_PAGE == 0


def test_small_buffer_is_plain_empty():
    small = memory.huge_page_empty(10, torch.float64)
    assert small.shape == (10,) and small.dtype == torch.float64
