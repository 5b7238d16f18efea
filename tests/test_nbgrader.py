"""Real nbgrader on the course's own files, with no hand edits: ``generate_assignment`` accepts the
solutions, ``autograde`` gives a blank submission 0, a solved one full marks and one with a wrong
exercise exactly that exercise's points less — and ``course grade`` agrees, exercise by exercise."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course.grading import grade_notebook, load_solutions
from course.lessons import repo_root
from test_forgeries import FORGERIES

FORGED = ("patched-registry", "hidden-wrapper", "check-in-a-string")  # nbgrader sees through these too

nbgrader_api = pytest.importorskip("nbgrader.api", reason="nbgrader is in the test extra")

LESSONS = ["00_welcome", "05_spectral_stability"]
WRONG = ("00_welcome", "answer_0_1", "!=", "==")  # lesson, answer cell, text, replacement: the accuracy


def _nbgrader(root: Path, *args: str) -> None:
    env = {**os.environ, "COURSE_PROFILE": "ci", "PYTHONPATH": str(repo_root()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # nbgrader runs alembic
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _answered(release: nbformat.NotebookNode, solution: nbformat.NotebookNode, wrong=None) -> nbformat.NotebookNode:
    """The released notebook with the solution's answer cells typed in (one of them made wrong)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.from_dict(release)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
            if wrong and wrong[0] == gid:
                assert wrong[1] in cell.source
                cell.source = cell.source.replace(wrong[1], wrong[2])
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course folder: the two lessons released by nbgrader, three students' submissions autograded."""
    root = tmp_path_factory.mktemp("nbgrader-course")
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'intriguing'\nc.Execute.timeout = 300\n")
    (root / "source" / "ps1").mkdir(parents=True)
    for name in LESSONS:
        shutil.copy(repo_root() / "solutions" / f"{name}.ipynb", root / "source" / "ps1")
    _nbgrader(root, "generate_assignment", "ps1")
    for name in LESSONS:
        release = nbformat.read(root / "release" / "ps1" / f"{name}.ipynb", as_version=4)
        solution = nbformat.read(root / "source" / "ps1" / f"{name}.ipynb", as_version=4)
        assert "BEGIN HIDDEN TESTS" not in nbformat.writes(release) and "BEGIN SOLUTION" not in nbformat.writes(release)
        wrong = WRONG[1:] if name == WRONG[0] else None
        for student, nb in (("blank", release), ("solved", _answered(release, solution)),
                            ("one_wrong", _answered(release, solution, wrong))):
            (root / "submitted" / student / "ps1").mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, root / "submitted" / student / "ps1" / f"{name}.ipynb")
    for forgery in FORGED:  # lesson 00 only: the lessons/ copy with the forgery's edits
        nb = nbformat.read(repo_root() / "lessons" / "00_welcome.ipynb", as_version=4)
        cells = {c.get("id"): c for c in nb.cells}
        for cell_id, source in FORGERIES[forgery][0].items():
            cells[cell_id].source = source
        (root / "submitted" / forgery / "ps1").mkdir(parents=True)
        nbformat.write(nb, root / "submitted" / forgery / "ps1" / "00_welcome.ipynb")
    _nbgrader(root, "autograde", "ps1")
    grades = {}
    with nbgrader_api.Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for student in ("blank", "solved", "one_wrong"):
            for name in LESSONS:
                sub = gb.find_submission_notebook(name, "ps1", student)
                grades[student, name] = {g.name: g.score for g in sub.grades}
        for forgery in FORGED:
            sub = gb.find_submission_notebook("00_welcome", "ps1", forgery)
            grades[forgery, "00_welcome"] = {g.name: g.score for g in sub.grades}
    return root, grades


def test_blank_scores_zero_solved_full_marks_one_wrong_loses_its_points(graded):
    _, grades = graded
    for name in LESSONS:
        assert set(grades["blank", name].values()) == {0.0}, grades["blank", name]
        assert set(grades["solved", name].values()) == {1.0}, grades["solved", name]
    assert grades["one_wrong", "00_welcome"] == {"tests_0_1": 0.0, "tests_0_2": 1.0}
    assert set(grades["one_wrong", "05_spectral_stability"].values()) == {1.0}


def test_course_grade_agrees_with_nbgrader(graded):
    root, grades = graded
    solutions = load_solutions()
    for student in ("blank", "solved", "one_wrong"):
        report = grade_notebook(root / "submitted" / student / "ps1" / "00_welcome.ipynb", timeout=300,
                                solutions=solutions)
        ours = {f"tests_{e.id.replace('.', '_')}": e.earned for e in report.exercises}
        assert ours == grades[student, "00_welcome"], (student, report.format())


@pytest.mark.parametrize("forgery", FORGED)
def test_nbgrader_scores_forgeries_zero_on_what_they_fake(graded, forgery):
    _, grades = graded
    faked = {f"tests_{ex.replace('.', '_')}" for ex in FORGERIES[forgery][1]}
    got = grades[forgery, "00_welcome"]
    assert all(got[g] == 0.0 for g in faked) and all(v == 1.0 for g, v in got.items() if g not in faked), got
