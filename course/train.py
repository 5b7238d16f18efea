"""Fit and evaluate the MNIST models: seeded, batched, on any device, with cached checkpoints.

The core is three small functions a student can read in a minute — :func:`train_step`,
:func:`fit`, :func:`error_rate` — and :func:`train_model`, which trains a named model of the
course in the profile in force, or loads it from the cache if the same config trained it before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, making, save_checkpoint
from .cores import follow as follow_cores
from .data import MNIST, load_mnist, p1_p2_split
from .device import get_device
from .models import AE400_10, build_model, check_image_batch, flush_tiny_weights_, weight_decay_penalty
from .profiles import resolve_profile, setting

TRAIN_VERSION = 2  # bump when the training procedure changes, so old checkpoints are not reused
LEARNING_RATE = 1e-3


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """The model's logits for ``images``, computed in batches on the model's device; returned on CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows whose arg-max is not the label."""
    return (logits.argmax(dim=1) != labels.to(logits.device)).float().mean().item()


def evaluate(model: nn.Module, data: MNIST) -> float:
    """Error rate of ``model`` on a data split."""
    return error_rate(predict_logits(model, data.images), data.labels)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               lam: float) -> float:
    """One step: mean cross-entropy plus ``(λ/2)·Σ‖W‖²``, backward, update. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y) + weight_decay_penalty(model, lam)
    loss.backward()
    optimizer.step()
    return loss.item()


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def fit(model: nn.Module, train: MNIST, *, epochs: int, batch_size: int = 128, lr: float = LEARNING_RATE,
        seed: int = 0, test: MNIST | None = None, progress: bool = True, desc: str = "train",
        step=train_step) -> list[dict]:
    """Train ``model`` on ``train`` with Adam; one history row per epoch (loss, test error).

    ``step`` is the function that makes one update (``train_step`` unless you pass your own).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be ≥ 0, got {epochs}.")
    check_image_batch(train.images[:512])
    device = next(model.parameters()).device
    lam = model.config.get("weight_decay", 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        follow_cores()   # more threads once the lessons beside this one end (course run)
        model.train()
        losses = [step(model, optimizer, train.images[idx].to(device), train.labels[idx].to(device), lam)
                  for idx in _batches(len(train), batch_size, g)]
        row = {"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1)}
        if test is not None:
            row["test_error"] = evaluate(model, test)
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
    model.eval()
    return history


def pretrain_autoencoder(model: AE400_10, train: MNIST, *, epochs: int, batch_size: int = 128,
                         lr: float = LEARNING_RATE, seed: int = 0, progress: bool = True) -> list[dict]:
    """Stage 1 of AE400-10: train encoder + decoder to reconstruct the images (binary cross-entropy)."""
    device = next(model.parameters()).device
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    lam = model.config["weight_decay"]
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in tqdm(range(epochs), desc="autoencoder", disable=not progress, leave=False):
        follow_cores()
        total = 0.0
        batches = _batches(len(train), batch_size, g)
        for idx in batches:
            x = train.images[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy(model.reconstruct(x), x)
            loss = loss + 0.5 * lam * (model.encoder.weight.pow(2).sum() + model.decoder.weight.pow(2).sum())
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append({"epoch": epoch + 1, "reconstruction_loss": total / max(len(batches), 1)})
    model.eval()
    return history


@dataclass
class TrainedModel:
    """A trained model and what is known about it (errors, data source, history, cache status)."""

    model: nn.Module
    info: dict = field(default_factory=dict)

    def __iter__(self):  # so `model, info = train_model(...)` works
        return iter((self.model, self.info))


def _epochs_for(name: str, profile: str) -> dict:
    arch = build_model(name).config["arch"]
    if arch == "ae":
        return {"pretrain": setting("train.epochs.ae_pretrain", profile), "finetune": setting("train.epochs.ae", profile)}
    key = {"fc10": "train.epochs.fc10", "mlp": "train.epochs.mlp", "lenet": "train.epochs.lenet"}[arch]
    return {"epochs": setting(key, profile)}


def train_model(name: str, *, profile: str | None = None, seed: int = 0, split: str = "all",
                source: str | None = None, fresh: bool = False, progress: bool = True,
                device: torch.device | str | None = None, flush_tiny: bool = True,
                **overrides) -> TrainedModel:
    """Train the course model ``name`` in the profile in force, or load it from the cache.

    ``split``: ``"all"`` (the profile's training set), or ``"p1"`` / ``"p2"`` (Szegedy's disjoint
    halves of it). ``overrides`` change the model's config (e.g. ``dropout=0.5``) and the cache key.
    ``fresh=True`` retrains even when a checkpoint exists (it is replaced only once training ends).
    The model comes back with its tiny weights zeroed (:mod:`course.models.tiny_weights`): the same
    outputs bit for bit, faster on a CPU; the checkpoint keeps the weights as trained, and
    ``flush_tiny=False`` returns them so.
    """
    profile = resolve_profile(profile)
    if split not in ("all", "p1", "p2"):
        raise ValueError(f"Unknown split {split!r}; use 'all', 'p1' or 'p2'.")
    dev = torch.device(device) if device else get_device()
    train = load_mnist("train", source=source, n=setting("data.n_train", profile))
    test = load_mnist("test", source=train.source, n=setting("data.n_test", profile))
    if split != "all":
        halves = p1_p2_split(len(train), seed=0)
        idx = halves[0] if split == "p1" else halves[1]
        train = MNIST(train.images[idx], train.labels[idx], train.source, f"{train.split}/{split}")
    torch.manual_seed(seed)
    model = build_model(name, **overrides)
    epochs = _epochs_for(name, profile)
    batch_size = setting("train.batch_size", profile)
    config = {"name": name, "model": model.config, "source": train.source, "n_train": len(train),
              "split": split, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": LEARNING_RATE,
              "profile": profile, "version": TRAIN_VERSION}
    # One process at a time checks for this checkpoint and trains it: a concurrent lesson that
    # needs the same model waits, then loads it.
    with making(name, config):
        if not fresh:
            info = load_checkpoint(model, config, name)
            if info is not None:
                if flush_tiny:
                    flush_tiny_weights_(model)   # also for checkpoints saved before the flush existed
                model.to(dev).eval()
                return TrainedModel(model, {**info, "cached": True})
        model.to(dev)
        start = time.perf_counter()
        history = {}
        if isinstance(model, AE400_10):
            history["pretrain"] = pretrain_autoencoder(model, train, epochs=epochs["pretrain"],
                                                       batch_size=batch_size, seed=seed, progress=progress)
        history["fit"] = fit(model, train, epochs=epochs.get("finetune", epochs.get("epochs")),
                             batch_size=batch_size, seed=seed, test=test, progress=progress, desc=name)
        info = {"name": name, "source": train.source, "profile": profile, "split": split, "seed": seed,
                "n_train": len(train), "n_test": len(test), "train_error": evaluate(model, train),
                "test_error": evaluate(model, test), "seconds": round(time.perf_counter() - start, 2),
                "device": str(dev), "history": history}
        save_checkpoint(model, config, info, name)
    if flush_tiny:
        flush_tiny_weights_(model)   # the same outputs bit for bit, up to 10× faster on a CPU (models.tiny_weights)
    return TrainedModel(model.eval(), {**info, "cached": False})
