"""How much fits, and how many threads: batch sizes from the device's free memory, torch threads,
and glibc's allocator told to keep freed memory.

Next to :mod:`course.device`: these decide *how* a batched loop runs on the device it picked.
"""
from __future__ import annotations

import ctypes
import math
import os
from typing import Sequence

import torch
from torch import nn


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for tensors on ``device``: CUDA's free memory, MPS's recommended budget, else
    the CPU's available RAM (``MemAvailable``)."""
    from .device import get_device

    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except Exception:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # assume a small laptop


def activation_bytes(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Bytes of every leaf module's output for ONE image of ``image_shape`` (C, H, W)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    p = next(model.parameters())
    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return total + math.prod(image_shape) * p.element_size()


def auto_batch_size(model: nn.Module, image_shape: Sequence[int], *, backward: bool = False,
                    fraction: float = 0.25, cap: int = 256, device=None) -> int:
    """Images per forward pass that fit in ``fraction`` of the device's free memory.

    Per image: the activations of one forward pass (×8 with ``backward``: gradients, saved
    tensors and room for an optimiser's history such as L-BFGS's). At least 1, at most ``cap``.
    """
    p = next(model.parameters())
    per_image = activation_bytes(model, image_shape) * (8 if backward else 1)
    free = available_memory(device if device is not None else p.device)
    return int(max(1, min(cap, fraction * free // max(per_image, 1))))


class threads:
    """``with threads(1): ...`` runs the block with that many torch CPU threads, then restores them.

    Thousands of tiny batched problems (the FFT bounds' small eigenvalue problems) each open a
    parallel region; on a CPU shared with other busy processes every region waits for a core, and
    2 threads became 10× slower than 1 in our measurements. One thread avoids the waits.
    """

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory instead of handing it back to the kernel.

    By default a block over the mmap threshold (128 kB, adapting up to 32 MB) comes fresh from the
    kernel and goes back on free, and the heap is trimmed as soon as 128 kB at its top are free.
    A convolutional network's activations are megabytes each, freed and re-made on every forward
    pass, so every pass pays page faults on all of them: EfficientNet-Lite0 runs at a third of its
    speed on a CPU that way. The same as the environment variables ``MALLOC_MMAP_MAX_=0`` and
    ``MALLOC_TRIM_THRESHOLD_=<large>`` (which :mod:`course.runner` sets for every kernel), but for
    a process that is already running. Returns False where there is no glibc (macOS, Windows,
    musl): nothing to do there.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1                    # no mmap: large blocks come from the heap
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1       # keep up to 1 GiB of free heap
    return bool(ok)


MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""The environment that does what :func:`keep_freed_memory` does, from a process's start."""


__all__ = ["MALLOC_ENV", "activation_bytes", "auto_batch_size", "available_memory", "keep_freed_memory", "threads"]
