"""The checkers of lessons 02 and 05: the reference passes, typical mistakes get their hint."""
import pytest
import torch

import course
import course.checks
from course.checks import known_exercises
from course.probing import label_purity, top_k_along
from course.stability import dense_bound


def _counts(labels):
    return torch.nn.functional.one_hot(labels).sum(1).max(1).values


def _topk_indices(features, directions, k):
    return (features @ directions.T).topk(k, dim=0).indices.T


def test_exercises_are_registered():
    assert {"2.1", "2.2", "5.1", "5.2"} <= set(known_exercises())


@pytest.mark.parametrize("exercise, answer", [
    ("2.1", label_purity),
    ("2.1", lambda labels: _counts(labels).float() / labels.shape[1]),
    ("2.2", lambda f, d, k: top_k_along(f, d, k)),          # (indices, scores) is accepted
    ("2.2", _topk_indices),
    ("5.1", dense_bound),
    ("5.1", lambda W: torch.linalg.svdvals(W)[0].item()),
    ("5.2", lambda kernel, n: torch.fft.fft(kernel, n=n).abs().max()),
    ("5.2", lambda kernel, n: torch.fft.rfft(kernel, n=n).abs().max().item()),
])
def test_right_answers_pass(exercise, answer, capsys, references_allowed):
    assert course.check(exercise, answer)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("2.1", lambda labels: _counts(labels), "divide by k"),
    ("2.1", lambda labels: _counts(labels).float().mean() / labels.shape[1], "one purity per row"),
    ("2.1", lambda labels: (labels == labels[:, :1]).float().mean(1), "first"),
    ("2.1", lambda labels: torch.tensor([1 / len(r.unique()) for r in labels]), "distinct"),
    ("2.2", lambda f, d, k: (f @ d.T).topk(k, dim=0).indices, "transpose"),
    ("2.2", lambda f, d, k: (f @ d.T).topk(k, dim=0, largest=False).indices.T, "lowest"),
    ("2.2", lambda f, d, k: _topk_indices(f / f.norm(dim=1, keepdim=True), d, k), "cosine"),
    ("2.2", lambda f, d, k: _topk_indices(f, d, k).flip(1), "best first"),
    ("5.1", lambda W: torch.linalg.matrix_norm(W, "fro"), "Frobenius"),
    ("5.1", lambda W: torch.linalg.eigvalsh(W.T @ W)[-1], "square root"),
    ("5.1", lambda W: W.abs().max(), "largest entry"),
    ("5.1", lambda W: torch.linalg.svdvals(W), "single number"),
    ("5.2", lambda kernel, n: torch.fft.fft(kernel).abs().max(), "zero-pad"),
    ("5.2", lambda kernel, n: torch.fft.fft(kernel, n=n, norm="ortho").abs().max(), "normalisation"),
    ("5.2", lambda kernel, n: kernel.abs().sum(), "Young"),
    ("5.2", lambda kernel, n: kernel.abs().max(), "largest gain"),
])
def test_wrong_answers_get_their_hint(exercise, wrong, hint, references_allowed):
    result = course.checks.verdict(exercise, wrong)
    assert not result and hint in result.message, result.message


@pytest.mark.parametrize("exercise", ["2.1", "2.2", "5.1", "5.2"])
def test_unsolved_exercises_are_reported_and_raised(exercise, capsys):
    def unsolved(*args):
        raise NotImplementedError(f"Exercise {exercise}")

    with pytest.raises(NotImplementedError):
        course.check(exercise, unsolved)
    assert "not attempted" in capsys.readouterr().out
