"""Tiny weights zeroed (course.models.tiny_weights): exactly the entries below the threshold, the same
logits bit for bit, and train_model returns its models flushed while the checkpoint keeps them."""
import glob

import pytest
import torch

from course import train as T
from course.models import build_model, flush_tiny_, flush_tiny_weights_, tiny_threshold


def test_the_threshold_is_two_to_the_minus_100_for_float32_and_bfloat16():
    assert tiny_threshold(torch.float32) == tiny_threshold(torch.bfloat16) == 2.0 ** -100
    assert tiny_threshold(torch.float64) == 2.0 ** -1000
    assert tiny_threshold(torch.float16) is None and tiny_threshold(torch.int64) is None


def test_flush_zeroes_exactly_the_entries_below_the_threshold():
    values = [1e-40, -1e-38, 3e-35, -7.8e-31, 8e-31, -1e-30, 1.0, 0.0, float("nan"), float("inf"), -2e-45]
    x = torch.tensor(values, dtype=torch.float32)
    kept = x.clone()
    assert flush_tiny_([x]) == 6               # four tiny ones, the subnormal -2e-45 (≈ -1.4e-45), the zero
    expected = kept.clone()
    expected[[0, 1, 2, 3, 10]] = 0.0
    assert torch.equal(x[~x.isnan()], expected[~expected.isnan()]) and x[8].isnan()
    assert x[4].item() == pytest.approx(8e-31) and x[5].item() == pytest.approx(-1e-30)
    d = torch.tensor([1e-300, 2.0 ** -1001, 1e-310], dtype=torch.float64)
    assert flush_tiny_([d]) == 2 and d.tolist() == [1e-300, 0.0, 0.0]
    h = torch.tensor([6e-8, 1.0], dtype=torch.float16)
    i = torch.tensor([0, 1])
    assert flush_tiny_([h, i]) == 0 and h[0].item() > 0


def _plant(model: torch.nn.Module, generator: torch.Generator) -> int:
    """Tiny weights where training leaves them: a dead ReLU unit's incoming row (LeNet's fc1, with a
    negative bias) and its outgoing column, or every weight from the image border (the MLP)."""
    with torch.no_grad():
        tiny = lambda *s: torch.exp(torch.empty(s).uniform_(-90, -70, generator=generator)) * (
            torch.randint(0, 2, s, generator=generator) * 2 - 1)
        if hasattr(model, "fc1") and model.fc1.in_features == 800:        # LeNet
            dead = torch.arange(0, 500, 13)
            model.fc1.weight[dead] = tiny(len(dead), 800)
            model.fc1.bias[dead] = -0.1
            model.out.weight[:, dead] = tiny(10, len(dead))
            return len(dead) * 810
        border = torch.ones(28, 28, dtype=torch.bool)
        border[3:-3, 3:-3] = False
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        first.weight[:, border.flatten()] = tiny(first.out_features, int(border.sum()))
        return first.out_features * int(border.sum())


@pytest.mark.parametrize("name", ["lenet", "fc100_100_10"])
def test_flushing_keeps_the_logits_and_gradients_bit_for_bit(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = build_model(name).eval()
    planted = _plant(model, g)
    x = torch.rand(64, 1, 28, 28, generator=g, requires_grad=True)
    before = model(x)
    (grad_before,) = torch.autograd.grad(before.logsumexp(1).sum(), x)
    n = flush_tiny_weights_(model)
    assert n >= planted                              # the planted ones (and any exact zeros)
    assert not any(((p.abs() < 2.0 ** -100) & (p != 0)).any() for p in model.parameters())
    after = model(x)
    (grad_after,) = torch.autograd.grad(after.logsumexp(1).sum(), x)
    assert torch.equal(before, after)
    if name == "lenet":                              # the dead unit passes no gradient either way
        assert torch.equal(grad_before, grad_after)
    else:                                            # border pixels: 0 instead of ~1e-31 or less
        assert torch.allclose(grad_before, grad_after, rtol=0, atol=1e-28)


def test_optimizer_state_is_flushed_too():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state[model.weight]
    state["exp_avg"][0, 0] = 1e-39
    state["exp_avg_sq"][1, 2] = 1e-33
    flush_tiny_weights_(model, opt)
    assert state["exp_avg"][0, 0].item() == 0.0 and state["exp_avg_sq"][1, 2].item() == 0.0
    assert state["exp_avg"][0, 1].item() != 0.0


def test_train_model_returns_its_models_flushed_and_the_checkpoint_keeps_the_weights(tmp_cache, monkeypatch):
    real_fit = T.fit

    def fit_then_plant(model, *args, **kwargs):
        history = real_fit(model, *args, **kwargs)
        with torch.no_grad():
            model.out.weight[:, :56] = 1e-39       # the first two rows of pixels: black in MNIST
            model.out.weight[3, 60] = -3e-33
        return history

    monkeypatch.setattr(T, "fit", fit_then_plant)
    fresh = T.train_model("fc10_1e-4", progress=False, device="cpu")
    cached = T.train_model("fc10_1e-4", progress=False, device="cpu")
    assert not fresh.info["cached"] and cached.info["cached"]
    for trained in (fresh, cached):
        w = trained.model.out.weight
        assert (w[:, :56] == 0).all() and w[3, 60].item() == 0.0 and (w[:, 100:] != 0).any()
    exact = T.train_model("fc10_1e-4", progress=False, device="cpu", flush_tiny=False)
    assert exact.info["cached"] and exact.model.out.weight[0, 0].item() == pytest.approx(1e-39, rel=1e-3)
    (pt,) = glob.glob(str(tmp_cache / "checkpoints" / "fc10_1e-4-*.pt"))
    saved = torch.load(pt, map_location="cpu")
    assert saved["out.weight"][0, 0].item() == pytest.approx(1e-39, rel=1e-3)   # as trained
    raw = build_model("fc10_1e-4").eval()
    raw.load_state_dict(saved)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(raw(x), fresh.model(x)) and torch.equal(raw(x), cached.model(x))
