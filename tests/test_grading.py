"""``course grade``: full marks for a solution, zero for an unsolved lesson, exactly one exercise lost
for one wrong answer, and a clear verdict (not a traceback) for a foreign, broken or endless notebook."""
import json
import tempfile

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course.cli import main
from course.grading import CRASHED, NOT_OURS, TIMED_OUT, UNREADABLE, grade_notebook, load_solutions
from course.lessons import build_lesson, repo_root

SOLUTIONS = repo_root() / "solutions"
LESSONS = repo_root() / "lessons"


@pytest.fixture(scope="module")
def solutions():
    return load_solutions()


def _kernels_under(folder) -> list[int]:
    """Kernels started by a grading whose temporary files are under ``folder``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("COURSE_GRADING", "").startswith(str(folder)):
                found.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return found


def test_a_solved_notebook_scores_full_marks(solutions):
    report = grade_notebook(SOLUTIONS / "00_welcome.ipynb", timeout=300, solutions=solutions)
    assert report.lesson == "00_welcome" and report.verdict == "graded"
    assert [(e.id, e.passed) for e in report.exercises] == [("0.1", True), ("0.2", True)]
    assert report.score == 1.0


def test_the_unsolved_lesson_scores_zero_without_crashing(tmp_path, solutions):
    submission = tmp_path / "alice.ipynb"  # a student's file name: matched by its cells, not its name
    submission.write_text((LESSONS / "00_welcome.ipynb").read_text())
    report = grade_notebook(submission, timeout=300, solutions=solutions)
    assert report.lesson == "00_welcome" and report.verdict == "graded"
    assert report.score == 0.0 and report.total == 2
    assert report.exercises[0].reason == "not attempted"


def test_one_wrong_answer_loses_exactly_that_exercise(tmp_path, solutions):
    nb = nbformat.read(SOLUTIONS / "01_training_mnist.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "answer_1_1")
    assert "if p.dim() > 1)" in cell.source
    cell.source = cell.source.replace("if p.dim() > 1)", ")")  # decays the biases too: wrong
    nbformat.write(nb, tmp_path / "01_training_mnist.ipynb")
    report = grade_notebook(tmp_path / "01_training_mnist.ipynb", timeout=400, solutions=solutions)
    assert report.verdict == "graded", report.detail
    assert {e.id: e.passed for e in report.exercises} == {"1.1": False, "1.2": True}
    assert "biases" in report.exercises[0].reason  # the checker's hint reaches the teacher
    assert report.score == 0.5


def _tiny_solution(hidden: str, tests_meta=True) -> nbformat.NotebookNode:
    """A one-exercise solution (exercise 0.1): an answer cell, then its tests cell with ``hidden``."""
    grade = {"grade": True, "grade_id": "tests_0_1", "locked": True, "points": 2, "solution": False, "schema_version": 3}
    answer = {"grade": False, "grade_id": "answer_0_1", "locked": False, "solution": True, "schema_version": 3}
    return new_notebook(cells=[
        new_markdown_cell("# 42 · A tiny lesson\nWith enough text to be recognised.", id="m0"),
        new_code_cell('profile = "default"', id="p0", metadata={"tags": ["parameters"]}),
        new_code_cell("import course\n\ndef error_rate(logits, labels):\n    ### BEGIN SOLUTION\n"
                      "    return (logits.argmax(dim=1) != labels).float().mean().item()\n    ### END SOLUTION",
                      id="e1", metadata={"nbgrader": answer}),
        new_code_cell(f'course.check("0.1", error_rate)\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS',
                      id="t1", metadata={"nbgrader": grade} if tests_meta else {}),
        new_markdown_cell("The end of the lesson.", id="m9"),
    ])


def _student_of(solution, tmp_path, edit=None):
    """The lesson built from ``solution``, answered with the solution's code (and ``edit``ed)."""
    lesson = build_lesson(solution)
    lesson.cells[2].source = solution.cells[2].source
    if edit:
        edit(lesson)
    nbformat.write(lesson, tmp_path / "student.ipynb")
    return tmp_path / "student.ipynb"


