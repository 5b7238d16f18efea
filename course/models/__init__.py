"""The networks: the MNIST models of Table 1, LeNet, and a registry by name.

>>> from course.models import build_model, MODEL_NAMES
>>> model = build_model("fc100_100_10")
"""
from __future__ import annotations

from torch import nn

from .mnist import AE400_10, FC10, MLP, LeNet, check_image_batch, weight_decay_penalty
from .tiny_weights import flush_tiny_, flush_tiny_weights_, tiny_threshold

# name -> (constructor, kwargs). λ values follow papers.md ([S]/[U] where marked there).
MODEL_SPECS: dict[str, tuple[type, dict]] = {
    "fc10_1e-4": (FC10, {"weight_decay": 1e-4}),
    "fc10_1e-2": (FC10, {"weight_decay": 1e-2}),
    "fc10_1": (FC10, {"weight_decay": 1.0}),
    "fc100_100_10": (MLP, {"hidden": (100, 100), "weight_decay": 1e-5}),
    "fc200_200_10": (MLP, {"hidden": (200, 200), "weight_decay": 1e-5}),
    "fc123_456_10": (MLP, {"hidden": (123, 456), "weight_decay": 1e-5}),
    "ae400_10": (AE400_10, {"weight_decay": 1e-6}),
    "lenet": (LeNet, {"weight_decay": 5e-4}),
}
MODEL_NAMES = tuple(MODEL_SPECS)
TABLE1_MODELS = ("fc10_1e-4", "fc10_1e-2", "fc10_1", "fc100_100_10", "fc200_200_10", "ae400_10")


def build_model(name: str, **overrides) -> nn.Module:
    """A fresh, untrained model by name (see :data:`MODEL_NAMES`); ``overrides`` change its config."""
    if name not in MODEL_SPECS:
        import difflib

        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Known models: {', '.join(MODEL_NAMES)}.")
    cls, kwargs = MODEL_SPECS[name]
    model = cls(**{**kwargs, **overrides})
    model.config["name"] = name
    return model


__all__ = [
    "AE400_10", "FC10", "MLP", "LeNet", "MODEL_NAMES", "MODEL_SPECS", "TABLE1_MODELS",
    "build_model", "check_image_batch", "flush_tiny_", "flush_tiny_weights_", "tiny_threshold",
    "weight_decay_penalty",
]
