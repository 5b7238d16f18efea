"""Results that machines can read: ``course.record("fc100_100_10.test_error", 0.017, paper=0.0164)``.

Each call prints one line for the reader and, when ``COURSE_RESULTS_FILE`` is set (``course run``
sets it for every notebook it executes), adds the metric to that JSON file, so the runner can
print the paper's numbers beside ours. Each metric carries its data source, profile and device.
"""
from __future__ import annotations

import glob
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

_SESSION: list[dict] = []  # what this Python session recorded, in order (for results_table)


def _plain(value: Any) -> Any:
    """Tensors, numpy scalars and arrays become JSON-friendly Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        inner = ", ".join(_fmt(x) for x in v[:6])
        return f"[{inner}{', …' if len(v) > 6 else ''}]"
    return "—" if v is None else str(v)


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux's /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    """``.NAME.HOST.PID.``: a temp file names its writer, so a later save can tell a live write
    from the leftover of a killed one."""
    host = socket.gethostname().replace(".", "_") or "host"
    return f".{path.name}.{host}.{os.getpid()}."


def make_temp(path: Path) -> str:
    """A new temp file beside ``path`` for an atomic write, with the mode a plain ``open`` would give.

    ``mkstemp`` makes files ``0600`` whatever the umask; in a cache shared by a class (group
    ``course``, umask 002) that would lock everyone else out of every file, so the mode is set to
    ``0666 & ~umask``, exactly what ``open(path, "w")`` gives.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    return tmp


def _writer_alive(name: str, stem: str, age: float) -> bool:
    """Whether the process that named the temp file ``name`` (``age`` seconds old) may still be writing it."""
    parts = name[len(stem):].split(".")  # HOST, PID, random, "tmp"
    if len(parts) < 4 or not parts[1].isdigit():
        return age < UNNAMED_TMP_SECONDS  # an older version's name (no writer recorded): only age tells
    host, pid = parts[0], int(parts[1])
    if host != (socket.gethostname().replace(".", "_") or "host"):
        return True  # another machine's (a shared cache): only age tells
    if pid == os.getpid():
        return False  # ours, and we write one file at a time: a leftover of an interrupted save
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


STALE_TMP_SECONDS = 24 * 3600  # a temp file this old is a leftover, whoever wrote it
UNNAMED_TMP_SECONDS = 600  # one without a recorded writer (older versions): no save takes this long


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files that interrupted writes of ``path`` left beside it; return them.

    A temp file is stale when its writer is dead (same machine), when it has no recorded writer
    (written by an older version) and is over ten minutes old, or when it is over a day old. Files we may not delete (another
    user's) are left alone.
    """
    path = Path(path)
    stem, removed = f".{path.name}.", []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f"{glob.escape(stem)}*.tmp"):
        try:
            age = time.time() - tmp.stat().st_mtime
            if age > STALE_TMP_SECONDS or not _writer_alive(tmp.name, stem, age):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to delete
            pass
    return removed


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = make_temp(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(name: str, value: Any, paper: Any = None, *, source: str | None = None, **extra: Any) -> Any:
    """Record one key number of a lesson; returns ``value`` unchanged.

    ``paper`` is the paper's number for the same quantity (None when it has none); ``source`` the
    data source (``"mnist-full"``, ``"mnist-5k"``) or weights behind it; ``extra`` anything else
    worth keeping (``weights="none"``, ``unit="%"``).
    """
    from .profiles import resolve_profile

    if not isinstance(name, str) or not name:
        raise ValueError("A metric needs a non-empty name such as 'fc100_100_10.test_error'.")
    entry = {"name": name, "value": _plain(value), "paper": _plain(paper), "source": source,
             "profile": resolve_profile(None), **{k: _plain(v) for k, v in extra.items()}}
    _SESSION[:] = [e for e in _SESSION if e["name"] != name] + [entry]
    target = os.environ.get("COURSE_RESULTS_FILE")
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {"metrics": {}}
        data.setdefault("metrics", {})[name] = {k: v for k, v in entry.items() if k != "name"}
        write_json_atomic(path, data)
    paper_txt = f"   (paper: {_fmt(entry['paper'])})" if paper is not None else ""
    print(f"recorded {name} = {_fmt(entry['value'])}{paper_txt}   [{source or 'n/a'}, {entry['profile']}]")
    return value


def recorded() -> dict[str, dict]:
    """Everything recorded in this Python session, by name."""
    return {e["name"]: e for e in _SESSION}


def results_table(prefix: str = "") -> str:
    """A plain-text table of this session's metrics beside the paper's numbers."""
    rows = [(e["name"], _fmt(e["value"]), _fmt(e["paper"]), e.get("source") or "")
            for e in _SESSION if e["name"].startswith(prefix)]
    head = ("metric", "ours", "paper", "source")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
