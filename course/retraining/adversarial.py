"""Adversarial training (Szegedy et al., "Adversarial training"): can the blind spots be trained away?

The paper's procedure: keep a *pool* of adversarial examples, replace a random part of it
continually with fresh ones made against the current network, and always mix pool entries into
the training batches, labelled with the true class of the image they came from. Weight decay, no
dropout. The stronger variant makes adversarial examples for the outputs of *each layer* (one pool
per layer) and uses them to train the layers above it.

Choices (the paper gives none of these numbers), all arguments of :func:`adversarial_training`:

- ``warmup`` clean epochs first (an untrained network's adversarial examples teach nothing), then
  the pools are filled and, every ``refresh_every`` batches, a share ``refresh`` of every pool is
  replaced by fresh examples made from random training images toward random wrong targets;
- every batch of ``batch_size`` clean images gets ``per_batch`` pool entries mixed in. With several
  layers the pools take turns, one per batch (batch t uses ``layers[t % len(layers)]``): the
  "alternating layers" of the paper, at the same cost per step as the input-only variant. An entry
  of the pool of layer ℓ > 0 is a hidden activation vector; it enters the loss through the layers
  above ℓ only (:class:`~course.retraining.layers.LayersAbove`), so it trains those layers;
- fresh examples come from the course's batched L-BFGS attack with a cheap budget,
  :data:`TRAINING_ATTACK` (c ∈ {1, 0.1, 0.01}, 20 iterations, no refinement): training needs many
  adversarial examples, not minimal ones. Where a run misses its target the attempt is kept anyway
  (it is still a push toward a wrong class); the success rate is reported per epoch.

With ``layers=()`` the same loop is plain training, so every variant of the lesson sees the same
batches in the same order from the same initial weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attacks import AttackResult, lbfgs_attack
from ..models import weight_decay_penalty
from ..train import error_rate, predict_logits
from .layers import LayersAbove, activations_at, n_hidden_layers
from .pool import AdversarialPool
from .state import load_state, remove_state, save_state

VERSION = 1
#: The attack budget used to make training examples (cheap; the evaluation attack uses the profile's).
TRAINING_ATTACK = {"c_init": 1.0, "c_factor": 10.0, "c_steps": 3, "refine_steps": 0, "max_iter": 20}


def random_targets(labels: torch.Tensor, n_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random class different from each label, uniformly among the other ``n_classes − 1``."""
    shift = torch.randint(1, n_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % n_classes


def fresh_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: int = 0,
                      generator: torch.Generator | None = None, attack: dict | None = None,
                      n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adversarial examples for ``images`` at ``layer`` (0: the pixels; ℓ: hidden layer ℓ's outputs).

    Returns ``(examples, labels, success)``: the adversarial inputs (images for layer 0, activation
    vectors otherwise), the *true* labels to train them toward, and which runs reached their target.
    """
    attack = {**TRAINING_ATTACK, **(attack or {})}
    targets = random_targets(labels, n_classes, generator)
    if layer == 0:
        res = lbfgs_attack(model, images, targets, labels=labels, **attack)
    else:
        h = activations_at(model, images, layer)
        res = lbfgs_attack(LayersAbove(model, layer), h, targets, labels=labels, **attack)
    return res.adversarial, labels, res.success


@dataclass
class AdversarialTrainingResult:
    """The trained model, one history row per epoch, and what was run."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def test_error(self) -> float | None:
        return self.history[-1].get("test_error") if self.history else None


def _fingerprint(model: nn.Module) -> str:
    from .fooling_class import model_fingerprint

    return model_fingerprint(model)


def adversarial_training(model: nn.Module, train, *, epochs: int, layers=(0,), pool_size: int = 1000,
                         refresh: float = 0.2, refresh_every: int = 100, per_batch: int = 32, warmup: int = 1,
                         batch_size: int = 128, lr: float = 1e-3, seed: int = 0, test=None,
                         attack: dict | None = None, name: str | None = None, folder=None,
                         progress: bool = True, callback=None) -> AdversarialTrainingResult:
    """Train ``model`` (in place) on ``train`` with pools of adversarial examples for ``layers``.

    ``train``/``test``: objects with ``.images`` (N, 1, 28, 28) and ``.labels`` (e.g.
    :class:`course.data.MNIST`). ``layers``: which pools (0 = input images, ℓ = hidden layer ℓ);
    ``()`` trains without adversarial examples. See the module docstring for the rest.

    With ``name``, the whole training state (weights, optimizer, pools, random generators) is saved
    after every epoch under ``name`` and a key of the config (epochs excluded), atomically; a later
    call with the same config resumes after the last saved epoch — so an interrupted run goes on
    where it stopped, and a finished one returns at once. ``callback(epoch, row)`` runs after each
    saved epoch.
    """
    layers = tuple(int(ℓ) for ℓ in layers)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    n_train = len(train.labels)
    if layers:
        if any(ℓ != 0 for ℓ in layers):
            n_hidden = n_hidden_layers(model)
            bad = [ℓ for ℓ in layers if not 0 <= ℓ <= n_hidden]
            if bad:
                raise ValueError(f"layers must lie in 0..{n_hidden} (0 = input, {n_hidden} = last hidden layer); "
                                 f"got {bad}.")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}.")
        if pool_size > n_train:
            raise ValueError(f"The pool ({pool_size} examples) is larger than the training set ({n_train} images): "
                             "each pool entry is made from a different training image. Use pool_size ≤ "
                             f"{n_train}, e.g. a few percent of it.")
        if not 0.0 < refresh <= 1.0:
            raise ValueError(f"refresh is the share of each pool replaced at a refresh, in (0, 1]; got {refresh}.")
        if refresh_every < 1 or per_batch < 1 or warmup < 0:
            raise ValueError(f"Need refresh_every ≥ 1, per_batch ≥ 1 and warmup ≥ 0; got {refresh_every}, "
                             f"{per_batch}, {warmup}.")
    attack = {**TRAINING_ATTACK, **(attack or {})}
    device = next(model.parameters()).device
    lam = getattr(model, "config", {}).get("weight_decay", 0.0)
    config = {"version": VERSION, "model": getattr(model, "config", {}), "init": _fingerprint(model),
              "source": getattr(train, "source", None), "n_train": n_train, "layers": list(layers),
              "pool_size": pool_size if layers else None, "refresh": refresh if layers else None,
              "refresh_every": refresh_every if layers else None, "per_batch": per_batch if layers else None,
              "warmup": warmup if layers else None, "attack": attack if layers else None,
              "batch_size": batch_size, "lr": lr, "seed": seed}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    pools: dict[int, AdversarialPool] = {}
    history: list[dict] = []
    start, step = 0, 0
    if name:
        for e in range(epochs, 0, -1):
            saved = load_state(f"{name}-epoch{e}", config, folder)
            if saved is None:
                continue
            state, info = saved
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            pools = {int(k): AdversarialPool(v["x"].to(device), v["y"].to(device)) for k, v in state["pools"].items()}
            history, start, step = info["history"], e, info["step"]
            break

    def refill(fraction: float) -> float:
        """Replace ``fraction`` of every pool (fill them when empty); return the attack success rate."""
        was = model.training
        ok = []
        for ℓ in layers:
            n = pool_size if ℓ not in pools else pools[ℓ].n_replace(fraction)
            idx = torch.randperm(n_train, generator=g)[:n]
            x, y = train.images[idx].to(device), train.labels[idx].to(device)
            ex, ey, success = fresh_adversarial(model, x, y, ℓ, g, attack)
            if ℓ in pools:
                pools[ℓ].replace(fraction, (ex, ey), g)
            else:
                pools[ℓ] = AdversarialPool(ex, ey)
            ok.append(success.float().mean().item())
        model.train(was)
        return sum(ok) / len(ok)

    t0 = time.perf_counter()
    bar = tqdm(range(start, epochs), desc="adv. training" if layers else "training", disable=not progress,
               leave=False, initial=start, total=epochs)
    for epoch in bar:
        model.train()
        losses, successes = [], []
        perm = torch.randperm(n_train, generator=g)
        for b in range(0, n_train, batch_size):
            idx = perm[b:b + batch_size]
            x, y = train.images[idx].to(device), train.labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            if layers and epoch >= warmup:
                if not pools:
                    successes.append(refill(1.0))
                elif step % refresh_every == 0:
                    successes.append(refill(refresh))
                ℓ = layers[step % len(layers)]
                if ℓ == 0:
                    x, y = pools[0].mix(x, y, per_batch, g)
                    loss = F.cross_entropy(model(x), y)
                else:
                    px, py = pools[ℓ].sample(per_batch, g)
                    logits = torch.cat([model(x), LayersAbove(model, ℓ)(px)])
                    loss = F.cross_entropy(logits, torch.cat([y, py]))
            else:
                loss = F.cross_entropy(model(x), y)
            loss = loss + weight_decay_penalty(model, lam)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        model.eval()
        row = {"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1),
               "seconds": round(time.perf_counter() - t0, 2)}
        if successes:
            row["attack_success"] = sum(successes) / len(successes)
        if test is not None:
            row["test_error"] = error_rate(predict_logits(model, test.images), test.labels)
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k not in ("epoch", "seconds")})
        if name:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": g.get_state(),
                     "torch_rng": torch.get_rng_state(),
                     "pools": {str(k): {"x": p.examples, "y": p.labels} for k, p in pools.items()}}
            save_state(f"{name}-epoch{epoch + 1}", config, state, {"history": history, "step": step}, folder)
            if epoch >= 1:
                remove_state(f"{name}-epoch{epoch}", config, folder)
        if callback is not None:
            callback(epoch + 1, row)
    bar.close()
    model.eval()
    return AdversarialTrainingResult(model, history, {"config": config, "resumed_from_epoch": start,
                                                      "pools": {k: len(p) for k, p in pools.items()}})


def robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
               n_classes: int = 10, **settings) -> AttackResult:
    """A fresh L-BFGS attack (``settings``: the profile's ``lbfgs.*`` values) on held-out images.

    Targets are random wrong classes drawn from ``seed``, so every model is attacked on the same
    images toward the same targets. ``result.mean_distortion()`` is the paper's robustness number.
    """
    device = next(model.parameters()).device
    targets = random_targets(labels, n_classes, torch.Generator().manual_seed(seed))
    return lbfgs_attack(model, images.to(device), targets.to(device), labels=labels.to(device), **settings)
