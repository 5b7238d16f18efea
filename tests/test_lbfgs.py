"""Tests of the box-constrained L-BFGS attack (Szegedy et al. §4.1) and of its optimiser."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.attacks import AttackResult, distortion, lbfgs_attack, lbfgsb_batched
from course.data import load_mnist
from course.models import build_model


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_fc10():
    """Softmax regression trained for one epoch on 2,000 MNIST images, and 8 test images."""
    torch.manual_seed(0)
    train = load_mnist("train", n=2000, seed=0)
    model = build_model("fc10_1e-4")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for idx in torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(100):
        opt.zero_grad()
        F.cross_entropy(model(train.images[idx]), train.labels[idx]).backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    test = load_mnist("test", n=8, seed=0)
    targets = (test.labels + 1 + torch.arange(8) % 9) % 10  # wrong labels, all different offsets
    return model, test.images, test.labels, targets


@pytest.fixture(params=["compiled", "tensor"])
def optimiser_path(request, monkeypatch):
    """Run a test with the optimiser's per-problem loops compiled (numba, CPU) and as tensor ops
    (as on a GPU)."""
    from course.attacks import lbfgs_cpu
    if request.param == "compiled":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(lbfgs_cpu, "available", lambda *tensors: False)
    return request.param


class TwoClassLinear(nn.Module):
    """logits = [0, w·x + b]: the minimal L2 change to reach class 1 is known in closed form."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b), dtype=w.dtype))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


# --- the optimiser --------------------------------------------------------------------------------

@pytest.mark.parametrize("history", [3, 10])
def test_compiled_loop_equals_the_tensor_version(history, monkeypatch):
    """The compiled CPU loop (numba) visits the same points as the tensor version: same minimisers,
    values, iterations, convergence flags and single-problem evaluations, in float64, on problems
    that backtrack, hit the bounds, wrap the memory's ring and finish at different iterations; only
    the grouping of the evaluations into batches differs (fewer, larger batches)."""
    pytest.importorskip("numba")
    from course.attacks import lbfgs_cpu

    gen = torch.Generator().manual_seed(0)
    B, D, H = 12, 50, 16
    W1 = torch.randn(D, H, generator=gen, dtype=torch.float64) * 0.5
    W2 = torch.randn(H, 4, generator=gen, dtype=torch.float64)
    x0 = torch.rand(B, D, generator=gen, dtype=torch.float64)
    target = torch.arange(B) % 4
    c = torch.logspace(-3, 1, B, dtype=torch.float64)       # weak to strong pull back: short and long runs

    def fun(x, rows):
        logits = torch.tanh(x @ W1) @ W2 * 3
        return c[rows] * ((x - x0[rows]) ** 2).sum(1) + F.cross_entropy(logits, target[rows], reduction="none")

    kw = dict(max_iter=60, history=history, ftol=1e-12, pgtol=1e-9)
    assert lbfgs_cpu.available(x0)
    compiled = lbfgsb_batched(fun, x0, 0.0, 1.0, **kw)
    with monkeypatch.context() as mp:
        mp.setattr(lbfgs_cpu, "available", lambda *tensors: False)
        tensor = lbfgsb_batched(fun, x0, 0.0, 1.0, **kw)
    assert len(set(tensor.iterations.tolist())) > 3                    # problems finish at different times
    assert tensor.n_rows > tensor.iterations.sum() + B                  # some steps were backtracked
    assert ((tensor.x == 0) | (tensor.x == 1)).any()                    # some bounds are active
    torch.testing.assert_close(compiled.x, tensor.x, rtol=0, atol=1e-9)
    torch.testing.assert_close(compiled.f, tensor.f, rtol=1e-12, atol=1e-12)
    assert torch.equal(compiled.iterations, tensor.iterations)
    assert torch.equal(compiled.converged, tensor.converged)
    assert compiled.n_rows == tensor.n_rows
    assert compiled.n_evals < tensor.n_evals


