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
  adversarial examples, not minimal ones;
- only *adversarial examples* enter a pool: a run that missed its target is dropped, and so is one
  farther than ``max_distortion`` from its original (√(mean r²) over pixels, or over the layer's
  units). An example is labelled with the true class of the image it came from, which is right
  only while the change is small: as training makes the network more robust, the attack has to
  go farther, and past a certain distance the "adversarial" image is a blend that looks like its
  target. Labelled with the original class, such images are label noise, and they cost clean
  accuracy (full MNIST, FC100-100-10, 20 epochs: 3.7% test error with every attempt in the pool,
  against 2.3% for plain training). Lesson 09 sets the bound of each layer to the mean minimal
  distortion of the ordinarily trained network there: the size of the blind spots adversarial
  training is meant to close. A refresh replaces as many slots as it found usable examples (the
  pool keeps its size); an empty pool is filled in up to :data:`FILL_ROUNDS` rounds of attacks,
  each sized by the share usable so far (a pool still short after them starts smaller:
  ``info["pools"]`` gives the sizes). The share of attacks that reached their target, the share
  kept and the mean distortion of the fresh examples (per layer) are reported per epoch.

With ``layers=()`` the same loop is plain training. The batch order comes from its own random
generator (the pools draw from another), so every variant of the lesson sees the same batches in
the same order from the same initial weights.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import attacks
from ..attacks import AttackResult, lbfgs_attack
from ..checkpoints import source_fingerprint
from ..cores import follow as follow_cores
from ..models import weight_decay_penalty
from ..train import error_rate, predict_logits
from . import layers as layers_module, pool as pool_module
from .layers import LayersAbove, activations_at, n_hidden_layers
from .pool import AdversarialPool
from .state import load_state, remove_state, save_state

VERSION = 2
#: Rounds of attacks allowed to fill an empty pool with usable (successful) adversarial examples.
FILL_ROUNDS = 10
#: The attack budget used to make training examples (cheap; the evaluation attack uses the profile's).
TRAINING_ATTACK = {"c_init": 1.0, "c_factor": 10.0, "c_steps": 3, "refine_steps": 0, "max_iter": 20,
                   "batch_size": 512}


