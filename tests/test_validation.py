"""Bad models and bad inputs get a clear error at every public entry point, naming the problem and the fix."""
import math
import pytest
import torch
from torch import nn

from course.attacks.lbfgs import lbfgs_attack
from course.evolution.direct import DirectEncoding
from course.evolution.map_elites import map_elites
from course.fooling import gradient_ascent
from course.models import build_model
from course.stability import layer_bounds


class Broken(nn.Module):
    """An MNIST-shaped model whose output is wrong in one chosen way."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.how == "nan":
            return out * float("nan")
        if self.how == "1d":
            return out.max(1).values
        return out


def nan_weights():
    model = build_model("fc10_1e-4")
    with torch.no_grad():
        model.out.weight[3, 7] = float("nan")
    return model


def images(n=4):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


ENTRY_POINTS = {
    "lbfgs_attack": lambda m: lbfgs_attack(m, images(), torch.tensor([1, 2, 3, 4]), max_iter=2, c_steps=1,
                                           refine_steps=0),
    "map_elites": lambda m: map_elites(m, DirectEncoding(), generations=1, offspring=4, progress=False),
    "gradient_ascent": lambda m: gradient_ascent(m, [1, 2], steps=2, progress=False),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_nan_weights_are_refused_with_the_fix(entry):
    with pytest.raises(ValueError) as e:
        ENTRY_POINTS[entry](nan_weights())
    text = str(e.value)
    assert text.startswith(f"{entry}:") and "weights contain NaN or inf (out.weight)" in text
    assert "retrain" in text and "fresh=True" in text


def test_all_finite_known_answers():
    """The sum's shortcut and its exact fallback: a sum that overflows (every entry finite) is no
    NaN; one inf, one NaN, or +inf and −inf (whose sum is NaN) are caught, in float32 and bfloat16."""
    from course.validate import all_finite

    for dtype in (torch.float32, torch.bfloat16):
        big = torch.full((1000,), 3e38).to(dtype)
        assert all_finite(torch.zeros(0, dtype=dtype)) and all_finite(torch.randn(100, 7).to(dtype))
        assert all_finite(big) and not math.isfinite(float(big.sum()))    # overflow: the exact test says yes
        for bad in (float("inf"), float("-inf"), float("nan")):
            x = torch.randn(50, 3).to(dtype)
            x[17, 2] = bad
            assert not all_finite(x)
        both = torch.zeros(4, dtype=dtype)
        both[0], both[3] = float("inf"), float("-inf")
        assert not all_finite(both)
    w = torch.randn(5, requires_grad=True)
    assert all_finite(w) and w.grad is None


def test_bounds_of_nan_weights_are_refused():
    with pytest.raises(ValueError, match=r"layer_bounds: the model's weights contain NaN or inf \(out\.weight\).*retrain"):
        layer_bounds(nan_weights(), (1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"input_shape must be positive integers.*images\.shape"):
        layer_bounds(build_model("fc10_1e-4"), images(1))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_nan_outputs_are_refused_with_the_fix(entry):
    with pytest.raises(ValueError) as e:
        ENTRY_POINTS[entry](Broken("nan"))
    text = str(e.value)
    assert text.startswith(f"{entry}:") and "returned NaN or inf logits" in text and "retrain" in text


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_1d_output_is_explained_not_an_index_error(entry):
    with pytest.raises(ValueError) as e:
        ENTRY_POINTS[entry](Broken("1d"))
    text = str(e.value)
    assert text.startswith(f"{entry}:") and "logits of shape (N, classes)" in text
    assert "returned shape (" in text and ".squeeze()" in text


def test_float64_images_name_both_dtypes_and_the_conversion():
    with pytest.raises(TypeError) as e:
        lbfgs_attack(build_model("fc10_1e-4"), images().double(), torch.tensor([1, 2, 3, 4]))
    text = str(e.value)
    assert "torch.float64" in text and "torch.float32" in text and "images.float()" in text


def test_nan_pixels_are_refused():
    x = images()
    x[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"1 of the 4 images contain NaN or inf pixels.*nan_to_num"):
        lbfgs_attack(build_model("fc10_1e-4"), x, torch.tensor([1, 2, 3, 4]))


def test_a_target_of_1_7_is_not_class_1():
    with pytest.raises(TypeError, match=r"gradient_ascent: targets must be integer class indices, got 1\.7"):
        gradient_ascent(build_model("fc10_1e-4"), 1.7, steps=1, progress=False)
    with pytest.raises(TypeError, match=r"lbfgs_attack: targets must be integer class indices, got 1\.7"):
        lbfgs_attack(build_model("fc10_1e-4"), images(2), [1.7, 2.0])
    with pytest.raises(TypeError, match="labels must be integer"):
        lbfgs_attack(build_model("fc10_1e-4"), images(2), [1, 2], labels=torch.tensor([True, False]))


def test_the_shape_error_reports_the_real_batch_and_no_wrong_reshape():
    colour = torch.rand(4, 3, 28, 28)
    with pytest.raises(ValueError) as e:
        lbfgs_attack(build_model("fc100_100_10"), colour, torch.tensor([1, 2, 3, 4]))
    text = str(e.value)
    assert "(4, 3, 28, 28)" in text and "(1, 3, 28, 28)" not in text
    assert "view(-1, 1, 28, 28)" not in text and "x.mean(1, keepdim=True)" in text


def test_a_flat_batch_still_gets_the_reshape_hint():
    with pytest.raises(ValueError, match=r"\(4, 784\).*view\(-1, 1, 28, 28\)"):
        lbfgs_attack(build_model("fc100_100_10"), torch.rand(4, 784), torch.tensor([1, 2, 3, 4]))
