"""Batch norm folded into the convolutions and TF-"same" padding without the copy
(course.imagenet.fold, create_model(fold_bn=True)): the real EfficientNet-Lite0 gives the same
logits and input gradients on the shipped photos, bfloat16 keeps its classes, module names stay,
and a broken fold is caught."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course import imagenet as im
from course.imagenet import fold
from course.imagenet.fold import FoldedBatchNorm, SymmetricSameConv2d, fold_batch_norms, symmetric_same_padding

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 96   # small photos: quick, and every stride-2 conv still sees an even size (the odd TF split)


@pytest.fixture(scope="module")
def nets():
    """(with its batch norms, folded: create_model's default), the same ImageNet weights."""
    return (im.create_model("efficientnet_lite0", device="cpu", fold_bn=False),
            im.create_model("efficientnet_lite0", device="cpu"))


@pytest.fixture(scope="module")
def photos():
    return im.sample_photos(im.get_spec("efficientnet_lite0").transform(SIZE))


def test_default_is_folded_and_keeps_names(nets):
    bn, folded = nets
    assert folded.folded and not bn.folded
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 49
    assert sum(isinstance(m, FoldedBatchNorm) for m in folded.modules()) == 49
    assert sum(isinstance(m, SymmetricSameConv2d) for m in folded.modules()) == 5   # the stride-2 TF convs
    names = dict(folded.named_modules())
    for which in ("feature", "classifier"):
        assert folded.layer(which) in names and folded.layer(which) == bn.layer(which)
    assert isinstance(folded.net.bn1.act, nn.ReLU6) and "net.bn1.act" in names
    assert folded.net.conv_stem.bias is not None and bn.net.conv_stem.bias is None
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert folded.source == bn.source and folded.label == bn.label   # the same weights


def test_folded_logits_match_on_real_photos(nets, photos):
    bn, folded = nets
    with torch.no_grad():
        a, b = bn(photos.images), folded(photos.images)
    assert a.abs().max() > 5                                     # real logits, not a degenerate case
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    torch.testing.assert_close(b.softmax(1), a.softmax(1), rtol=0, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_folded_input_gradients_match(nets, photos):
    """L-BFGS and gradient ascent follow d(log p)/dx: the folded network gives the same."""
    bn, folded = nets
    x = photos.images[:3]
    target = torch.tensor([9, 407, 971])
    grads = []
    for net in (bn, folded):
        xx = x.clone().requires_grad_(True)
        loss = torch.log_softmax(net(xx), 1)[torch.arange(3), target].sum()
        (g,) = torch.autograd.grad(loss, xx)
        grads.append(g)
    a, b = grads
    assert a.abs().max() > 0
    assert float((a - b).norm() / a.norm()) < 1e-4
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * float(a.abs().max()))


def test_bfloat16_folded_keeps_the_classes(nets, photos):
    bn, folded = nets
    half = im.registry.ImageNetModel(folded.net, folded.spec, folded.weights, precision="bfloat16")
    with torch.no_grad():
        want, got = bn(photos.images).argmax(1), half(photos.images)
    assert got.dtype == torch.float32
    assert torch.equal(got.argmax(1), want)


def test_a_broken_fold_is_caught(nets, photos):
    """The comparisons above fail on a fold that forgets the shift (here: one channel's bias)."""
    bn, folded = nets
    broken = fold_batch_norms(bn.net)
    with torch.no_grad():
        broken.blocks[2][0].conv_pwl.bias[0] += 0.1
        x = (photos.images - 0.5) / 0.5
        gap = (broken(x) - bn.net(x)).abs().max()
    assert gap > 1e-3


def test_fold_refuses_a_conv_whose_output_is_read_twice():
    """conv → BN, and the conv's output also added back: folding would change the skip. The
    numerical check after folding sees it."""
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    torch.manual_seed(0)
    net = Skip().eval()
    with torch.no_grad():
        net.bn.running_var.fill_(4.0)
        net.bn.running_mean.fill_(1.0)
    assert fold.conv_bn_pairs(net, (1, 3, 8, 8)) == [("conv", "bn")]
    with pytest.raises(RuntimeError, match="changed the network"):
        fold_batch_norms(net, (1, 3, 8, 8))


def test_fold_pairs_only_a_conv_output_not_changed_in_place():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                        nn.BatchNorm2d(4)).eval()
    assert fold.conv_bn_pairs(net, (1, 3, 8, 8)) == [("3", "4")]
    folded = fold_batch_norms(net, (1, 3, 8, 8))
    assert isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], FoldedBatchNorm)
    assert isinstance(net[4], nn.BatchNorm2d)                   # the original is not changed


def test_alexnet_has_nothing_to_fold():
    spec = im.get_spec("alexnet")
    net = im.registry.build(spec)
    folded = fold_batch_norms(net)
    assert [type(m) for m in folded.modules()] == [type(m) for m in net.modules()]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(folded(x), net(x))


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(12, 12), (13, 13), (12, 13), (7, 10)])
def test_symmetric_same_padding_is_timms_conv2dsame(kernel, size):
    """Even sizes (0/1 or 1/2 zeros: the odd split), odd sizes (symmetric) and a mix: the same
    output, without and with autograd, and the same state dict."""
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(kernel)
    for groups in (1, 4):
        same = timm_layers.Conv2dSame(4, 4, kernel, stride=2, groups=groups)
        ours = timm_layers.Conv2dSame(4, 4, kernel, stride=2, groups=groups)
        ours.load_state_dict(same.state_dict())
        symmetric_same_padding(ours)
        assert type(ours) is SymmetricSameConv2d and ours.state_dict().keys() == same.state_dict().keys()
        x = torch.randn(2, 4, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), same(x), rtol=0, atol=1e-6)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ours(xx).square().sum(), xx)
        xx = x.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(same(xx).square().sum(), xx)
        torch.testing.assert_close(g, want)


def test_symmetric_padding_by_hand():
    """k=3, stride 2 on 4 pixels: TF pads 0 before, 1 after, so output 1 reads pixels 2, 3 and a
    zero; with the kernel [0, a, b, c] and one zero on each side the windows are the same."""
    conv = nn.Conv2d(1, 1, (1, 3), stride=(1, 2), bias=False)
    conv.__class__ = SymmetricSameConv2d
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 1, 3))
        out = conv(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4))
    assert out.flatten().tolist() == [1 + 20 + 300, 3 + 40 + 0]
    manual = F.conv2d(F.pad(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4), (0, 1)), conv.weight, stride=(1, 2))
    assert torch.equal(out, manual)


def test_fine_tuning_a_1001st_class_works_on_the_folded_network(nets, photos):
    """course.retraining.imagenet_head trains only a new last layer on the frozen features: the
    folded network's features are the network's features."""
    from course.retraining import fine_tune_fooling_class
    from course.retraining.imagenet_head import penultimate_features

    bn, folded = nets
    x = photos.images[:4]
    torch.testing.assert_close(penultimate_features(folded, x), penultimate_features(bn, x), rtol=0, atol=1e-4)
    fooling = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    wide, info = fine_tune_fooling_class(folded, x, torch.tensor([0, 1, 2, 3]), fooling, epochs=2, progress=False)
    assert wide.net.classifier.out_features == 1001 and info["fooling_class"] == 1000
    assert folded.net.classifier.out_features == 1000