def test_penalty_is_the_quadratic_term_added_to_fun(optimiser_path):
    """``penalty=(center, weight)`` minimises fun + weight·‖x − center‖², as if the term were in fun."""
    gen = torch.Generator().manual_seed(2)
    B, D = 5, 30
    a = torch.randn(B, D, generator=gen, dtype=torch.float64)
    center = torch.rand(B, D, generator=gen, dtype=torch.float64)
    weight = torch.logspace(-2, 1, B, dtype=torch.float64)

    def fun(x, rows):
        return torch.logsumexp(torch.stack([(x * a[rows]).sum(1), -0.5 * x.sum(1)]), 0)  # smooth, not quadratic

    def full(x, rows):
        return fun(x, rows) + weight[rows] * ((x - center[rows]) ** 2).sum(1)

    kw = dict(max_iter=100, ftol=1e-14, pgtol=1e-10)
    x0 = torch.full((B, D), 0.5, dtype=torch.float64)
    got = lbfgsb_batched(fun, x0, 0.0, 1.0, penalty=(center, weight), **kw)
    want = lbfgsb_batched(full, x0, 0.0, 1.0, **kw)
    torch.testing.assert_close(got.x, want.x, rtol=0, atol=1e-7)
    torch.testing.assert_close(got.f, want.f, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="penalty"):
        lbfgsb_batched(fun, x0, 0.0, 1.0, penalty=(center[:2], weight))


def test_compiled_loop_only_takes_what_it_can():
    from course.attacks import lbfgs_cpu
    pytest.importorskip("numba")
    x = torch.zeros(3, 4)
    assert lbfgs_cpu.available(x, torch.zeros(4))
    assert not lbfgs_cpu.available(x.t())                               # not contiguous
    assert not lbfgs_cpu.available(x, x.double())                       # mixed dtypes
    assert not lbfgs_cpu.available(x.half())


def test_backtracking_step_is_the_minimiser_of_the_cubic_fit():
    """On a cubic (and a quadratic) along the step, the next trial is its exact minimiser; kept in
    [0.1, 0.5] of the rejected step otherwise."""
    from course.attacks.lbfgs import _backtrack_factor

    def factor(c1, c2, c3):  # phi(a) = c1 a + c2 a² + c3 a³ along the step
        t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
        return _backtrack_factor(t(c1), t(c1 + 2 * c2 + 3 * c3), t(c1 + c2 + c3)).item()

    assert factor(-2, 0, 3) == pytest.approx((2 / 9) ** 0.5)   # phi' = −2 + 9a²
    assert factor(-2, 3, 0) == pytest.approx(1 / 3)            # a quadratic: its minimiser
    assert factor(-1, 100, 0) == pytest.approx(0.1)            # minimiser 0.005: at most 10x shorter
    assert factor(-1, 0.6, 0) == pytest.approx(0.5)            # minimiser 0.83: at least 2x shorter


def test_lbfgsb_separable_quadratic_with_active_bounds(optimiser_path):
    """min Σ h_i (x_i − a_i)² over a box: the answer is a clipped into the box."""
    g = torch.Generator().manual_seed(0)
    B, D = 6, 40
    a = torch.randn(B, D, generator=g, dtype=torch.float64) * 2   # many a_i lie outside [-1, 1]
    h = torch.rand(B, D, generator=g, dtype=torch.float64) * 10 + 0.1

    def fun(x, rows):
        return (h[rows] * (x - a[rows]) ** 2).sum(1)

    res = lbfgsb_batched(fun, torch.zeros(B, D, dtype=torch.float64), -1.0, 1.0, max_iter=200, history=10,
                         ftol=1e-15, pgtol=1e-10)
    expected = a.clamp(-1, 1)
    assert ((expected.abs() == 1).sum(1) > 5).all()  # the bounds really are active
    # f ≈ 200–700 at the minimum (from the clipped coordinates), so the last ~1e-7 of x change f
    # by less than its float64 rounding: that is as close as any method can tell.
    torch.testing.assert_close(res.x, expected, atol=1e-6, rtol=0)
    assert res.converged.all()
    assert ((res.x >= -1) & (res.x <= 1)).all()


