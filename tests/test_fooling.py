"""Gradient-ascent fooling images: confidence rises, pixels stay valid, batching changes nothing."""
import pytest
import torch
import torch.nn.functional as F

from course.fooling import gaussian_blur, gradient_ascent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model():
    """A small ReLU MLP trained for a few seconds on 2,000 MNIST digits (~85-90% test accuracy)."""
    from course.data import load_mnist
    from course.models import build_model

    data = load_mnist("train", n=2000, seed=0)
    torch.manual_seed(0)
    model = build_model("fc100_100_10", activation="relu")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(5):
        for i in range(0, len(data), 100):
            loss = F.cross_entropy(model(data.images[i:i + 100]), data.labels[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_ascent_raises_target_confidence(tiny_model):
    r = gradient_ascent(tiny_model, range(10), steps=60, progress=False)
    assert r.images.shape == (10, 1, 28, 28) and r.history.shape == (61, 10)
    assert bool((r.confidences > r.history[0]).all())
    assert float(r.confidences.min()) > 0.99
    with torch.no_grad():   # the reported confidences are the model's on the returned images
        p = torch.softmax(tiny_model(r.images), dim=1)[torch.arange(10), torch.arange(10)]
    assert torch.allclose(p, r.confidences, atol=1e-5)
    assert r.images.min() >= 0 and r.images.max() <= 1


def test_regularised_variants_stay_in_range(tiny_model):
    for kw in (dict(decay=0.05), dict(blur_every=3, blur_sigma=1.0), dict(decay=0.01, blur_every=4),
               dict(objective="prob", lr=100.0)):
        r = gradient_ascent(tiny_model, [1, 8], steps=25, progress=False, **kw)
        assert float(r.images.min()) >= 0 and float(r.images.max()) <= 1
        assert bool((r.confidences > r.history[0]).all()), kw
    assert tiny_model.training is False


def test_batch_over_targets_equals_single_runs(tiny_model):
    both = gradient_ascent(tiny_model, [3, 7], steps=15, blur_every=5, seed=4, progress=False)
    for i, t in enumerate([3, 7]):
        one = gradient_ascent(tiny_model, t, steps=15, blur_every=5, seed=4, progress=False)
        assert torch.allclose(one.images[0], both.images[i], atol=1e-5)
        assert torch.allclose(one.history[:, 0], both.history[:, i], atol=1e-5)


def test_gaussian_blur_keeps_constants_and_mass():
    x = torch.full((2, 3, 10, 12), 0.3)
    assert torch.allclose(gaussian_blur(x, 1.0), x)
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1.0
    b = gaussian_blur(spike, 1.0)
    assert b.shape == spike.shape and float(b.sum()) == pytest.approx(1.0, abs=1e-5) and float(b.max()) < 0.2


def test_bad_inputs_raise(tiny_model):
    with pytest.raises(ValueError, match="class indices"):
        gradient_ascent(tiny_model, [10], steps=1, progress=False)
    with pytest.raises(ValueError, match="objective"):
        gradient_ascent(tiny_model, [1], objective="loss", progress=False)
    with pytest.raises(ValueError, match="targets"):
        gradient_ascent(tiny_model, [], progress=False)


def test_keep_best_returns_each_targets_best_step():
    """With a rate that overshoots, the last step is not the best one; keep_best returns the best,
    and its confidence is what the model gives that image."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    last = gradient_ascent(model, [0, 3], steps=12, lr=40.0, shape=(1, 4, 4), progress=False)
    best = gradient_ascent(model, [0, 3], steps=12, lr=40.0, shape=(1, 4, 4), keep_best=True, progress=False)
    assert torch.equal(last.history, best.history)
    assert torch.allclose(best.confidences, best.history.max(0).values)
    with torch.no_grad():
        again = torch.softmax(model(best.images), 1)[[0, 1], [0, 3]]
    assert torch.allclose(again, best.confidences, atol=1e-6)
    assert (best.confidences >= last.confidences).all()
