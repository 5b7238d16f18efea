"""Checkpoints of a whole training state, so an interrupted run resumes where it stopped.

The same scheme as :mod:`course.checkpoints` (files ``NAME-KEY.pt`` / ``NAME-KEY.json`` keyed by a
hash of the config, atomic writes, a corrupt or mismatched file moved aside and rebuilt), for a
state that is more than one model's weights: a dict of tensors and plain values (weights, optimizer
state, pools, fooling images, random-generator states). Loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..checkpoints import _quarantine, checkpoint_paths
from ..results import write_json_atomic


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
    pt, meta = checkpoint_paths(name, config, folder)
    pt.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=pt.parent, prefix=f".{pt.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(_cpu(state), tmp)
        os.replace(tmp, pt)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json_atomic(meta, {"config": config, "info": info})
    return pt


def load_state(name: str, config: dict, folder: Path | None = None) -> tuple[dict, dict] | None:
    """``(state, info)`` saved for exactly this ``config``, or None (a bad file is moved aside)."""
    pt, meta = checkpoint_paths(name, config, folder)
    if not pt.exists():
        return None
    try:
        saved = json.loads(meta.read_text())
        if saved.get("config") != json.loads(json.dumps(config, default=str)):
            raise ValueError("its config does not match")
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, bad JSON, mismatched config
        _quarantine(pt, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return None
    return state, saved.get("info", {})


def remove_state(name: str, config: dict, folder: Path | None = None) -> None:
    """Delete a saved state (e.g. an epoch's, once the next epoch is saved)."""
    for p in checkpoint_paths(name, config, folder):
        p.unlink(missing_ok=True)
