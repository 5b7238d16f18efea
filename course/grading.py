"""``course grade``: run a student's notebook headless and score its exercises.

The grade comes from the grader, never from the student's kernel: no file the kernel writes and
no registry it can patch decides a pass. How a submission is graded:

1. **Which lesson is it?** The lesson builder keeps the solution's cell ids, and a student leaves
   most cells (the text, the experiments) as they were. A submission belongs to the solution with
   the most cells that have the same id *and* the same source as that solution or as the lesson
   built from it (the file name's ``NN_`` prefix only breaks ties). Too few such cells: the verdict
   is "not one of our lessons" and nothing is executed.
2. **The teacher's tests go in.** Each exercise's tests cell (nbgrader ``grade: true``: the
   ``course.check`` call, then the hidden tests) is taken from the teacher's ``solutions/`` and
   replaces the submission's cell with the same grade id (or cell id); a deleted one is put back
   after the exercise's answer cell. Whatever the student wrote in it — a check quoted in a string,
   no check at all — is gone. A solution in the older one-cell form gets its check and hidden
   tests as a new cell after the exercise's cell. Every such cell ends by printing a mark with a
   number drawn for this grading, which the student's code cannot know.
3. **Run it.** A temporary copy (outputs cleared) is executed cell by cell with nbclient in a
   subprocess, errors allowed, in the ``ci`` profile (``COURSE_PROFILE=ci``, ``COURSE_HEADLESS=1``).
   The whole notebook gets ``timeout`` seconds; past that the kernel is killed and the exercises not
   reached fail.
4. **Score.** An exercise earns its points when its tests cell ran to its end (the mark printed),
   raised nothing and wrote nothing to stderr — nbgrader's rule for the same cell — and the answer is the
   student's own: an answer that is, or whose code calls, one of the course's implementations of
   that exercise (``course.checks.references``) scores zero with a message saying so. That is found
   twice: in the kernel while the answer runs (``course.checks.call``, which nbgrader sees too) and
   here, from the submission's source, where the student's code cannot interfere.

The student's code is executed: grade in a container or an account that can lose nothing.
"""
from __future__ import annotations

import ast
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import psutil

from .headless import headless_environment
from .lessons import BEGIN_HIDDEN, END_HIDDEN, build_lesson, grade_id_exercise, repo_root, strip_blocks

GRADED, TIMED_OUT, CRASHED = "graded", "timed out", "crashed"
NOT_OURS, UNREADABLE = "not one of our lessons", "unreadable"
DEFAULT_TIMEOUT = 600  # seconds per notebook
MIN_MATCH = 0.25       # share of a solution's cells a submission must keep (same id, same source)
MARK = "course-grade-mark"  # printed, with a number drawn per grading, at the end of each tests cell

