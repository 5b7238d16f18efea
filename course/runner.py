"""``course run``: execute lessons headless with papermill and gather their numbers.

Each notebook runs in its own process (``python -m papermill``) with ``COURSE_RESULTS_FILE``
pointing at a per-lesson JSON that :func:`course.record` fills. The runner then writes
``DIR/results.json`` — per lesson: status, seconds, error, metrics (value, paper value, source) — and
prints one table. A failing lesson is reported with its error; the others still run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from .data import cache_root
from .lessons import repo_root
from .profiles import NAMES
from .results import _fmt, write_json_atomic


def find_notebooks(selection: list[str] | None, folder: Path | None = None) -> list[Path]:
    """Notebooks in ``folder`` (default ``solutions/``) matching ``selection`` ("01", "01_training_mnist")."""
    folder = Path(folder or repo_root() / "solutions")
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        raise FileNotFoundError(f"No lesson notebooks in {folder}.")
    if not selection:
        return every
    chosen = []
    for sel in selection:
        hits = [p for p in every if p.stem == sel or p.stem.startswith(sel.rstrip(".ipynb") + "_") or p.name == sel]
        if not hits:
            raise ValueError(f"No lesson matches {sel!r}. Lessons: {', '.join(p.stem for p in every)}.")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _last_error(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln.strip()[:300]
    return lines[-1][:300] if lines else "unknown error"


def run_one(nb: Path, out_dir: Path, profile: str, timeout: int | None = None) -> dict:
    """Execute one notebook; return its entry for results.json."""
    out_nb = out_dir / nb.name
    metrics_file = out_dir / f"{nb.stem}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    env = {**os.environ, "COURSE_RESULTS_FILE": str(metrics_file), "COURSE_PROFILE": profile,
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures saved in the executed notebook
           "PYTHONUNBUFFERED": "1", "COURSE_HEADLESS": "1"}
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out_nb), "-p", "profile", profile,
           "-k", "python3", "--cwd", str(nb.parent), "--no-progress-bar"]
    if timeout:
        cmd += ["--execution-timeout", str(timeout)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    entry = {"status": "ok" if proc.returncode == 0 else "failed", "seconds": seconds,
             "notebook": str(out_nb), "metrics": data.get("metrics", {}), "checks": data.get("checks", {})}
    if proc.returncode != 0:
        entry["error"] = _last_error(proc.stderr or proc.stdout)
        (out_dir / f"{nb.stem}.log").write_text(proc.stdout + "\n" + proc.stderr)
    return entry


def run_lessons(selection: list[str] | None = None, profile: str = "default", out: Path | None = None,
                jobs: int = 1, timeout: int | None = None, folder: Path | None = None) -> tuple[Path, dict]:
    """Run lessons; write and return ``(DIR, results)``."""
    if profile not in NAMES:
        raise ValueError(f"Unknown profile {profile!r}; use one of {', '.join(NAMES)}.")
    notebooks = find_notebooks(selection, folder)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out or cache_root() / "runs" / f"{stamp}-{profile}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"profile": profile, "started": stamp, "lessons": {}}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {nb.stem: pool.submit(run_one, nb, out_dir, profile, timeout) for nb in notebooks}
        for name, fut in futures.items():
            entry = fut.result()
            results["lessons"][name] = entry
            mark = "ok" if entry["status"] == "ok" else "FAILED: " + entry.get("error", "")
            print(f"{name}: {mark} ({entry['seconds']} s)", flush=True)
    from .device import get_device

    results["device"] = str(get_device())
    write_json_atomic(out_dir / "results.json", results)
    return out_dir, results


def format_table(results: dict) -> str:
    """The paper's numbers beside ours, one row per metric."""
    rows = []
    for lesson, entry in results["lessons"].items():
        if entry["status"] != "ok":
            rows.append((lesson, "FAILED", entry.get("error", "")[:60], "", ""))
        for name, m in entry["metrics"].items():
            rows.append((lesson, name, _fmt(m.get("value")), _fmt(m.get("paper")), m.get("source") or ""))
    head = ("lesson", "metric", "ours", "paper", "source")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
