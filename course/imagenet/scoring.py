"""Scoring whole images: the authors' 10-crop confidence (Nguyen et al.'s fitness on ImageNet)
and a module that MAP-Elites can use as its classifier."""
from __future__ import annotations

import torch
from torch import nn


def ten_crops(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The 10 crops of each image: 4 corners, centre, then the same 5 mirrored left–right.

    ``images`` (N, C, H, W) → (N, 10, C, crop, crop): top-left, top-right, bottom-left,
    bottom-right, centre (torchvision's ``five_crop`` order and centre offset), then each of them
    mirrored, as Caffe's ``oversample`` (the authors' code) does. torchvision's ``ten_crop`` crops
    the mirrored *image* instead: the same ten crops in another order when the margins are even,
    a centre crop one pixel apart when a margin is odd. Slices and one flip: no loop over images.
    """
    N, C, H, W = images.shape
    if crop > min(H, W):
        raise ValueError(f"crop {crop} is larger than the images ({H}×{W}).")
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    corners = [(0, 0), (0, W - crop), (H - crop, 0), (H - crop, W - crop), (top, left)]
    five = torch.stack([images[:, :, i:i + crop, j:j + crop] for i, j in corners], dim=1)
    return torch.cat([five, five.flip(-1)], dim=1)


def centre_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre ``crop``×``crop`` of each image (the offset of :func:`ten_crops`' centre crop)."""
    H, W = images.shape[-2:]
    if crop > min(H, W):
        raise ValueError(f"crop {crop} is larger than the images ({H}×{W}).")
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    return images[..., top:top + crop, left:left + crop]


def ten_crop_probs(model: nn.Module, images: torch.Tensor, crop: int, batch_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities averaged over the 10 crops of each image: (N, classes).

    ``model`` maps a batch of crops to logits. ``batch_size`` images (×10 crops) per forward pass.
    """
    N = len(images)
    batch_size = batch_size or max(N, 1)
    out = []
    with torch.no_grad():
        for s in range(0, N, batch_size):
            chunk = images[s:s + batch_size]
            crops = ten_crops(chunk, crop).flatten(0, 1)
            p = torch.softmax(model(crops).float(), dim=1)
            out.append(p.view(len(chunk), 10, -1).mean(1))
    return torch.cat(out) if out else images.new_zeros(0, 0)


class CropScorer(nn.Module):
    """A classifier of whole images (N, 3, H, W) in [0, 1], as MAP-Elites and the lessons use it.

    ``ten_crop=True``: the log of the softmax averaged over the 10 crops of size ``crop`` (the
    authors' fitness); else the log-softmax of the centre crop (the whole image when H = crop).
    Log-probabilities are valid logits (their softmax gives the probabilities back), so
    :func:`~course.evolution.map_elites` works as is.
    """

    def __init__(self, net: nn.Module, crop: int, ten_crop: bool = False):
        super().__init__()
        self.net, self.crop, self.ten_crop = net, int(crop), bool(ten_crop)
        self.training = net.training  # a wrapper starts in training mode; take the network's (this module only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ten_crop:
            crops = ten_crops(x, self.crop).flatten(0, 1)
            p = torch.softmax(self.net(crops).float(), dim=1).view(len(x), 10, -1).mean(1)
            return p.clamp_min(1e-30).log()
        return torch.log_softmax(self.net(centre_crop(x, self.crop)).float(), dim=1)


__all__ = ["CropScorer", "centre_crop", "ten_crop_probs", "ten_crops"]