_CHECK_CALL = re.compile(r"""course\.check\(\s*["']([\w.]+)["']""")
_CHECK_LINE = re.compile(r"""^\s*course\.check\(\s*["']([\w.]+)["']\s*,\s*(\w+)\s*\)\s*$""", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ExerciseGrade:
    """One exercise of one submission."""
    id: str
    title: str
    passed: bool
    reason: str          # "correct", the checker's hint, the error the cell raised, "not reached", ...
    points: float = 1.0  # what the exercise is worth (nbgrader's points of its tests cell)

    @property
    def earned(self) -> float:
        return self.points if self.passed else 0.0


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
    def points(self) -> float:
        return sum(e.earned for e in self.exercises)

    @property
    def max_points(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def score(self) -> float:
        """Share of the points earned (0 when there is nothing to grade)."""
        return self.points / self.max_points if self.max_points else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, total=self.total, points=self.points, max_points=self.max_points,
                 score=round(self.score, 4))
        return d

    def format(self) -> str:
        """A few lines for a terminal."""
        head = f"{self.submission}: {self.lesson or '?'} — {self.verdict}"
        lines = [head + (f" ({self.detail})" if self.detail else "")]
        width = max((len(e.id) for e in self.exercises), default=0)
        for e in self.exercises:
            lines.append(f"  {'PASS' if e.passed else 'FAIL'}  {e.id:<{width}}  {e.title}: {e.reason}")
        lines.append(f"  score {self.points:g}/{self.max_points:g} = {self.score:.0%}   ({self.seconds:.0f} s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- which lesson

@dataclass
class Exercise:
    """One exercise of a solution, as the grader runs it."""
    id: str
    answer: str | None        # the name the check is called with, e.g. "error_rate"
    tests: str                # the teacher's tests cell: the check, then the hidden tests
    tests_cell: str | None    # the id of the solution's tests cell (or, older form, of the exercise's cell)
    answer_cell: str | None   # the id of the solution's answer cell
    grade_id: str | None      # nbgrader's grade id of the tests cell
    points: float = 1.0
    separate: bool = True     # the solution has a tests cell of its own (False: the older one-cell form)


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@dataclass
class _Solution:
    path: Path
    nb: nbformat.NotebookNode
    lesson: nbformat.NotebookNode

    @property
    def stem(self) -> str:
        return self.path.stem

    def exercises(self) -> list[Exercise]:
        """Each exercise with the teacher's tests for it, in order."""
        out, cells = [], [c for c in self.nb.cells if c.cell_type == "code"]
        answers = {grade_id_exercise(c): c.get("id") for c in cells if _nbgrader(c).get("solution")}
        for cell in cells:
            meta, calls = _nbgrader(cell), _CHECK_LINE.findall(cell.source)
            if not calls or calls[0][0] in {e.id for e in out}:
                continue
            ex, name = calls[0]
            if meta.get("grade"):
                out.append(Exercise(ex, name, cell.source, cell.get("id"), answers.get(ex), meta.get("grade_id"),
                                    float(meta.get("points", 1) or 0)))
            else:  # the older form: the answer and its check in one cell
                _, hidden = strip_blocks(cell.source, BEGIN_HIDDEN, END_HIDDEN)
                tests = f'course.check("{ex}", {name})' + ("\n" + textwrap.dedent("\n".join(hidden)) if hidden else "")
                out.append(Exercise(ex, name, tests, cell.get("id"), cell.get("id"), None, separate=False))
        return out


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

def _tests_cell_source(exercise: Exercise, nonce: str) -> str:
    """The teacher's tests for one exercise, ending in the grading's mark (printed only if every
    test above it passed)."""
    return (exercise.tests.rstrip("\n") + "\n\n# added by course grade: reached only when every test above passed\n"
            f'print("{MARK} {nonce} {exercise.id}")')


def _find(cells: list, grade_id: str | None, cell_id: str | None):
    """The index of the submission's cell with this nbgrader grade id, else this cell id."""
    for i, c in enumerate(cells):
        if grade_id and _nbgrader(c).get("grade_id") == grade_id:
            return i
    for i, c in enumerate(cells):
        if cell_id and c.get("id") == cell_id:
            return i
    return None


def prepare(submission: nbformat.NotebookNode, solution: _Solution,
            nonce: str) -> tuple[nbformat.NotebookNode, dict[str, str]]:
    """The notebook to execute — the teacher's tests cells in place of the submission's, outputs
    cleared — and, per exercise id, the id of the cell that grades it."""
    nb = nbformat.from_dict(json.loads(json.dumps(submission)))  # a deep copy
    nb.cells = [c for c in nb.cells if not str(c.get("id", "")).startswith("course-grade-")]  # ids are the grader's
    owners: dict[str, str] = {}
    for ex in solution.exercises():
        grader_id = f"course-grade-{ex.id.replace('.', '-')}"
        cell = nbformat.v4.new_code_cell(_tests_cell_source(ex, nonce), id=grader_id,
                                         metadata={"nbgrader": {"grade": True, "grade_id": ex.grade_id,
                                                                "locked": True, "points": ex.points}})
        at = _find(nb.cells, ex.grade_id, ex.tests_cell) if ex.separate else None
        if at is not None:
            nb.cells[at] = cell  # the teacher's cell replaces whatever the student made of it
        else:
            answer_at = _find(nb.cells, ex.grade_id and ex.grade_id.replace("tests_", "answer_", 1), ex.answer_cell)
            nb.cells.insert(len(nb.cells) if answer_at is None else answer_at + 1, cell)
        owners[ex.id] = grader_id
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


KERNEL_START_TRIES = 3


def execute(nb: nbformat.NotebookNode, workdir: Path, cwd: Path, timeout: float,
            profile: str = "ci") -> tuple[str, str, nbformat.NotebookNode | None]:
    """Run ``nb`` in a fresh kernel in a subprocess; return (verdict, detail, executed notebook).

    A kernel that fails to start (no cell ran: a port taken by a kernel started at the same moment,
    a machine too busy to answer in time) is started again, up to ``KERNEL_START_TRIES`` times within
    ``timeout``: a submission is never failed for the grader's own bad luck."""
    deadline = time.monotonic() + timeout
    for attempt in range(1, KERNEL_START_TRIES + 1):
        verdict, detail, executed = _execute_once(nb, workdir, cwd, max(deadline - time.monotonic(), 1.0), profile)
        started = (workdir / "executed.ipynb").exists()
        if verdict != CRASHED or started or attempt == KERNEL_START_TRIES or time.monotonic() >= deadline:
            if verdict == CRASHED and not started:
                detail = f"the kernel did not start ({attempt} tries): " + detail.removeprefix("the kernel stopped: ")
            return verdict, detail, executed


def _execute_once(nb: nbformat.NotebookNode, workdir: Path, cwd: Path, timeout: float,
                  profile: str) -> tuple[str, str, nbformat.NotebookNode | None]:
    """One try of :func:`execute`."""
    src, out = workdir / "submission.ipynb", workdir / "executed.ipynb"
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    params = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(f"profile = {profile!r}  # injected by course grade",
                                                          id="injected-parameters"))
    nbformat.write(nb, src)
    env = headless_environment(profile, {k: v for k, v in os.environ.items()
                                         if k != "COURSE_RESULTS_FILE"})  # nothing the kernel writes counts
    env.update({"COURSE_GRADING": str(workdir),
                "TMPDIR": str(workdir)})  # the kernel's connection file too: a killed kernel leaves nothing in /tmp
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
    return verdict, detail, executed


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", log or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "Dead" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "the notebook did not run"


# --------------------------------------------------------------------------- the course's own code as an answer

def _code_of(source: str) -> ast.Module | None:
    """A cell's code as a syntax tree (IPython's ``%magic`` and ``!shell`` lines dropped), or None."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _dotted(node, aliases: dict[str, str]) -> str | None:
    """``course.train.error_rate`` for ``ce.error_rate`` when ``ce`` names ``course.train``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _aliases(trees: list[ast.Module]) -> dict[str, str]:
    """What each name bound by an import (or by ``name = module.attr``) at a cell's top level names."""
    aliases: dict[str, str] = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if (target := _dotted(node.value, aliases)) is not None:
                    aliases[node.targets[0].id] = target
    return aliases


def _course_object(dotted: str | None):
    if not dotted or not (dotted == "course" or dotted.startswith("course.")):
        return None
    from .checks import resolve

    try:
        return resolve(dotted)
    except Exception:
        return None


def _forbidden(exercise_id: str, dotted: str | None) -> str | None:
    """``dotted`` if it names one of the course's implementations of the exercise or a checker."""
    from .checks import references

    obj = _course_object(dotted)
    if obj is None:
        return None
    refs = [_course_object(r) for r in references(exercise_id)]
    if any(obj is r for r in refs if r is not None) or dotted.startswith("course.checks.") and dotted not in ("course.checks.call", "course.checks.plain"):
        return dotted
    return None


def _binding(node, answer: str):
    """How a top-level statement binds the name ``answer``: the statement (or import) that does, or None."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == answer:
        return node
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == answer for t in node.targets):
        return node.value
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        for a in node.names:
            if (a.asname or a.name.split(".")[0]) == answer:
                return f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name
    return None


def reference_use(cells: list, exercise_id: str, answer: str | None) -> str | None:
    """The course implementation that the answer to ``exercise_id`` is, or calls, if any.

    ``cells``: the submission's cells that run before the exercise's tests. Read from their source,
    in the grader's process, so the student's code cannot change what this finds. The answer is the
    name the check is called with, as last bound before the tests: "the course's" when that binding
    is a course implementation of the exercise (an import under that name, ``error_rate =
    course.train.error_rate``) or a ``def``/``lambda`` whose body names one (a thin wrapper).
    """
    if not answer:
        return None
    trees = [t for c in cells if c.cell_type == "code" and (t := _code_of(c.source)) is not None]
    aliases, last = _aliases(trees), None
    for tree in trees:
        for node in tree.body:
            last = _binding(node, answer) or last
    if last is None:
        return None
    if isinstance(last, str):
        return _forbidden(exercise_id, last)
    if (found := _forbidden(exercise_id, _dotted(last, aliases))):
        return found
    for inner in ast.walk(last):
        if isinstance(inner, (ast.Name, ast.Attribute)) and (found := _forbidden(exercise_id, _dotted(inner, aliases))):
            return found
    return None


# --------------------------------------------------------------------------- scoring

def _outputs(cell) -> tuple[dict | None, str, str]:
    """(the error output or None, the stdout text, the stderr text) of an executed cell."""
    outputs = cell.get("outputs", [])
    error = next((o for o in outputs if o.get("output_type") == "error"), None)
    streams = {name: "".join(o.get("text", "") for o in outputs
                             if o.get("output_type") == "stream" and o.get("name") == name)
               for name in ("stdout", "stderr")}
    return error, streams["stdout"], streams["stderr"]


def _reason(error: dict) -> str:
    """Why a tests cell failed, for the teacher: the hint, *not attempted*, or the error."""
    name, value = error.get("ename", ""), _ANSI.sub("", str(error.get("evalue", "")))[:300]
    if name == "NotImplementedError":
        return "not attempted"
    if name in ("ExerciseFailed", "ReferenceUsed"):
        return value
    if name == "AssertionError":
        return "passes the visible check, but hidden tests failed: " + (value or "an assertion")
    return f"the tests cell raised {name}: {value}"


def _cells_before(nb: nbformat.NotebookNode, owners: dict[str, str]) -> dict[str, list]:
    """Per exercise, the student's cells above its tests cell (the grader's own cells left out)."""
    ids = [c.get("id") for c in nb.cells]
    graders = set(owners.values())
    return {ex: [c for c in nb.cells[:ids.index(cid)] if c.get("id") not in graders]
            for ex, cid in owners.items() if cid in ids}


def score(solution: _Solution, prepared: nbformat.NotebookNode, executed: nbformat.NotebookNode | None,
          owners: dict[str, str], nonce: str, verdict: str) -> list[ExerciseGrade]:
    from .checks import known_exercises

    titles = known_exercises()
    cells = {c.get("id"): c for c in (executed.cells if executed is not None else [])}
    before = _cells_before(prepared, owners)
    grades = []
    for ex in solution.exercises():
        title = titles.get(ex.id, f"exercise {ex.id}")
        cell = cells.get(owners.get(ex.id))

        def grade(passed: bool, reason: str) -> None:
            grades.append(ExerciseGrade(ex.id, title, passed, reason, ex.points))

        reached = cell is not None and cell.get("metadata", {}).get("course_grade") == "done"
        error, text, stderr = _outputs(cell) if cell is not None else (None, "", "")
        if error is not None:
            grade(False, _reason(error))
        elif stderr.strip():  # nbgrader's rule too: the two graders agree
            grade(False, "the tests cell wrote to stderr, which nbgrader scores zero: "
                         + _ANSI.sub("", stderr.strip().splitlines()[-1])[:200])
        elif not reached:
            grade(False, "not reached" + (" (time limit)" if verdict == TIMED_OUT else
                                          " (the notebook stopped)" if verdict == CRASHED else ""))
        elif f"{MARK} {nonce} {ex.id}" not in text:
            grade(False, "the tests did not run to their end (the cell was cut short)")
        elif (used := reference_use(before.get(ex.id, []), ex.id, ex.answer)):
            grade(False, f"the answer is, or calls, the course's own implementation ({used}): "
                         "an exercise asks for the student's code, so it scores zero")
        else:
            grade(True, "correct")
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
    nonce = secrets.token_hex(16)
    nb, owners = prepare(submission, solution, nonce)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        verdict, detail, executed = execute(nb, Path(tmp), path.resolve().parent, timeout, profile)
        if keep is not None and (Path(tmp) / "executed.ipynb").exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"{path.stem}.graded.ipynb").write_bytes((Path(tmp) / "executed.ipynb").read_bytes())
    report.seconds = round(time.perf_counter() - start, 1)
    report.verdict, report.detail = verdict, detail
    report.exercises = score(solution, nb, executed, owners, nonce, verdict)
    return report


def grade_notebooks(paths: list[str | Path], timeout: float = DEFAULT_TIMEOUT, **kwargs) -> list[GradeReport]:
    """Grade several submissions (the solutions are read once)."""
    if "solutions" not in kwargs:
        kwargs["solutions"] = load_solutions(kwargs.pop("solutions_dir", None))
    return [grade_notebook(p, timeout, **kwargs) for p in paths]
