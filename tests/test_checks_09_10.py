"""The checkers of lessons 09 and 10: the reference passes, typical mistakes get their hint."""
import pytest
import torch
from torch import nn

import course
import course.checks
from course.retraining import LayersAbove, add_fooling_class


def mix_ok(bx, by, px, py, k, g):
    idx = torch.randint(len(px), (k,), generator=g)
    return torch.cat([bx, px[idx]]), torch.cat([by, py[idx]])


def replace_ok(px, py, fraction, fx, fy, g):
    n = round(fraction * len(px))
    slots = torch.randperm(len(px), generator=g)[:n]
    x, y = px.clone(), py.clone()
    x[slots], y[slots] = fx[:n], fy[:n]
    return x, y


def widen_ok(layer, n_new):
    new = nn.Linear(layer.in_features, layer.out_features + n_new)
    with torch.no_grad():
        new.weight[:layer.out_features] = layer.weight
        new.bias[:layer.out_features] = layer.bias
    return new


def test_right_answers_pass(references_allowed):
    assert course.check("9.1", mix_ok)
    assert course.check("9.2", replace_ok)
    assert course.check("9.3", lambda model, layer, h: LayersAbove(model, layer)(h))
    assert course.check("10.1", add_fooling_class)
    assert course.check("10.2", widen_ok)


def _replace_with_replacement(px, py, fraction, fx, fy, g):
    n = round(fraction * len(px))
    slots = torch.randint(len(px), (n,), generator=g) % 3  # drawn with replacement: repeats
    x, y = px.clone(), py.clone()
    x[slots], y[slots] = fx[:n], fy[:n]
    return x, y


def _replace_in_place(px, py, fraction, fx, fy, g):
    n = round(fraction * len(px))
    slots = torch.randperm(len(px), generator=g)[:n]
    px[slots], py[slots] = fx[:n], fy[:n]
    return px, py


def _above_no_activation(model, layer, h):
    for i in model.hidden_names[layer:]:
        h = getattr(model, f"fc{i}")(h)
    return model.out(h)


def _widen_fresh(layer, n_new):
    return nn.Linear(layer.in_features, layer.out_features + n_new)


def _widen_weights_only(layer, n_new):
    new = nn.Linear(layer.in_features, layer.out_features + n_new)
    with torch.no_grad():
        new.weight[:layer.out_features] = layer.weight
    return new


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("9.1", lambda bx, by, px, py, k, g: (px[:k], py[:k]), "clean batch is gone"),
    ("9.1", lambda bx, by, px, py, k, g: (torch.cat([bx, px[torch.randint(len(px), (k,), generator=g)]]),
                                          torch.cat([by, py[torch.randint(len(px), (k,), generator=g)]])), "its own* label"),
    ("9.1", lambda bx, by, px, py, k, g: (torch.cat([bx, px[:k]]), torch.cat([by, py[:k]])), "at random"),
    ("9.2", lambda px, py, f, fx, fy, g: (torch.cat([px, fx]), torch.cat([py, fy])), "keep its size"),
    ("9.2", _replace_with_replacement, "without"),
    ("9.2", _replace_in_place, "changed: work on copies"),
    ("9.3", _above_no_activation, "activation"),
    ("10.1", lambda im, la, fo, n: (torch.cat([im, fo]), torch.cat([la, torch.full((len(fo),), n + 1)])), "off by one"),
    ("10.1", lambda im, la, fo, n: (torch.cat([im, fo]), torch.cat([la, torch.full((len(fo),), 10)])), "n_classes"),
    ("10.1", lambda im, la, fo, n: (fo, torch.full((len(fo),), n)), "keep every real image"),
    ("10.2", _widen_fresh, "copied exactly"),
    ("10.2", _widen_weights_only, "biases"),
])
def test_wrong_answers_get_a_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message
