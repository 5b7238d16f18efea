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