def random_targets(labels: torch.Tensor, n_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random class different from each label, uniformly among the other ``n_classes − 1``."""
    shift = torch.randint(1, n_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % n_classes


def attack_at(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
              layer: int = 0, **settings) -> AttackResult:
    """The L-BFGS attack at ``layer``: on the pixels (0), or on hidden layer ℓ's outputs, with the
    layers above ℓ as the network (``adversarial`` then holds activation vectors)."""
    if layer == 0:
        return lbfgs_attack(model, images, targets, labels=labels, **settings)
    h = activations_at(model, images, layer)
    return lbfgs_attack(LayersAbove(model, layer), h, targets, labels=labels, **settings)


def fresh_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: int = 0,
                      generator: torch.Generator | None = None, attack: dict | None = None,
                      n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adversarial examples for ``images`` at ``layer`` (0: the pixels; ℓ: hidden layer ℓ's outputs).

    Returns ``(examples, labels, success, distortion)``: the adversarial inputs (images for layer 0,
    activation vectors otherwise), the *true* labels to train them toward, which runs reached their
    target, and each example's distortion √(mean r²) (over pixels, or over the layer's units).
    """
    targets = random_targets(labels, n_classes, generator)
    res = attack_at(model, images, targets, labels, layer, **{**TRAINING_ATTACK, **(attack or {})})
    return res.adversarial, labels, res.success, res.distortion


@dataclass
class AdversarialTrainingResult:
    """The trained model, one history row per epoch, what was run, and the pools as they ended."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict)

    @property
    def test_error(self) -> float | None:
        return self.history[-1].get("test_error") if self.history else None


def _fingerprint(model: nn.Module) -> str:
    from .fooling_class import model_fingerprint

    return model_fingerprint(model)


def _device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The default generator's state of ``device`` when it is not the CPU (on a GPU, dropout draws
    its masks there), so that a resumed run continues as the uninterrupted one would; else None."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def _set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if state is None:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


def adversarial_training(model: nn.Module, train, *, epochs: int, layers=(0,), pool_size: int = 1000,
                         refresh: float = 0.2, refresh_every: int = 100, per_batch: int = 32, warmup: int = 1,
                         batch_size: int = 128, lr: float = 1e-3, seed: int = 0, test=None,
                         attack: dict | None = None, max_distortion: float | dict | None = None,
                         name: str | None = None, folder=None,
                         progress: bool = True, callback=None) -> AdversarialTrainingResult:
    """Train ``model`` (in place) on ``train`` with pools of adversarial examples for ``layers``.

    ``train``/``test``: objects with ``.images`` (N, 1, 28, 28) and ``.labels`` (e.g.
    :class:`course.data.MNIST`). ``layers``: which pools (0 = input images, ℓ = hidden layer ℓ);
    ``()`` trains without adversarial examples. ``max_distortion``: the farthest an example may lie
    from its original to enter a pool — a number for every pool, a dict ``{layer: bound}`` for some
    (None: no bound). See the module docstring for the rest.

    With ``name``, the whole training state (weights, optimizer, pools, random generators) is saved
    after every epoch under ``name`` and a key of the config (epochs excluded) and of the source of
    :mod:`course.attacks` and the training modules, atomically; a later call with the same config
    and code resumes after the last saved epoch — so an interrupted run goes on
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
    if isinstance(max_distortion, dict):
        caps = {int(ℓ): v for ℓ, v in max_distortion.items()}
        if set(caps) - set(layers):
            raise ValueError(f"max_distortion has bounds for layers {sorted(set(caps) - set(layers))} that have no "
                             f"pool (layers={list(layers)}).")
    else:
        caps = {ℓ: max_distortion for ℓ in layers}
    caps = {ℓ: None if v is None else float(v) for ℓ, v in caps.items()}
    if any(v is not None and not v > 0 for v in caps.values()):
        raise ValueError(f"max_distortion must be positive (or None for no bound); got {max_distortion!r}.")
    attack = {**TRAINING_ATTACK, **(attack or {})}
    device = next(model.parameters()).device
    lam = getattr(model, "config", {}).get("weight_decay", 0.0)
    code = source_fingerprint(attacks, layers_module, pool_module, sys.modules[__name__])
    config = {"version": VERSION, "code": code, "model": getattr(model, "config", {}), "init": _fingerprint(model),
              "source": getattr(train, "source", None), "n_train": n_train, "layers": list(layers),
              "pool_size": pool_size if layers else None, "refresh": refresh if layers else None,
              "refresh_every": refresh_every if layers else None, "per_batch": per_batch if layers else None,
              "warmup": warmup if layers else None, "attack": attack if layers else None,
              "max_distortion": {str(ℓ): caps.get(ℓ) for ℓ in layers} if layers else None,
              "batch_size": batch_size, "lr": lr, "seed": seed}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)                  # batch order: the same for every variant
    gp = torch.Generator().manual_seed(seed + 1_000_003)     # pools: images attacked, targets, slots, draws
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
            gp.set_state(state["pool_generator"])
            torch.set_rng_state(state["torch_rng"])
            _set_device_rng_state(device, state.get("device_rng"))
            pools = {int(k): AdversarialPool(v["x"].to(device), v["y"].to(device)) for k, v in state["pools"].items()}
            history, start, step = info["history"], e, info["step"]
            break

    stats = {"tried": 0, "success": 0, "kept": 0, "dist": {}, "n_dist": {}}

    def usable(ℓ: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack ``n`` random training images at layer ℓ; keep the successes (within max_distortion)."""
        idx = torch.randperm(n_train, generator=gp)[:n]
        x, y = train.images[idx].to(device), train.labels[idx].to(device)
        ex, ey, success, dist = fresh_adversarial(model, x, y, ℓ, gp, attack)
        keep = success
        cap = caps.get(ℓ)
        if cap is not None:
            keep = keep & (dist <= cap)
        stats["dist"][ℓ] = stats["dist"].get(ℓ, 0.0) + float(dist[success].sum())
        stats["n_dist"][ℓ] = stats["n_dist"].get(ℓ, 0) + int(success.sum())
        stats["tried"] += n
        stats["success"] += int(success.sum())
        stats["kept"] += int(keep.sum())
        return ex[keep], ey[keep]

    def refill(fraction: float) -> None:
        """Replace ``fraction`` of every pool with usable fresh examples (fill the pools when empty)."""
        was = model.training
        for ℓ in layers:
            if ℓ in pools:
                pools[ℓ].put(usable(ℓ, pools[ℓ].n_replace(fraction)), gp)
                continue
            # Fill: attack rounds of images until the pool is full, sizing each round by the share of
            # usable examples so far (an early network's examples are often too far to use).
            xs, ys, have, tried = [], [], 0, 0
            for _ in range(FILL_ROUNDS):
                rate = max(have / tried, 0.05) if tried else 1.0
                n = min(math.ceil((pool_size - have) / rate), 4 * pool_size, n_train)
                ex, ey = usable(ℓ, n)
                ex, ey = ex[:pool_size - have], ey[:pool_size - have]
                xs.append(ex), ys.append(ey)
                have, tried = have + len(ex), tried + n
                if have == pool_size:
                    break
            if not have:
                raise RuntimeError(f"No attack on layer {ℓ} gave a usable adversarial example in {FILL_ROUNDS} "
                                   "rounds: the pool cannot be filled. Give the training attack a larger budget "
                                   "(attack=...) or allow a larger max_distortion.")
            pools[ℓ] = AdversarialPool(torch.cat(xs), torch.cat(ys))
        model.train(was)

    t0 = time.perf_counter()
    bar = tqdm(range(start, epochs), desc="adv. training" if layers else "training", disable=not progress,
               leave=False, initial=start, total=epochs)
    for epoch in bar:
        follow_cores()   # more threads once the lessons beside this one end (course run)
        model.train()
        losses = []
        stats.update(tried=0, success=0, kept=0, dist={}, n_dist={})
        perm = torch.randperm(n_train, generator=g)
        for b in range(0, n_train, batch_size):
            idx = perm[b:b + batch_size]
            x, y = train.images[idx].to(device), train.labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            if layers and epoch >= warmup:
                if not pools:
                    refill(1.0)
                elif step % refresh_every == 0:
                    refill(refresh)
                ℓ = layers[step % len(layers)]
                if ℓ == 0:
                    x, y = pools[0].mix(x, y, per_batch, gp)
                    loss = F.cross_entropy(model(x), y)
                else:
                    px, py = pools[ℓ].sample(per_batch, gp)
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
        if stats["tried"]:
            row["attack_success"] = stats["success"] / stats["tried"]
            row["pool_kept"] = stats["kept"] / stats["tried"]
            for ℓ, n in sorted(stats["n_dist"].items()):
                if n:
                    row["fresh_distortion" + (f"_{ℓ}" if ℓ else "")] = stats["dist"][ℓ] / n
        if test is not None:
            row["test_error"] = error_rate(predict_logits(model, test.images), test.labels)
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k not in ("epoch", "seconds")})
        if name:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": g.get_state(),
                     "pool_generator": gp.get_state(),
                     "torch_rng": torch.get_rng_state(),
                     "device_rng": _device_rng_state(device),   # dropout's masks on a GPU
                     "pools": {str(k): {"x": p.examples, "y": p.labels} for k, p in pools.items()}}
            save_state(f"{name}-epoch{epoch + 1}", config, state, {"history": history, "step": step}, folder)
            if epoch >= 1:
                remove_state(f"{name}-epoch{epoch}", config, folder)
        if callback is not None:
            callback(epoch + 1, row)
    bar.close()
    model.eval()
    return AdversarialTrainingResult(model, history, {"config": config, "resumed_from_epoch": start,
                                                      "pools": {k: len(p) for k, p in pools.items()}}, pools)


def robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, layer: int = 0, seed: int = 0,
               n_classes: int = 10, **settings) -> AttackResult:
    """A fresh L-BFGS attack (``settings``: the profile's ``lbfgs.*`` values) on held-out images.

    Targets are random wrong classes drawn from ``seed``, so every model is attacked on the same
    images toward the same targets. ``result.mean_distortion()`` is the paper's robustness number.
    With ``layer`` ℓ > 0 the attack perturbs the outputs of hidden layer ℓ instead of the pixels
    (the per-layer attack of adversarial training; ``adversarial`` then holds activation vectors).
    """
    device = next(model.parameters()).device
    targets = random_targets(labels, n_classes, torch.Generator().manual_seed(seed)).to(device)
    return attack_at(model, images.to(device), targets, labels.to(device), layer, **settings)
