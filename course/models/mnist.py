"""The MNIST networks of both papers.

Every model takes images of shape (N, 1, 28, 28) with pixels in [0, 1] and returns logits (N, 10).
Layers are named submodules (``fc1``, ``conv1``, ...) so forward hooks can read any layer.

Weight decay convention (the papers leave it unstated): the penalty added to the *mean*
cross-entropy of a batch is ``(λ/2) · Σ_W ‖W‖²`` over the weight matrices and kernels (biases are
not decayed), so its gradient is ``λ·W`` — Caffe's "weight decay λ". With it, FC10(λ) lands near
Table 1 (test error 7.6% / 9.3% / 22.8% for λ = 1e-4 / 1e-2 / 1, paper 7.4% / 9.4% / 20%); with
the plain sum ``λ·Σ‖W‖²`` FC10(1) reached 28%. :func:`weight_decay_penalty` computes it.
"""
from __future__ import annotations

import torch
from torch import nn

from .pooling import MaxPool2d

IMAGE_SHAPE = (1, 28, 28)


def check_image_batch(x: torch.Tensor, check_range: bool = True) -> None:
    """Raise a clear error unless ``x`` is a batch of MNIST images (N, 1, 28, 28) in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor of images, got {type(x).__name__}.")
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        hint = " Add a batch axis with x.unsqueeze(0)." if tuple(x.shape) == IMAGE_SHAPE else ""
        flat = x.dim() <= 1 and x.numel() and x.numel() % 784 == 0       # (784,), (N·784,)
        rows = x.dim() > 1 and len(x) and x[0].numel() == 784            # (N, 784), (N, 28, 28)
        hint = hint or (" Reshape with x.view(-1, 1, 28, 28)." if flat or rows else "")
        hint = hint or (" These look like colour images; MNIST models take one grey channel: x.mean(1, keepdim=True)."
                        if x.dim() == 4 and x.shape[1] == 3 and tuple(x.shape[2:]) == IMAGE_SHAPE[1:] else "")
        raise ValueError(f"Expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}.{hint}")
    if check_range and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            hint = " Divide by 255." if hi > 1.0 and hi <= 255.0 and lo >= 0 else " Clamp to [0, 1]."
            raise ValueError(f"Expected pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}].{hint}")


class _MnistNet(nn.Module):
    """Base: checks the input shape, keeps its config (architecture, λ)."""

    config: dict

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            check_image_batch(x, check_range=False)


class FC10(_MnistNet):
    """Softmax regression: one linear layer from the 784 pixels to 10 logits."""

    def __init__(self, weight_decay: float = 1e-4):
        super().__init__()
        self.config = {"arch": "fc10", "weight_decay": weight_decay}
        self.flatten = nn.Flatten()
        self.out = nn.Linear(784, 10)

    def forward(self, x):
        self._check(x)
        return self.out(self.flatten(x))


class MLP(_MnistNet):
    """Fully connected net: 784 → hidden[0] → hidden[1] → ... → 10 with sigmoid units."""

    def __init__(self, hidden=(100, 100), weight_decay: float = 1e-5, activation: str = "sigmoid",
                 dropout: float = 0.0):
        super().__init__()
        acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"Unknown activation {activation!r}; use one of {sorted(acts)}.")
        self.config = {"arch": "mlp", "hidden": list(hidden), "weight_decay": weight_decay,
                       "activation": activation, "dropout": dropout}
        self.flatten = nn.Flatten()
        width = 784
        self.hidden_names = []
        for i, h in enumerate(hidden, start=1):
            self.add_module(f"fc{i}", nn.Linear(width, h))
            self.add_module(f"act{i}", acts[activation]())
            if dropout:
                self.add_module(f"drop{i}", nn.Dropout(dropout))
            self.hidden_names.append(i)
            width = h
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        self._check(x)
        h = self.flatten(x)
        for i in self.hidden_names:
            h = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(h))
            if self.config["dropout"]:
                h = getattr(self, f"drop{i}")(h)
        return self.out(h)


class AE400_10(_MnistNet):
    """A sigmoid autoencoder 784 → 400 → 784, and a softmax on its 400-unit code.

    Trained in two stages (see :func:`course.train.train_model`): the autoencoder alone on
    reconstruction, then encoder + softmax on the labels.
    """

    def __init__(self, weight_decay: float = 1e-6, code: int = 400):
        super().__init__()
        self.config = {"arch": "ae", "code": code, "weight_decay": weight_decay}
        self.flatten = nn.Flatten()
        self.encoder = nn.Linear(784, code)
        self.code_act = nn.Sigmoid()
        self.decoder = nn.Linear(code, 784)
        self.out = nn.Linear(code, 10)

    def encode(self, x):
        self._check(x)
        return self.code_act(self.encoder(self.flatten(x)))

    def reconstruct(self, x):
        """The autoencoder's reconstruction of ``x``, shaped like ``x``."""
        return torch.sigmoid(self.decoder(self.encode(x))).view(-1, *IMAGE_SHAPE)

    def forward(self, x):
        return self.out(self.encode(x))


class LeNet(_MnistNet):
    """Caffe's LeNet, as Nguyen et al. used: conv 20@5×5, pool, conv 50@5×5, pool, fc 500, ReLU, fc 10."""

    def __init__(self, weight_decay: float = 5e-4):
        super().__init__()
        self.config = {"arch": "lenet", "weight_decay": weight_decay}
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU()
        self.out = nn.Linear(500, 10)

    def forward(self, x):
        self._check(x)
        h = self.pool1(self.conv1(x))
        h = self.pool2(self.conv2(h))
        return self.out(self.relu(self.fc1(self.flatten(h))))


def weight_decay_penalty(model: nn.Module, lam: float) -> torch.Tensor:
    """``(λ/2) · Σ ‖W‖²`` over the model's weight matrices and kernels (not its biases)."""
    terms = [p.pow(2).sum() for name, p in model.named_parameters() if p.dim() > 1]
    if not terms:
        return torch.zeros(())
    return 0.5 * lam * torch.stack(terms).sum()
