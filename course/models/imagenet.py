"""ImageNet: torchvision's AlexNet, its weights, its preprocessing, its classes, and real images.

Both papers attack an ImageNet AlexNet (Szegedy et al.: Krizhevsky's network; Nguyen et al.:
CaffeNet). The course uses torchvision's AlexNet, whose ImageNet weights come, in this order, from

1. a checkpoint path the user gives (``path=`` or the environment variable ``COURSE_ALEXNET``);
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``);
3. a download from download.pytorch.org, when online and allowed (``download=True``, and
   ``COURSE_OFFLINE`` not set).

Every file is verified before use: torchvision's file name carries the first 8 hex digits of its
SHA-256 (``torch.hub``'s ``check_hash`` convention), so a file named like that must match them;
any other file must at least load as a plain state dict (``weights_only=True``) with exactly
AlexNet's keys and shapes. When no weights can be had, :func:`load_alexnet` raises
:class:`WeightsUnavailableError`, whose message says how to get them; lessons catch it and go on
with an untrained AlexNet (``weights="none"``), labelled so in every title and metric.

Everything else here works in the course's convention, **pixels in [0, 1]**: the ImageNet
normalisation lives inside the model (:class:`Normalized`), so the attacks, MAP-Elites and
gradient ascent of the MNIST lessons run on ImageNet unchanged.

>>> model, weights = load_alexnet(weights="none")        # untrained: weights == "none"
>>> net = Normalized(model)                              # takes images in [0, 1]
>>> probs = ten_crop_probs(net, torch.rand(2, 3, 256, 256), crop=224)   # (2, 1000)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's published AlexNet weights (AlexNet_Weights.IMAGENET1K_V1).
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_SHA256_PREFIX = "7be5be79"
WEIGHTS_TAG = "imagenet1k_v1"      # the weight source of a verified torchvision file
UNTRAINED = "none"                 # the weight source of a randomly initialised AlexNet
N_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")   # torch.hub's convention: name-<sha256 prefix>.ext
OSTRICH = 9                        # Szegedy et al.'s Figure 5 turns every image into an "ostrich"


class WeightsUnavailableError(RuntimeError):
    """No usable ImageNet weights for AlexNet; the message says what was tried and how to fix it."""


class WeightsCorruptError(WeightsUnavailableError):
    """A weights file exists but fails its digest, cannot be read, or is not an AlexNet state dict."""


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def hub_weights_path() -> Path:
    """Where torch hub keeps torchvision's AlexNet weights on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def how_to_get_weights() -> str:
    """The instructions shown whenever the weights are missing."""
    return (
        "To use ImageNet weights, either\n"
        "  - run once while online (about 233 MB, saved in the torch hub cache):\n"
        "        python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"\n"
        f"    which writes {hub_weights_path()}, or\n"
        f"  - copy {ALEXNET_FILE} (from {ALEXNET_URL}) to any folder and set\n"
        f"        export COURSE_ALEXNET=/path/to/{ALEXNET_FILE}\n"
        "    (or pass path=... to load_alexnet). `course doctor` shows what the course finds.")


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights_file(path: Path | str) -> str:
    """The file's SHA-256, after checking it against the digest prefix its name carries (if any).

    ``alexnet-owt-7be5be79.pth`` must have a SHA-256 starting with ``7be5be79`` (torch.hub's
    ``check_hash``). Raises :class:`WeightsCorruptError` when it does not.
    """
    path = Path(path)
    digest = file_sha256(path)
    m = HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise WeightsCorruptError(
            f"{path} fails its digest: its name says the SHA-256 starts with {m.group(1)}, but the file's "
            f"starts with {digest[:len(m.group(1))]}. The file is damaged or incomplete (an interrupted "
            f"download?): delete it and fetch it again.\n{how_to_get_weights()}")
    return digest


def _alexnet_skeleton() -> nn.Module:
    import torchvision

    return torchvision.models.alexnet(weights=None)


