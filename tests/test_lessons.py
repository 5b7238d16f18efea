"""The lesson builder: lessons/ is exactly what solutions/ gives, and leaks nothing."""
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course.lessons import build_lesson, build_lessons, leaks, repo_root


def test_committed_lessons_are_in_sync_and_leak_nothing():
    report = build_lessons(check=True)
    assert report.leaking == {}, f"solution text in lessons: {report.leaking}"
    assert report.stale == [], f"run `course build-lessons`: stale {report.stale}"
    assert report.orphans == []
    assert report.unchanged, "no lessons found"


def test_every_solution_has_checked_exercises():
    for path in sorted((repo_root() / "solutions").glob("[0-9][0-9]_*.ipynb")):
        text = path.read_text()
        assert "### BEGIN SOLUTION" in text and "course.check(" in text, f"{path.name} has no exercise"


def _solution():
    nb = new_notebook()
    nb.cells = [
        new_code_cell('def f(x):\n    ### BEGIN SOLUTION\n    return x * 2 + secret_constant\n    ### END SOLUTION\n\n'
                      'course.check("9.1", f)'),
        new_code_cell("print('visible')\n### BEGIN HIDDEN TESTS\nassert f(1) == hidden_expected_value\n### END HIDDEN TESTS"),
    ]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[0].execution_count = 3
    return nb


def test_build_lesson_stubs_solutions_and_removes_hidden_tests():
    lesson = build_lesson(_solution())
    first, second = lesson.cells[0].source, lesson.cells[1].source
    assert 'raise NotImplementedError("Exercise 9.1: write f")' in first
    assert "secret_constant" not in first and "hidden_expected_value" not in second
    assert "print('visible')" in second
    assert lesson.cells[0].outputs == [] and lesson.cells[0].execution_count is None
    assert leaks(_solution(), lesson) == []
    ns = {"course": type("C", (), {"check": staticmethod(lambda i, f: f(1))})}
    with pytest.raises(NotImplementedError, match="9.1"):
        exec(first, ns)


def test_leak_detection_catches_solution_text():
    solution = _solution()
    lesson = build_lesson(solution)
    lesson.cells[0].source += "\n    return x * 2 + secret_constant"
    assert leaks(solution, lesson) == ["return x * 2 + secret_constant"]


def test_edited_lessons_are_never_overwritten_without_force(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    nbformat.write(_solution(), sol / "09_demo.ipynb")
    assert build_lessons(sol, les).written == ["09_demo.ipynb"]
    assert build_lessons(sol, les, check=True).ok
    edited = (les / "09_demo.ipynb").read_text().replace("visible", "my own notes")
    (les / "09_demo.ipynb").write_text(edited)
    # the solution changes: the builder must still keep the student's edit
    nb = _solution()
    nb.cells[1].source = nb.cells[1].source.replace("visible", "new text")
    nbformat.write(nb, sol / "09_demo.ipynb")
    report = build_lessons(sol, les)
    assert report.edited == ["09_demo.ipynb"] and not report.ok
    assert (les / "09_demo.ipynb").read_text() == edited
    assert build_lessons(sol, les, force=True).written == ["09_demo.ipynb"]
    assert "new text" in (les / "09_demo.ipynb").read_text()


def test_check_mode_reports_stale_and_orphans(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    shutil.copytree(repo_root() / "solutions", sol)
    shutil.copytree(repo_root() / "lessons", les)
    nbformat.write(_solution(), les / "99_orphan.ipynb")
    nb = nbformat.read(sol / "00_welcome.ipynb", as_version=4)
    nb.cells[0].source += "\nA new sentence."
    nbformat.write(nb, sol / "00_welcome.ipynb")
    report = build_lessons(sol, les, check=True)
    assert report.stale == ["00_welcome.ipynb"] and report.orphans == ["99_orphan.ipynb"]
    assert "A new sentence." not in (les / "00_welcome.ipynb").read_text()
