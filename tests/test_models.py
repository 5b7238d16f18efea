import pytest
import torch

from course.models import MODEL_NAMES, build_model, check_image_batch, weight_decay_penalty


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_images_to_ten_logits(name):
    torch.manual_seed(0)
    model = build_model(name)
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert model.config["name"] == name and "weight_decay" in model.config


def test_lenet_has_the_caffe_layout():
    model = build_model("lenet")
    assert (model.conv1.out_channels, model.conv1.kernel_size) == (20, (5, 5))
    assert (model.conv2.out_channels, model.fc1.out_features) == (50, 500)


def test_unknown_model_suggests_a_name():
    with pytest.raises(ValueError, match="fc100_100_10"):
        build_model("fc100-100-10")


@pytest.mark.parametrize("bad, match", [
    (torch.rand(1, 28, 28), "unsqueeze"),
    (torch.rand(2, 784), "view"),
    (torch.rand(2, 1, 28, 28) * 255, "255"),
    (torch.rand(2, 1, 28, 28) - 1, "Clamp"),
])
def test_bad_images_are_explained(bad, match):
    with pytest.raises(ValueError, match=match):
        check_image_batch(bad)


def test_wrong_shape_reaches_the_model_with_a_clear_error():
    with pytest.raises(ValueError, match="28, 28"):
        build_model("fc10_1e-4")(torch.rand(2, 3, 32, 32))


def test_weight_decay_skips_biases():
    model = build_model("fc10_1e-4")
    with torch.no_grad():
        model.out.bias.fill_(100.0)
        model.out.weight.fill_(1.0)
    assert weight_decay_penalty(model, 2.0).item() == pytest.approx(7840.0)