def _load_file(path: Path) -> tuple[nn.Module, str]:
    """AlexNet with the state dict in ``path``; returns (model, weight source)."""
    digest = verify_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, a pickle with code in it, ...
        raise WeightsCorruptError(
            f"{path} could not be read as a PyTorch state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}).\n{how_to_get_weights()}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsCorruptError(f"{path} holds a {type(state).__name__}, not a state dict.\n{how_to_get_weights()}")
    model = _alexnet_skeleton()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsCorruptError(
            f"{path} is not a torchvision AlexNet state dict: {str(e).splitlines()[0][:300]}\n"
            f"{how_to_get_weights()}") from e
    source = WEIGHTS_TAG if digest.startswith(ALEXNET_SHA256_PREFIX) else f"checkpoint:{path.name}"
    return model, source


def _offline() -> bool:
    return os.environ.get("COURSE_OFFLINE", "").lower() in ("1", "true", "yes")


def _download(dest: Path) -> str:
    """Fetch torchvision's file into ``dest`` (digest-checked); returns "ok" or why not."""
    if _offline():
        return "skipped (COURSE_OFFLINE is set)"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".partial")
        os.close(fd)
        try:
            torch.hub.download_url_to_file(ALEXNET_URL, tmp, hash_prefix=ALEXNET_SHA256_PREFIX, progress=True)
            shutil.move(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return "ok"
    except Exception as e:  # offline, proxy, bad digest
        return f"failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    finally:
        socket.setdefaulttimeout(old)


def untrained_alexnet(seed: int = 0) -> nn.Module:
    """torchvision's AlexNet with its default random initialisation, seeded (evaluation mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _alexnet_skeleton().eval()


def load_alexnet(weights: str | None = "imagenet", path: Path | str | None = None, *, download: bool = True,
                 device: torch.device | str | None = None, seed: int = 0) -> tuple[nn.Module, str]:
    """torchvision's AlexNet in evaluation mode, and where its weights came from.

    ``weights``: ``"imagenet"`` (or ``"IMAGENET1K_V1"``) for the ImageNet weights; ``"none"`` (or
    None) for an untrained network (seeded by ``seed``). ``path``: a checkpoint to use (default:
    ``$COURSE_ALEXNET``). ``download``: try download.pytorch.org when nothing is on disk.

    Returns ``(model, source)``: ``source`` is ``"imagenet1k_v1"`` for torchvision's verified file,
    ``"checkpoint:<file name>"`` for another AlexNet state dict, ``"none"`` when untrained.
    Raises :class:`WeightsUnavailableError` (with instructions) when the weights cannot be had,
    :class:`WeightsCorruptError` when a file is there but unusable. Never falls back silently.
    """
    from ..device import get_device

    device = torch.device(device) if device is not None else get_device()
    key = (weights or UNTRAINED).lower()
    if key in (UNTRAINED, "untrained", "random"):
        return untrained_alexnet(seed).to(device), UNTRAINED
    if key not in ("imagenet", WEIGHTS_TAG, "default"):
        raise ValueError(f"weights must be 'imagenet' or 'none', got {weights!r}.")
    given = path if path is not None else os.environ.get("COURSE_ALEXNET") or None
    if given is not None:
        where = "path" if path is not None else "COURSE_ALEXNET"
        given = Path(given).expanduser()
        if not given.is_file():
            raise WeightsUnavailableError(
                f"{where} points at {given}, which {'is not a file' if given.exists() else 'does not exist'}.\n"
                f"{how_to_get_weights()}")
        model, source = _load_file(given)
        return model.eval().to(device), source
    cached = hub_weights_path()
    tried = ["COURSE_ALEXNET: not set", f"torch hub cache: {cached} not found"]
    if not cached.is_file() and download:
        outcome = _download(cached)
        tried.append(f"download from {ALEXNET_URL}: {outcome}")
    elif not download:
        tried.append("download: not asked for (download=False)")
    if cached.is_file():
        model, source = _load_file(cached)
        return model.eval().to(device), source
    raise WeightsUnavailableError(
        "No ImageNet weights for AlexNet on this machine. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        + how_to_get_weights())


def weights_label(source: str) -> str:
    """How a weight source is named in titles and tables: plain, or flagged UNTRAINED."""
    if source == UNTRAINED:
        return "AlexNet, untrained (random weights)"
    if source == WEIGHTS_TAG:
        return "AlexNet, ImageNet weights"
    return f"AlexNet, weights from {source.split(':', 1)[-1]}"


# --------------------------------------------------------------------------------------------
# Preprocessing and classes
# --------------------------------------------------------------------------------------------

def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a batch (N, 3, H, W) in [0, 1]: ``(x − mean_c) / std_c`` per channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class Normalized(nn.Module):
    """``net(normalize(x))``: an ImageNet network that takes images with pixels in [0, 1].

    The course's attacks and evolution all work on [0, 1] pixels; wrapping the network makes
    them run on ImageNet unchanged (and the distortion is measured on the [0, 1] scale).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(x))


