"""ImageNet support without ImageNet: the untrained AlexNet end to end, the 10-crop against a slow
reference, class names, a synthetic ImageFolder, and the weight-loading path with stand-in files."""
import hashlib

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from course.attacks import lbfgs_attack
from course.evolution import CPPNEncoding, map_elites
from course.fooling import gradient_ascent
from course.models import imagenet as im
from course.stability import layer_bounds


@pytest.fixture(scope="module")
def alexnet():
    model, source = im.load_alexnet(weights="none", device="cpu")
    assert source == im.UNTRAINED
    return model


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No COURSE_ALEXNET / COURSE_IMAGENET, and an empty private torch hub folder."""
    monkeypatch.delenv("COURSE_ALEXNET", raising=False)
    monkeypatch.delenv("COURSE_IMAGENET", raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _toy(n_classes=5):
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(n_classes))
    net(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.eval()


# --- class names, normalisation -----------------------------------------------------------------

def test_class_names_and_lookup():
    names = im.class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[im.OSTRICH] == "ostrich"
    assert im.class_index("Ostrich") == 9 and im.class_index(9) == 9 and im.class_index("9") == 9
    assert im.class_index("tree_frog") == im.class_index("tree frog") == names.index("tree frog")
    with pytest.raises(KeyError, match="Did you mean 'ostrich'"):
        im.class_index("ostrch")
    with pytest.raises(ValueError):
        im.class_index(1000)


def test_normalize_matches_torchvision():
    x = torch.rand(2, 3, 5, 4)
    want = TF.normalize(x, im.IMAGENET_MEAN, im.IMAGENET_STD)
    assert torch.allclose(im.normalize(x), want, atol=1e-6)
    net = _toy()
    assert torch.allclose(im.Normalized(net)(torch.rand(1, 3, 8, 8) * 0 + 0.5), net(im.normalize(torch.full((1, 3, 8, 8), 0.5))))


def test_preprocess_gives_unit_pixels():
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    x = im.preprocess(20, 16)(img)
    assert x.shape == (3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x[:, 8, 8], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-2)


# --- ten crops -----------------------------------------------------------------------------------

def test_ten_crops_are_five_crops_and_their_mirrors():
    x = torch.rand(3, 3, 12, 11)
    ours = im.ten_crops(x, 8)
    for i in range(len(x)):
        five = torch.stack(TF.five_crop(x[i], [8, 8]))       # torchvision's corners and centre
        assert torch.equal(ours[i, :5], five) and torch.equal(ours[i, 5:], five.flip(-1))
    even = torch.rand(2, 3, 12, 12)                           # even margins: torchvision's ten crops, reordered
    tv = torch.stack([torch.stack(TF.ten_crop(img, [8, 8])) for img in even])
    assert torch.equal(im.ten_crops(even, 8)[:, [5, 6, 7, 8, 9]], tv[:, [6, 5, 8, 7, 9]])


def _slow_ten_crop_probs(net, images, crop):
    """One image and one crop at a time, with explicit offsets (Caffe's oversample)."""
    out = []
    with torch.no_grad():
        for img in images:
            _, H, W = img.shape
            spots = [(0, 0), (0, W - crop), (H - crop, 0), (H - crop, W - crop),
                     (int(round((H - crop) / 2)), int(round((W - crop) / 2)))]
            probs = []
            for mirror in (False, True):
                for i, j in spots:
                    c = img[:, i:i + crop, j:j + crop]
                    c = TF.hflip(c) if mirror else c
                    probs.append(torch.softmax(net(c[None]), 1)[0])
            out.append(sum(probs) / 10)
    return torch.stack(out)


def test_ten_crop_probs_against_slow_reference():
    net = _toy()
    x = torch.rand(5, 3, 12, 11)
    slow = _slow_ten_crop_probs(net, x, 8)
    for bs in (None, 2):
        assert torch.allclose(im.ten_crop_probs(net, x, 8, batch_size=bs), slow, atol=1e-6)
    assert torch.allclose(im.CropScorer(net, 8, ten_crop=True)(x).exp(), slow, atol=1e-5)
    centre = torch.log_softmax(net(TF.center_crop(x, [8, 8])), 1)
    assert torch.allclose(im.CropScorer(net, 8, ten_crop=False)(x), centre, atol=1e-5)
    with pytest.raises(ValueError, match="larger"):
        im.ten_crops(x, 13)


# --- weights -------------------------------------------------------------------------------------

def test_missing_weights_say_how_to_get_them(no_env, monkeypatch):
    with pytest.raises(im.WeightsUnavailableError) as err:
        im.load_alexnet(download=False)
    msg = str(err.value)
    assert "not found" in msg and "COURSE_ALEXNET" in msg and "IMAGENET1K_V1" in msg and im.ALEXNET_FILE in msg
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    with pytest.raises(im.WeightsUnavailableError, match="COURSE_OFFLINE"):
        im.load_alexnet(download=True)


def test_course_alexnet_pointing_at_a_missing_file(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_ALEXNET", str(tmp_path / "nowhere" / im.ALEXNET_FILE))
    with pytest.raises(im.WeightsUnavailableError, match="COURSE_ALEXNET points at .* does not exist") as err:
        im.load_alexnet()
    assert "python -c" in str(err.value)


@pytest.mark.parametrize("name, content, match", [
    ("alexnet.pth", b"not a torch file at all", "could not be read"),
    (im.ALEXNET_FILE, b"truncated download", "fails its digest"),
])
def test_corrupt_files_are_refused(no_env, monkeypatch, tmp_path, name, content, match):
    bad = tmp_path / name
    bad.write_bytes(content)
    monkeypatch.setenv("COURSE_ALEXNET", str(bad))
    with pytest.raises(im.WeightsCorruptError, match=match):
        im.load_alexnet()


def test_a_state_dict_of_another_network_is_refused(no_env, tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(_toy().state_dict(), path)
    with pytest.raises(im.WeightsCorruptError, match="not a torchvision AlexNet"):
        im.load_alexnet(path=path)


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory):
    """A stand-in for torchvision's file: AlexNet's exact keys and shapes (seed 3), saved under a
    name that carries the first 8 hex digits of its own SHA-256, as torchvision's does."""
    folder = tmp_path_factory.mktemp("weights")
    model = im.untrained_alexnet(seed=3)
    tmp = folder / "alexnet.tmp"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"alexnet-fake-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest, model


def test_fake_weights_load_through_the_real_path(no_env, monkeypatch, fake_weights):
    path, digest, model = fake_weights
    # 1. a user's checkpoint: verified against the prefix in its name, loaded strictly
    loaded, source = im.load_alexnet(path=path, device="cpu")
    assert source == f"checkpoint:{path.name}"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert not loaded.training
    # 2. the torch hub cache, as if this file were torchvision's: source is the ImageNet tag
    (no_env / "checkpoints").mkdir(parents=True)
    (no_env / "checkpoints" / path.name).symlink_to(path)
    monkeypatch.setattr(im, "ALEXNET_FILE", path.name)
    monkeypatch.setattr(im, "ALEXNET_SHA256_PREFIX", digest[:8])
    loaded, source = im.load_alexnet(download=False, device="cpu")
    assert source == im.WEIGHTS_TAG and "ImageNet" in im.weights_label(source)
    assert torch.equal(loaded.features[0].weight, model.features[0].weight)
    assert "untrained" in im.weights_label(im.UNTRAINED)


# --- held-out images -----------------------------------------------------------------------------

def test_shipped_photos(no_env):
    assert any(p.name == "grace_hopper.jpg" for p in im.photo_files())
    photos = im.sample_photos(32)
    assert photos.images.shape[1:] == (3, 32, 32) and photos.labels is None
    assert 0 <= photos.images.min() and photos.images.max() <= 1 and photos.images.std() > 0.05
    a, b = im.photo_crops(3, 24, seed=1), im.photo_crops(3, 24, seed=1)
    assert torch.equal(a.images, b.images) and len(a) == 3 * len(photos)
    held = im.heldout_images(24, per_photo=2)
    assert held.source == "sample-photos" and len(held) == 2 * len(photos)


def _synthetic_folder(root, classes, per_class=3):
    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            arr = (torch.rand(20, 24, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(root / c / f"{k}.png")
    return root


def test_synthetic_imagefolder(no_env, monkeypatch, tmp_path):
    root = _synthetic_folder(tmp_path / "val", ["ostrich", "goldfish", "tench"])
    ds = im.imagenet_folder(root, resize=18, crop=16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16)
    held = im.folder_images(ds, n=None)
    assert sorted(held.labels.unique().tolist()) == [0, 1, 9] and held.images.shape == (9, 3, 16, 16)
    assert im.imagenet_folder(None) is None
    monkeypatch.setenv("COURSE_IMAGENET", str(root))
    assert len(im.heldout_images(16, n=4)) == 4
    # folder names that cannot be placed among ImageNet's classes
    with pytest.raises(ValueError, match="class names"):
        im.imagenet_folder(_synthetic_folder(tmp_path / "bad", ["cats", "dogs"], 1))
    with pytest.raises(ValueError, match="all 1000"):
        im.folder_class_map(["n01440764", "n01443537"])
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert im.folder_class_map(wnids[::-1])["n00000009"] == 9
    with pytest.raises(FileNotFoundError):
        im.imagenet_folder(tmp_path / "missing")


# --- memory ---------------------------------------------------------------------------------------

def test_batch_size_follows_memory(monkeypatch):
    net = im.Normalized(_toy())
    assert 1 <= im.auto_batch_size(net, (3, 8, 8), cap=64) <= 64
    monkeypatch.setattr(im, "available_memory", lambda device=None: 10_000)
    assert im.auto_batch_size(net, (3, 8, 8), cap=64) < 64
    monkeypatch.setattr(im, "available_memory", lambda device=None: 1)
    assert im.auto_batch_size(net, (3, 8, 8)) == 1


def test_threads_are_restored():
    before = torch.get_num_threads()
    with im.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_available_memory_is_positive():
    from course.models.imagenet import available_memory

    assert available_memory("cpu") > 0


# --- the untrained path end to end on tiny inputs ------------------------------------------------

def test_untrained_alexnet_end_to_end(alexnet, tmp_path):
    S, R = 64, 73
    net = im.Normalized(alexnet).requires_grad_(False)
    held = im.photo_crops(2, S)
    with torch.no_grad():
        probs = torch.softmax(net(held.images), 1)
    assert probs.shape == (len(held), 1000)
    # L-BFGS toward the class the untrained net ranks second (ostrich is out of its reach)
    target = int(probs.mean(0).argsort(descending=True)[1])
    pred = probs.argmax(1)
    keep = (pred != target).nonzero().flatten()[:1]
    attack = lbfgs_attack(net, held.images[keep], torch.full((1,), target), labels=pred[keep], c_init=1.0,
                          c_steps=4, refine_steps=0, max_iter=10, ftol=1e-9, pgtol=1e-9)
    assert attack.adversarial.shape == (1, 3, S, S) and 0 <= attack.adversarial.min() and attack.adversarial.max() <= 1
    # bounds of the five convolutions at this input size
    convs = [b for b in layer_bounds(alexnet.features, (1, 3, S, S)) if b.kind == "conv"]
    assert len(convs) == 5 and all(b.bound > 0 for b in convs)
    # MAP-Elites with colour CPPNs on 1000 cells, 10-crop scoring
    result = map_elites(im.CropScorer(net, S, ten_crop=True), CPPNEncoding(shape=(3, R, R)), generations=1,
                        offspring=3, initial=3, progress=False)
    assert len(result.archive) == 1000 and result.archive.images.shape[1:] == (3, R, R)
    assert 0 < result.archive.scores.median() < 1
    # gradient ascent, with the rate from the first step's size
    lr = im.ascent_lr(net, [9, 1], (3, S, S), rms_step=0.02)
    ascent = gradient_ascent(net, [9, 1], steps=2, lr=lr, shape=(3, S, S), progress=False)
    assert lr > 0 and ascent.images.shape == (2, 3, S, S) and ascent.history.shape == (3, 2)


def test_fine_tune_with_a_fooling_class(alexnet, no_env, tmp_path):
    root = _synthetic_folder(tmp_path / "val", ["ostrich", "goldfish", "tench"], per_class=2)
    real = im.folder_images(im.imagenet_folder(root, resize=73, crop=64))
    net = im.Normalized(alexnet).requires_grad_(False)
    fooling = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 0.2
    wide, info = im.fine_tune_fooling_class(net, real.images, real.labels, fooling, epochs=40, lr=0.05,
                                            progress=False)
    last = wide.net.classifier[6]
    assert last.out_features == 1001 and info["fooling_class"] == 1000
    assert torch.equal(wide.net.features[0].weight, alexnet.features[0].weight)   # frozen
    assert alexnet.classifier[6].out_features == 1000                             # original untouched
    with torch.no_grad():
        assert (wide(fooling).argmax(1) == 1000).all()
        assert (wide(real.images).argmax(1) == real.labels).float().mean() >= 0.5
    streamed, _ = im.fine_tune_fooling_class(net, im.imagenet_folder(root, resize=73, crop=64), None, fooling,
                                             epochs=1, progress=False)   # a dataset, streamed
    assert streamed.net.classifier[6].out_features == 1001
    with pytest.raises(ValueError, match="same shape"):
        im.fine_tune_fooling_class(net, real.images, real.labels, torch.rand(1, 3, 32, 32), progress=False)
