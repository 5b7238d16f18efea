"""``course report``: a ``course run`` folder as one page — the papers' numbers beside ours.

:func:`build_report` reads ``RUN_DIR/results.json`` and the executed notebooks beside it and writes

- ``RUN_DIR/report.html``: one self-contained page (inline CSS, figures base64-embedded, no
  external link or script), to mail or attach to a course page;
- ``RUN_DIR/report.md``: the same tables in Markdown, its figures as PNG files in
  ``RUN_DIR/report_files/`` (Markdown viewers seldom show embedded images).

For every lesson: status, time, profile, device, data sources and weights, then each metric with
the paper's value beside ours and a verdict, then the lesson's figures (the PNG outputs of its
executed notebook; cells tagged ``report-figure`` when a notebook tags any, else all of them, up to
``max_figures``).

The verdict is honest: a metric whose value is not within tolerance of the paper's is shown as
**missed**, never left out. Tolerance, per metric (extra fields of ``course.record``):
``tolerance=`` (absolute) or ``rel_tolerance=``; default ``max(0.005, 10% of |paper|)``. With
``better="lower"`` or ``"higher"`` a value that beats the paper's counts as reproduced. Lists are
compared element by element; a metric without a paper value says so.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from .results import _fmt

REPRODUCED, MISSED, NO_PAPER, NOT_COMPARED = "reproduced", "missed", "no paper value", "not compared"
DEFAULT_ABS_TOL, DEFAULT_REL_TOL = 0.005, 0.10
FIGURE_TAG = "report-figure"


# --------------------------------------------------------------------------- verdicts

def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _close(ours: float, paper: float, metric: dict) -> bool:
    if "tolerance" in metric:
        tol = float(metric["tolerance"])
    elif "rel_tolerance" in metric:
        tol = float(metric["rel_tolerance"]) * abs(paper)
    else:
        tol = max(DEFAULT_ABS_TOL, DEFAULT_REL_TOL * abs(paper))
    better = metric.get("better")
    if better == "lower" and ours <= paper:
        return True
    if better == "higher" and ours >= paper:
        return True
    return abs(ours - paper) <= tol + 1e-12


def verdict(metric: dict) -> str:
    """``reproduced``, ``missed``, ``no paper value`` or ``not compared`` for one recorded metric."""
    ours, paper = metric.get("value"), metric.get("paper")
    if paper is None:
        return NO_PAPER
    if isinstance(ours, list) and isinstance(paper, list):
        if len(ours) != len(paper):
            return NOT_COMPARED
        pairs = [(_number(a), _number(b)) for a, b in zip(ours, paper)]
        pairs = [(a, b) for a, b in pairs if b is not None]
        if not pairs:
            return NOT_COMPARED
        return REPRODUCED if all(a is not None and _close(a, b, metric) for a, b in pairs) else MISSED
    a, b = _number(ours), _number(paper)
    if b is None:
        return NOT_COMPARED
    if a is None:
        return MISSED  # the paper has a number, we have none (nan, inf, missing)
    return REPRODUCED if _close(a, b, metric) else MISSED


# --------------------------------------------------------------------------- reading a run

@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class LessonReport:
    name: str
    title: str
    entry: dict
    figures: list[Figure] = field(default_factory=list)
    more_figures: int = 0  # figures left out (over max_figures)


def _heading(source: str) -> str:
    """The first line of a Markdown cell, without its ``#`` and HTML tags."""
    for line in source.splitlines():
        line = re.sub(r"<[^>]+>", "", line).strip()
        if line:
            return re.sub(r"^#+\s*", "", line).strip()
    return ""


def _ours(cell) -> bool:
    """False for the cells papermill adds to a failed notebook (error banner and anchor)."""
    return not any(t.startswith("papermill-error") for t in cell.metadata.get("tags", []))


def read_figures(notebook: Path, max_figures: int = 12) -> tuple[str, list[Figure], int]:
    """(title, figures, how many were left out) of an executed notebook; ("", [], 0) if unreadable."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return "", [], 0
    cells = [c for c in nb.cells if _ours(c)]
    title = next((_heading(c.source) for c in cells if c.cell_type == "markdown" and c.source.strip()), "")
    tagged = any(FIGURE_TAG in c.metadata.get("tags", []) for c in nb.cells)
    figures, caption = [], ""
    for cell in cells:
        if cell.cell_type == "markdown":
            caption = _heading(cell.source) or caption
            continue
        if cell.cell_type != "code" or (tagged and FIGURE_TAG not in cell.metadata.get("tags", [])):
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {}) if out.get("output_type") in ("display_data", "execute_result") else {}
            png = data.get("image/png")
            if png:
                text = png if isinstance(png, str) else "".join(png)
                figures.append(Figure(base64.b64decode(text), caption))
    return title, figures[:max_figures], max(0, len(figures) - max_figures)


def load_run(run_dir: Path, max_figures: int = 12) -> tuple[dict, list[LessonReport]]:
    """``results.json`` of a run and, per lesson, its title and figures."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"No results.json in {run_dir}; make one with `course run --out {run_dir}`.")
    results = json.loads(path.read_text())
    lessons = []
    for name, entry in sorted(results.get("lessons", {}).items()):
        candidates = [run_dir / f"{name}.ipynb"] + ([Path(entry["notebook"])] if entry.get("notebook") else [])
        notebook = next((p for p in candidates if p.exists()), None)
        title, figures, more = read_figures(notebook, max_figures) if notebook else ("", [], 0)
        lessons.append(LessonReport(name, title or name, entry, figures, more))
    return results, lessons