def preprocess(resize: int = 256, crop: int | None = 224, normalized: bool = False):
    """torchvision's ImageNet evaluation transform: resize the short side to ``resize``, centre-crop
    ``crop`` (None: no crop), to a tensor in [0, 1], and (if ``normalized``) normalise."""
    from torchvision import transforms as T

    steps = [T.Resize(resize, antialias=True)]
    if crop is not None:
        steps.append(T.CenterCrop(crop))
    steps.append(T.ToTensor())
    if normalized:
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


_NAMES: list[str] | None = None


def class_names() -> list[str]:
    """The 1000 ImageNet class names, index by index (from torchvision's weight metadata, offline)."""
    global _NAMES
    if _NAMES is None:
        try:
            import torchvision

            names = list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception as e:  # very old or unusual torchvision
            warnings.warn(f"torchvision has no ImageNet class names ({e}); using 'class 0' ... 'class 999'.")
            names = [f"class {i}" for i in range(N_CLASSES)]
        if len(names) != N_CLASSES:
            raise RuntimeError(f"Expected {N_CLASSES} ImageNet class names, torchvision gives {len(names)}.")
        _NAMES = names
    return list(_NAMES)


def _simplify(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(name: str | int) -> int:
    """The index of an ImageNet class given its name (``"ostrich"`` → 9; case, ``_`` and ``-`` ignored)."""
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        i = int(name)
        if not 0 <= i < N_CLASSES:
            raise ValueError(f"ImageNet class indices run from 0 to {N_CLASSES - 1}, got {i}.")
        return i
    names = [_simplify(n) for n in class_names()]
    key = _simplify(name)
    if key in names:
        return names.index(key)
    import difflib

    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(repr(class_names()[names.index(c)]) for c in close)}?" if close else ""
    raise KeyError(f"No ImageNet class named {name!r}.{hint}")


# --------------------------------------------------------------------------------------------
# Ten-crop confidence (Nguyen et al.'s fitness on ImageNet)
# --------------------------------------------------------------------------------------------

