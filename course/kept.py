"""Every image a lesson reports, kept: PNGs to look at and one tensor file to re-score.

``keep_images("lbfgs_ostrich", adversarial, classes, confidences, network=net.source)`` writes, in
the run folder (the folder of ``COURSE_RESULTS_FILE``, which ``course run`` sets) or else under
``$COURSE_CACHE/images/``:

- ``NAME/000_<class>.png`` ... one 8-bit PNG per image, to look at;
- ``NAME/images.pt``: the exact float images, the claimed class and confidence of each, the
  network (with its weight source) that gave them, and the confidence of each PNG as saved
  (8 bits can undo a perturbation of one or two grey levels, so both are recorded).

Anyone can then re-score them with their own copy of the network (:func:`rescore`). A folder that
already exists is never overwritten: the new set goes to ``NAME-2``, ``NAME-3``, ...
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch


def images_folder() -> Path:
    """Where kept images go: beside the run's results file, else ``$COURSE_CACHE/images``."""
    target = os.environ.get("COURSE_RESULTS_FILE")
    if target:
        return Path(target).resolve().parent / "images"
    from .data import cache_root

    return cache_root() / "images"


def _fresh(folder: Path) -> Path:
    if not folder.exists():
        return folder
    k = 2
    while (folder.parent / f"{folder.name}-{k}").exists():
        k += 1
    return folder.parent / f"{folder.name}-{k}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "image"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to 8-bit grey levels, as a PNG stores them (round to nearest)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def keep_images(name: str, images: torch.Tensor, classes, confidences, *, network: str,
                class_names: list[str] | None = None, folder: Path | None = None,
                png_confidences=None, **extra) -> Path:
    """Write ``images`` (N, C, H, W) in [0, 1] as PNGs plus ``images.pt``; returns the folder.

    ``classes`` and ``confidences``: the claimed class and its probability per image.
    ``png_confidences``: the same probabilities for the 8-bit images (see the module docstring).
    ``extra``: anything else worth keeping (the target class, the distortion, the profile, ...).
    """
    from PIL import Image

    images = images.detach().cpu().float()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}.")
    classes = torch.as_tensor(classes).long().cpu().reshape(-1)
    confidences = torch.as_tensor(confidences).float().cpu().reshape(-1)
    if not (len(classes) == len(confidences) == len(images)):
        raise ValueError(f"{len(images)} images but {len(classes)} classes and {len(confidences)} confidences.")
    out = _fresh(Path(folder or images_folder()) / _slug(name))
    out.mkdir(parents=True)
    grey = to_uint8(images)
    for i, (img, c) in enumerate(zip(grey, classes.tolist())):
        label = class_names[c] if class_names else str(c)
        arr = img.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(arr).save(out / f"{i:03d}_{_slug(label)}.png")
    record = {"images": images, "classes": classes, "confidences": confidences, "network": network,
              **({"png_confidences": torch.as_tensor(png_confidences).float().cpu()} if png_confidences is not None
                 else {}), **extra}
    torch.save(record, out / "images.pt")
    return out


def load_kept(folder: Path | str) -> dict:
    """The record :func:`keep_images` wrote (``weights_only``: plain tensors, strings, numbers)."""
    return torch.load(Path(folder) / "images.pt", map_location="cpu", weights_only=True)


def load_pngs(folder: Path | str) -> torch.Tensor:
    """The PNGs of a kept set, in order, as (N, C, H, W) floats in [0, 1]."""
    import numpy as np
    from PIL import Image

    arrays = []
    for f in sorted(Path(folder).glob("[0-9][0-9][0-9]_*.png")):
        with Image.open(f) as im:
            a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1))
    return torch.stack(arrays)


@torch.no_grad()
def rescore(images: torch.Tensor, classes: torch.Tensor, model: torch.nn.Module, batch_size: int = 32) -> torch.Tensor:
    """Each image's probability for its class under ``model`` (a classifier of [0, 1] images)."""
    p = next(model.parameters())
    out = []
    for s in range(0, len(images), batch_size):
        logits = model(images[s:s + batch_size].to(p.device)).float()
        out.append(torch.softmax(logits, 1)[torch.arange(len(logits)), classes[s:s + batch_size].to(p.device)].cpu())
    return torch.cat(out)


__all__ = ["images_folder", "keep_images", "load_kept", "load_pngs", "rescore", "to_uint8"]
