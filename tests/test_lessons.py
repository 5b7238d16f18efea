"""The lesson builder: lessons/ is exactly what solutions/ gives, and leaks nothing."""
import shutil
import warnings

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course.lessons import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, PENDING_CONVENTION, build_lesson, build_lessons,
                            exercise_problems, leaks, repo_root, strip_blocks)


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
        new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x * 2 + secret_constant\n    ### END SOLUTION",
                      metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "answer_9_1"}}),
        new_code_cell('course.check("9.1", f)\nprint(\'visible\')\n### BEGIN HIDDEN TESTS\nassert f(1) == hidden_expected_value\n'
                      "### END HIDDEN TESTS",
                      metadata={"nbgrader": {"grade": True, "locked": True, "points": 1, "grade_id": "tests_9_1"}}),
    ]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[0].execution_count = 3
    return nb


def test_build_lesson_stubs_solutions_and_removes_hidden_tests():
    lesson = build_lesson(_solution())
    first, second = lesson.cells[0].source, lesson.cells[1].source
    assert 'raise NotImplementedError("Exercise 9.1: write f")' in first
    assert "secret_constant" not in first and "hidden_expected_value" not in second
    assert "print('visible')" in second and 'course.check("9.1", f)' in second
    assert lesson.cells[0].outputs == [] and lesson.cells[0].execution_count is None
    assert lesson.cells[1].metadata["nbgrader"]["grade_id"] == "tests_9_1"  # nbgrader can grade a lesson too
    assert leaks(_solution(), lesson) == []
    ns = {"course": type("C", (), {"check": staticmethod(lambda i, f: f(1))})}
    exec(first, ns)
    with pytest.raises(NotImplementedError, match="9.1"):
        exec(second, ns)


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


def test_a_stale_digest_for_an_unedited_lesson_is_put_right_not_kept(tmp_path):
    """After a merge that took the lesson from one branch and the manifest from the other, the
    lesson is what its solution gives but its digest is another: --check says so, a build records
    the right digest, and the solution's next change reaches the lesson (it is not "kept")."""
    import json

    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    nbformat.write(_solution(), sol / "09_demo.ipynb")
    build_lessons(sol, les)
    manifest = les / ".manifest.json"
    manifest.write_text(json.dumps({"09_demo.ipynb": "0" * 64}))
    checked = build_lessons(sol, les, check=True)
    assert checked.unrecorded == ["09_demo.ipynb"] and not checked.ok and checked.stale == []
    assert json.loads(manifest.read_text()) == {"09_demo.ipynb": "0" * 64}, "a check wrote the manifest"
    built = build_lessons(sol, les)
    assert built.unrecorded == ["09_demo.ipynb"] and built.ok and built.written == []
    assert build_lessons(sol, les, check=True).ok
    nb = _solution()
    nb.cells[1].source = nb.cells[1].source.replace("visible", "new text")
    nbformat.write(nb, sol / "09_demo.ipynb")
    assert build_lessons(sol, les).written == ["09_demo.ipynb"]
    assert "new text" in (les / "09_demo.ipynb").read_text()


def test_the_committed_manifest_records_every_lesson():
    report = build_lessons(check=True)
    assert report.unrecorded == [], f"run `course build-lessons`: stale digests for {report.unrecorded}"


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


def _exercise_pairs(path):
    """(answer cell, tests cell) of each exercise of a solution, in the nbgrader convention."""
    cells = nbformat.read(path, as_version=4).cells
    return [(cells[i - 1], c) for i, c in enumerate(cells) if c.metadata.get("nbgrader", {}).get("grade")]


CONVENTIONAL = [p for p in sorted((repo_root() / "solutions").glob("[0-9][0-9]_*.ipynb"))
                if p.name not in PENDING_CONVENTION]


@pytest.mark.parametrize("path", CONVENTIONAL, ids=lambda p: p.stem)
def test_every_exercise_has_locked_pointed_tests_with_hidden_tests(path):
    solution = nbformat.read(path, as_version=4)
    assert exercise_problems(solution) == []
    pairs = _exercise_pairs(path)
    assert pairs, f"{path.name} has no exercise"
    for answer, tests in pairs:
        assert answer.metadata["nbgrader"]["solution"] and BEGIN_SOLUTION in answer.source
        assert answer.metadata["nbgrader"]["grade_id"] == tests.metadata["nbgrader"]["grade_id"].replace("tests_", "answer_")


@pytest.mark.parametrize("path", CONVENTIONAL, ids=lambda p: p.stem)
def test_the_solutions_pass_their_own_hidden_tests_and_a_stub_fails_them(path, capsys):
    """Each tests cell, run on the solution's answer: passes; on the lesson's stub: raises."""
    import math

    import torch
    import torch.nn.functional as F

    import course
    for answer, tests in _exercise_pairs(path):
        ns = {"course": course, "torch": torch, "math": math, "F": F}
        exec(answer.source, ns)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would reach stderr, which nbgrader scores zero
            exec(tests.source, ns)
        assert capsys.readouterr().err == "", f"{tests.id} writes to stderr"
        _, hidden = strip_blocks(tests.source, BEGIN_HIDDEN, END_HIDDEN)
        stub = {"course": course, "torch": torch, "math": math, "F": F}
        exec(build_lesson(nbformat.v4.new_notebook(cells=[answer])).cells[0].source, stub)
        with pytest.raises(NotImplementedError):
            exec("\n".join(hidden), stub)  # the hidden tests alone call the answer, too


def test_a_solution_without_hidden_tests_or_nbgrader_metadata_is_reported(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    nb = nbformat.read(repo_root() / "solutions" / "00_welcome.ipynb", as_version=4)
    tests = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "tests_0_1")
    tests.source = tests.source.split(BEGIN_HIDDEN)[0]           # no hidden tests
    nb.cells[0].metadata["nbgrader"] = {"grade_id": "tests_0_2"}  # a repeated grade id
    nbformat.write(nb, sol / "00_welcome.ipynb")
    report = build_lessons(sol, les)
    problems = report.unconventional["00_welcome.ipynb"]
    assert any("no hidden tests" in p for p in problems) and any("twice" in p for p in problems), problems
    assert not report.ok


def test_a_hidden_test_leaking_into_a_lesson_is_caught():
    solution = nbformat.read(repo_root() / "solutions" / "00_welcome.ipynb", as_version=4)
    lesson = build_lesson(solution)
    tests = next(c for c in solution.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "tests_0_1")
    hidden_line = strip_blocks(tests.source, BEGIN_HIDDEN, END_HIDDEN)[1][-1]
    assert hidden_line.strip() not in nbformat.writes(lesson)
    lesson.cells[-1].source += "\n" + hidden_line
    assert leaks(solution, lesson) == [hidden_line.strip()]