# --------------------------------------------------------------------------- rendering

def _facts(results: dict, lesson: LessonReport) -> list[tuple[str, str]]:
    e, metrics = lesson.entry, lesson.entry.get("metrics", {})
    sources = sorted({m.get("source") for m in metrics.values() if m.get("source")})
    weights = sorted({str(m.get("weights")) for m in metrics.values() if m.get("weights") is not None})
    profiles = sorted({m.get("profile") for m in metrics.values() if m.get("profile")}) or [results.get("profile", "?")]
    status = "ok" if e.get("status") == "ok" else f"FAILED — {e.get('error', 'no error message')}"
    return [("status", status), ("time", f"{e.get('seconds', '?')} s"), ("profile", ", ".join(profiles)),
            ("device", results.get("device", "?")), ("data", ", ".join(sources) or "—"),
            ("weights", ", ".join(weights) or "not recorded (MNIST lessons use the networks the course trains)")]


def _counts(lessons: list[LessonReport]) -> dict[str, int]:
    counts = {REPRODUCED: 0, MISSED: 0, NO_PAPER: 0, NOT_COMPARED: 0}
    for lesson in lessons:
        for m in lesson.entry.get("metrics", {}).values():
            counts[verdict(m)] += 1
    return counts


def _summary(results: dict, lessons: list[LessonReport]) -> str:
    ok = sum(lesson.entry.get("status") == "ok" for lesson in lessons)
    c = _counts(lessons)
    return (f"{ok} of {len(lessons)} lessons ran to the end · {c[REPRODUCED]} metrics within tolerance of the "
            f"paper, {c[MISSED]} missed, {c[NO_PAPER]} with no paper value"
            + (f", {c[NOT_COMPARED]} not compared" if c[NOT_COMPARED] else ""))


