"""Forged submissions score zero on what they fake: the course's own function as the answer (or a
thin wrapper around it), a patched checker registry, a forged results file, checks that appear only
in a string, answers that read the checker's expected values. Each is lesson 00 with its two
exercises faked (or one faked, one solved honestly, to show only the fake is lost)."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell

from course.grading import grade_notebook, load_solutions, reference_use
from course.lessons import repo_root

LESSON = repo_root() / "lessons" / "00_welcome.ipynb"
HONEST_0_2 = "def to_unit_range(raw):\n    return raw.float() / 255.0"
WRONG_0_1 = "def error_rate(logits, labels):\n    return (logits.argmax(1) == labels).float().mean().item()"
WRONG_0_2 = "def to_unit_range(raw):\n    return raw // 255"
PEEK = """import sys

def _peek(default):
    frame = sys._getframe(2)
    while frame is not None:
        for name, value in list(frame.f_locals.items()) + list(frame.f_globals.items()):
            if name.lstrip("_").startswith("want"):
                return value
        frame = frame.f_back
    return default
"""

FORGERIES = {
    # the reference itself, and a thin wrapper around the reference the lesson imports later
    "reference": ({"c09": "from course.train import error_rate", "c08c": HONEST_0_2}, ["0.1"]),
    "wrapper": ({"c09": "from course.train import error_rate as theirs\n\n"
                        "def error_rate(logits, labels):\n    return theirs(logits, labels)",
                 "c08c": HONEST_0_2}, ["0.1"]),
    "hidden-wrapper": ({"c09": "import importlib\n\ndef error_rate(logits, labels):\n"
                               "    mod = importlib.import_module('course.' + 'train')\n"
                               "    return getattr(mod, 'error_' + 'rate')(logits, labels)",
                        "c08c": HONEST_0_2}, ["0.1"]),
    "patched-registry": ({"c09": WRONG_0_1 + "\n\nimport course.checks\n"
                                 "course.checks.known_exercises()  # every checker registered: now replace two\n"
                                 "course.checks._REGISTRY['0.1'] = ('x', lambda a: None)\n"
                                 "course.checks._REGISTRY['0.2'] = ('x', lambda a: None)",
                          "c08c": WRONG_0_2}, ["0.1", "0.2"]),
    "patched-check": ({"c09": WRONG_0_1 + "\n\nimport course\ncourse.check = lambda *a, **k: True",
                       "c08c": WRONG_0_2}, ["0.1", "0.2"]),
    "results-file": ({"c09": "import json, os\nfor target in (os.environ.get('COURSE_RESULTS_FILE'), 'results.json'):\n"
                             "    if target:\n        with open(target, 'w') as f:\n"
                             "            json.dump({'checks': {'0.1': True, '0.2': True}, 'metrics': {}}, f)\n\n"
                             "def error_rate(logits, labels):\n    raise NotImplementedError"}, ["0.1", "0.2"]),
    "check-in-a-string": ({"tests-0-1": 'note = """course.check("0.1", error_rate)"""',
                           "tests-0-2": "# course.check('0.2', to_unit_range)"}, ["0.1", "0.2"]),
    "reads-expected-values": ({"c09": PEEK + "\ndef error_rate(logits, labels):\n    return _peek(0.5)",
                               "c08c": "def to_unit_range(raw):\n    return _peek(raw.float())"}, ["0.1", "0.2"]),
}


@pytest.fixture(scope="module")
def solutions():
    return load_solutions()


def _forge(tmp_path, name: str, edits: dict) -> str:
    nb = nbformat.read(LESSON, as_version=4)
    cells = {c.get("id"): c for c in nb.cells}
    for cell_id, source in edits.items():
        cells[cell_id].source = source
    nb.cells.append(new_code_cell("print('done')", id="the-end"))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_submission_scores_zero_on_what_it_fakes(name, tmp_path, solutions):
    edits, faked = FORGERIES[name]
    report = grade_notebook(_forge(tmp_path, name, edits), timeout=300, solutions=solutions)
    assert report.lesson == "00_welcome" and report.verdict == "graded", report.format()
    passed = {e.id: e.passed for e in report.exercises}
    assert not any(passed[ex] for ex in faked), report.format()
    assert all(passed[ex] for ex in passed if ex not in faked), report.format()  # the honest one counts
    if name.startswith("patched"):  # the visible check was fooled; the hidden tests were not
        assert all("hidden tests failed" in e.reason for e in report.exercises), report.format()
    if name in ("reference", "wrapper", "hidden-wrapper"):
        assert "course's own" in report.exercises[0].reason and "zero" in report.exercises[0].reason, report.format()


def test_the_source_check_finds_references_the_kernel_cannot_hide(solutions):
    """``reference_use`` reads the source in the grader: the answer bound to the course's function,
    imported under its name, or wrapped — but not an honest answer that uses other course helpers."""
    def cells(*sources):
        return [new_code_cell(s) for s in sources]

    assert reference_use(cells("import course", "error_rate = course.train.error_rate"), "0.1", "error_rate")
    assert reference_use(cells("from course import train as t", "def error_rate(a, b):\n    return t.error_rate(a, b)"),
                         "0.1", "error_rate") == "course.train.error_rate"
    assert reference_use(cells("import course.checks.l03 as c", "c_search_step = c._reference_c_step"), "3.2",
                         "c_search_step")
    honest = "from course.models import weight_decay_penalty as p\n\ndef train_step(m, o, x, y, lam):\n    return p(m, lam)"
    assert reference_use(cells(honest), "1.2", "train_step") is None  # 1.1's reference inside 1.2 is allowed
    # what counts is the binding in force at the check: an honest def after the lesson's import
    assert reference_use(cells("from course.train import error_rate", "def error_rate(a, b):\n    return 0.0"),
                         "0.1", "error_rate") is None
