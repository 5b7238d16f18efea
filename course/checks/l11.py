"""Checks for lesson 11 (ImageNet, Szegedy et al.): ImageNet normalisation."""
import torch

from . import Hint, exercise

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@exercise("11.1", "ImageNet normalisation")
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
