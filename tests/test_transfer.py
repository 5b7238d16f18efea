import math

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from course.attacks import (amplify, correct_for_all, distortion, gaussian_noise, lbfgs_settings,  # noqa: E402
                            noise_of_distortion, random_wrong_targets, transfer_error, transfer_heatmap)


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.reshape(len(x), -1) @ self.w


def test_random_wrong_targets_are_wrong_seeded_and_cover_all_classes():
    labels = torch.arange(10).repeat(100)
    t = random_wrong_targets(labels, seed=1)
    assert (t != labels).all() and ((t >= 0) & (t < 10)).all()
    assert torch.equal(t, random_wrong_targets(labels, seed=1))
    assert not torch.equal(t, random_wrong_targets(labels, seed=2))
    assert len(set((t - labels).remainder(10).tolist())) == 9   # every wrong shift occurs


def test_transfer_error_counts_wrong_answers_against_the_true_label():
    w = torch.zeros(4, 3)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    model = Linear(w)
    x = torch.eye(4)[:3].repeat(2, 1)          # images predict 0, 1, 2, 0, 1, 2
    labels = torch.tensor([0, 1, 2, 0, 0, 0])  # two wrong
    assert transfer_error(model, x, labels) == pytest.approx(2 / 6)
    assert correct_for_all([model, model], x, labels).tolist() == [True, True, True, True, False, False]


def test_amplify_sets_the_per_pixel_stddev_and_keeps_the_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=g) * 0.2 + 0.4
    r = torch.randn(3, 1, 28, 28, generator=g) * torch.tensor([0.001, 0.01, 0.02]).view(3, 1, 1, 1)
    out = amplify(x, x + r, 0.1)
    assert torch.allclose(distortion(x, out), torch.full((3,), 0.1), rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity((out - x).reshape(3, -1), r.reshape(3, -1))
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)


def test_amplify_clips_and_leaves_a_zero_perturbation_alone():
    x = torch.zeros(2, 1, 4, 4)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 0.01
    out = amplify(x, x_adv, 0.5)
    assert out.max() <= 1 and out.min() >= 0
    assert out[0, 0, 0, 0] == 1.0                      # 0.5·√16 = 2, clipped to 1
    assert torch.equal(out[1], x[1])
    with pytest.raises(ValueError):
        amplify(x, x[:1], 0.1)


def test_gaussian_noise_is_seeded_clipped_and_has_its_sigma():
    x = torch.full((200, 1, 28, 28), 0.5)
    a, b = gaussian_noise(x, 0.1, seed=3), gaussian_noise(x, 0.1, seed=3)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert (a - x).std().item() == pytest.approx(0.1, rel=0.02)
    per_image = gaussian_noise(x[:2], torch.tensor([0.0, 0.2]), seed=0)
    assert torch.equal(per_image[0], x[0]) and (per_image[1] - x[1]).std() > 0.15


def test_noise_of_distortion_matches_the_distortion_after_clipping():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 28, 28, generator=g) > 0.8).float()   # mostly 0 and 1: clipping bites hard
    target = torch.tensor([0.01, 0.03, 0.05, 0.08, 0.1, 0.2])
    noisy = noise_of_distortion(x, target, seed=1)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert torch.allclose(distortion(x, noisy), target, rtol=1e-3)
    assert distortion(x, gaussian_noise(x, target, seed=1))[-1] < 0.9 * target[-1]  # plain noise falls short


def test_lbfgs_settings_reads_the_profile():
    s = lbfgs_settings("ci")
    assert set(s) == {"c_init", "c_factor", "c_steps", "refine_steps", "refine_points", "max_iter", "history"}
    assert s["c_steps"] >= 1


def test_transfer_heatmap_draws_ours_with_the_papers_numbers():
    ax = transfer_heatmap([[1.0, 0.02], [0.3, 0.5]], ["a", "b"], ["A", "B"], paper=[[1.0, None], [0.289, math.nan]])
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["100%\n(100.0%)", "2%", "30%\n(28.9%)", "50%"]