def test_lbfgsb_coupled_quadratic_matches_scipy(optimiser_path):
    """A coupled (non-diagonal) convex quadratic with bounds per coordinate: same minimiser as scipy."""
    from scipy.optimize import fmin_l_bfgs_b

    g = torch.Generator().manual_seed(1)
    B, D = 4, 30
    A = torch.randn(B, D, D, generator=g, dtype=torch.float64)
    H = A @ A.transpose(1, 2) / D + 0.1 * torch.eye(D, dtype=torch.float64)
    b = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    lower = torch.full((D,), -1.0, dtype=torch.float64)
    upper = torch.linspace(0.5, 2.0, D, dtype=torch.float64)

    def fun(x, rows):
        return 0.5 * torch.einsum("bi,bij,bj->b", x, H[rows], x) - (b[rows] * x).sum(1)

    res = lbfgsb_batched(fun, torch.zeros(B, D, dtype=torch.float64), lower, upper, max_iter=500,
                         ftol=1e-15, pgtol=1e-9)
    for i in range(B):
        Hi, bi = H[i].numpy(), b[i].numpy()
        xs, fs, _ = fmin_l_bfgs_b(lambda z: (0.5 * z @ Hi @ z - bi @ z, Hi @ z - bi), np.zeros(D),
                                  bounds=list(zip(lower.tolist(), upper.tolist())), factr=10, pgtol=1e-10)
        assert np.abs(xs - res.x[i].numpy()).max() < 1e-5
        assert res.f[i].item() <= fs + 1e-9
    assert res.n_evals >= res.iterations.max().item()
    assert res.n_rows >= res.n_evals


def test_lbfgsb_rejects_bad_bounds():
    x0 = torch.zeros(2, 3)
    fun = lambda x, rows: x.pow(2).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="shape"):
        lbfgsb_batched(fun, x0, torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="above"):
        lbfgsb_batched(fun, x0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        lbfgsb_batched(fun, torch.zeros(3), 0.0, 1.0)


# --- the attack against exact answers -------------------------------------------------------------

def test_two_class_linear_model_matches_the_exact_minimum():
    """For logits [0, w·x + b] the smallest r reaching class 1 has ‖r‖ = −(w·x + b)/‖w‖ (the box is
    inactive here). The attack's distortion must be close to it and never below it."""
    g = torch.Generator().manual_seed(0)
    D = 784
    w = torch.randn(D, generator=g, dtype=torch.float64) / D ** 0.5 * 20
    x = (0.5 + 0.05 * torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)).clamp(0, 1)
    margin = torch.tensor([2.0, 4.0, 6.0, 8.0], dtype=torch.float64)   # −(w·x + b) per image
    # One bias cannot give every image its margin, so shift each image along w instead.
    b = -3.0
    shift = (-margin - (x.flatten(1) @ w + b)) / w.dot(w)
    x = (x.flatten(1) + shift[:, None] * w).view_as(x)
    assert ((x > 0.05) & (x < 0.95)).all()
    model = TwoClassLinear(w, b).double().eval()
    res = lbfgs_attack(model, x, torch.ones(4, dtype=torch.long), c_init=10.0, c_steps=5, refine_steps=6)
    exact = margin / w.norm() / D ** 0.5                             # in the paper's units
    assert res.success.all()
    ratio = res.distortion / exact
    assert (ratio >= 1 - 1e-6).all(), ratio
    assert (ratio <= 1.10).all(), ratio
    assert ((res.adversarial > 0) & (res.adversarial < 1)).all()     # box inactive, as assumed


def test_softmax_regression_respects_the_hyperplane_bound(mnist_fc10):
    """Reaching target t needs z_t ≥ z_k for every k, so ‖r‖ ≥ max_k (z_k − z_t)/‖w_t − w_k‖:
    a lower bound on the exact minimum. Ours is above it and within a small factor."""
    model, x, y, t = mnist_fc10
    res = lbfgs_attack(model, x, t, labels=y, c_steps=5, refine_steps=5, max_iter=200)
    assert res.success.float().mean() >= 0.75
    W, b = model.out.weight.detach(), model.out.bias.detach()
    z = x.flatten(1) @ W.T + b
    gap = z - z.gather(1, t[:, None])                                   # z_k − z_t
    dw = (W[None, :, :] - W[t][:, None, :]).norm(dim=2).clamp_min(1e-12)  # ‖w_k − w_t‖
    bound = (gap.clamp_min(0) / dw).amax(1) / 784 ** 0.5
    ok = res.success & (bound > 0)  # bound = 0: the model already says t (it can misclassify)
    assert ok.sum() >= 4
    assert (res.distortion[ok] >= bound[ok] * (1 - 1e-4)).all()
    assert (res.distortion[ok] <= bound[ok] * 2.0).all(), (res.distortion / bound)


