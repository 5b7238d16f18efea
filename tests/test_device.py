"""The heavy code on every device this machine has: the CPU always, CUDA and MPS when present.

On a CPU-only machine (CI) the ``cpu`` cases run: they check that results stay on the input's
device and are valid. The comparisons with the CPU run only on an accelerator, where they are the
checks that matter: the same attack, evolution, renderer and bounds agree with the CPU's to
rounding. On a machine with a GPU, run ``pytest tests/test_device.py -n 0``.
"""
from __future__ import annotations

import functools

import pytest
import torch

from course.attacks import distortion, lbfgs_attack
from course.data import load_mnist
from course.device import _mps_available
from course.evolution import CPPNEncoding, DirectEncoding, map_elites
from course.evolution.map_elites import classify
from course.fooling import gradient_ascent
from course.models import build_model
from course.stability import conv_operator_norm, power_iteration_norm
from course.train import fit


DEVICES = ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * _mps_available()
ACCELERATORS = [d for d in DEVICES if d != "cpu"] or [pytest.param("cuda", marks=pytest.mark.skip(
    reason="no CUDA or MPS device here: the CPU-vs-accelerator comparisons need one"))]


def _model(name: str, device: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name).eval().to(device)


def _on(t: torch.Tensor, device: str) -> bool:
    return t.device.type == torch.device(device).type


@functools.cache
def _trained(name: str) -> dict:
    """Weights of ``name`` trained briefly on 2,000 real digits (an untrained net is too flat to
    attack), once per test session."""
    torch.manual_seed(0)
    model = build_model(name)
    fit(model, load_mnist("train", n=2000, seed=0), epochs=3, seed=0, progress=False)
    return model.eval().state_dict()


@pytest.fixture(scope="module")
def digits():
    test = load_mnist("test", n=12, seed=3)
    targets = (test.labels + 1 + torch.arange(12) % 9) % 10
    return test.images, test.labels, targets


def _attack(device, digits, name="fc100_100_10"):
    images, labels, targets = digits
    model = build_model(name)
    model.load_state_dict(_trained(name))
    model = model.eval().to(device)
    return model, lbfgs_attack(model, images.to(device), targets.to(device), labels=labels.to(device),
                               c_steps=5, refine_steps=1, refine_points=1, max_iter=50)


@pytest.mark.parametrize("device", DEVICES)
def test_lbfgs_attack_stays_on_its_device(device, one_thread, digits):
    model, res = _attack(device, digits)
    images, _, targets = digits
    assert all(_on(t, device) for t in (res.adversarial, res.success, res.distortion, res.c))
    adv = res.adversarial
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        hit = model(adv).argmax(1) == targets.to(device)
    assert torch.equal(hit, res.success) and res.success.any()
    assert torch.allclose(res.distortion, distortion(images.to(device), adv), atol=1e-6)


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("name", ["fc100_100_10", "lenet"])
def test_lbfgs_attack_agrees_with_the_cpu(device, name, one_thread, digits):
    """On LeNet this also tells whether cuDNN's TF32 convolutions (on by default: ~1e-3 relative
    error) upset the line search's rounding tests; FC layers are plain float32 matmuls."""
    _, cpu = _attack("cpu", digits, name)
    _, acc = _attack(device, digits, name)
    assert torch.equal(acc.success.cpu(), cpu.success)
    both = cpu.success
    # Float32 on another device: the optimiser's path may differ by rounding, the minima hardly.
    assert abs(acc.mean_distortion() - cpu.mean_distortion()) <= 0.03 * cpu.mean_distortion()
    assert torch.allclose(acc.distortion.cpu()[both], cpu.distortion[both], rtol=0.15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("encoding", [DirectEncoding(), CPPNEncoding(max_hidden=6)], ids=["direct", "cppn"])
def test_map_elites_stays_on_its_device(device, encoding, one_thread):
    model = _model("lenet", device)
    run = map_elites(model, encoding, generations=4, offspring=24, seed=1, progress=False)
    archive = run.archive
    assert all(_on(t, device) for t in (archive.images, archive.scores, archive.filled))
    assert run.history.shape == (5, 10) and run.history.device.type == "cpu"
    # Each elite's stored score is the classifier's probability of its own cell on its image.
    probs = classify(model, archive.images)
    own = probs[torch.arange(10, device=probs.device), torch.arange(10, device=probs.device)]
    filled = archive.filled
    assert torch.allclose(own[filled], archive.scores[filled], rtol=1e-4, atol=1e-6)
    # Never worse than the initial population, cell by cell.
    assert bool((run.history[-1] >= run.history[0]).all())


@pytest.mark.parametrize("device", ACCELERATORS)
def test_cppn_renderer_agrees_with_the_cpu(device):
    enc = CPPNEncoding(shape=(3, 32, 32), max_hidden=6)
    g = torch.Generator().manual_seed(5)
    pop = enc.random(40, g)
    for gen in range(6):  # grow some hidden nodes and connections
        pop = enc.mutate(pop, g, gen)
    cpu = enc.render(pop)
    acc = enc.render({k: v.to(device) for k, v in pop.items()})
    assert _on(acc, device)
    assert torch.allclose(acc.cpu(), cpu, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_ascent_stays_on_its_device(device, one_thread):
    model = _model("lenet", device)
    res = gradient_ascent(model, list(range(10)), steps=15, progress=False)
    assert _on(res.images, device) and res.images.shape == (10, 1, 28, 28)
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    assert float(res.history[-1].mean()) > float(res.history[0].mean())  # it climbs


@pytest.mark.parametrize("device", ACCELERATORS)
def test_conv_bound_agrees_with_the_cpu(device):
    """The FFT bound (float32 on the device) and power iteration on the device's real conv."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, 5, 5)
    for stride in (1, 2):
        cpu = conv_operator_norm(w, 16, stride=stride, padding=2)
        acc = conv_operator_norm(w.to(device), 16, stride=stride, padding=2)
        assert _on(acc, device) and torch.allclose(acc.cpu(), cpu, rtol=1e-4)
        conv = lambda x: torch.nn.functional.conv2d(x, w.to(device), stride=stride, padding=2)  # noqa: B023
        power = power_iteration_norm(conv, (1, 3, 16, 16), iters=300, device=device)
        assert float(power) <= float(cpu) * (1 + 1e-4) and float(power) >= 0.8 * float(cpu)


def test_get_device_picks_the_best_and_honours_course_device(monkeypatch):
    from course import get_device

    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    best = "cuda" if "cuda" in DEVICES else ("mps" if "mps" in DEVICES else "cpu")
    assert get_device().type == best
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    for missing in sorted({"cuda", "mps"} - set(DEVICES)):
        monkeypatch.setenv("COURSE_DEVICE", missing)
        with pytest.raises(RuntimeError, match="not available here.*COURSE_DEVICE"):
            get_device()


def test_fast_precision_follows_the_cpu_and_the_environment(monkeypatch):
    from course.device import fast_precision

    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert fast_precision("cpu") == ("bfloat16" if native else "float32")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert fast_precision("cpu") == "float32"     # a CPU that would emulate bfloat16 gets float32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert fast_precision("cpu") == "bfloat16"
    monkeypatch.setenv("COURSE_PRECISION", "float32")
    assert fast_precision("cpu") == "float32"
    monkeypatch.setenv("COURSE_PRECISION", "half")
    with pytest.raises(ValueError, match="COURSE_PRECISION"):
        fast_precision("cpu")
