"""One helper picks the device for everything: CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import os

import torch


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces one, e.g. ``"cpu"``.
    Otherwise CUDA when available, then MPS, then the CPU.
    """
    choice = prefer or os.environ.get("COURSE_DEVICE")
    if choice:
        dev = torch.device(choice)
        if (dev.type == "cuda" and not torch.cuda.is_available()) or (dev.type == "mps" and not _mps_available()):
            raise RuntimeError(
                f"Device {choice!r} was asked for but {'CUDA' if dev.type == 'cuda' else 'MPS'} is not available here. "
                "Unset COURSE_DEVICE (or pass prefer=None) to use the CPU."
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    """Apple's MPS backend is built into this torch and usable here."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def fast_precision(device: torch.device | str | None = None) -> str:
    """The fastest floating-point precision this device computes convolutions in natively:
    ``"bfloat16"`` on a CUDA GPU that supports it and on a CPU with bfloat16 instructions
    (AVX512-BF16 or AMX: oneDNN runs EfficientNet-Lite0 there 2-3x faster than in float32),
    otherwise ``"float32"`` (a CPU without them would *emulate* bfloat16, slower than float32).

    For searches that only need a ranking (evolution); what a lesson reports is scored again in
    float32. ``COURSE_PRECISION`` forces one ("float32" or "bfloat16").
    """
    forced = os.environ.get("COURSE_PRECISION")
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise ValueError(f"COURSE_PRECISION must be 'float32' or 'bfloat16', got {forced!r}.")
        return forced
    dev = torch.device(device) if device is not None else get_device()
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if dev.type == "cpu":
        try:
            return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
        except (AttributeError, RuntimeError):  # a torch without oneDNN, or an older one
            return "float32"
    return "float32"


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (and numpy, python) and return a CPU generator for explicit sampling."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
