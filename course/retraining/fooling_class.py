"""Retraining with a fooling class (Nguyen et al., "Training networks to recognize fooling images").

Can a network learn to say "this is no digit"? Nguyen et al. evolve fooling images against a
network, add them to the training set as an extra class ("fooling", class n+1 — index ``n``),
retrain, evolve again against the new network, and repeat. On ImageNet the confidence of newly
evolved images dropped (median 88.1% → 11.7%); on MNIST new fooling images kept evolving.

One iteration ``k`` (network ``N_k``, fooling set ``F_k``; ``N_0`` is the given model, ``F_0`` empty):

1. measure ``N_k``'s clean test error; evolve one MAP-Elites archive per encoding against ``N_k``;
   the *fooling confidence* of digit class c is the best probability any new image reaches for c
   (the maximum over the encodings), from the (n+1)-way softmax once the network has the extra class;
2. pick the images to add, ``A_k``: every elite of a real class, plus offspring that fooled the
   network at ≥ ``collect_threshold`` during the run, sampled uniformly, up to ``per_iteration``
   images in all. They are stored as 8-bit images, like MNIST;
3. ``N_{k+1}``: ``N_k`` (widened to n+1 outputs the first time, :func:`widen_classifier`) trained
   ``epochs`` more epochs on the training set plus ``F_{k+1} = F_k ∪ A_k``, all labelled ``n``.

Choice: the network is *fine-tuned* from the previous iteration (cheap), not retrained from scratch.

After steps 1–2 and after step 3 the whole state is saved (:mod:`.state`, keyed by the config,
the number of iterations excluded, and by the source of :mod:`course.evolution` and this module,
so changed code never resumes from what the old code saved): a rerun resumes from the last saved
step, and asking for more iterations later reuses the ones already made. Nothing depends on
MNIST: an ImageNet classifier with 1000 outputs (widened to 1001) or 1001 takes the same path,
given encodings of its image shape.
"""
from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import evolution
from ..checkpoints import source_fingerprint
from ..evolution import CPPNEncoding, DirectEncoding, map_elites
from ..models import weight_decay_penalty
from ..models.tiny_weights import FLUSH_EVERY, flush_tiny_weights_
from ..train import error_rate, predict_logits
from .state import load_state, save_state

VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights (to key checkpoints made from it)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(model).__name__} has no nn.Linear output layer to widen.")
    return linears[-1]


