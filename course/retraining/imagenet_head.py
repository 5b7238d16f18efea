"""Nguyen et al.'s retraining with a fooling class, at ImageNet scale: a 1001st output, and only the
last layer trained (the rest of the network frozen, so its features are computed once).

Lesson 10 retrains a whole MNIST network; an ImageNet network has millions of weights and no
ImageNet training set on most students' machines, so here the body stays fixed and the new head
learns from the penultimate features of real images plus the fooling images (class 1000).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fooling_class import widen_classifier


def last_linear_name(model: nn.Module) -> str:
    """The module name of ``model``'s last ``nn.Linear`` (its classifier)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise TypeError(f"{type(model).__name__} has no nn.Linear output layer.")
    return names[-1]


def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The inputs of ``model``'s last linear layer for every image: (N, in_features), on the CPU."""
    from ..probing import activations

    return activations(model, last_linear_name(model), images, batch_size, of="input").float()


def _features_and_labels(model, images, labels, batch_size):
    if isinstance(images, torch.utils.data.Dataset):  # (image, label) pairs, streamed
        parts, labs = [], []
        for x, y in torch.utils.data.DataLoader(images, batch_size=batch_size):
            parts.append(penultimate_features(model, x, batch_size))
            labs.append(torch.as_tensor(y))
        return torch.cat(parts), torch.cat(labs).long()
    if labels is None:
        raise ValueError("labels are needed for a tensor of images (pass a dataset of (image, label) pairs, "
                         "or label the images with the network's own predictions).")
    return penultimate_features(model, images, batch_size), labels.long().cpu()


def fine_tune_fooling_class(model: nn.Module, images, labels: torch.Tensor | None, fooling: torch.Tensor,
                            *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                            progress: bool = True) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with one more output (index n_classes, "fooling") whose **last layer
    only** is trained on the real ``images`` with their ``labels`` plus the ``fooling`` images
    labelled with the new class.

    ``images`` may be a tensor (with ``labels``) or a dataset of (image, label) pairs (e.g.
    :func:`course.imagenet.imagenet_folder`; ``labels`` None), streamed so that a whole ImageNet
    split never has to fit in memory. Adam, cross-entropy, ``epochs`` passes over the features,
    seeded. Returns ``(wide_model, info)`` with the loss and accuracy per epoch.
    """
    from tqdm.auto import tqdm

    shape = tuple(images[0][0].shape) if isinstance(images, torch.utils.data.Dataset) else tuple(images.shape[1:])
    if tuple(fooling.shape[1:]) != shape:
        raise ValueError(f"Fooling images {tuple(fooling.shape[1:])} and real images {shape} must have the "
                         "same shape (crop the fooling images to the network's input size).")
    wide = widen_classifier(model, 1, seed=seed)
    last = wide.get_submodule(last_linear_name(wide))
    n_classes = last.out_features - 1
    real_feats, real_labels = _features_and_labels(wide, images, labels, batch_size)
    feats = torch.cat([real_feats, penultimate_features(wide, fooling, batch_size)])
    targets = torch.cat([real_labels, torch.full((len(fooling),), n_classes, dtype=torch.long)])
    head = nn.Linear(last.in_features, last.out_features)
    head.load_state_dict({k: v.detach().cpu().float() for k, v in last.state_dict().items()})
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    with torch.enable_grad():
        for _ in tqdm(range(epochs), desc="fine-tune last layer", disable=not progress, leave=False):
            order = torch.randperm(len(feats), generator=g)
            total = correct = 0.0
            for s in range(0, len(order), batch_size):
                b = order[s:s + batch_size]
                logits = head(feats[b])
                loss = F.cross_entropy(logits, targets[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
                correct += (logits.argmax(1) == targets[b]).sum().item()
            history.append({"loss": total / len(order), "accuracy": correct / len(order)})
    with torch.no_grad():
        last.weight.copy_(head.weight.to(last.weight))
        last.bias.copy_(head.bias.to(last.bias))
    wide.eval()
    return wide, {"history": history, "n_real": len(real_feats), "n_fooling": len(fooling),
                  "fooling_class": n_classes}


__all__ = ["fine_tune_fooling_class", "last_linear_name", "penultimate_features"]
