"""The checkers of lessons 11 and 12 (ImageNet): right answers pass, typical mistakes get their hint,
and the tests cells of the solutions pass an honest answer and fail a wrong or borrowed one."""
import json
import warnings

import pytest
import torch

import course
import course.checks
from course.checks import known_exercises
from course.imagenet import ten_crop_probs, ten_crops
from course.lessons import BEGIN_HIDDEN, END_HIDDEN, repo_root, strip_blocks

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
    assert {"11.1", "12.1"} <= set(known_exercises())


@pytest.mark.parametrize("exercise, answer", [
    ("12.1", ten_crop_probs),
    ("12.1", lambda net, x, c: _probs(net, _crops(x, c) + [k.flip(-1) for k in _crops(x, c)])),
    ("12.1", lambda net, x, c: torch.softmax(net(ten_crops(x, c).flatten(0, 1)), 1).view(len(x), 10, -1).mean(1)),
    ("11.1", lambda x: (x - MEAN) / STD),
])
def test_right_answers_pass(exercise, answer, capsys, references_allowed):
    assert course.check(exercise, answer)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("12.1", lambda net, x, c: torch.softmax(net(ten_crops(x, c).flatten(0, 1)), 1), "one row per crop"),
    ("12.1", lambda net, x, c: torch.softmax(torch.stack([net(k) for k in _crops(x, c) + [k.flip(-1) for k in _crops(x, c)]]).mean(0), 1),
     "averaged the logits"),
    ("12.1", lambda net, x, c: _probs(net, _crops(x, c)), "mirrored"),
    ("12.1", lambda net, x, c: _probs(net, _crops(x, c) + [k.flip(-2) for k in _crops(x, c)]), "upside down"),
    ("12.1", lambda net, x, c: _probs(net, _crops(x, c)[4:] + [_crops(x, c)[4].flip(-1)]), "corners"),
    ("12.1", lambda net, x, c: torch.stack([net(k) for k in _crops(x, c)]).mean(0), "probability distribution"),
    ("12.1", lambda net, x, c: _probs(net, [x[:, :, :c, :c]]), "offset"),
    ("11.1", lambda x: (x - MEAN) * STD, "divide"),
    ("11.1", lambda x: (x * 255 - MEAN) / STD, "[0, 1]"),
    ("11.1", lambda x: (x - 0.5) / 0.5, "per-channel ImageNet"),
    ("11.1", lambda x: (x - MEAN.mean()) / STD.mean(), "separately"),
    ("11.1", lambda x: (x - MEAN.flip(1)) / STD.flip(1), "BGR"),
    ("11.1", lambda x: (x - MEAN.view(1, 1, 1, 3)) / STD.view(1, 1, 1, 3), "channel axis"),
    ("11.1", lambda x: x - MEAN, "per channel"),
])
def test_wrong_answers_get_their_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message


def _tests_cell(notebook: str, cell_id: str) -> str:
    cells = json.loads((repo_root() / "solutions" / notebook).read_text())["cells"]
    return "".join(next(c for c in cells if c["id"] == cell_id)["source"])


# The tests cells of exercises 11.1 and 12.1 (visible check + hidden tests), as the solutions carry them
TESTS_11_1 = _tests_cell("11_imagenet_intriguing.ipynb", "tests-11-1")
TESTS_12_1 = _tests_cell("12_imagenet_fooled.ipynb", "tests-12-1")


def _honest_ten_crop_probs(model, images, crop):
    five = _crops(images, crop)
    with torch.no_grad():
        return _probs(model, five + [c.flip(-1) for c in five])


def _honest_normalize(images):
    return (images - MEAN.to(images.dtype)) / STD.to(images.dtype)


@pytest.mark.parametrize("source, answers", [
    (TESTS_12_1, {"ten_crop_probs": _honest_ten_crop_probs}),
    (TESTS_11_1, {"normalize": _honest_normalize}),
])
def test_the_imagenet_tests_cells_pass_an_honest_answer(source, answers, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on stderr: nbgrader would score the cell zero
        exec(source, {"course": course, **answers})
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("source, answers, why", [
    (TESTS_12_1, {"ten_crop_probs": ten_crop_probs}, "course's own"),
    (TESTS_12_1, {"ten_crop_probs": lambda m, x, c: _probs(m, _crops(x, c))}, "mirrored"),
    (TESTS_11_1, {"normalize": lambda x: (x - MEAN.flip(1)) / STD.flip(1)}, "BGR"),
])
def test_the_imagenet_tests_cells_fail_a_wrong_or_borrowed_answer(source, answers, why, capsys):
    with pytest.raises(AssertionError, match=why):
        exec(source, {"course": course, **answers})
    _, hidden = strip_blocks(source, BEGIN_HIDDEN, END_HIDDEN)
    if why != "course's own":  # fitting the visible check is not enough: the hidden tests alone fail it
        with pytest.raises(AssertionError):
            exec("\n".join(hidden), {"course": course, **answers})
