"""Trained weights cached by the config that made them.

A checkpoint is a ``state_dict`` (``NAME-KEY.pt``) plus the JSON of its config, training summary
and the SHA-256 of the weights file (``NAME-KEY.json``), where KEY is a hash of the config. Writes
are atomic (temp file, then rename; the JSON first, so a weights file never sits beside a missing
or older JSON), with the mode the user's umask gives (a class can share one cache); temp files
left by interrupted saves are removed by the next save. Loads check the digest, use
``weights_only=True`` and reject NaN or inf weights; a damaged, mismatched or non-finite file is
moved aside to ``*.corrupt`` (``*.corrupt.2``, ... : an earlier one is never overwritten) with a
warning that says what was wrong, and rebuilt — never silently used, never silently deleted. A
file we may not read is reported as a permission problem, and another user's file is never moved.

:func:`making` holds a lock (``NAME-KEY.lock``, the ``filelock`` package) while one process checks
for a checkpoint and builds it: two lessons (or pytest's two workers) that need the same missing
model then train it once, and the second loads what the first saved.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn

from .data import cache_root, sha256
from .results import make_temp, remove_stale_temps, write_json_atomic


def config_key(config: dict) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_fingerprint(*modules) -> str:
    """A short hash of the source of ``modules`` (a package counts all its ``.py`` files): put in a
    config, it keys a saved result to the code that made it, so a changed algorithm (a new random
    stream, another renderer) never resumes from a state the old code saved."""
    h = hashlib.sha256()
    for module in modules:
        path = Path(module.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f"{module.__name__}/{f.relative_to(path.parent).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def checkpoint_paths(name: str, config: dict, folder: Path | None = None) -> tuple[Path, Path]:
    folder = Path(folder) if folder else cache_root() / "checkpoints"
    stem = f"{name}-{config_key(config)}"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def _permission_hint(path: Path) -> str:
    return (f"ask the owner of {path.parent} to make it group-writable (chmod -R g+rwX, with umask 002 "
            "for everyone who shares it), or set COURSE_CACHE to a folder of your own")


def save_object(obj, config: dict, info: dict, name: str, folder: Path | None = None) -> Path | None:
    """Save any ``torch.save``-able ``obj`` and ``{config, info, sha256}`` atomically; return the ``.pt`` path.

    The JSON records the SHA-256 of the weights file, so a load can tell a damaged file (flipped
    bytes, a copy cut short) from a good one. Temp files that earlier, interrupted saves left
    behind are removed first. Where the cache cannot be written (another user's, read-only) the
    save is skipped with a warning that says so and how to fix it, and None is returned: the
    caller keeps its object in memory rather than losing the work that made it.
    """
    pt, meta = checkpoint_paths(name, config, folder)
    tmp = None
    try:
        pt.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(pt)
        tmp = make_temp(pt)
        torch.save(obj, tmp)
        # The JSON (same config: the key is its hash) goes in first, so that a reader that finds the
        # weights always finds their JSON beside them.
        write_json_atomic(meta, {"config": config, "info": info, "sha256": sha256(tmp)})
        os.replace(tmp, pt)
    except PermissionError as e:
        _discard(tmp)
        warnings.warn(f"Checkpoint {pt.name} was not saved: permission denied ({e}). It is used from "
                      f"memory this time and rebuilt next time; to keep it, {_permission_hint(pt)}.",
                      stacklevel=3)
        return None
    except BaseException:
        _discard(tmp)
        raise
    return pt


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


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


def _quarantine_name(path: Path) -> Path:
    """``NAME.pt.corrupt``, or ``.corrupt.2``, ``.corrupt.3``, ... : never an earlier quarantine's name."""
    n = 1
    while True:
        suffix = ".corrupt" if n == 1 else f".corrupt.{n}"
        if not any(p.with_name(p.name + suffix).exists() for p in (path, path.with_suffix(".json"))):
            return path.with_name(path.name + suffix)
        n += 1


def _owned_by_someone_else(path: Path) -> bool:
    try:
        return hasattr(os, "getuid") and path.stat().st_uid != os.getuid()
    except OSError:
        return False


def _quarantine(path: Path, why: str) -> None:
    """Move a rejected checkpoint (and its JSON) aside under a fresh name, saying what was wrong.

    Another user's file (a shared cache) is left where it is: it is reported, and the rebuilt
    checkpoint replaces it when it is saved.
    """
    if _owned_by_someone_else(path):
        warnings.warn(f"Checkpoint {path} is unusable ({why}). It belongs to another user, so it is left "
                      "in place; rebuilding it now (the rebuilt one replaces it if the folder is writable).",
                      stacklevel=3)
        return
    dest = _quarantine_name(path)
    suffix = dest.name[len(path.name):]
    moved = []
    for p in (path, path.with_suffix(".json")):
        try:
            p.replace(p.with_name(p.name + suffix))
            moved.append(p.name + suffix)
        except FileNotFoundError:
            pass
        except PermissionError:
            pass  # reported below by what was not moved
    where = f"moved aside to {' and '.join(moved)}" if moved else f"could not be moved aside ({_permission_hint(path)})"
    warnings.warn(f"Checkpoint {path} is unusable ({why}); {where}; rebuilding it now.", stacklevel=3)


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0][:160] if str(e) else ""
    return text if isinstance(e, CheckpointError) else f"{type(e).__name__}: {text}"


