"""How much fits, and how many threads: batch sizes from the device's free memory, torch threads,
glibc's allocator told to keep freed memory, and big scratch buffers on huge pages.

Next to :mod:`course.device`: these decide *how* a batched loop runs on the device it picked.
"""
from __future__ import annotations

import ctypes
import math
import mmap
import os
from typing import Sequence

import numpy as np
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
    """Bytes of every leaf module's output for ONE image of ``image_shape`` (C, H, W), plus the
    input's. Memory is counted once: an in-place activation, an identity (timm's ``drop``) or a
    view (``Flatten``) hands on the memory it was given."""
    total, seen, alive = 0, set(), []

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            storage = output.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                alive.append(output)   # kept alive: no later tensor gets the same address
                total += storage.nbytes()

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

    Per image: the activations of one forward pass (:func:`activation_bytes`; ×8 with
    ``backward``: gradients, saved tensors and room for an optimiser's history such as L-BFGS's).
    On the CPU, when glibc keeps freed memory (:func:`keep_freed_memory`, or :data:`MALLOC_ENV`
    from the start), a batch's activations also stay under what it keeps
    (:func:`kept_heap_bytes`, 2 GiB in a running process): a larger batch frees more than that
    at the top of the heap, glibc hands it back to the kernel after every pass, and every pass
    page-faults it in again (EfficientNet-Lite0 at 224 px, 100 images a pass: 350,000 faults a
    pass, system time above user time, 0.6× the speed of 64 images). At least 1, at most ``cap``.
    """
    p = next(model.parameters())
    per_image = max(activation_bytes(model, image_shape) * (8 if backward else 1), 1)
    device = torch.device(device) if device is not None else p.device
    n = fraction * available_memory(device) // per_image
    kept = kept_heap_bytes() if device.type == "cpu" else None
    if kept is not None:
        n = min(n, kept // per_image)
    return int(max(1, min(cap, n)))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_INT_MAX = 2 ** 31 - 1          # mallopt takes a C int: the most a running process can ask for
_KEPT: int | None = None        # what keep_freed_memory() set in this process


def _env_bytes(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory instead of handing it back to the kernel.

    By default a block over the mmap threshold (128 kB, adapting up to 32 MB) comes fresh from the
    kernel and goes back on free, and the heap is trimmed as soon as 128 kB at its top are free.
    A convolutional network's activations are megabytes each, freed and re-made on every forward
    pass, so every pass pays page faults on all of them: EfficientNet-Lite0 runs at a third of its
    speed on a CPU that way. This turns mmap off (``M_MMAP_MAX=0``) and keeps up to 2 GiB − 1
    of free heap (``M_TRIM_THRESHOLD``: a C ``int``, so no more in a running process); the
    environment variables of :data:`MALLOC_ENV` (which ``course run`` and ``course grade`` set
    for every kernel: :mod:`course.headless`) do the same from a process's start, with a larger
    threshold, which this leaves in place. :func:`auto_batch_size` keeps a batch's activations under the threshold in effect
    (:func:`kept_heap_bytes`). Returns False where there is no glibc (macOS, Windows, musl):
    nothing to do there.
    """
    global _KEPT
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1                     # no mmap: large blocks come from the heap
    env = _env_bytes("MALLOC_TRIM_THRESHOLD_")
    if env is not None and env > _INT_MAX:                # set from the start, larger: keep it
        _KEPT = env
    else:
        ok &= mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1    # keep up to 2 GiB of free heap
        _KEPT = _INT_MAX
    return bool(ok)


def kept_heap_bytes() -> int | None:
    """How many bytes of freed memory glibc keeps at the top of the heap because the course told
    it to (:func:`keep_freed_memory` in this process, or :data:`MALLOC_ENV` from its start);
    None when it was not told (the default allocator, or no glibc)."""
    if _KEPT is not None:
        return _KEPT
    env = _env_bytes("MALLOC_TRIM_THRESHOLD_")
    if env is not None and os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return env
    return None


MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
"""The environment that does what :func:`keep_freed_memory` does, from a process's start: there
the threshold is a ``size_t``, and 64 GiB means that a pass's freed activations are never
trimmed. (Only free memory at the top of the heap is kept: the peak is what it was.)"""


HUGE_PAGE = 2 << 20  # a transparent huge page of x86-64 and arm64 Linux


def huge_page_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(numel, dtype=dtype)`` on the CPU, in memory that Linux may back with
    transparent huge pages (``madvise(MADV_HUGEPAGE)``, which takes effect where THP is in its
    ``madvise`` or ``always`` mode); plain ``torch.empty`` below 8 MB, off Linux, or if the mapping
    fails. The same numbers either way: only the pages differ.

    For a big buffer streamed again and again (the L-BFGS optimiser's memory, tens of MB): on 2 MB
    pages its first touch faults 512× less often. Measured on a 2-core Xeon (FC100-100-10, 64-256
    images, 6 interleaved rounds): the first attack in a process 4-6% faster; later ones (the
    buffer reused) the same within that machine's noise (-2% to +3%)."""
    nbytes = numel * dtype.itemsize
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if nbytes < 4 * HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE") or not flags:
        return torch.empty(numel, dtype=dtype)
    try:
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=flags)  # one spare page: room to align
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return torch.empty(numel, dtype=dtype)
    raw = np.frombuffer(region, dtype=np.uint8)          # (keeps the region mapped while it lives)
    offset = -raw.ctypes.data % HUGE_PAGE                 # the first huge-page boundary inside it
    return torch.from_numpy(raw[offset:offset + nbytes]).view(dtype)


__all__ = ["HUGE_PAGE", "MALLOC_ENV", "activation_bytes", "auto_batch_size", "available_memory",
           "huge_page_empty", "keep_freed_memory", "kept_heap_bytes"]