def test_hidden_tests_are_put_back_and_count(tmp_path):
    """A check that passes is not enough when the solution's hidden tests fail."""
    sol_dir = tmp_path / "solutions"
    sol_dir.mkdir()
    solution = _tiny_solution("assert error_rate.__name__ == 'a name nobody writes', 'hidden test failed'")
    nbformat.write(solution, sol_dir / "42_tiny.ipynb")
    assert "hidden test failed" not in (build_lesson(solution).cells[3].source)
    report = grade_notebook(_student_of(solution, tmp_path), timeout=120, solutions_dir=sol_dir)
    assert report.lesson == "42_tiny" and report.verdict == "graded"
    (ex,) = report.exercises
    assert not ex.passed and "hidden test failed" in ex.reason and "hidden tests failed" in ex.reason, ex
    assert report.max_points == 2 and report.points == 0


def test_a_deleted_or_rewritten_tests_cell_is_the_teachers_again(tmp_path):
    """The tests cell is the teacher's: a student who deletes it, or turns it into a string, is
    graded by the teacher's cell all the same."""
    sol_dir = tmp_path / "solutions"
    sol_dir.mkdir()
    solution = _tiny_solution("assert error_rate(torch.zeros(2, 3), torch.tensor([1, 1])) == 1.0, 'all wrong'"
                              .replace("torch.", "__import__('torch')."))
    nbformat.write(solution, sol_dir / "42_tiny.ipynb")

    def wrong(nb):
        nb.cells[2].source = nb.cells[2].source.replace("!=", "==")  # the accuracy: wrong

    def deleted(nb):
        wrong(nb)
        del nb.cells[3]

    def quoted(nb):
        wrong(nb)
        nb.cells[3].source = 'note = """course.check("0.1", error_rate)"""'

    for edit in (deleted, quoted):
        report = grade_notebook(_student_of(solution, tmp_path, edit), timeout=120, solutions_dir=sol_dir)
        (ex,) = report.exercises
        assert not ex.passed and "accuracy" in ex.reason, (edit.__name__, ex)
    report = grade_notebook(_student_of(solution, tmp_path, lambda nb: nb.cells.pop(3)), timeout=120,
                            solutions_dir=sol_dir)
    assert report.exercises[0].passed, report.exercises  # right answer, tests cell deleted: still graded


def test_the_older_one_cell_form_is_still_graded(tmp_path):
    """A solution whose exercise cell holds the answer and its check (lesson 11 until it is split)."""
    sol_dir = tmp_path / "solutions"
    sol_dir.mkdir()
    solution = _tiny_solution("assert error_rate.__name__ == 'a name nobody writes', 'hidden test failed'",
                              tests_meta=False)
    solution.cells[2].source += "\n\ncourse.check(\"0.1\", error_rate)"
    solution.cells[2].metadata = {}
    del solution.cells[3]
    nbformat.write(solution, sol_dir / "42_tiny.ipynb")
    report = grade_notebook(_student_of(solution, tmp_path), timeout=120, solutions_dir=sol_dir)
    assert [(e.id, e.passed) for e in report.exercises] == [("0.1", True)], (report.exercises, report.detail)


def test_the_grading_kernel_runs_headless_like_course_run(tmp_path, monkeypatch):
    """The submission's kernel gets the environment `course run` gives its lessons (course.headless):
    the profile graded, figures as PNG, widgets called once, glibc keeping freed memory."""
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    sol_dir = tmp_path / "solutions"
    sol_dir.mkdir()
    solution = _tiny_solution("import os\nassert [os.environ.get(k) for k in ('COURSE_PROFILE', 'COURSE_HEADLESS', "
                              "'MPLBACKEND', 'MALLOC_MMAP_MAX_')] == ['ci', '1', "
                              "'module://matplotlib_inline.backend_inline', '0'], 'not headless'")
    nbformat.write(solution, sol_dir / "42_tiny.ipynb")
    report = grade_notebook(_student_of(solution, tmp_path), timeout=120, solutions_dir=sol_dir)
    assert report.verdict == "graded" and report.exercises[0].passed, report


