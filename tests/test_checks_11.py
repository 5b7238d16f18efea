"""The checkers of lesson 11: the reference passes, typical mistakes get their hint."""
import warnings

import pytest
import torch

import course
import course.checks
from course.checks import known_exercises
from course.lessons import BEGIN_HIDDEN, END_HIDDEN, strip_blocks
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


# The tests cells of exercises 11.1 and 11.2 for the ImageNet lessons (nbgrader metadata: grade,
# locked, 1 point, grade ids tests_11_1 / tests_11_2; the answer cells above them answer_11_1 /
# answer_11_2). Kept here, outside the package students can read, until the lessons carry them.
TESTS_11_1 = '''course.check("11.1", ten_crop_probs)
### BEGIN HIDDEN TESTS
import torch
torch.manual_seed(1501)
_net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 5)).eval()
_img = torch.rand(2, 3, 10, 9)
_got = course.checks.plain(course.checks.call("11.1", ten_crop_probs, _net, _img.clone(), 6)).float()
_t, _l = int(round((10 - 6) / 2.0)), int(round((9 - 6) / 2.0))
_five = [_img[:, :, i:i + 6, j:j + 6] for i, j in [(0, 0), (0, 3), (4, 0), (4, 3), (_t, _l)]]
with torch.no_grad():
    _want = torch.stack([torch.softmax(_net(c), 1) for c in _five + [c.flip(-1) for c in _five]]).mean(0)
assert _got.shape == (2, 5) and torch.allclose(_got, _want, atol=1e-5), "11.1: wrong 10-crop probabilities for 10x9 images, crop 6 (an odd margin)"
### END HIDDEN TESTS'''

TESTS_11_2 = '''course.check("11.2", normalize)
### BEGIN HIDDEN TESTS
import torch
_img = torch.rand(3, 3, 2, 4, generator=torch.Generator().manual_seed(1502), dtype=torch.float64)
_got = course.checks.plain(course.checks.call("11.2", normalize, _img.clone())).double()
_m = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
_s = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
assert _got.shape == _img.shape and torch.allclose(_got, (_img - _m) / _s, atol=1e-5), "11.2: wrong normalisation of a float64 batch of 2x4 images"
_one = course.checks.plain(course.checks.call("11.2", normalize, torch.ones(1, 3, 1, 1))).double().reshape(-1)
assert torch.allclose(_one, ((1 - _m) / _s).reshape(-1), atol=1e-5), "11.2: a white pixel becomes (1 - mean) / std, per channel"
### END HIDDEN TESTS'''


def _honest_ten_crop_probs(model, images, crop):
    five = _crops(images, crop)
    with torch.no_grad():
        return _probs(model, five + [c.flip(-1) for c in five])


def _honest_normalize(images):
    return (images - MEAN.to(images.dtype)) / STD.to(images.dtype)


@pytest.mark.parametrize("source, answers", [
    (TESTS_11_1, {"ten_crop_probs": _honest_ten_crop_probs}),
    (TESTS_11_2, {"normalize": _honest_normalize}),
])
def test_the_imagenet_tests_cells_pass_an_honest_answer(source, answers, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on stderr: nbgrader would score the cell zero
        exec(source, {"course": course, **answers})
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("source, answers, why", [
    (TESTS_11_1, {"ten_crop_probs": ten_crop_probs}, "course's own"),
    (TESTS_11_1, {"ten_crop_probs": lambda m, x, c: _probs(m, _crops(x, c))}, "5 crops"),
    (TESTS_11_2, {"normalize": normalize}, "course's own"),
    (TESTS_11_2, {"normalize": lambda x: (x - MEAN.flip(1)) / STD.flip(1)}, "BGR"),
])
def test_the_imagenet_tests_cells_fail_a_wrong_or_borrowed_answer(source, answers, why, capsys):
    with pytest.raises(AssertionError, match=why):
        exec(source, {"course": course, **answers})
    _, hidden = strip_blocks(source, BEGIN_HIDDEN, END_HIDDEN)
    if why != "course's own":  # fitting the visible check is not enough: the hidden tests alone fail it
        with pytest.raises(AssertionError):
            exec("\n".join(hidden), {"course": course, **answers})