# --- the attack's contract ------------------------------------------------------------------------

def test_result_is_in_the_box_and_reaches_the_target(mnist_fc10):
    model, x, y, t = mnist_fc10
    res = lbfgs_attack(model, x, t, labels=y, c_steps=3, refine_steps=2, max_iter=50)
    assert isinstance(res, AttackResult)
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    assert torch.equal(res.success, pred == t)
    assert res.success.any()
    torch.testing.assert_close(res.distortion, distortion(x, res.adversarial))
    assert (res.c > 0).all()
    assert res.n_rows >= res.n_evals > 0
    assert (res.iterations > 0).all()


def test_batched_equals_one_image_at_a_time(mnist_fc10, optimiser_path):
    """Each image's search is independent of the others in its batch (float64 to rule out rounding)."""
    model, x, y, t = mnist_fc10
    model64 = build_model("fc10_1e-4").double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    model64.eval()
    x64 = x[:3].double()
    kw = dict(c_steps=4, refine_steps=3, max_iter=60)
    together = lbfgs_attack(model64, x64, t[:3], **kw)
    chunked = lbfgs_attack(model64, x64, t[:3], batch_size=2, **kw)
    for i in range(3):
        alone = lbfgs_attack(model64, x64[i:i + 1], t[i:i + 1], **kw)
        for other in (together, chunked):
            assert other.c[i].item() == pytest.approx(alone.c[0].item(), rel=1e-9)
            assert other.success[i].item() == alone.success[0].item()
            assert other.distortion[i].item() == pytest.approx(alone.distortion[0].item(), abs=1e-6)


def test_batch_size_default_and_bad_values(mnist_fc10):
    from course.attacks.lbfgs import default_batch_size
    assert default_batch_size("cpu") == 256
    assert default_batch_size(torch.device("cuda", 0)) > default_batch_size("cpu")
    model, x, y, t = mnist_fc10
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            lbfgs_attack(model, x[:2], t[:2], batch_size=bad, c_steps=1, refine_steps=0, max_iter=2)


def test_model_is_left_untouched(mnist_fc10):
    model, x, y, t = mnist_fc10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        lbfgs_attack(model, x[:2], t[:2], c_steps=2, refine_steps=0, max_iter=5)
        assert model.training                                            # mode restored
    finally:
        model.eval()
    lbfgs_attack(model, x[:2], t[:2], c_steps=2, refine_steps=0, max_iter=5)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_empty_batch(mnist_fc10):
    model, x, *_ = mnist_fc10
    res = lbfgs_attack(model, x[:0], torch.zeros(0, dtype=torch.long))
    assert res.adversarial.shape == (0, 1, 28, 28) and len(res.success) == 0


# --- bad inputs -----------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors(mnist_fc10):
    model, x, y, t = mnist_fc10
    with pytest.raises(ValueError, match="true label"):
        lbfgs_attack(model, x, y, labels=y)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        lbfgs_attack(model, x, torch.full_like(t, 10))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        lbfgs_attack(model, x, torch.full_like(t, -1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lbfgs_attack(model, x * 255, t)
    with pytest.raises(ValueError, match="one target per image"):
        lbfgs_attack(model, x, t[:3])
    with pytest.raises(ValueError, match="one label per image"):
        lbfgs_attack(model, x, t, labels=y[:3])
    with pytest.raises(TypeError, match="integer"):
        lbfgs_attack(model, x, t.float())
    with pytest.raises(TypeError, match="floating-point"):
        lbfgs_attack(model, (x * 255).to(torch.uint8), t)
    with pytest.raises(ValueError, match="c_init"):
        lbfgs_attack(model, x, t, c_factor=1.0)
    meta_model = build_model("fc10_1e-4").to("meta")
    with pytest.raises(ValueError, match="Move them together"):
        lbfgs_attack(meta_model, x, t)
