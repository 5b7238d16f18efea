"""The checkers of lessons 06-08: the reference passes, typical mistakes get their hint."""
import math

import pytest
import torch

import course
import course.checks
from course.checks import known_exercises
from course.checks.l06 import reference_update
from course.checks.l07 import reference_activations
from course.checks.l08 import reference_kernel, reference_step
from course.evolution import coordinates, polynomial_delta


def test_exercises_are_registered():
    assert {"6.1", "6.2", "7.1", "7.2", "8.1", "8.2"} <= set(known_exercises())


def _textbook_delta(u, eta):
    return torch.where(u < 0.5, (2 * u).pow(1 / (eta + 1)) - 1, 1 - (2 * (1 - u)).pow(1 / (eta + 1)))


def _loop_activations(z, act):
    fs = [torch.sin, lambda v: 2 * (torch.sigmoid(v) - 0.5), lambda v: torch.exp(-v * v), lambda v: v.clamp(-3, 3) / 3]
    return torch.stack([fs[int(a)](row) for row, a in zip(z, act)])


def _grid(h, w, normalise=True, swap=False, square=False, bias=1.0):
    ys, xs = (torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)) if normalise else \
        (torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32))
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    if swap:
        x, y = y, x
    d = x * x + y * y
    return torch.stack([x, y, d if square else d.sqrt(), torch.full_like(x, bias)])


def _step(model, x, targets, lr, sign=1.0, prob=False, clip=True):
    x = x.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(model(x), dim=1)[torch.arange(len(targets)), targets]
    (g,) = torch.autograd.grad((logp.exp() if prob else logp).sum(), x)
    out = x.detach() + sign * lr * g
    return out.clamp(0, 1) if clip else out


def _kernel(sigma, two=True, normalise=True, radius=None):
    r = radius or max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-t * t / ((2 if two else 1) * sigma * sigma))
    return k / k.sum() if normalise else k


@pytest.mark.parametrize("exercise, answer", [
    ("6.1", polynomial_delta), ("6.1", _textbook_delta),
    ("6.2", reference_update),
    ("7.1", reference_activations), ("7.1", _loop_activations),
    ("7.2", coordinates), ("7.2", lambda h, w: _grid(h, w)),
    ("8.1", reference_step), ("8.1", _step),
    ("8.2", reference_kernel), ("8.2", _kernel),
])
def test_right_answers_pass(exercise, answer, capsys, references_allowed):
    assert course.check(exercise, answer)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("6.1", lambda u, eta: -_textbook_delta(u, eta), "sign"),
    ("6.1", lambda u, eta: torch.where(u < 0.5, (2 * u).pow(1 / eta) - 1, 1 - (2 * (1 - u)).pow(1 / eta)), "1/(η + 1)"),
    ("6.1", lambda u, eta: torch.where(u < 0.5, (2 * u).pow(1 / (eta + 1)) - 1, 1 - (2 * u).pow(1 / (eta + 1))), "other branch"),
    ("6.1", lambda u, eta: None, "return"),
    ("6.2", lambda s, p: (torch.maximum(s, p.max(0).values), p.max(0).values >= s), "strictly"),
    ("6.2", lambda s, p: (p.max(0).values, p.max(0).values > s), "keeps its old score"),
    ("6.2", lambda s, p: (torch.maximum(s, p[-1]), p[-1] > s), "every offspring"),
    ("6.2", lambda s, p: (p.max(1).values, p.max(1).values > 0), "one entry per cell"),
    ("6.2", lambda s, p: torch.maximum(s, p.max(0).values), "two things"),
    ("7.1", lambda z, a: torch.where(a[:, None] == 1, torch.sigmoid(z), reference_activations(z, a)), "2(σ(x) − 0.5)"),
    ("7.1", lambda z, a: torch.where(a[:, None] == 2, torch.exp(-z * z / 2), reference_activations(z, a)), "Gaussian"),
    ("7.1", lambda z, a: torch.where(a[:, None] == 3, z / 3, reference_activations(z, a)), "clip"),
    ("7.2", lambda h, w: _grid(h, w, normalise=False), "normalised"),
    ("7.2", lambda h, w: _grid(h, w, swap=True), "swap"),
    ("7.2", lambda h, w: _grid(h, w, square=True), "not its square"),
    ("7.2", lambda h, w: _grid(h, w, bias=0.0), "bias"),
    ("7.2", lambda h, w: _grid(h, w).T, "expected shape"),
    ("8.1", lambda m, x, t, lr: _step(m, x, t, lr, clip=False), "clip"),
    ("8.1", lambda m, x, t, lr: _step(m, x, t, lr, sign=-1.0), "downhill"),
    ("8.1", lambda m, x, t, lr: _step(m, x, t, lr, prob=True), "log p"),
    ("8.1", lambda m, x, t, lr: x, "did not change"),
    ("8.2", lambda s: _kernel(s, two=False), "factor 2"),
    ("8.2", lambda s: _kernel(s, normalise=False), "normalise"),
    ("8.2", lambda s: _kernel(s, radius=2), "taps"),
])
def test_wrong_answers_get_a_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message
