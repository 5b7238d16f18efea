"""Real images for the ImageNet lessons: photographs that ship inside installed packages, or an
ImageFolder the user names.

Without ImageNet on disk (this course's usual case) the held-out images are real photographs
from scikit-image (an astronaut, a cat, a cup of coffee, a rocket, a motorcycle, a camera man, ...),
scikit-learn (a Chinese temple, a flower) and matplotlib (Grace Hopper): no labels, but real.
With ``COURSE_IMAGENET=/path/to/val`` (one sub-folder per class) the held-out set is a seeded
sample of that folder, with ImageNet labels.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .classes import N_CLASSES, class_index

# (package, path inside it): real photographs, in a fixed order
PHOTOS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("skimage", ("data", "astronaut.png")),
    ("skimage", ("data", "chelsea.png")),
    ("skimage", ("data", "coffee.png")),
    ("skimage", ("data", "rocket.jpg")),
    ("skimage", ("data", "motorcycle_left.png")),
    ("skimage", ("data", "camera.png")),
    ("skimage", ("data", "coins.png")),
    ("skimage", ("data", "moon.png")),
    ("skimage", ("data", "hubble_deep_field.jpg")),
    ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
    ("sklearn", ("datasets", "images", "china.jpg")),
    ("sklearn", ("datasets", "images", "flower.jpg")),
)


@dataclass
class HeldOut:
    """Held-out images (N, 3, S, S) in [0, 1], their ImageNet labels (or None), names, and source."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def photo_files() -> list[Path]:
    """The photographs of :data:`PHOTOS` that are installed here (matplotlib's is always there:
    a dependency of the course; scikit-image's are a dependency too; scikit-learn's when installed)."""
    found = []
    for package, parts in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
        if path.is_file():
            found.append(path)
    return found


def read_rgb(path: Path) -> torch.Tensor:
    """A photograph as a (3, H, W) float tensor in [0, 1] (grey images repeated on 3 channels)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _no_photos() -> FileNotFoundError:
    return FileNotFoundError("No sample photographs found: matplotlib's mpl-data/sample_data and scikit-image's "
                             "data folder are missing. Reinstall them (pip install scikit-image matplotlib), or "
                             "set COURSE_IMAGENET to an ImageFolder.")


def sample_photos(transform) -> HeldOut:
    """Every shipped photograph through ``transform`` (e.g. ``spec.transform()``: resize, centre crop)."""
    from PIL import Image

    files = photo_files()
    if not files:
        raise _no_photos()
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(transform(im.convert("RGB")))
    return HeldOut(torch.stack(images), None, [f.stem for f in files], "sample-photos")


def photo_crops(per_photo: int, size: int, seed: int = 0, min_scale: float = 0.1) -> HeldOut:
    """``per_photo`` random square crops of each shipped photograph (``min_scale``–100% of its short
    side's square, half of them mirrored), resized to size×size: a held-out set without ImageNet.
    Crop ``k = 0`` of each photo is its whole centre square."""
    if per_photo < 1:
        raise ValueError(f"per_photo must be at least 1, got {per_photo}.")
    g = torch.Generator().manual_seed(seed)
    images, names = [], []
    files = photo_files()
    for f in files:
        photo = read_rgb(f)
        _, H, W = photo.shape
        side_max = min(H, W)
        for k in range(per_photo):
            if k == 0:
                side, i, j, flip = side_max, (H - side_max) // 2, (W - side_max) // 2, False
            else:
                frac = min_scale + (1 - min_scale) * torch.rand((), generator=g).item()
                side = max(8, int(math.sqrt(frac) * side_max))
                i = int(torch.randint(0, H - side + 1, (), generator=g))
                j = int(torch.randint(0, W - side + 1, (), generator=g))
                flip = torch.rand((), generator=g).item() < 0.5
            crop = photo[:, i:i + side, j:j + side][None]
            crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
            images.append((crop.flip(-1) if flip else crop).clamp(0, 1))
            names.append(f"{f.stem}#{k}")
    if not images:
        raise _no_photos()
    return HeldOut(torch.stack(images), None, names, "sample-photos")


def folder_class_map(classes: Sequence[str]) -> dict[str, int]:
    """Map an ImageFolder's folder names to ImageNet indices.

    Folders may be named by class index (``"9"``), by class name (``"ostrich"``, ``"tree_frog"``),
    or by WordNet id (``"n01518878"``) when **all 1000** are present: sorted WordNet ids are
    ImageNet's class order (a subset of WordNet ids cannot be placed without the devkit's list).
    """
    classes = list(classes)
    if len(classes) == N_CLASSES and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return {c: i for i, c in enumerate(sorted(classes))}
    mapping, unknown = {}, []
    for c in classes:
        try:
            mapping[c] = class_index(c)
        except (KeyError, ValueError):
            unknown.append(c)
    if unknown:
        wnid = all(re.fullmatch(r"n\d{8}", c) for c in unknown)
        why = ("WordNet-id folders can only be placed when all 1000 are present" if wnid else
               "folder names must be ImageNet class indices (0-999) or class names such as 'ostrich'")
        raise ValueError(f"Cannot map ImageFolder classes {unknown[:5]}{' ...' if len(unknown) > 5 else ''} to "
                         f"ImageNet: {why}. Rename the folders or pass class_to_idx.")
    return mapping


def imagenet_folder(transform, path: Path | str | None = None, class_to_idx: dict[str, int] | None = None):
    """A torchvision ``ImageFolder`` of ImageNet images with ImageNet labels, or None.

    ``path`` defaults to ``$COURSE_IMAGENET`` (None when unset). ``transform`` maps a PIL image to
    a tensor in [0, 1] (``spec.transform()``); targets are ImageNet indices (:func:`folder_class_map`).
    """
    path = path if path is not None else os.environ.get("COURSE_IMAGENET") or None
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"ImageNet folder {path} does not exist (COURSE_IMAGENET or the path argument). "
                                "It must hold one sub-folder of images per class.")
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(path), transform=transform)
    mapping = class_to_idx or folder_class_map(ds.classes)
    local = {i: mapping[c] for c, i in ds.class_to_idx.items()}
    ds.target_transform = local.__getitem__
    ds.imagenet_index = mapping
    return ds


def folder_images(dataset, n: int | None = None, seed: int = 0, batch_size: int = 64) -> HeldOut:
    """``n`` images (all if None) drawn at random, seeded, from an :func:`imagenet_folder` dataset."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)
    if n is not None:
        idx = idx[:n]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), batch_size=batch_size)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x), ys.append(torch.as_tensor(y))
    names = [Path(dataset.samples[i][0]).name for i in idx.tolist()]
    return HeldOut(torch.cat(xs), torch.cat(ys).long(), names, f"imagefolder:{Path(dataset.root).name}")


def heldout_images(spec, size: int | None = None, n: int | None = None, per_photo: int = 16, path=None,
                   seed: int = 0) -> HeldOut:
    """The ImageFolder (``path`` or ``$COURSE_IMAGENET``) when given, else crops of the shipped photos,
    at ``size`` (default: the network's input size)."""
    size = size or spec.input_size
    ds = imagenet_folder(spec.transform(size), path)
    if ds is not None:
        return folder_images(ds, n, seed)
    return photo_crops(per_photo, size, seed)


__all__ = ["HeldOut", "PHOTOS", "folder_class_map", "folder_images", "heldout_images", "imagenet_folder",
           "photo_crops", "photo_files", "read_rgb", "sample_photos"]
