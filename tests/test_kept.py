"""Kept images: PNGs plus exact tensors that re-score to their recorded confidences, never overwritten."""
import pytest
import torch
from torch import nn

from course import kept


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)).eval()


def test_kept_images_rescore_to_their_confidences(tmp_path):
    net = _net()
    images = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 5, 2, 2])
    conf = kept.rescore(images, classes, net)
    folder = kept.keep_images("fooling set", images, classes, conf, network="toy:seed0",
                              class_names=[f"class {i}" for i in range(6)], folder=tmp_path, target=3)
    assert folder == tmp_path / "fooling_set"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["000_class_0.png", "001_class_5.png", "002_class_2.png", "003_class_2.png"]
    rec = kept.load_kept(folder)
    assert rec["network"] == "toy:seed0" and rec["target"] == 3 and torch.equal(rec["classes"], classes)
    assert torch.equal(rec["images"], images)
    assert torch.allclose(kept.rescore(rec["images"], rec["classes"], net), rec["confidences"], atol=1e-6)
    back = kept.load_pngs(folder)                     # 8-bit: within half a grey level of the floats
    assert back.shape == images.shape and (back - images).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back, kept.to_uint8(images).float() / 255)


def test_a_second_set_never_overwrites_the_first(tmp_path):
    x = torch.rand(1, 1, 4, 4)
    a = kept.keep_images("run", x, [1], [0.5], network="n", folder=tmp_path)
    b = kept.keep_images("run", x * 0, [2], [0.9], network="n", folder=tmp_path)
    c = kept.keep_images("run", x, [3], [0.1], network="n", folder=tmp_path)
    assert (a.name, b.name, c.name) == ("run", "run-2", "run-3")
    assert kept.load_kept(a)["classes"].tolist() == [1] and kept.load_kept(b)["classes"].tolist() == [2]


def test_the_run_folder_is_beside_the_results_file(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_RESULTS_FILE", str(tmp_path / "run" / "12.metrics.json"))
    assert kept.images_folder() == (tmp_path / "run" / "images").resolve()
    monkeypatch.delenv("COURSE_RESULTS_FILE")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    assert kept.images_folder() == tmp_path / "cache" / "images"


def test_bad_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        kept.keep_images("x", torch.rand(3, 4, 4), [0, 1, 2], [1, 1, 1], network="n", folder=tmp_path)
    with pytest.raises(ValueError, match="2 images but 1 classes"):
        kept.keep_images("x", torch.rand(2, 3, 4, 4), [0], [1.0], network="n", folder=tmp_path)