class CheckpointError(ValueError):
    """A checkpoint that loads but must not be used (its digest, config or values are wrong)."""


class DigestMismatch(CheckpointError):
    """The weights file's SHA-256 is not the one its JSON records."""


def non_finite_tensors(obj, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``obj`` (a tensor, or dicts/lists of them) holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "tensor"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [name for k, v in items for name in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def _read_verified(pt: Path, meta: Path, config: dict) -> tuple[object, dict] | None:
    """The JSON and the object of a checkpoint whose digest matches; raises what is wrong."""
    try:
        text = meta.read_text()
    except FileNotFoundError:
        if not pt.exists():  # both removed meanwhile (remove_state in another process)
            return None
        raise CheckpointError("its JSON is missing")
    saved = json.loads(text)
    if saved.get("config") != json.loads(json.dumps(config, default=str)):
        raise CheckpointError("its config does not match")
    stamp = pt.stat().st_mtime_ns
    blob = pt.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if saved.get("sha256") not in (None, digest):
        raise DigestMismatch(f"its SHA-256 is {digest[:12]}…, not the {saved['sha256'][:12]}… its JSON "
                             "records: the file was damaged or replaced")
    obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return obj, {**saved, "_digest": digest, "_mtime_ns": stamp}


def load_object(config: dict, name: str, folder: Path | None = None, check=None,
                finite: bool = False) -> tuple[object, dict] | None:
    """``(obj, info)`` saved for exactly ``config``, or None when there is nothing usable.

    The weights file must have the SHA-256 its JSON records (a file from before digests were kept
    is checked by loading it, and its digest is then added). ``finite=True`` rejects NaN or inf in
    any floating-point tensor (weights; a state may hold -inf on purpose). ``check(obj)`` may raise
    to reject what was loaded (wrong shapes, say). A file rejected for any of these is moved aside
    with a warning that says why. A file we may not read is reported as such, never as corrupt,
    and left where it is.
    """
    pt, meta = checkpoint_paths(name, config, folder)
    if not pt.exists():
        return None
    for attempt in (0, 1):
        try:
            read = _read_verified(pt, meta, config)
            if read is None:
                return None
            obj, saved = read
            bad = non_finite_tensors(obj) if finite else []
            if bad:
                raise CheckpointError(f"NaN or inf in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")
            if check is not None:
                check(obj)
            break
        except PermissionError as e:
            warnings.warn(f"Checkpoint {pt} cannot be read: permission denied ({e}); it is left as it is "
                          f"and rebuilt in memory. To share it, {_permission_hint(pt)}.", stacklevel=2)
            return None
        except CheckpointError as e:
            # A save in another process replaces the JSON, then the weights: a reader in between
            # sees a digest that does not match yet. Read once more before calling it damaged.
            if attempt == 0 and isinstance(e, DigestMismatch):
                time.sleep(0.2)
                continue
            _quarantine(pt, _why(e))
            return None
        except Exception as e:  # truncated file, wrong shapes, bad JSON
            _quarantine(pt, _why(e))
            return None
    if saved.get("sha256") is None:
        _record_digest(pt, meta, saved)
    return obj, saved.get("info", {})


def _record_digest(pt: Path, meta: Path, saved: dict) -> None:
    """Give a checkpoint from before digests were kept, which just passed every check, its digest.

    Skipped when the weights changed since they were read (a save in another process) or the JSON
    cannot be written (another user's cache): the next load checks it again the same way.
    """
    try:
        if pt.stat().st_mtime_ns == saved["_mtime_ns"]:
            write_json_atomic(meta, {"config": saved["config"], "info": saved.get("info", {}),
                                     "sha256": saved["_digest"]})
    except OSError:
        pass


def load_checkpoint(model: nn.Module, config: dict, name: str, folder: Path | None = None) -> dict | None:
    """Load cached weights into ``model`` if a valid checkpoint for ``config`` exists.

    Returns the saved training ``info`` on success, None when there is nothing usable (a damaged
    file, NaN or inf weights, shapes that do not fit ``model``: each moved aside with a warning).
    """
    loaded = load_object(config, name, folder, finite=True,
                         check=lambda state: model.load_state_dict(state, strict=True))
    return None if loaded is None else loaded[1]
