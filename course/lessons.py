"""Lessons from solutions: one source, two notebooks.

``solutions/NN_slug.ipynb`` is the source. In its code cells, what a student must write sits
between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; checks the student must not see sit between
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` (nbgrader's markers). :func:`build_lesson`
turns a solution into a lesson: each solution block becomes a stub raising ``NotImplementedError``
with the exercise's name, hidden tests are removed, outputs cleared.

Each exercise is two cells carrying nbgrader's cell metadata, so that ``nbgrader
generate_assignment`` and ``nbgrader autograde`` work on these files as they are:

- the **answer** cell (``solution: true``, grade id ``answer_N_k``): the student's function, its
  body between the solution markers;
- the **tests** cell (``grade: true``, ``locked: true``, ``points``, grade id ``tests_N_k``):
  ``course.check("N.k", answer)`` — the self-check the student sees, which raises on a wrong
  answer — then the hidden tests. The exercise scores its points when this cell raises nothing.

:func:`exercise_problems` says where a solution breaks that convention; the lesson sync check
reports it.

:func:`build_lessons` writes ``lessons/`` and remembers what it wrote (``lessons/.manifest.json``:
a digest per lesson). A lesson whose file no longer matches what was last written has been edited
by someone — it is never overwritten unless ``force=True``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MANIFEST = ".manifest.json"
_CHECK_CALL = re.compile(r"""course\.check\(\s*["']([\w.]+)["']""")
_DEF = re.compile(r"^\s*def\s+(\w+)", re.M)
# Solutions still in the older one-cell exercise format: reported, not failed (none left).
PENDING_CONVENTION: frozenset[str] = frozenset()
_GRADE_ID = re.compile(r"^(answer|tests)_(\d+_\d+)$")


def repo_root() -> Path:
    """The folder holding ``solutions/`` and ``lessons/`` (the project checkout)."""
    return Path(__file__).resolve().parent.parent


def grade_id_exercise(cell) -> str | None:
    """The exercise id an nbgrader cell belongs to (``answer_3_1`` / ``tests_3_1`` -> ``"3.1"``)."""
    gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
    m = _GRADE_ID.match(gid)
    return m.group(2).replace("_", ".") if m else None


def _exercise_name(source: str, cell=None) -> str:
    ids = _CHECK_CALL.findall(source) or ([grade_id_exercise(cell)] if cell is not None and grade_id_exercise(cell) else [])
    defs = _DEF.findall(source)
    label = f"Exercise {ids[0]}" if ids else "Exercise"
    return f"{label}: write {defs[0]}" if defs else label


def strip_blocks(source: str, begin: str, end: str, stub=None) -> tuple[str, list[str]]:
    """Remove every ``begin``…``end`` block of ``source``; put ``stub(indent)`` in its place.

    Returns the new source and the removed blocks' inner lines.
    """
    out, removed, inside, indent = [], [], False, ""
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ValueError(f"Nested {begin!r} marker.")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            if stub is not None:
                out.append(stub(indent))
            continue
        if stripped == end:
            if not inside:
                raise ValueError(f"{end!r} without a matching {begin!r}.")
            inside = False
            continue
        (removed if inside else out).append(line)
    if inside:
        raise ValueError(f"{begin!r} without a matching {end!r}.")
    return "\n".join(out), removed


def build_lesson(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a solution notebook (a new object; the input is not changed)."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "code":
            name = _exercise_name(src, cell)
            src, _ = strip_blocks(src, BEGIN_HIDDEN, END_HIDDEN)
            src, _ = strip_blocks(src, BEGIN_SOLUTION, END_SOLUTION,
                                  stub=lambda ind: f'{ind}raise NotImplementedError("{name}")  # your code here')
            cell.outputs, cell.execution_count = [], None
        else:
            src, _ = strip_blocks(src, BEGIN_SOLUTION, END_SOLUTION, stub=lambda ind: f"{ind}_Your answer here._")
        cell.source = src
        cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)
    return nb


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercise_problems(solution: nbformat.NotebookNode) -> list[str]:
    """Where a solution breaks the exercise convention (see the module's docstring): an exercise
    without hidden tests, a check or a hidden test outside a locked, pointed tests cell, a solution
    block outside an answer cell, grade ids that are missing or repeated."""
    problems, seen = [], set()
    for cell in solution.cells:
        meta, src = _nbgrader(cell), cell.source
        where = f"cell {cell.get('id', '?')}"
        gid = meta.get("grade_id")
        if gid:
            if gid in seen:
                problems.append(f"{where}: grade id {gid!r} used twice")
            seen.add(gid)
        if BEGIN_SOLUTION in src and not meta.get("solution"):
            problems.append(f"{where}: a solution block outside an nbgrader answer cell (solution: true)")
        checks = _CHECK_CALL.findall(src) if cell.cell_type == "code" else []
        if (checks or BEGIN_HIDDEN in src) and not (meta.get("grade") and meta.get("locked") and meta.get("points")):
            problems.append(f"{where}: course.check or hidden tests outside a locked, pointed nbgrader tests cell")
        if meta.get("grade") and cell.cell_type == "code":
            if not checks:
                problems.append(f"{where}: a tests cell that calls no course.check")
            if BEGIN_HIDDEN not in src:
                problems.append(f"{where}: exercise {', '.join(checks) or '?'} has no hidden tests")
            if gid != f"tests_{(checks or ['?'])[0].replace('.', '_')}":
                problems.append(f"{where}: the grade id should be tests_{(checks or ['?'])[0].replace('.', '_')}")
    return problems


def solution_lines(solution: nbformat.NotebookNode) -> list[str]:
    """Substantive lines inside solution and hidden-test blocks (what must never reach a lesson)."""
    lines = []
    for cell in solution.cells:
        for begin, end in ((BEGIN_SOLUTION, END_SOLUTION), (BEGIN_HIDDEN, END_HIDDEN)):
            _, removed = strip_blocks(cell.source, begin, end)
            lines += [ln.strip() for ln in removed if len(ln.strip()) >= 12 and not ln.strip().startswith("#")]
    return lines


def leaks(solution: nbformat.NotebookNode, lesson: nbformat.NotebookNode) -> list[str]:
    """Solution text (or markers) found in a lesson: lines a student should not see."""
    text = "\n".join(c.source for c in lesson.cells)
    found = [m for m in (BEGIN_SOLUTION, BEGIN_HIDDEN, END_SOLUTION, END_HIDDEN) if m in text]
    outside = "\n".join(strip_blocks(strip_blocks(c.source, BEGIN_SOLUTION, END_SOLUTION)[0],
                                     BEGIN_HIDDEN, END_HIDDEN)[0] for c in solution.cells)
    lesson_lines = {ln.strip() for ln in text.split("\n")}
    found += [ln for ln in solution_lines(solution) if ln in lesson_lines and ln not in outside]
    return found


def dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n" if not nbformat.writes(nb).endswith("\n") else nbformat.writes(nb)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class BuildReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)      # differ from what the solutions give
    edited: list[str] = field(default_factory=list)     # changed by hand since last written: kept
    # as the solution gives them, but the manifest had another digest (say, after a git merge that took
    # the lesson from one side and the manifest from the other): the digest is put right (not with
    # check), so that the next change of the solution reaches the lesson instead of being "kept"
    unrecorded: list[str] = field(default_factory=list)
    checked: bool = False                              # a check: nothing written, the digests still stale
    leaking: dict[str, list[str]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)    # lessons with no solution
    unconventional: dict[str, list[str]] = field(default_factory=dict)  # exercise_problems, per solution
    pending: dict[str, list[str]] = field(default_factory=dict)         # the same, for PENDING_CONVENTION

    @property
    def ok(self) -> bool:
        return not (self.stale or self.edited or self.leaking or self.orphans or self.unconventional
                    or (self.checked and self.unrecorded))


def build_lessons(solutions_dir: Path | None = None, lessons_dir: Path | None = None, *, check: bool = False,
                  force: bool = False) -> BuildReport:
    """Write (or with ``check=True`` only compare) ``lessons/`` from ``solutions/``."""
    root = repo_root()
    sol_dir = Path(solutions_dir or root / "solutions")
    les_dir = Path(lessons_dir or root / "lessons")
    if not sol_dir.is_dir():
        raise FileNotFoundError(f"No solutions folder at {sol_dir}; run from a checkout of the course.")
    manifest_path = les_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    report = BuildReport(checked=check)
    sources = sorted(sol_dir.glob("[0-9][0-9]_*.ipynb"))
    for sol_path in sources:
        solution = nbformat.read(sol_path, as_version=4)
        lesson = build_lesson(solution)
        text = dumps(lesson)
        bad = leaks(solution, lesson)
        if bad:
            report.leaking[sol_path.name] = bad
        if problems := exercise_problems(solution):
            (report.pending if sol_path.name in PENDING_CONVENTION else report.unconventional)[sol_path.name] = problems
        target = les_dir / sol_path.name
        current = target.read_text() if target.exists() else None
        if current == text:
            report.unchanged.append(target.name)
            if manifest.get(target.name) != _digest(text):   # (a merge can leave a stale digest)
                report.unrecorded.append(target.name)
                manifest[target.name] = _digest(text)
            continue
        report.stale.append(target.name)
        hand_edited = current is not None and manifest.get(target.name) != _digest(current)
        if check:
            continue
        if hand_edited and not force:
            report.edited.append(target.name)
            continue
        les_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        manifest[target.name] = _digest(text)
        report.written.append(target.name)
    names = {p.name for p in sources}
    report.orphans = sorted(p.name for p in les_dir.glob("[0-9][0-9]_*.ipynb") if p.name not in names)
    if not check:
        report.stale = [s for s in report.stale if s not in report.written]
        if report.written or report.unrecorded:
            manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return report