def widen_classifier(model: nn.Module, n_new: int = 1, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose last linear layer has ``n_new`` more outputs.

    Every other layer, and the rows of the old classes in the last one, keep their trained weights
    exactly; the new rows start like a fresh ``nn.Linear`` (uniform ±1/√fan_in, seeded). The
    original model is not changed.
    """
    if not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new must be a positive integer, got {n_new!r}.")
    wide = copy.deepcopy(model)
    path, old = _last_linear(wide)
    new = nn.Linear(old.in_features, old.out_features + n_new, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / old.in_features ** 0.5
    with torch.no_grad():
        new.weight[:old.out_features] = old.weight
        new.weight[old.out_features:] = ((torch.rand(n_new, old.in_features, generator=g) * 2 - 1) * bound).to(new.weight)
        if old.bias is not None:
            new.bias[:old.out_features] = old.bias
            new.bias[old.out_features:] = ((torch.rand(n_new, generator=g) * 2 - 1) * bound).to(new.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(wide.get_submodule(parent_path) if parent_path else wide, attr, new)
    if isinstance(getattr(wide, "config", None), dict):
        wide.config = {**wide.config, "n_classes": old.out_features + n_new}
    return wide


def add_fooling_class(images: torch.Tensor, labels: torch.Tensor, fooling: torch.Tensor,
                      n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set plus ``fooling`` images, all labelled with the new class (index ``n_classes``)."""
    if tuple(fooling.shape[1:]) != tuple(images.shape[1:]):
        raise ValueError(f"Fooling images of shape {tuple(fooling.shape[1:])} do not match the training images "
                         f"{tuple(images.shape[1:])}.")
    new = torch.full((len(fooling),), n_classes, dtype=torch.long, device=labels.device)
    return torch.cat([images, fooling.to(images)]), torch.cat([labels.long(), new])


class _Collector(nn.Module):
    """Wraps a classifier; keeps (as 8-bit images) every input it sees that fools it at ≥ threshold."""

    def __init__(self, inner: nn.Module, n_classes: int, threshold: float):
        super().__init__()
        self.inner, self.n_classes, self.threshold = inner, n_classes, threshold
        self.kept: list[torch.Tensor] = []

    def forward(self, x):
        logits = self.inner(x)
        with torch.no_grad():
            p = torch.softmax(logits.float(), 1)[:, :self.n_classes].amax(1)
            keep = p >= self.threshold
            if bool(keep.any()):
                self.kept.append(to_uint8(x[keep]).cpu())
        return logits


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class FoolingClassResult:
    """``rows``: one dict per iteration 0..K (see :func:`fooling_class_retraining`); ``model``: N_K;
    ``fooling``: F_K as 8-bit images; ``elites``: per iteration, per encoding, the real classes' elites."""

    model: nn.Module
    rows: list[dict]
    fooling: torch.Tensor
    elites: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _output_count(model: nn.Module, images: torch.Tensor) -> int:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(images[:2].to(device))
    model.train(was)
    return out.shape[1]


def _retrain(model, images, labels, fooling, n_classes, *, epochs, batch_size, lr, seed, progress, desc):
    """Fine-tune on the training set plus the fooling images (label ``n_classes``), batched by index.

    On a CPU the tiny weights and Adam moments are zeroed every ``FLUSH_EVERY`` steps and at the end
    (:mod:`course.models.tiny_weights`): subnormal arithmetic would make the steps up to 4× slower."""
    device = next(model.parameters()).device
    flush = device.type == "cpu"   # (GPUs compute subnormals at full speed)
    lam = getattr(model, "config", {}).get("weight_decay", 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    N, M = len(labels), len(fooling)
    losses = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        model.train()
        perm = torch.randperm(N + M, generator=g)
        for b in range(0, N + M, batch_size):
            idx = perm[b:b + batch_size]
            real = idx < N
            x = images.new_empty((len(idx), *images.shape[1:]))
            x[real] = images[idx[real]]
            x[~real] = fooling[idx[~real] - N].to(images) / 255.0
            y = torch.full((len(idx),), n_classes, dtype=torch.long)
            y[real] = labels[idx[real]].long()
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + weight_decay_penalty(model, lam)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if flush and len(losses) % FLUSH_EVERY == 0:
                flush_tiny_weights_(model, optimizer)
    if flush:
        flush_tiny_weights_(model, optimizer)
    model.eval()
    return sum(losses) / max(len(losses), 1)


def fooling_class_retraining(model: nn.Module, train, test, *, iterations: int, n_classes: int = 10,
                             encodings: dict | None = None, generations: int = 200, offspring: int = 100,
                             initial: int | None = None, per_iteration: int = 1000,
                             collect_threshold: float = 0.9, epochs: int = 1, batch_size: int = 128,
                             lr: float = 1e-3, seed: int = 0, name: str = "fooling_class", folder=None,
                             progress: bool = True, callback=None) -> FoolingClassResult:
    """Evolve → add as class ``n_classes`` → retrain, ``iterations`` times (see the module docstring).

    ``model``: a classifier with ``n_classes`` outputs (widened to n+1 at the first retraining) or
    already ``n_classes + 1``; it is not changed (the iterations work on a copy). ``train``/``test``:
    objects with ``.images`` and ``.labels`` (and optionally ``.source``). ``encodings``: name →
    encoding (default: MNIST's direct and CPPN encodings). Returns a :class:`FoolingClassResult`
    whose ``rows[k]`` holds, for network N_k: ``test_error``, ``fooling_share`` (the share of its
    training data in the fooling class), ``confidence`` (per real class, the best over encodings),
    ``per_encoding``, ``median_fooling_confidence``, ``classes_at_99``, ``n_added``.
    ``callback(k, row)`` runs after iteration k's evolution is saved (raise in it to stop a run).
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer (the number of retraining rounds), got "
                         f"{iterations!r}.")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer ≥ 2, got {n_classes!r}.")
    if per_iteration < 1 or epochs < 1:
        raise ValueError(f"per_iteration and epochs must be ≥ 1, got {per_iteration} and {epochs}.")
    images, labels = train.images, train.labels
    n_out = _output_count(model, images)
    if n_out not in (n_classes, n_classes + 1):
        raise ValueError(f"The classifier has {n_out} outputs, but fooling-class retraining with n_classes="
                         f"{n_classes} needs {n_classes} (the extra class is added) or {n_classes + 1} (it is "
                         "already there). Pass the right n_classes (10 for MNIST, 1000 for ImageNet).")
    if encodings is None:
        shape = tuple(images.shape[1:])
        encodings = {"direct": DirectEncoding(shape=shape), "cppn": CPPNEncoding(shape=shape)}
    config = {"version": VERSION, "code": source_fingerprint(evolution, sys.modules[__name__]),
              "base": model_fingerprint(model), "n_out": n_out, "n_classes": n_classes,
              "source": getattr(train, "source", None), "n_train": len(labels), "n_test": len(test.labels),
              "encodings": {k: repr(v) for k, v in encodings.items()}, "generations": generations,
              "offspring": offspring, "initial": initial, "per_iteration": per_iteration,
              "collect_threshold": collect_threshold, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": seed}

    def network_at(k: int, weights=None) -> nn.Module:
        net = copy.deepcopy(model) if (k == 0 or n_out == n_classes + 1) else widen_classifier(model, 1, seed)
        if weights is not None:
            net.load_state_dict(weights)
        flush_tiny_weights_(net)   # the same outputs, faster on a CPU (course.models.tiny_weights)
        return net.eval()

    # Resume from the last saved state, if any.
    k0, net, fooling, rows, elites, added = 0, network_at(0), torch.zeros((0, *images.shape[1:]), dtype=torch.uint8), [], {}, None
    for k in range(iterations, -1, -1):
        saved = load_state(f"{name}-iter{k}", config, folder)
        if saved is not None:
            state, info = saved
            k0, net, fooling, rows = k, network_at(k, state["weights"]), state["fooling"], info["rows"]
            elites = {key: v for key, v in state["elites"].items()}
            added = state.get("added")
            break

    def save(k):
        state = {"weights": net.state_dict(), "fooling": fooling, "elites": elites}
        if added is not None:
            state["added"] = added
        save_state(f"{name}-iter{k}", config, state, {"rows": rows}, folder)

    bar = tqdm(range(k0, iterations + 1), desc="fooling-class iterations", disable=not progress, leave=False,
               initial=k0, total=iterations + 1)
    for k in bar:
        if len(rows) <= k:  # step 1–2: measure, evolve, pick A_k
            t0 = time.perf_counter()
            test_error = error_rate(predict_logits(net, test.images), test.labels)
            best, per_enc, kept, elite_imgs = None, {}, [], []
            for j, (enc_name, enc) in enumerate(encodings.items()):
                collector = _Collector(net, n_classes, collect_threshold)
                res = map_elites(collector, enc, generations=generations, offspring=offspring, initial=initial,
                                 seed=seed * 1_000_003 + 101 * k + j, progress=progress)
                scores = res.archive.scores[:n_classes].float().cpu()
                per_enc[enc_name] = scores.tolist()
                best = scores if best is None else torch.maximum(best, scores)
                filled = res.archive.filled[:n_classes].cpu()
                imgs = to_uint8(res.archive.images[:n_classes]).cpu()
                elites[f"{k}/{enc_name}"] = imgs
                elite_imgs.append(imgs[filled])
                kept += collector.kept
            g = torch.Generator().manual_seed(seed * 1_000_003 + k)
            elite_imgs = torch.cat(elite_imgs)
            pool = torch.cat(kept) if kept else elite_imgs[:0]
            take = max(0, min(per_iteration - len(elite_imgs), len(pool)))
            added = torch.cat([elite_imgs, pool[torch.randperm(len(pool), generator=g)[:take]]])[:per_iteration]
            rows.append({"iteration": k, "test_error": test_error,
                         "fooling_share": len(fooling) / (len(labels) + len(fooling)),
                         "n_fooling": len(fooling), "confidence": best.tolist(), "per_encoding": per_enc,
                         "median_fooling_confidence": float(best.median()),
                         "classes_at_99": int((best >= 0.99).sum()), "n_added": len(added),
                         "seconds": round(time.perf_counter() - t0, 1)})
            save(k)
            bar.set_postfix(median=f"{rows[-1]['median_fooling_confidence']:.4f}", test_error=f"{test_error:.4f}")
            if callback is not None:
                callback(k, rows[-1])
        if k == iterations:
            break
        # step 3: N_{k+1} and F_{k+1}
        t0 = time.perf_counter()
        if _output_count(net, images) == n_classes:
            net = widen_classifier(net, 1, seed)
        fooling = torch.cat([fooling, added])
        _retrain(net, images, labels, fooling, n_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                 seed=seed * 1_000_003 + k, progress=progress, desc=f"retrain {k + 1}")
        rows[k]["retrain_seconds"] = round(time.perf_counter() - t0, 1)
        added = None
        save(k + 1)
    bar.close()
    per_iter = {}
    for key, v in elites.items():
        it, enc_name = key.split("/")
        per_iter.setdefault(int(it), {})[enc_name] = v.float() / 255.0
    return FoolingClassResult(net, rows, fooling, per_iter, {"config": config, "resumed_from": k0})
