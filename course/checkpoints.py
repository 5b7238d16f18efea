"""Trained weights cached by the config that made them.

A checkpoint is a ``state_dict`` (``NAME-KEY.pt``) plus the JSON of its config and training
summary (``NAME-KEY.json``), where KEY is a hash of the config. Writes are atomic (temp file, then
rename; the JSON first, so a weights file never sits beside a missing or older JSON); loads use
``weights_only=True``; a corrupt or mismatched file is moved aside to ``*.corrupt`` with a warning
and rebuilt — never silently used, never silently deleted.

:func:`making` holds a lock (``NAME-KEY.lock``, the ``filelock`` package) while one process checks
for a checkpoint and builds it: two lessons (or pytest's two workers) that need the same missing
model then train it once, and the second loads what the first saved.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn

from .data import cache_root
from .results import write_json_atomic


def config_key(config: dict) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checkpoint_paths(name: str, config: dict, folder: Path | None = None) -> tuple[Path, Path]:
    folder = Path(folder) if folder else cache_root() / "checkpoints"
    stem = f"{name}-{config_key(config)}"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def save_object(obj, config: dict, info: dict, name: str, folder: Path | None = None) -> Path:
    """Save any ``torch.save``-able ``obj`` and ``{config, info}`` atomically; returns the ``.pt`` path."""
    pt, meta = checkpoint_paths(name, config, folder)
    pt.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=pt.parent, prefix=f".{pt.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        # The JSON (same config: the key is its hash) goes in first, so that a reader that finds the
        # weights always finds their JSON beside them.
        write_json_atomic(meta, {"config": config, "info": info})
        os.replace(tmp, pt)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return pt


@contextmanager
def making(name: str, config: dict, folder: Path | None = None):
    """Hold the lock of checkpoint ``NAME-KEY`` while the body checks for it and makes it.

    Another process that enters ``making`` for the same checkpoint waits, saying so on stderr, and
    then finds the checkpoint saved. The lock is the OS's (released if the process dies). Where
    the cache cannot be written (a read-only, shared cache), the body runs without a lock.
    """
    pt, _ = checkpoint_paths(name, config, folder)
    try:
        pt.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(pt.with_suffix(".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"Waiting for another process that is training {pt.stem} (lock: {lock.lock_file}) ...",
                  file=sys.stderr, flush=True)
            lock.acquire()
    except OSError:  # read-only cache: nothing could be saved there anyway
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def save_checkpoint(model: nn.Module, config: dict, info: dict, name: str, folder: Path | None = None) -> Path:
    """Save ``model``'s weights and ``{config, info}`` atomically; returns the weights' path."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_object(state, config, info, name, folder)


def _quarantine(path: Path, why: str) -> None:
    warnings.warn(f"Checkpoint {path} is unusable ({why}); moved aside to {path.name}.corrupt and rebuilt.",
                  stacklevel=3)
    for p in (path, path.with_suffix(".json")):
        if p.exists():
            p.replace(p.with_name(p.name + ".corrupt"))


def load_object(config: dict, name: str, folder: Path | None = None, check=None) -> tuple[object, dict] | None:
    """``(obj, info)`` saved for exactly ``config``, or None when there is nothing usable.

    ``check(obj)`` may raise to reject what was loaded (wrong shapes, say); a file that fails to
    load, whose JSON does not match ``config``, or that ``check`` rejects is moved aside with a warning.
    """
    pt, meta = checkpoint_paths(name, config, folder)
    if not pt.exists():
        return None
    try:
        try:
            text = meta.read_text()
        except FileNotFoundError:
            if not pt.exists():  # both removed meanwhile (remove_state in another process)
                return None
            raise
        saved = json.loads(text)
        if saved.get("config") != json.loads(json.dumps(config, default=str)):
            raise ValueError("its config does not match")
        obj = torch.load(pt, map_location="cpu", weights_only=True)
        if check is not None:
            check(obj)
    except Exception as e:  # truncated file, wrong shapes, bad JSON, mismatched config
        _quarantine(pt, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return None
    return obj, saved.get("info", {})


def load_checkpoint(model: nn.Module, config: dict, name: str, folder: Path | None = None) -> dict | None:
    """Load cached weights into ``model`` if a valid checkpoint for ``config`` exists.

    Returns the saved training ``info`` on success, None when there is nothing usable.
    """
    loaded = load_object(config, name, folder, check=lambda state: model.load_state_dict(state, strict=True))
    return None if loaded is None else loaded[1]
