"""Checkpoints of a whole training state, so an interrupted run resumes where it stopped.

The same scheme as :mod:`course.checkpoints` (files ``NAME-KEY.pt`` / ``NAME-KEY.json`` keyed by a
hash of the config, atomic writes, a corrupt or mismatched file moved aside and rebuilt), for a
state that is more than one model's weights: a dict of tensors and plain values (weights, optimizer
state, pools, fooling images, random-generator states). Loaded with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import checkpoint_paths, load_object, save_object


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def save_state(name: str, config: dict, state: dict, info: dict, folder: Path | None = None) -> Path:
    """Write ``state`` (tensors, moved to the CPU) and ``{config, info}`` atomically; return the path."""
    return save_object(_cpu(state), config, info, name, folder)


def load_state(name: str, config: dict, folder: Path | None = None) -> tuple[dict, dict] | None:
    """``(state, info)`` saved for exactly this ``config``, or None (a bad file is moved aside)."""
    return load_object(config, name, folder)


def remove_state(name: str, config: dict, folder: Path | None = None) -> None:
    """Delete a saved state (e.g. an epoch's, once the next epoch is saved)."""
    for p in checkpoint_paths(name, config, folder):
        p.unlink(missing_ok=True)
