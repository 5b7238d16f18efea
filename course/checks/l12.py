"""Checks for lesson 12 (ImageNet, Nguyen et al.): the 10-crop confidence."""
import torch
from torch import nn

from . import Hint, exercise


def _toy_net(n_classes: int = 7, seed: int = 11) -> nn.Module:
    """A small, position-sensitive classifier: crops and flips give it different scores."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(n_classes))
    net(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    return net.eval()


def _crops(images, crop, flip=True, flip_dim=-1):
    N, C, H, W = images.shape
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    spots = [(0, 0), (0, W - crop), (H - crop, 0), (H - crop, W - crop), (top, left)]
    five = [images[:, :, i:i + crop, j:j + crop] for i, j in spots]
    return five + ([c.flip(flip_dim) for c in five] if flip else [])


def _mean_over(net, crops, average_logits=False):
    with torch.no_grad():
        outs = [net(c) for c in crops]
    if average_logits:
        return torch.softmax(torch.stack(outs).mean(0), dim=1)
    return torch.stack([torch.softmax(o, dim=1) for o in outs]).mean(0)


@exercise("12.1", "the 10-crop confidence",
          reference=("course.imagenet.ten_crop_probs", "course.imagenet.scoring.ten_crop_probs"))
def _ten_crop(fn):
    net = _toy_net()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 12, 11, generator=g)
    crop = 8
    got = fn(net, images.clone(), crop)
    want = _mean_over(net, _crops(images, crop))
    if not isinstance(got, torch.Tensor):
        raise Hint(f"return a tensor of probabilities, got {type(got).__name__}.")
    got = got.detach().float()
    if got.shape == (len(images) * 10, want.shape[1]):
        raise Hint("you return one row per crop: average the 10 crops of each image into one row per image.")
    if got.shape != want.shape:
        raise Hint(f"return one row of {want.shape[1]} class probabilities per image, shape {tuple(want.shape)}; "
                   f"got {tuple(got.shape)}.")
    if torch.allclose(got, want, atol=1e-5):
        return
    if not torch.allclose(got.sum(1), torch.ones(len(got)), atol=1e-4):
        raise Hint("each row should be a probability distribution (summing to 1): apply the softmax to each "
                   "crop's logits before averaging.")
    if torch.allclose(got, _mean_over(net, _crops(images, crop), average_logits=True), atol=1e-5):
        raise Hint("you averaged the logits, then took one softmax. The authors average the *probabilities*: "
                   "a softmax per crop, then the mean.")
    if torch.allclose(got, _mean_over(net, _crops(images, crop, flip=False)), atol=1e-5):
        raise Hint("that is 5 crops: the other 5 are the same crops mirrored left–right.")
    if torch.allclose(got, _mean_over(net, _crops(images, crop, flip_dim=-2)), atol=1e-5):
        raise Hint("mirror the crops left–right (the width axis, the last one), not upside down.")
    centre = _mean_over(net, _crops(images, crop)[4:5] + _crops(images, crop)[9:10])
    if torch.allclose(got, centre, atol=1e-5):
        raise Hint("use the four corners too, not only the centre: top-left, top-right, bottom-left, bottom-right.")
    raise Hint("take the crop×crop corners (top-left, top-right, bottom-left, bottom-right) and the centre "
               "(offset round((H − crop)/2), round((W − crop)/2)), mirror each left–right, and average the "
               "softmax probabilities of the 10 crops.")
