"""Checks of lessons 03 and 04: the reference passes, typical mistakes get their hint."""
import math

import pytest
import torch

import course
import course.checks
from course.attacks import amplify, distortion, transfer_error
from course.checks import known_exercises
from course.checks.l03 import _reference_c_step


def test_exercises_are_registered():
    assert {"3.1", "3.2", "4.1", "4.2"} <= set(known_exercises())


def _predict_error(model, images, labels, *, accuracy=False, count=False):
    wrong = model(images).argmax(1) != labels
    return (~wrong).float().mean().item() if accuracy else (wrong.sum().item() if count else wrong.float().mean().item())


def test_right_answers_pass(capsys, references_allowed):
    assert course.check("3.1", distortion)
    assert course.check("3.1", lambda x, xa: ((xa - x) ** 2).flatten(1).mean(1).sqrt())
    assert course.check("3.2", _reference_c_step)
    assert course.check("4.1", transfer_error)
    assert course.check("4.1", _predict_error)
    assert course.check("4.2", amplify)
    assert "✅" in capsys.readouterr().out


def _step_wrong_direction(c, s, lo, hi, f):
    lo, hi = torch.where(s, c, lo), torch.where(s, hi, c)
    return torch.where(s, c / f, c * f), lo, hi


def _step_arithmetic(c, s, lo, hi, f):
    lo, hi = torch.where(s, c, lo), torch.where(s, hi, c)
    return torch.where(torch.isinf(hi), lo * f, torch.where(lo == 0, hi / f, (lo + hi) / 2)), lo, hi


def _step_swapped(c, s, lo, hi, f):
    lo, hi = torch.where(s, lo, c), torch.where(s, c, hi)
    return torch.sqrt(lo * hi), lo, hi


def _step_always_bisect(c, s, lo, hi, f):
    lo, hi = torch.where(s, c, lo), torch.where(s, hi, c)
    return torch.sqrt(lo * hi), lo, hi


def _amplify_no_sqrt_n(x, xa, s):
    r = (xa - x).flatten(1)
    return (x + (s * r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(x)).clamp(0, 1)


def _amplify_batch_norm(x, xa, s):
    return (x + s * math.sqrt(x[0].numel()) * (xa - x) / (xa - x).norm()).clamp(0, 1)


def _amplify_no_clip(x, xa, s):
    r = (xa - x).flatten(1)
    n = r.norm(dim=1, keepdim=True)
    out = x + torch.where(n > 0, s * math.sqrt(r.shape[1]) * r / n.clamp_min(1e-30), 0.0).view_as(x)
    out[0, 0, 0, 0] = 1.5   # an amplified pixel past the box
    return out


def _amplify_divides_by_zero(x, xa, s):
    r = (xa - x).flatten(1)
    return (x + (s * math.sqrt(r.shape[1]) * r / r.norm(dim=1, keepdim=True)).view_as(x))


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("3.1", lambda x, xa: (xa - x).flatten(1).norm(dim=1), "divides the sum of squares by n"),
    ("3.1", lambda x, xa: (xa - x).pow(2).flatten(1).mean(1), "square root"),
    ("3.1", lambda x, xa: (xa - x).abs().flatten(1).mean(1), "L1"),
    ("3.1", lambda x, xa: (xa - x).pow(2).mean().sqrt(), "one distortion per image"),
    ("3.2", lambda c, s, lo, hi, f: (c, lo, hi), "update the bracket"),
    ("3.2", _step_swapped, "wrong way round"),
    ("3.2", _step_wrong_direction, "wrong direction"),
    ("3.2", _step_arithmetic, "geometric mean"),
    ("3.2", _step_always_bisect, "positive, finite"),
    ("3.2", lambda c, s, lo, hi, f: c, "three tensors"),
    ("4.1", lambda m, x, y: _predict_error(m, x, y, accuracy=True), "accuracy"),
    ("4.1", lambda m, x, y: _predict_error(m, x, y, count=True), "count"),
    ("4.1", lambda m, x, y: 0.5, "arg-max"),
    ("4.2", _amplify_no_sqrt_n, "σ·√n"),
    ("4.2", _amplify_batch_norm, "its own norm"),
    ("4.2", _amplify_no_clip, "clip"),
    ("4.2", _amplify_divides_by_zero, "zero"),
    ("4.2", lambda x, xa, s: xa, "keep the direction"),
])
def test_wrong_answers_get_a_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message
