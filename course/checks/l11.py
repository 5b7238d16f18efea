"""Checks for lesson 11 (ImageNet: the 10-crop confidence and ImageNet normalisation)."""
import torch
from torch import nn

from . import Hint, exercise

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


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


@exercise("11.1", "the 10-crop confidence",
          reference=("course.models.imagenet.ten_crop_probs", "course.imagenet.ten_crop_probs"))
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


@exercise("11.2", "ImageNet normalisation",
          reference=("course.models.imagenet.normalize", "course.imagenet.normalize"))
def _normalize(fn):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 5, 3, generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    got = fn(images.clone())
    want = (images - mean) / std
    if not isinstance(got, torch.Tensor):
        raise Hint(f"return a tensor, got {type(got).__name__}.")
    got = got.detach().float()
    if got.shape != want.shape:
        raise Hint(f"keep the shape of the batch {tuple(images.shape)}; got {tuple(got.shape)}. Reshape mean and "
                   "std to (1, 3, 1, 1) so they broadcast over the channel axis.")
    if torch.allclose(got, want, atol=1e-5):
        return
    if torch.allclose(got, (images - mean) * std, atol=1e-5):
        raise Hint("divide by the standard deviation, do not multiply: the result should have about unit spread.")
    if torch.allclose(got, (images * 255 - mean) / std, atol=1e-3):
        raise Hint("the course's pixels are already in [0, 1], and the ImageNet mean and std are on that scale.")
    if torch.allclose(got, (images - 0.5) / 0.5, atol=1e-5):
        raise Hint("that is the generic (x − 0.5)/0.5; torchvision's ImageNet models were trained with the "
                   "per-channel ImageNet statistics.")
    if torch.allclose(got, (images - mean.mean()) / std.mean(), atol=1e-5):
        raise Hint("each colour channel has its own mean and std: red, green and blue are normalised separately.")
    if torch.allclose(got, (images - mean.view(1, 1, 1, 3)) / std.view(1, 1, 1, 3), atol=1e-5):
        raise Hint("the mean and std went along the width axis: give them the shape (1, 3, 1, 1) so they "
                   "broadcast over the channel axis (axis 1) of the (N, 3, H, W) batch.")
    if torch.allclose(got, (images - mean.flip(1)) / std.flip(1), atol=1e-5):
        raise Hint("the channels are in RGB order (red first); you used BGR (Caffe's order).")
    raise Hint("subtract the channel's mean and divide by its std, per channel: "
               "mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225), in RGB order, on [0, 1] pixels.")
