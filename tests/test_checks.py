import pytest
import torch.nn.functional as F

import course
from course.checks import known_exercises
from course.models import weight_decay_penalty
from course.train import train_step


def test_exercises_are_registered():
    assert {"0.1", "0.2", "1.1", "1.2"} <= set(known_exercises())


def test_right_answers_pass(capsys):
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
def test_wrong_answers_get_a_hint(exercise, wrong, hint):
    result = course.check(exercise, wrong)
    assert not result and hint in result.message


def test_unsolved_exercise_is_reported_and_raised(capsys):
    def unsolved(*args):
        raise NotImplementedError("Exercise 0.1")

    with pytest.raises(NotImplementedError):
        course.check("0.1", unsolved)
    assert "not attempted" in capsys.readouterr().out


def test_crashing_answer_is_a_failure_not_a_traceback():
    result = course.check("0.1", lambda logits, labels: logits.nothing)
    assert not result and "AttributeError" in result.message


def test_unknown_exercise():
    with pytest.raises(KeyError, match="Known exercises"):
        course.check("99.9", None)