def ten_crops(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The 10 crops of each image: 4 corners, centre, then the same 5 mirrored left–right.

    ``images`` (N, C, H, W) → (N, 10, C, crop, crop): top-left, top-right, bottom-left,
    bottom-right, centre (torchvision's ``five_crop`` order and centre offset), then each of them
    mirrored, as Caffe's ``oversample`` (the authors' code) does. torchvision's ``ten_crop`` crops
    the mirrored *image* instead: the same ten crops in another order when the margins are even,
    a centre crop one pixel apart when a margin is odd. Slices and one flip: no loop over images.
    """
    N, C, H, W = images.shape
    if crop > min(H, W):
        raise ValueError(f"crop {crop} is larger than the images ({H}×{W}).")
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    corners = [(0, 0), (0, W - crop), (H - crop, 0), (H - crop, W - crop), (top, left)]
    five = torch.stack([images[:, :, i:i + crop, j:j + crop] for i, j in corners], dim=1)
    return torch.cat([five, five.flip(-1)], dim=1)


def ten_crop_probs(model: nn.Module, images: torch.Tensor, crop: int, batch_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities averaged over the 10 crops of each image: (N, classes).

    ``model`` maps a batch of crops to logits. ``batch_size`` images (×10 crops) per forward pass.
    """
    N = len(images)
    batch_size = batch_size or max(N, 1)
    out = []
    with torch.no_grad():
        for s in range(0, N, batch_size):
            chunk = images[s:s + batch_size]
            crops = ten_crops(chunk, crop).flatten(0, 1)
            p = torch.softmax(model(crops).float(), dim=1)
            out.append(p.view(len(chunk), 10, -1).mean(1))
    return torch.cat(out) if out else images.new_zeros(0, 0)


class CropScorer(nn.Module):
    """A classifier for whole images (N, 3, H, W) in [0, 1], as MAP-Elites and the lessons use it.

    ``ten_crop=True``: the log of the softmax averaged over the 10 crops of size ``crop`` (the
    authors' fitness); else the log-softmax of the centre crop. Log-probabilities are valid logits
    (their softmax gives the probabilities back), so :func:`~course.evolution.map_elites` works as is.
    """

    def __init__(self, net: nn.Module, crop: int, ten_crop: bool = False):
        super().__init__()
        self.net, self.crop, self.ten_crop = net, int(crop), bool(ten_crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ten_crop:
            crops = ten_crops(x, self.crop).flatten(0, 1)
            p = torch.softmax(self.net(crops).float(), dim=1).view(len(x), 10, -1).mean(1)
            return p.clamp_min(1e-30).log()
        H, W = x.shape[-2:]
        top, left = int(round((H - self.crop) / 2.0)), int(round((W - self.crop) / 2.0))
        return torch.log_softmax(self.net(x[:, :, top:top + self.crop, left:left + self.crop]).float(), dim=1)


# --------------------------------------------------------------------------------------------
# Batch sizes from the device's memory
# --------------------------------------------------------------------------------------------

def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for tensors on ``device``: CUDA's free memory, MPS's recommended budget, else
    the CPU's available RAM (``MemAvailable``)."""
    from ..device import get_device

    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except Exception:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # assume a small laptop


def activation_bytes(model: nn.Module, image_shape: Sequence[int]) -> int:
    """Bytes of every leaf module's output for ONE image of ``image_shape`` (C, H, W)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    p = next(model.parameters())
    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return total + math.prod(image_shape) * p.element_size()


def auto_batch_size(model: nn.Module, image_shape: Sequence[int], *, backward: bool = False,
                    fraction: float = 0.25, cap: int = 256, device=None) -> int:
    """Images per forward pass that fit in ``fraction`` of the device's free memory.

    Per image: the activations of one forward pass (×3 with ``backward``: gradients and saved
    tensors; ×8 room for an optimiser's history such as L-BFGS's). At least 1, at most ``cap``.
    """
    p = next(model.parameters())
    per_image = activation_bytes(model, image_shape) * (8 if backward else 1)
    free = available_memory(device if device is not None else p.device)
    return int(max(1, min(cap, fraction * free // max(per_image, 1))))


class threads:
    """``with threads(1): ...`` runs the block with that many torch CPU threads, then restores them.

    Thousands of tiny batched problems (the FFT bounds' small eigenvalue problems) each open a
    parallel region; on a CPU shared with other busy processes every region waits for a core, and
    2 threads became 10× slower than 1 in our measurements. One thread avoids the waits.
    """

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


# --------------------------------------------------------------------------------------------
# Held-out images: an ImageFolder, or photographs shipped inside installed packages
# --------------------------------------------------------------------------------------------

@dataclass
class HeldOut:
    """Held-out images (N, 3, S, S) in [0, 1], their ImageNet labels (or None), names, and source."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def photo_files() -> list[Path]:
    """Real photographs that ship inside installed packages: matplotlib's Grace Hopper (always there:
    a dependency of the course) and scikit-learn's china.jpg and flower.jpg (when installed)."""
    import importlib.util

    found = []
    for package, parts in (("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
                           ("sklearn", ("datasets", "images", "china.jpg")),
                           ("sklearn", ("datasets", "images", "flower.jpg"))):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
        if path.is_file():
            found.append(path)
    return found


def _read_rgb(path: Path) -> torch.Tensor:
    from PIL import Image
    import numpy as np

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def sample_photos(size: int = 256) -> HeldOut:
    """The shipped photographs, each resized (short side ``size``) and centre-cropped to size×size."""
    files = photo_files()
    if not files:
        raise FileNotFoundError("No sample photographs found: matplotlib's mpl-data/sample_data is missing. "
                                "Reinstall matplotlib, or pass an ImageFolder path.")
    tf = preprocess(size, size)
    from PIL import Image

    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(tf(im.convert("RGB")))
    return HeldOut(torch.stack(images), None, [f.stem for f in files], "sample-photos")


def photo_crops(per_photo: int, size: int, seed: int = 0) -> HeldOut:
    """A small held-out set without ImageNet: ``per_photo`` random crops (scale 10–100% of the
    photo's area, square, some mirrored) of each shipped photograph, resized to size×size."""
    g = torch.Generator().manual_seed(seed)
    images, names = [], []
    for f in photo_files():
        photo = _read_rgb(f)
        _, H, W = photo.shape
        side_max = min(H, W)
        for k in range(per_photo):
            frac = 0.1 + 0.9 * torch.rand((), generator=g).item()
            side = max(8, int(math.sqrt(frac) * side_max))
            i = int(torch.randint(0, H - side + 1, (), generator=g))
            j = int(torch.randint(0, W - side + 1, (), generator=g))
            crop = photo[:, i:i + side, j:j + side][None]
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            if torch.rand((), generator=g).item() < 0.5:
                crop = crop.flip(-1)
            images.append(crop.clamp(0, 1))
            names.append(f"{f.stem}#{k}")
    if not images:
        raise FileNotFoundError("No sample photographs found (see photo_files()).")
    return HeldOut(torch.stack(images), None, names, "sample-photos")


def folder_class_map(classes: Sequence[str]) -> dict[str, int]:
    """Map an ImageFolder's folder names to ImageNet indices.

    Folders may be named by class index (``"9"``), by class name (``"ostrich"``, ``"tree_frog"``),
    or by WordNet id (``"n01518878"``) when **all 1000** are present: sorted WordNet ids are
    ImageNet's class order (a subset of WordNet ids cannot be placed without the devkit's list).
    """
    classes = list(classes)
    if len(classes) == N_CLASSES and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return {c: i for i, c in enumerate(sorted(classes))}
    mapping, unknown = {}, []
    for c in classes:
        try:
            mapping[c] = class_index(c)
        except (KeyError, ValueError):
            unknown.append(c)
    if unknown:
        wnid = all(re.fullmatch(r"n\d{8}", c) for c in unknown)
        why = ("WordNet-id folders can only be placed when all 1000 are present" if wnid else
               "folder names must be ImageNet class indices (0-999) or class names such as 'ostrich'")
        raise ValueError(f"Cannot map ImageFolder classes {unknown[:5]}{' ...' if len(unknown) > 5 else ''} to "
                         f"ImageNet: {why}. Rename the folders or pass class_to_idx.")
    return mapping


def imagenet_folder(path: Path | str | None = None, resize: int = 256, crop: int = 224,
                    class_to_idx: dict[str, int] | None = None):
    """A torchvision ``ImageFolder`` of ImageNet images with ImageNet labels, or None.

    ``path`` defaults to ``$COURSE_IMAGENET`` (None when unset). Images come out as (3, crop, crop)
    tensors in [0, 1]; targets are ImageNet class indices (see :func:`folder_class_map`).
    """
    path = path if path is not None else os.environ.get("COURSE_IMAGENET") or None
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"ImageNet folder {path} does not exist (COURSE_IMAGENET or the path argument). "
                                "It must hold one sub-folder of images per class.")
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(path), transform=preprocess(resize, crop))
    mapping = class_to_idx or folder_class_map(ds.classes)
    local = {i: mapping[c] for c, i in ds.class_to_idx.items()}
    ds.target_transform = local.__getitem__
    ds.imagenet_index = mapping
    return ds


def folder_images(dataset, n: int | None = None, seed: int = 0, batch_size: int = 64) -> HeldOut:
    """``n`` images (all if None) drawn at random, seeded, from an :func:`imagenet_folder` dataset."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)
    if n is not None:
        idx = idx[:n]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), batch_size=batch_size)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x), ys.append(torch.as_tensor(y))
    names = [Path(dataset.samples[i][0]).name for i in idx.tolist()]
    return HeldOut(torch.cat(xs), torch.cat(ys).long(), names, f"imagefolder:{Path(dataset.root).name}")


def heldout_images(size: int, n: int | None = None, per_photo: int = 16, path=None, seed: int = 0) -> HeldOut:
    """The ImageFolder (``path`` or ``$COURSE_IMAGENET``) when given, else crops of the shipped photos."""
    ds = imagenet_folder(path, resize=round(size * 256 / 224), crop=size)
    if ds is not None:
        return folder_images(ds, n, seed)
    return photo_crops(per_photo, size, seed)


def ascent_lr(model: nn.Module, targets, shape: Sequence[int], rms_step: float = 0.02, seed: int = 0) -> float:
    """A learning rate for :func:`course.fooling.gradient_ascent` that makes its first step move the
    pixels by ``rms_step`` (root mean square, on the [0, 1] scale).

    The gradient of log p_target has very different sizes for a trained AlexNet, an untrained one
    and an MNIST LeNet; fixing the size of the first step instead of the rate makes one setting
    serve them all. Uses the same starting noise as ``gradient_ascent`` (same ``seed``).
    """
    from ..fooling import _start_noise

    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    device = next(model.parameters()).device
    x = _start_noise(targets, shape, seed).to(device).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logp = torch.log_softmax(model(x).float(), dim=1)[torch.arange(len(targets)), targets.to(device)]
            (grad,) = torch.autograd.grad(logp.sum(), x)
    finally:
        model.train(was_training)
    rms = grad.pow(2).mean().sqrt().item()
    return float(rms_step / rms) if rms > 0 else 1.0


# --------------------------------------------------------------------------------------------
# Retraining with a 1001st "fooling" class: fine-tune the last layer only
# --------------------------------------------------------------------------------------------

def _last_linear_name(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise TypeError(f"{type(model).__name__} has no nn.Linear output layer.")
    return names[-1]


def _last_linear(model: nn.Module) -> nn.Linear:
    return dict(model.named_modules())[_last_linear_name(model)]


def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The inputs of ``model``'s last linear layer for every image: (N, in_features), on the CPU."""
    from course.probing import activations

    return activations(model, _last_linear_name(model), images, batch_size, of="input").float()


def fine_tune_fooling_class(model: nn.Module, images, labels: torch.Tensor | None, fooling: torch.Tensor,
                            *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                            progress: bool = True) -> tuple[nn.Module, dict]:
    """Nguyen et al.'s retraining with an extra class, on ImageNet: a copy of ``model`` with one more
    output (index n_classes, "fooling"), whose **last layer only** is trained on the real ``images``
    with their ``labels`` plus the ``fooling`` images labelled with the new class. ``images`` may
    also be a dataset of (image, label) pairs (e.g. :func:`imagenet_folder`; ``labels`` None): it
    is then streamed, so a whole ImageNet split never has to fit in memory.

    Every other layer is frozen, so the penultimate features are computed once and the last layer
    is trained on them (Adam, cross-entropy, ``epochs`` passes, seeded). Returns
    ``(wide_model, info)`` with the training loss and accuracy per epoch.
    """
    from ..retraining.fooling_class import widen_classifier

    streamed = isinstance(images, torch.utils.data.Dataset)
    shape = tuple(images[0][0].shape) if streamed else tuple(images.shape[1:])
    if tuple(fooling.shape[1:]) != shape:
        raise ValueError(f"Fooling images {tuple(fooling.shape[1:])} and real images {shape} "
                         "must have the same shape (crop the fooling images to the model's input size).")
    n_classes = _last_linear(model).out_features
    wide = widen_classifier(model, 1, seed=seed)
    last = _last_linear(wide)
    if streamed:  # a dataset of (image, label): features batch by batch, never all images in memory
        parts, labs = [], []
        for x, y in torch.utils.data.DataLoader(images, batch_size=batch_size):
            parts.append(penultimate_features(wide, x, batch_size))
            labs.append(torch.as_tensor(y))
        real_feats, labels = torch.cat(parts), torch.cat(labs)
    else:
        real_feats = penultimate_features(wide, images, batch_size)
    feats = torch.cat([real_feats, penultimate_features(wide, fooling, batch_size)])
    targets = torch.cat([labels.long().cpu(), torch.full((len(fooling),), n_classes, dtype=torch.long)])
    head = nn.Linear(last.in_features, last.out_features).to(feats.device)
    head.load_state_dict({k: v.detach().cpu() for k, v in last.state_dict().items()})
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    from tqdm.auto import tqdm

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
    return wide, {"history": history, "n_real": len(real_feats), "n_fooling": len(fooling), "fooling_class": n_classes}


__all__ = [
    "ALEXNET_FILE", "ALEXNET_SHA256_PREFIX", "ALEXNET_URL", "CropScorer", "HeldOut", "IMAGENET_MEAN", "IMAGENET_STD",
    "N_CLASSES", "Normalized", "OSTRICH", "UNTRAINED", "WEIGHTS_TAG", "WeightsCorruptError", "WeightsUnavailableError",
    "activation_bytes", "ascent_lr", "auto_batch_size", "available_memory", "class_index", "class_names", "file_sha256",
    "fine_tune_fooling_class", "folder_class_map", "folder_images", "heldout_images", "how_to_get_weights",
    "hub_weights_path", "imagenet_folder", "load_alexnet", "normalize", "penultimate_features", "photo_crops",
    "photo_files", "preprocess", "sample_photos", "ten_crop_probs", "ten_crops", "threads", "untrained_alexnet",
    "verify_weights_file", "weights_label",
]
