"""Checks for lesson 06 (evolving fooling images with the direct encoding)."""
import torch

from ..evolution import polynomial_delta
from . import Hint, exercise


def _as_tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


@exercise("6.1", "the polynomial-mutation step δ", reference="course.evolution.polynomial_delta")
def _polynomial_delta(fn):
    u = torch.tensor([0.0, 0.01, 0.1, 0.3, 0.49, 0.5, 0.51, 0.7, 0.9, 0.99], dtype=torch.float64)
    eta = 15.0
    got = fn(u.clone(), eta)
    want = polynomial_delta(u, eta)
    if got is None:
        raise Hint("return the steps δ, one per entry of u (a tensor of the same shape).")
    got = _as_tensor(got).to(torch.float64)
    if got.shape != u.shape:
        raise Hint(f"return one δ per entry of u: expected shape {tuple(u.shape)}, got {tuple(got.shape)}.")
    if torch.allclose(got, want, atol=1e-6):
        return
    if torch.allclose(got, -want, atol=1e-6):
        raise Hint("the sign is flipped: u < 0.5 should give a step down (δ ≤ 0), u > 0.5 a step up.")
    lo = u < 0.5
    if torch.allclose(got[lo], want[lo], atol=1e-6):
        raise Hint("the u < 0.5 branch is right; the other branch uses 2(1 − u) inside the power "
                   "and is the mirror image: 1 − (2(1 − u))^(1/(η+1)).")
    if torch.allclose(got[~lo], want[~lo], atol=1e-6):
        raise Hint("the u ≥ 0.5 branch is right; for u < 0.5, δ = (2u)^(1/(η+1)) − 1.")
    if torch.allclose(got, torch.where(lo, (2 * u).pow(1 / eta) - 1, 1 - (2 * (1 - u)).pow(1 / eta)), atol=1e-6):
        raise Hint("the exponent is 1/(η + 1), not 1/η.")
    if got.abs().max() > 1 + 1e-9:
        raise Hint("δ must stay in [−1, 1]: check the power 1/(η+1) and the factor 2 inside it.")
    raise Hint("δ = (2u)^(1/(η+1)) − 1 if u < 0.5, else 1 − (2(1 − u))^(1/(η+1)); test u = 0.5 (δ = 0) "
               "and u → 0 (δ → −1) by hand.")


def reference_update(scores, probs):
    best, _ = probs.max(dim=0)
    better = best > scores
    return torch.where(better, best, scores), better


@exercise("6.2", "the every-cell archive update", reference="course.evolution.map_elites.Archive.update")
def _archive_update(fn):
    inf = float("inf")
    scores = torch.tensor([-inf, 0.50, 0.90, 0.30, -inf])
    probs = torch.tensor([[0.10, 0.60, 0.05, 0.30, 0.00],   # ties cell 3: must not replace it
                          [0.70, 0.20, 0.05, 0.05, 0.00],
                          [0.20, 0.55, 0.01, 0.20, 0.04]])
    out = fn(scores.clone(), probs.clone())
    want_scores, want_mask = reference_update(scores, probs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Hint("return two things: the new scores (one per cell) and the boolean mask of cells that changed.")
    got_scores, got_mask = (_as_tensor(o) for o in out)
    if got_scores.shape != scores.shape or got_mask.shape != scores.shape:
        raise Hint("both results have one entry per cell (columns of probs), not one per offspring (rows).")
    got_scores, got_mask = got_scores.float(), got_mask.bool()
    best = probs.max(dim=0).values
    if torch.equal(got_mask, best >= scores):
        raise Hint("a tie must keep the old elite: replace only where the new probability is strictly higher.")
    if torch.allclose(got_scores, best):
        raise Hint("a cell whose elite is better than every offspring keeps its old score.")
    if torch.allclose(got_scores, probs[-1]) or torch.allclose(got_scores, torch.maximum(scores, probs[-1])):
        raise Hint("every offspring competes for every cell, not only the last one: use the best of the batch per cell.")
    argmax_only = torch.full_like(scores, -inf)
    for row in probs:
        c = int(row.argmax())
        argmax_only[c] = max(float(argmax_only[c]), float(row[c]))
    if torch.allclose(torch.maximum(scores, argmax_only), got_scores):
        raise Hint("an offspring competes for every cell, not only for the class it is most confident about: "
                   "one image may take several cells at once.")
    if not torch.allclose(got_scores, want_scores):
        raise Hint("each cell keeps max(old score, best offspring probability for that cell), replacing only on a strict improvement.")
    if not torch.equal(got_mask, want_mask):
        raise Hint("the scores are right but the mask is not: it is True exactly where a cell's elite was replaced.")
