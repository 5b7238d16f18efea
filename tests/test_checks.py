import contextlib
import io
import re
import sys
import traceback

import pytest
import torch.nn.functional as F

import course
import course.checks
from course.checks import ExerciseFailed, known_exercises
from course.models import weight_decay_penalty
from course.train import train_step


def test_exercises_are_registered():
    assert {"0.1", "0.2", "1.1", "1.2"} <= set(known_exercises())


def test_right_answers_pass(capsys, references_allowed):
    assert course.check("0.1", lambda logits, labels: (logits.argmax(1) != labels).float().mean().item())
    assert course.check("0.2", lambda raw: raw.float() / 255.0)
    assert course.check("1.1", weight_decay_penalty)
    assert course.check("1.2", train_step)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("0.1", lambda lo, la: (lo.argmax(1) == la).float().mean().item(), "accuracy"),
    ("0.1", lambda lo, la: (lo.argmax(1) != la).sum().item(), "count"),
    ("0.2", lambda raw: raw // 255, "integer"),
    ("0.2", lambda raw: raw.float() / 256, "255"),
    ("1.1", lambda m, lam: 0.5 * lam * sum(p.pow(2).sum() for p in m.parameters()), "biases"),
    ("1.1", lambda m, lam: lam * sum(p.pow(2).sum() for p in m.parameters() if p.dim() > 1), "λ/2"),
    ("1.2", lambda m, o, x, y, lam: F.cross_entropy(m(x), y).item(), "did not change"),
])
def test_wrong_answers_get_a_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message


def test_unsolved_exercise_is_reported_and_raised(capsys):
    def unsolved(*args):
        raise NotImplementedError("Exercise 0.1")

    with pytest.raises(NotImplementedError):
        course.check("0.1", unsolved)
    assert "not attempted" in capsys.readouterr().out


def _files_in(tb) -> list[str]:
    return [f.filename for f in traceback.extract_tb(tb)]


def test_a_wrong_answer_raises_with_the_hint_and_no_checker_frame(capsys):
    """nbgrader scores a test cell by whether it raised; the traceback must not show the checker's
    source (it holds the expected computation)."""
    with pytest.raises(ExerciseFailed, match="accuracy") as info:
        course.check("0.1", lambda lo, la: (lo.argmax(1) == la).float().mean().item())
    assert "❌" in capsys.readouterr().out
    frames = traceback.extract_tb(info.tb)
    assert [f.name for f in frames if "course/checks" in f.filename] == ["check"], frames  # only its `raise`
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_crashing_answer_fails_showing_the_students_frame_not_the_checkers():
    def error_rate(logits, labels):
        return logits.nothing

    with pytest.raises(ExerciseFailed, match="AttributeError") as info:
        course.check("0.1", error_rate)
    names = [f.name for f in traceback.extract_tb(info.tb)]
    assert "error_rate" in names and "_error_rate" not in names, names
    assert not any(f.endswith("l00.py") for f in _files_in(info.tb))


def test_unsolved_traceback_ends_in_the_students_stub():
    def to_unit_range(raw):
        raise NotImplementedError("Exercise 0.2: write to_unit_range")

    with pytest.raises(NotImplementedError) as info:
        course.check("0.2", to_unit_range)
    frames = traceback.extract_tb(info.tb)
    assert frames[-1].name == "to_unit_range"
    assert not any(f.filename.endswith("l00.py") for f in frames)


@pytest.mark.parametrize("body, error", [("raise NotImplementedError('Exercise 0.1')", "NotImplementedError"),
                                         ("return (logits.argmax(1) == labels).float().mean().item()", "accuracy"),
                                         ("return logits.nothing", "AttributeError")])
def test_the_traceback_in_ipython_shows_no_checker_source(body, error):
    """What a student sees in Jupyter: their own cell and frames, the hint, and not one line of the
    course's checking code (the checker's holds the expected computation)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell(f"import course\ndef error_rate(logits, labels):\n    {body}")
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        shell.run_cell('course.check("0.1", error_rate)')
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue() + err.getvalue())
    assert error in text and 'course.check("0.1", error_rate)' in text, text
    assert "course/checks" not in text and "want" not in text and "_error_rate" not in text, text


def test_the_verdict_is_the_assert_form():
    assert course.checks.verdict("0.2", lambda raw: raw.float() / 255.0)
    assert not course.checks.verdict("0.2", lambda raw: raw // 255)


def test_an_answer_reading_the_checkers_expected_value_finds_none():
    """Checkers call the answer before computing what they expect: nothing to copy from the frame."""
    def error_rate(logits, labels):
        frame = sys._getframe(1)
        while frame is not None:
            for name, value in frame.f_locals.items():
                if name.startswith("want"):
                    return value
            frame = frame.f_back
        return -1.0

    assert not course.checks.verdict("0.1", error_rate)


def test_the_reference_as_answer_fails_with_a_reason():
    from course.train import error_rate

    result = course.checks.verdict("0.1", error_rate)
    assert not result and "course's own" in result.message and "zero" in result.message
    wrapper = course.checks.verdict("0.1", lambda lo, la: error_rate(lo, la))  # a thin wrapper
    assert not wrapper and "course.train.error_rate" in wrapper.message
    sneaky = course.checks.verdict("0.1", lambda lo, la: getattr(__import__("course.train").train, "error_rate")(lo, la))
    assert not sneaky and "course.train.error_rate" in sneaky.message


def test_unknown_exercise():
    with pytest.raises(KeyError, match="Known exercises"):
        course.check("99.9", None)
