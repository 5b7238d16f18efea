"""Checks for lesson 03 (the L-BFGS attack: distortion and the search over c)."""
import math

import torch

from ..attacks import distortion
from . import Hint, exercise


def _as_tensor(v, name):
    if not isinstance(v, torch.Tensor):
        try:
            v = torch.as_tensor(v, dtype=torch.float32)
        except Exception:
            raise Hint(f"return {name} as a tensor.") from None
    return v


@exercise("3.1", "the distortion of an adversarial image", reference="course.attacks.distortion")
def _distortion(fn):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 28, 28, generator=g)
    x_adv = (x + 0.1 * torch.randn(5, 1, 28, 28, generator=g) * torch.arange(1, 6).view(5, 1, 1, 1) / 5).clamp(0, 1)
    got = fn(x, x_adv)
    want = distortion(x, x_adv)
    got = _as_tensor(got, "the distortions").detach().float().cpu()
    if got.numel() == 1 and len(want) > 1:
        raise Hint("return one distortion per image (a tensor of shape (N,)), not one number for the whole batch.")
    got = got.reshape(-1)
    if got.shape != want.shape:
        raise Hint(f"expected one value per image, shape {tuple(want.shape)}; got shape {tuple(got.shape)}.")
    diff = (x_adv - x).reshape(5, -1)
    if torch.allclose(got, diff.norm(dim=1), rtol=1e-4):
        raise Hint("that is the plain L2 norm ‖x′ − x‖: the paper divides the sum of squares by n, the number "
                   "of pixels, so that the distortion reads as a per-pixel size.")
    if torch.allclose(got, diff.pow(2).mean(1), rtol=1e-4):
        raise Hint("almost: that is the mean squared difference; the distortion is its square root (a size in "
                   "pixel units, like a standard deviation).")
    if torch.allclose(got, diff.abs().mean(1), rtol=1e-4):
        raise Hint("that is the mean absolute difference (an L1 size): square the differences, average, then take "
                   "the square root.")
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-7):
        raise Hint("for each image: square the pixel differences, average them over the image's n pixels, take "
                   "the square root.")


def _reference_c_step(c, success, lo, hi, factor):
    lo = torch.where(success, c, lo)
    hi = torch.where(success, hi, c)
    nxt = torch.where(torch.isinf(hi), lo * factor, torch.where(lo == 0, hi / factor, (lo * hi).sqrt()))
    return nxt, lo, hi


@exercise("3.2", "one step of the search over c")
def _c_step(fn):
    c = torch.tensor([1.0, 1.0, 0.1, 10.0, 1.0, 0.01])
    success = torch.tensor([True, False, True, False, True, False])
    lo = torch.tensor([0.0, 0.0, 0.01, 1.0, 0.1, 0.0])
    hi = torch.tensor([math.inf, math.inf, 1.0, math.inf, 100.0, 1.0])
    out = fn(c.clone(), success.clone(), lo.clone(), hi.clone(), 10.0)
    want_c, want_lo, want_hi = _reference_c_step(c, success, lo, hi, 10.0)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Hint("return three tensors: (next_c, lo, hi).")
    got_c, got_lo, got_hi = (_as_tensor(v, "next_c, lo and hi").float().reshape(-1) for v in out)
    if not (torch.equal(got_lo, want_lo) and torch.equal(got_hi, want_hi)):
        if torch.equal(got_lo, lo) and torch.equal(got_hi, hi):
            raise Hint("update the bracket first: a c that succeeded becomes the new lo (the largest c known to "
                       "work), a c that failed the new hi.")
        if torch.equal(got_lo, torch.where(success, lo, c)):
            raise Hint("the bracket is the wrong way round: lo holds the largest c that *succeeded*, hi the "
                       "smallest c that *failed* (a larger c weighs ‖r‖² more, so above some c the attack fails).")
        raise Hint("lo should become c where the attack succeeded (else stay), hi should become c where it failed "
                   "(else stay).")
    if torch.allclose(got_c, torch.where(success, c / 10, c * 10)):
        raise Hint("wrong direction: a larger c makes the distance term weigh more and r smaller. After a success, "
                   "try a *larger* c; after a failure, a smaller one.")
    arith = torch.where(torch.isinf(want_hi), want_lo * 10, torch.where(want_lo == 0, want_hi / 10, (want_lo + want_hi) / 2))
    if torch.allclose(got_c, arith):
        raise Hint("c spans many orders of magnitude: bisect in log c, i.e. take the geometric mean √(lo·hi), not "
                   "the arithmetic one.")
    if not torch.all(torch.isfinite(got_c)) or (got_c <= 0).any():
        raise Hint("every next c must be a positive, finite number: when one side of the bracket is still "
                   "unknown (lo = 0 or hi = ∞), step by the factor instead of bisecting.")
    if not torch.allclose(got_c, want_c, rtol=1e-5):
        raise Hint("with a bracket known on both sides, bisect it (in log c); with only lo known, multiply it by the "
                   "factor; with only hi known, divide it by the factor.")
