"""``course grade``: run a student's notebook headless and score its exercises.

How a submission is graded:

1. **Which lesson is it?** The lesson builder keeps the solution's cell ids, and a student leaves
   most cells (the text, the experiments) as they were. A submission belongs to the solution with
   the most cells that have the same id *and* the same source as that solution or as the lesson
   built from it (the file name's ``NN_`` prefix only breaks ties). Too few such cells: the verdict
   is "not one of our lessons" and nothing is executed.
2. **Hidden tests go back in.** For every solution cell with a ``### BEGIN HIDDEN TESTS`` block,
   the block's content is appended to the submission's cell with the same id (or, if the student
   deleted that cell, to the cell of the exercise it belongs to).
3. **Run it.** A temporary copy (outputs cleared) is executed cell by cell with nbclient in a
   subprocess, errors allowed (one crashing cell does not stop the rest), in the
   ``ci`` profile (``COURSE_PROFILE=ci``, ``COURSE_HEADLESS=1``), with ``COURSE_RESULTS_FILE``
   collecting what each ``course.check`` said. The whole notebook gets ``timeout`` seconds; past
   that the kernel is killed and the exercises not reached fail.
4. **Score.** An exercise passes when its ``course.check("N.k", ...)`` recorded a pass *and* its
   cell (with the hidden tests it belongs to) raised nothing. Hidden tests in a cell without a
   check belong to the nearest exercise above them. The exercises are those the solution checks;
   the score is passed / total.

The student's code is executed: grade in a container or an account that can lose nothing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import psutil

from .lessons import BEGIN_HIDDEN, END_HIDDEN, build_lesson, repo_root, strip_blocks

GRADED, TIMED_OUT, CRASHED = "graded", "timed out", "crashed"
NOT_OURS, UNREADABLE = "not one of our lessons", "unreadable"
DEFAULT_TIMEOUT = 600  # seconds per notebook
MIN_MATCH = 0.25       # share of a solution's cells a submission must keep (same id, same source)

_CHECK_CALL = re.compile(r"""course\.check\(\s*["']([\w.]+)["']""")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ExerciseGrade:
    """One exercise of one submission."""
    id: str
    title: str
    passed: bool
    reason: str          # "correct", the checker's hint, the error the cell raised, "not reached", ...


@dataclass
class GradeReport:
    """The grade of one submission: a verdict on the run and one line per exercise."""
    submission: str
    lesson: str | None                  # the matching solution's stem, e.g. "01_training_mnist"
    verdict: str                        # graded | timed out | crashed | not one of our lessons | unreadable
    detail: str = ""                    # one sentence on the verdict
    seconds: float = 0.0
    exercises: list[ExerciseGrade] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(e.passed for e in self.exercises)

    @property
    def total(self) -> int:
        return len(self.exercises)

    @property
    def score(self) -> float:
        """Share of exercises passed (0 when there is nothing to grade)."""
        return self.passed / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, total=self.total, score=round(self.score, 4))
        return d

    def format(self) -> str:
        """A few lines for a terminal."""
        head = f"{self.submission}: {self.lesson or '?'} — {self.verdict}"
        lines = [head + (f" ({self.detail})" if self.detail else "")]
        width = max((len(e.id) for e in self.exercises), default=0)
        for e in self.exercises:
            lines.append(f"  {'PASS' if e.passed else 'FAIL'}  {e.id:<{width}}  {e.title}: {e.reason}")
        lines.append(f"  score {self.passed}/{self.total} = {self.score:.0%}   ({self.seconds:.0f} s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- which lesson

@dataclass
class _Solution:
    path: Path
    nb: nbformat.NotebookNode
    lesson: nbformat.NotebookNode

    @property
    def stem(self) -> str:
        return self.path.stem

    def exercises(self) -> list[tuple[str, str]]:
        """(exercise id, id of the solution cell that checks it), in order."""
        out = []
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                out += [(ex, cell.get("id")) for ex in _CHECK_CALL.findall(cell.source) if ex not in dict(out)]
        return out

    def hidden_tests(self) -> list[tuple[str, str, str | None]]:
        """(cell id, hidden test code, exercise id it belongs to) for each cell with hidden tests."""
        out, current = [], None
        pending = []  # hidden tests above the first exercise belong to the first exercise
        for cell in self.nb.cells:
            if cell.cell_type != "code":
                continue
            ids = _CHECK_CALL.findall(cell.source)
            if ids:
                current = ids[0]
                out += [(cid, code, current) for cid, code in pending]
                pending = []
            _, removed = strip_blocks(cell.source, BEGIN_HIDDEN, END_HIDDEN)
            if removed:
                code = textwrap.dedent("\n".join(removed)).strip("\n")
                if current is None:
                    pending.append((cell.get("id"), code))
                else:
                    out.append((cell.get("id"), code, current))
        return out + [(cid, code, None) for cid, code in pending]


def load_solutions(solutions_dir: Path | None = None) -> list[_Solution]:
    folder = Path(solutions_dir or repo_root() / "solutions")
    out = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        try:
            nb = nbformat.read(path, as_version=4)
            out.append(_Solution(path, nb, build_lesson(nb)))
        except Exception as e:  # a solution being written right now may be half-saved
            print(f"course grade: skipping {path.name}: {e}", file=sys.stderr)
    return out


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def match_score(submission: nbformat.NotebookNode, solution: _Solution) -> float:
    """Share of the solution's cells the submission kept: same id (when it has ids) and same source."""
    by_id = {}
    for nb in (solution.nb, solution.lesson):
        for cell in nb.cells:
            if cell.get("id"):
                by_id.setdefault(cell.id, set()).add(_norm(cell.source))
    every = set().union(*by_id.values()) if by_id else set()
    kept = 0
    for cell in submission.cells:
        src = _norm(cell.source)
        if not src:
            continue
        cid = cell.get("id")
        kept += src in by_id[cid] if cid in by_id else src in every
    return kept / max(1, len(solution.nb.cells))


def match_solution(submission: nbformat.NotebookNode, solutions: list[_Solution],
                   name: str = "") -> tuple[_Solution | None, float]:
    """The solution a submission was built from, and how much of it the submission kept."""
    prefix = name[:3] if re.match(r"\d\d_", name) else None
    scored = [(match_score(submission, s), s.stem.startswith(prefix or "\0"), s) for s in solutions]
    if not scored:
        return None, 0.0
    best = max(scored, key=lambda t: (t[0], t[1]))
    return (best[2], best[0]) if best[0] >= MIN_MATCH else (None, best[0])


# --------------------------------------------------------------------------- preparing and running

def prepare(submission: nbformat.NotebookNode, solution: _Solution) -> tuple[nbformat.NotebookNode, dict]:
    """The notebook to execute (hidden tests back in, outputs cleared, errors allowed) and, per
    exercise id, the ids of the cells whose errors count against it."""
    nb = nbformat.from_dict(json.loads(json.dumps(submission)))  # a deep copy
    cells = {c.get("id"): c for c in nb.cells if c.cell_type == "code" and c.get("id")}
    owners: dict[str, list[str]] = {}
    for ex, sol_cell_id in solution.exercises():
        cell = cells.get(sol_cell_id)
        if cell is None or ex not in _CHECK_CALL.findall(cell.source):
            # the student moved or re-created the cell: take the one that checks this exercise
            cell = next((c for c in nb.cells if c.cell_type == "code" and ex in _CHECK_CALL.findall(c.source)), cell)
        owners[ex] = [cell.id] if cell is not None and cell.get("id") else []
    for cell_id, code, ex in solution.hidden_tests():
        target = cells.get(cell_id)
        if target is None and ex and owners.get(ex):
            target = cells.get(owners[ex][0])
        if target is None:
            continue  # the exercise's cell is gone too: that exercise fails anyway
        target.source = target.source.rstrip("\n") + "\n\n# hidden tests (added by course grade)\n" + code
        if ex and target.id not in owners.get(ex, []):
            owners.setdefault(ex, []).append(target.id)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("course_grade", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb, owners


def _kill_tree(pid: int) -> None:
    """End a process and everything it started (the kernel lives in a session of its own)."""
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    except Exception:
        pass


# Runs in a subprocess (plain ``python -c``, so the course package is not imported twice): executes
# every cell with nbclient, errors allowed, and saves the notebook after each cell so a run cut
# short by the time limit still says which cells finished. Exit status 3: the kernel died.
_EXECUTOR = r"""
import os, sys, nbformat
from nbclient import NotebookClient
src, out, cwd = sys.argv[1:4]
nb = nbformat.read(src, as_version=4)

def save():
    nbformat.write(nb, out + ".tmp")
    os.replace(out + ".tmp", out)

client = NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=None,
                        resources={"metadata": {"path": cwd}})
code = 0
try:
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            cell.metadata["course_grade"] = "running"
            save()
            client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            cell.metadata["course_grade"] = "done"
            save()
except Exception as e:  # DeadKernelError and the like: the kernel is gone, the rest cannot run
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    code = 3
save()
sys.exit(code)
"""


def execute(nb: nbformat.NotebookNode, workdir: Path, cwd: Path, timeout: float,
            profile: str = "ci") -> tuple[str, str, nbformat.NotebookNode | None, dict]:
    """Run ``nb`` in a fresh kernel in a subprocess; return (verdict, detail, executed notebook, checks)."""
    src, out, results = workdir / "submission.ipynb", workdir / "executed.ipynb", workdir / "results.json"
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    params = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(f"profile = {profile!r}  # injected by course grade",
                                                          id="injected-parameters"))
    nbformat.write(nb, src)
    env = {**os.environ, "COURSE_RESULTS_FILE": str(results), "COURSE_PROFILE": profile,
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures become PNG outputs
           "PYTHONUNBUFFERED": "1", "COURSE_HEADLESS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _EXECUTOR, str(src), str(out), str(cwd)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        verdict, detail = GRADED, ""
        if proc.returncode != 0:
            verdict, detail = CRASHED, "the kernel stopped: " + _last_line(log)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate()
        verdict, detail = TIMED_OUT, f"stopped after {timeout:g} s; exercises not reached count as failed"
    executed = None
    if out.exists():
        try:
            executed = nbformat.read(out, as_version=4)
        except Exception:
            pass
    try:
        checks = json.loads(results.read_text()).get("checks", {}) if results.exists() else {}
    except ValueError:
        checks = {}
    return verdict, detail, executed, checks


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", log or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "Dead" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "the notebook did not run"


# --------------------------------------------------------------------------- scoring

def _cell_state(cell) -> tuple[str, str]:
    """("ok" | "error" | "not reached", message) for an executed cell."""
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return "error", f"{o.get('ename')}: {_ANSI.sub('', str(o.get('evalue', '')))}"[:300]
    if cell.get("metadata", {}).get("course_grade") != "done":
        return "not reached", ""
    return "ok", ""


def _hint(cell, exercise_id: str) -> str | None:
    """What ``course.check`` printed for this exercise in this cell (its hint), if anything."""
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    for line in text.splitlines():
        if f"Exercise {exercise_id} " in line and ("❌" in line or "not attempted" in line):
            return line.split("): ", 1)[-1].strip()
    return None


def score(solution: _Solution, executed: nbformat.NotebookNode | None, owners: dict,
          checks: dict, verdict: str) -> list[ExerciseGrade]:
    from .checks import known_exercises

    titles = known_exercises()
    cells = {c.get("id"): c for c in (executed.cells if executed is not None else [])}
    grades = []
    for ex, _ in solution.exercises():
        title = titles.get(ex, f"exercise {ex}")
        mine = [cells[i] for i in owners.get(ex, []) if i in cells]
        if not owners.get(ex):
            grades.append(ExerciseGrade(ex, title, False, f'no cell calls course.check("{ex}", ...)'))
            continue
        states = [_cell_state(c) for c in mine] or [("not reached", "")]
        errors = [msg for state, msg in states if state == "error"]
        checked = checks.get(ex)
        if checked is True and not errors and all(s == "ok" for s, _ in states):
            grades.append(ExerciseGrade(ex, title, True, "correct"))
            continue
        if errors and errors[0].startswith("NotImplementedError"):
            reason = "not attempted"
        elif checked is False and (hint := _hint(mine[0], ex)):
            reason = hint
        elif errors:
            reason = ("correct, but hidden tests failed: " if checked else "the cell raised ") + errors[0]
        elif any(s == "not reached" for s, _ in states):
            reason = "not reached" + (" (time limit)" if verdict == TIMED_OUT else
                                      " (the notebook stopped)" if verdict == CRASHED else "")
        elif checked is None:
            reason = f'course.check("{ex}", ...) was never called'
        else:
            reason = "the check did not pass"
        grades.append(ExerciseGrade(ex, title, False, reason))
    return grades


# --------------------------------------------------------------------------- the whole thing

def grade_notebook(path: str | Path, timeout: float = DEFAULT_TIMEOUT, *, solutions_dir: Path | None = None,
                   solutions: list[_Solution] | None = None, profile: str = "ci",
                   keep: Path | None = None) -> GradeReport:
    """Grade one submitted notebook; never raises for a bad submission (the verdict says what is wrong).

    ``timeout``: seconds for the whole notebook. ``solutions_dir``: where the solutions are
    (default: the checkout's ``solutions/``). ``keep``: a folder to keep the executed notebook in
    (``<stem>.graded.ipynb``), for a teacher who wants to read it.
    """
    path = Path(path)
    report = GradeReport(submission=str(path), lesson=None, verdict=UNREADABLE)
    try:
        submission = nbformat.read(path, as_version=4)
    except FileNotFoundError:
        report.detail = "no such file"
        return report
    except Exception as e:
        report.detail = f"not a Jupyter notebook ({type(e).__name__}: {str(e)[:120]})"
        return report
    solutions = solutions if solutions is not None else load_solutions(solutions_dir)
    solution, kept = match_solution(submission, solutions, path.name)
    if solution is None:
        report.verdict = NOT_OURS
        report.detail = (f"its cells match none of the {len(solutions)} lessons in solutions/ "
                         f"(best: {kept:.0%} of a lesson's cells kept, {MIN_MATCH:.0%} needed)")
        return report
    report.lesson = solution.stem
    nb, owners = prepare(submission, solution)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        verdict, detail, executed, checks = execute(nb, Path(tmp), path.resolve().parent, timeout, profile)
        if keep is not None and (Path(tmp) / "executed.ipynb").exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"{path.stem}.graded.ipynb").write_bytes((Path(tmp) / "executed.ipynb").read_bytes())
    report.seconds = round(time.perf_counter() - start, 1)
    report.verdict, report.detail = verdict, detail
    report.exercises = score(solution, executed, owners, checks, verdict)
    return report


def grade_notebooks(paths: list[str | Path], timeout: float = DEFAULT_TIMEOUT, **kwargs) -> list[GradeReport]:
    """Grade several submissions (the solutions are read once)."""
    if "solutions" not in kwargs:
        kwargs["solutions"] = load_solutions(kwargs.pop("solutions_dir", None))
    return [grade_notebook(p, timeout, **kwargs) for p in paths]