def test_a_kernel_that_fails_to_start_is_started_again(tmp_path, monkeypatch):
    """The grader's bad luck (a kernel port taken by a kernel started at the same moment, seen once in
    CI) is not the student's: the kernel is started again; a kernel that never starts is said so."""
    import course.grading as grading

    sol_dir = tmp_path / "solutions"
    sol_dir.mkdir()
    solution = _tiny_solution("assert error_rate.__name__ == 'error_rate'")
    nbformat.write(solution, sol_dir / "42_tiny.ipynb")
    real, calls = grading._execute_once, []

    def flaky(nb, workdir, *args):
        calls.append(workdir)
        if len(calls) < fails:
            return CRASHED, "the kernel stopped: RuntimeError: Kernel didn't respond in 60 seconds", None
        return real(nb, workdir, *args)

    monkeypatch.setattr(grading, "_execute_once", flaky)
    fails = 3  # two failed starts, then a kernel
    report = grade_notebook(_student_of(solution, tmp_path), timeout=120, solutions_dir=sol_dir)
    assert len(calls) == 3 and report.verdict == "graded" and report.exercises[0].passed, report
    calls.clear()
    fails = 99  # never starts: a crash that says so, after the allowed tries
    report = grade_notebook(_student_of(solution, tmp_path), timeout=120, solutions_dir=sol_dir)
    assert len(calls) == grading.KERNEL_START_TRIES and report.verdict == CRASHED
    assert report.detail.startswith(f"the kernel did not start ({grading.KERNEL_START_TRIES} tries)"), report.detail
    assert "Kernel didn't respond" in report.detail and not report.exercises[0].passed


def test_a_crash_is_a_verdict_and_what_ran_still_counts(tmp_path, solutions):
    nb = nbformat.read(SOLUTIONS / "00_welcome.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if 'course.check("0.1"' in c.source)
    nb.cells.insert(at + 1, new_code_cell("import os\nos._exit(1)  # the kernel dies", id="die"))
    nb.cells.insert(3, new_code_cell("raise RuntimeError('a broken cell')", id="broken"))  # the rest still runs
    nbformat.write(nb, tmp_path / "bob.ipynb")
    report = grade_notebook(tmp_path / "bob.ipynb", timeout=300, solutions=solutions)
    assert report.verdict == CRASHED and "Kernel died" in report.detail
    assert [(e.id, e.passed) for e in report.exercises] == [("0.1", True), ("0.2", False)]  # 0.2 never ran
    assert report.score == 0.5


def test_a_notebook_that_is_not_ours_gets_a_clear_verdict(tmp_path, solutions):
    foreign = new_notebook(cells=[new_markdown_cell("# My holiday photos"), new_code_cell("print('hi')")])
    nbformat.write(foreign, tmp_path / "00_welcome.ipynb")  # even under one of our names
    report = grade_notebook(tmp_path / "00_welcome.ipynb", solutions=solutions)
    assert report.verdict == NOT_OURS and report.score == 0 and report.exercises == []
    (tmp_path / "broken.ipynb").write_text("{ not json")
    assert grade_notebook(tmp_path / "broken.ipynb", solutions=solutions).verdict == UNREADABLE
    assert grade_notebook(tmp_path / "missing.ipynb", solutions=solutions).verdict == UNREADABLE


def test_a_notebook_that_loops_times_out(tmp_path, solutions, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the grader's temporary files go here
    (tmp_path / "system_tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "system_tmp"))    # the one its children would otherwise use
    nb = nbformat.read(LESSONS / "00_welcome.ipynb", as_version=4)
    nb.cells.insert(3, new_code_cell("while True:\n    pass", id="loop"))
    nbformat.write(nb, tmp_path / "00_welcome.ipynb")
    report = grade_notebook(tmp_path / "00_welcome.ipynb", timeout=20, solutions=solutions)
    assert report.verdict == TIMED_OUT and report.seconds < 60
    assert report.score == 0 and "not reached" in report.exercises[0].reason
    assert not _kernels_under(tmp_path), "the kernel outlived the time limit"
    assert list((tmp_path / "system_tmp").iterdir()) == [], "the killed kernel left its files in the temp folder"
    assert not list(tmp_path.glob("course-grade-*")), "the grader's own folder outlived the grading"


def test_grade_command_prints_a_gradebook(tmp_path, capsys):
    (tmp_path / "junk.ipynb").write_text("not a notebook")
    assert main(["grade", str(tmp_path / "junk.ipynb"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["verdict"] == UNREADABLE and row["score"] == 0 and row["total"] == 0
