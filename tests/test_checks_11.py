"""The checkers of lesson 11: the reference passes, typical mistakes get their hint."""
import pytest
import torch

import course
import course.checks
from course.checks import known_exercises
from course.models.imagenet import normalize, ten_crop_probs, ten_crops

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def _crops(images, crop):
    N, C, H, W = images.shape
    top, left = round((H - crop) / 2), round((W - crop) / 2)
    spots = [(0, 0), (0, W - crop), (H - crop, 0), (H - crop, W - crop), (top, left)]
    return [images[:, :, i:i + crop, j:j + crop] for i, j in spots]


def _probs(net, crops):
    return torch.stack([torch.softmax(net(c), 1) for c in crops]).mean(0)


def test_exercises_are_registered():
    assert {"11.1", "11.2"} <= set(known_exercises())


@pytest.mark.parametrize("exercise, answer", [
    ("11.1", ten_crop_probs),
    ("11.1", lambda net, x, c: _probs(net, _crops(x, c) + [k.flip(-1) for k in _crops(x, c)])),
    ("11.1", lambda net, x, c: torch.softmax(net(ten_crops(x, c).flatten(0, 1)), 1).view(len(x), 10, -1).mean(1)),
    ("11.2", normalize),
    ("11.2", lambda x: (x - MEAN) / STD),
])
def test_right_answers_pass(exercise, answer, capsys, references_allowed):
    assert course.check(exercise, answer)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("11.1", lambda net, x, c: torch.softmax(net(ten_crops(x, c).flatten(0, 1)), 1), "one row per crop"),
    ("11.1", lambda net, x, c: torch.softmax(torch.stack([net(k) for k in _crops(x, c) + [k.flip(-1) for k in _crops(x, c)]]).mean(0), 1),
     "averaged the logits"),
    ("11.1", lambda net, x, c: _probs(net, _crops(x, c)), "mirrored"),
    ("11.1", lambda net, x, c: _probs(net, _crops(x, c) + [k.flip(-2) for k in _crops(x, c)]), "upside down"),
    ("11.1", lambda net, x, c: _probs(net, _crops(x, c)[4:] + [_crops(x, c)[4].flip(-1)]), "corners"),
    ("11.1", lambda net, x, c: torch.stack([net(k) for k in _crops(x, c)]).mean(0), "probability distribution"),
    ("11.1", lambda net, x, c: _probs(net, [x[:, :, :c, :c]]), "offset"),
    ("11.2", lambda x: (x - MEAN) * STD, "divide"),
    ("11.2", lambda x: (x * 255 - MEAN) / STD, "[0, 1]"),
    ("11.2", lambda x: (x - 0.5) / 0.5, "per-channel ImageNet"),
    ("11.2", lambda x: (x - MEAN.mean()) / STD.mean(), "separately"),
    ("11.2", lambda x: (x - MEAN.flip(1)) / STD.flip(1), "BGR"),
    ("11.2", lambda x: (x - MEAN.view(1, 1, 1, 3)) / STD.view(1, 1, 1, 3), "channel axis"),
    ("11.2", lambda x: x - MEAN, "per channel"),
])
def test_wrong_answers_get_their_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message