_NOTE = ("A metric is *reproduced* when ours is within tolerance of the paper's (default: 0.005 or 10% of the "
         "paper's value, whichever is larger; a metric may set its own), *missed* otherwise. Runs in the `ci` "
         "and `default` profiles use less data and fewer epochs than the papers, so misses are expected there; "
         "compare the data source and profile before comparing numbers.")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.reproduced{color:#126b2f;font-weight:600}.missed{color:#b00020;font-weight:600}.muted{color:#777}
.failed{background:#fde8ea}.facts td:first-child{font-weight:600;background:#fafafa}
figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}figure img{max-width:100%;
border:1px solid #eee}figcaption{font-size:.85em;color:#555}.note{font-size:.9em;color:#444}
"""


def _md_inline(text: str) -> str:
    """The little Markdown of the note (``*x*``, backticks) as HTML; ``text`` is already escaped."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text))


def render_html(results: dict, lessons: list[LessonReport], run_dir: str = "") -> str:
    """The whole report as one self-contained HTML page."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>intriguing-course · reproduction report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Reproduction report</h1>",
             f"<p>Szegedy et al. (ICLR 2014) and Nguyen et al. (CVPR 2015), rebuilt by <code>intriguing-course</code>. "
             f"Run <code>{esc(results.get('started', '?'))}</code>, profile <b>{esc(str(results.get('profile', '?')))}</b>, "
             f"device <b>{esc(str(results.get('device', '?')))}</b>"
             + (f", folder <code>{esc(run_dir)}</code>" if run_dir else "") + ".</p>",
             f"<p><b>{esc(_summary(results, lessons))}</b></p>",
             f"<p class=note>{_md_inline(esc(_NOTE))}</p>"]
    if lessons:
        parts.append("<ul>" + "".join(f'<li><a href="#{esc(lesson.name)}">{esc(lesson.title)}</a>'
                                      + ("" if lesson.entry.get("status") == "ok" else ' <span class="missed">failed</span>')
                                      + "</li>" for lesson in lessons) + "</ul>")
    for lesson in lessons:
        failed = lesson.entry.get("status") != "ok"
        parts.append(f'<h2 id="{esc(lesson.name)}">{esc(lesson.title)}</h2>')
        parts.append("<table class=facts>" + "".join(
            f"<tr{' class=failed' if k == 'status' and failed else ''}><td>{esc(k)}</td><td>{esc(v)}</td></tr>"
            for k, v in _facts(results, lesson)) + "</table>")
        metrics = lesson.entry.get("metrics", {})
        if metrics:
            rows = ["<tr><th>metric</th><th>paper</th><th>ours</th><th>verdict</th><th>data</th><th>weights</th>"
                    "<th>profile</th></tr>"]
            for name, m in metrics.items():
                v = verdict(m)
                cls = {REPRODUCED: "reproduced", MISSED: "missed"}.get(v, "muted")
                rows.append(f"<tr><td><code>{esc(name)}</code></td><td class=num>{esc(_fmt(m.get('paper')))}</td>"
                            f"<td class=num>{esc(_fmt(m.get('value')))}</td><td class={cls}>{esc(v)}</td>"
                            f"<td>{esc(str(m.get('source') or '—'))}</td><td>{esc(str(m.get('weights', '—')))}</td>"
                            f"<td>{esc(str(m.get('profile') or '—'))}</td></tr>")
            parts.append("<table>" + "".join(rows) + "</table>")
        else:
            parts.append("<p class=muted>No metrics recorded.</p>")
        checks = lesson.entry.get("checks", {})
        if checks:
            parts.append("<p class=note>Exercise checks (solutions): " + ", ".join(
                f"{esc(k)} {'✓' if ok else '✗'}" for k, ok in sorted(checks.items())) + "</p>")
        for fig in lesson.figures:
            data = base64.b64encode(fig.png).decode()
            parts.append(f'<figure><img alt="{esc(fig.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(fig.caption)}</figcaption></figure>")
        if lesson.more_figures:
            parts.append(f"<p class=muted>{lesson.more_figures} more figure(s) in the executed notebook.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict, lessons: list[LessonReport], figure_links: dict[str, list[str]] | None = None,
                    run_dir: str = "") -> str:
    """The report in Markdown; ``figure_links[lesson]``: relative paths of its figures' PNG files."""
    figure_links = figure_links or {}
    out = ["# Reproduction report", "",
           f"Szegedy et al. (ICLR 2014) and Nguyen et al. (CVPR 2015), rebuilt by `intriguing-course`. "
           f"Run `{results.get('started', '?')}`, profile **{results.get('profile', '?')}**, device "
           f"**{results.get('device', '?')}**" + (f", folder `{run_dir}`" if run_dir else "") + ".", "",
           f"**{_summary(results, lessons)}**", "", _NOTE, ""]
    for lesson in lessons:
        out += [f"## {lesson.title}", "", "| | |", "|---|---|"]
        out += [f"| {k} | {_md_cell(v)} |" for k, v in _facts(results, lesson)]
        out.append("")
        metrics = lesson.entry.get("metrics", {})
        if metrics:
            out += ["| metric | paper | ours | verdict | data | weights | profile |", "|---|---:|---:|---|---|---|---|"]
            for name, m in metrics.items():
                v = verdict(m)
                shown = f"**{v.upper()}**" if v == MISSED else v
                out.append(f"| `{name}` | {_md_cell(_fmt(m.get('paper')))} | {_md_cell(_fmt(m.get('value')))} | {shown} | "
                           f"{_md_cell(m.get('source') or '—')} | {_md_cell(m.get('weights', '—'))} | "
                           f"{_md_cell(m.get('profile') or '—')} |")
        else:
            out.append("_No metrics recorded._")
        out.append("")
        for link, fig in zip(figure_links.get(lesson.name, []), lesson.figures):
            out += [f"![{_md_cell(fig.caption)}]({link})", ""]
        if lesson.more_figures:
            out += [f"_{lesson.more_figures} more figure(s) in the executed notebook._", ""]
    return "\n".join(out)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, max_figures: int = 12) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``report_files/``) for a run.

    ``out_dir`` defaults to ``run_dir``. Returns the two paths.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir)
    results, lessons = load_run(run_dir, max_figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = out_dir / "report_files"
    links: dict[str, list[str]] = {}
    for lesson in lessons:
        for i, fig in enumerate(lesson.figures, 1):
            files.mkdir(exist_ok=True)
            (files / f"{lesson.name}-{i}.png").write_bytes(fig.png)
            links.setdefault(lesson.name, []).append(f"report_files/{lesson.name}-{i}.png")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(render_html(results, lessons, str(run_dir)), encoding="utf-8")
    md_path.write_text(render_markdown(results, lessons, links, str(run_dir)), encoding="utf-8")
    return html_path, md_path


def latest_run(root: Path | None = None) -> Path:
    """The newest folder under ``$COURSE_CACHE/runs`` holding a ``results.json``."""
    from .data import cache_root

    root = Path(root or cache_root() / "runs")
    runs = sorted((p for p in root.glob("*/results.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"No runs under {root}; make one with `course run`.")
    return runs[-1].parent
