"""Unit vs. random-direction probing (course.probing) on hand-made features and a tiny model."""
import pytest
import torch

from course.models import build_model
from course.probing import (
    activations, label_purity, purity_comparison, random_directions, top_k_along, unit_directions,
)


def test_top_k_of_a_known_direction():
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [5.0, -1.0]])
    idx, scores = top_k_along(features, torch.tensor([1.0, 0.0]), k=2)
    assert idx.tolist() == [3, 2] and scores.tolist() == [5.0, 2.0]
    idx, _ = top_k_along(features, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), k=2)
    assert idx.tolist() == [[3, 2], [1, 2], [2, 3]]


def test_batched_equals_looped_reference():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=g)
    dirs = torch.cat([unit_directions(6, [0, 4]), random_directions(6, 3, seed=1)])
    idx, scores = top_k_along(features, dirs, k=5)
    for row, v in enumerate(dirs):
        ref = sorted(range(50), key=lambda i: -float(features[i] @ v))[:5]
        assert idx[row].tolist() == ref
        assert torch.allclose(scores[row], features[ref] @ v)
    labels = torch.randint(0, 3, (5, 7), generator=g)
    looped = [max(row.tolist().count(c) for c in set(row.tolist())) / 7 for row in labels]
    assert label_purity(labels).tolist() == pytest.approx(looped)


def test_label_purity_of_hand_made_rows():
    labels = torch.tensor([[7, 7, 7, 7], [1, 2, 1, 3], [0, 1, 2, 3]])
    assert label_purity(labels).tolist() == [1.0, 0.5, 0.25]
    assert label_purity(torch.tensor([4, 4, 2])).item() == pytest.approx(2 / 3)


def test_directions():
    assert unit_directions(4, [1, 3]).tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]
    v = random_directions(10, 5, seed=3)
    assert v.shape == (5, 10) and torch.allclose(v.norm(dim=1), torch.ones(5))
    assert torch.equal(v, random_directions(10, 5, seed=3))


def test_activations_and_purity_comparison_on_a_tiny_model():
    torch.manual_seed(0)
    model = build_model("fc100_100_10")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    feats = activations(model, "fc1", images, batch_size=16)
    assert feats.shape == (40, 100)
    with torch.no_grad():
        assert torch.allclose(feats, model.fc1(images.flatten(1)), atol=1e-6)
    out = purity_comparison(model, "act2", images, labels, k=4, n_units=10, n_random=6, seed=0)
    assert out["unit_purity"].shape == (10,) and out["random_purity"].shape == (6,)
    for key in ("unit_mean", "random_mean"):
        assert 0.25 <= out[key].item() <= 1.0
    with pytest.raises(ValueError, match="No layer"):
        activations(model, "fc9", images)


def test_activations_of_input_is_the_previous_layers_output():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(10, 4)
    torch.testing.assert_close(activations(net, "2", x, batch_size=3, of="input"), activations(net, "1", x))
    with pytest.raises(ValueError, match="of must be"):
        activations(net, "2", x, of="weights")
