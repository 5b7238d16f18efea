"""course.retraining: the pool, per-layer attacks, widening, resumable runs, clear errors."""
import pytest
import torch
from torch import nn

from course.data import MNIST
from course.models import build_model
from course.retraining import (AdversarialPool, LayersAbove, activations_at, adversarial_training,
                               fooling_class_retraining, fresh_adversarial, widen_classifier)
from course.evolution import DirectEncoding


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = (torch.rand(n, 1, 28, 28, generator=g) * 0.3)
    images[torch.arange(n), 0, labels * 2 + 3, 4:24] = 1.0  # a class-dependent bar: learnable in one epoch
    return MNIST(images, labels, "synthetic", "train")


# --- the pool ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_replace_keeps_the_size_and_replaces_the_stated_share(fraction):
    pool = AdversarialPool(torch.zeros(40, 1, 4, 4), torch.zeros(40, dtype=torch.long))
    fresh = (torch.ones(40, 1, 4, 4), torch.full((40,), 3))
    slots = pool.replace(fraction, fresh, torch.Generator().manual_seed(0))
    assert len(pool) == 40 and pool.examples.shape == (40, 1, 4, 4)
    changed = pool.examples.reshape(40, -1).eq(1).all(1)
    assert int(changed.sum()) == round(fraction * 40) == len(set(slots.tolist()))
    assert bool((pool.labels[changed] == 3).all()) and bool((pool.labels[~changed] == 0).all())


def test_mix_appends_pool_entries_with_their_labels():
    pool = AdversarialPool(torch.arange(10.).view(10, 1), torch.arange(10))
    x, y = pool.mix(torch.full((4, 1), -1.0), torch.full((4,), -1), 6, torch.Generator().manual_seed(0))
    assert x.shape == (10, 1) and torch.equal(y[:4], torch.full((4,), -1))
    assert torch.equal(x[4:, 0].long(), y[4:])  # each entry kept its own label


def test_put_replaces_as_many_slots_as_it_is_given():
    pool = AdversarialPool(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    slots = pool.put((torch.ones(3, 2), torch.full((3,), 7)), torch.Generator().manual_seed(0))
    assert len(pool) == 10 and len(set(slots.tolist())) == 3
    assert int(pool.examples.eq(1).all(1).sum()) == 3 and int((pool.labels == 7).sum()) == 3
    pool.put((torch.ones(0, 2), torch.zeros(0, dtype=torch.long)))  # nothing usable: nothing changes
    assert int(pool.examples.eq(1).all(1).sum()) == 3
    with pytest.raises(ValueError, match="do not fit"):
        pool.put((torch.ones(11, 2), torch.zeros(11, dtype=torch.long)))


def test_pool_errors_are_clear():
    pool = AdversarialPool(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="needs 5 fresh"):
        pool.replace(0.5, (torch.zeros(2, 3), torch.zeros(2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pool.replace(1.5, (torch.zeros(20, 3), torch.zeros(20)))


# --- per-layer attacks ---------------------------------------------------------------------------

def test_layers_above_composes_to_the_whole_network():
    torch.manual_seed(0)
    model = build_model("fc100_100_10").eval()
    x = torch.rand(5, 1, 28, 28)
    for layer in (0, 1, 2):
        assert torch.allclose(LayersAbove(model, layer)(activations_at(model, x, layer)), model(x), atol=1e-5)


def test_hidden_layer_attack_stays_in_the_sigmoid_box():
    torch.manual_seed(0)
    model = build_model("fc100_100_10").eval()
    data = _data(8)
    ex, y, ok, dist = fresh_adversarial(model, data.images, data.labels, layer=2,
                                        generator=torch.Generator().manual_seed(0))
    assert ex.shape == (8, 100) and torch.equal(y, data.labels) and ok.dtype == torch.bool
    assert float(ex.min()) >= 0.0 and float(ex.max()) <= 1.0
    h = activations_at(model, data.images, 2)
    assert torch.allclose(dist, (ex - h).pow(2).mean(1).sqrt(), atol=1e-5)


def test_robustness_attacks_a_hidden_layer():
    from course.retraining import robustness
    torch.manual_seed(0)
    model = build_model("fc100_100_10").eval()
    data = _data(6)
    res = robustness(model, data.images, data.labels, layer=1, seed=0, c_steps=2, refine_steps=0, max_iter=10)
    assert res.adversarial.shape == (6, 100) and res.distortion.shape == (6,)


# --- adversarial training -----------------------------------------------------------------------

def _adv(folder, epochs, callback=None, layers=(0, 1, 2)):
    torch.manual_seed(0)
    model = build_model("fc100_100_10")
    return adversarial_training(model, _data(256), epochs=epochs, layers=layers, pool_size=32, refresh=0.25,
                                refresh_every=2, per_batch=8, warmup=1, batch_size=64, seed=0,
                                attack={"max_iter": 5}, name="t", folder=folder, progress=False,
                                callback=callback)


def test_adversarial_training_resumes_to_the_same_result(tmp_path):
    straight = _adv(tmp_path / "a", 3)

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _adv(tmp_path / "b", 3, callback=stop)
    resumed = _adv(tmp_path / "b", 3)
    assert resumed.info["resumed_from_epoch"] == 2
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_only_successful_examples_within_the_bound_enter_the_pool(monkeypatch):
    """Failed attacks and examples farther than max_distortion are dropped (they would be label noise)."""
    import course.retraining.adversarial as adv

    def fake(model, images, labels, layer=0, generator=None, attack=None, n_classes=10):
        n = len(images)
        dist = torch.rand(n, generator=generator) * 0.2
        success = torch.rand(n, generator=generator) < 0.7
        # every pixel of an example holds its distortion; a failed attempt holds 0.99 instead
        value = torch.where(success, dist, torch.full_like(dist, 0.99))
        return value.view(n, 1, 1, 1).expand(n, 1, 28, 28).clone(), labels, success, dist

    monkeypatch.setattr(adv, "fresh_adversarial", fake)
    torch.manual_seed(0)
    res = adversarial_training(build_model("fc100_100_10"), _data(256), epochs=3, layers=(0,), pool_size=40,
                               refresh=0.5, refresh_every=2, per_batch=8, warmup=1, batch_size=64,
                               max_distortion=0.05, progress=False)
    pool = res.pools[0]
    assert len(pool) == 40  # filled in several rounds: only about 0.7 · 0.25 of the attempts are usable
    assert float(pool.examples.max()) <= 0.05
    row = res.history[-1]
    assert 0.5 < row["attack_success"] < 0.9 and 0.05 < row["pool_kept"] < 0.3
    # without a bound every successful attempt is used, failures still are not
    torch.manual_seed(0)
    res = adversarial_training(build_model("fc100_100_10"), _data(256), epochs=2, layers=(0,), pool_size=40,
                               refresh=0.5, refresh_every=2, per_batch=8, warmup=1, batch_size=64, progress=False)
    assert float(res.pools[0].examples.max()) <= 0.2 and float(res.pools[0].examples.max()) > 0.05


def test_a_bound_no_attack_meets_is_a_clear_error():
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="cannot be filled"):
        adversarial_training(build_model("fc100_100_10"), _data(64), epochs=2, layers=(0,), pool_size=8,
                             per_batch=4, warmup=1, batch_size=32, attack={"max_iter": 3},
                             max_distortion=1e-9, progress=False)


def test_adversarial_training_bad_inputs(tmp_path):
    model = build_model("fc100_100_10")
    with pytest.raises(ValueError, match="larger than the training set"):
        adversarial_training(model, _data(20), epochs=1, pool_size=50, progress=False)
    with pytest.raises(ValueError, match="layers must lie"):
        adversarial_training(model, _data(20), epochs=1, layers=(3,), pool_size=5, progress=False)
    with pytest.raises(TypeError, match="fully connected"):
        adversarial_training(build_model("lenet"), _data(20), epochs=1, layers=(1,), pool_size=5, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        adversarial_training(model, _data(20), epochs=0, progress=False)
    with pytest.raises(ValueError, match="max_distortion must be positive"):
        adversarial_training(model, _data(20), epochs=1, pool_size=5, max_distortion=-0.1, progress=False)
    with pytest.raises(ValueError, match="no pool"):
        adversarial_training(model, _data(20), epochs=1, layers=(0,), pool_size=5, max_distortion={1: 0.1},
                             progress=False)


# --- the fooling class ---------------------------------------------------------------------------

def test_widened_model_keeps_the_ten_class_weights():
    torch.manual_seed(0)
    lenet = build_model("lenet").eval()
    wide = widen_classifier(lenet)
    assert wide.out.out_features == 11 and lenet.out.out_features == 10
    narrow, broad = lenet.state_dict(), wide.state_dict()
    for k, v in narrow.items():
        if k.startswith("out."):
            assert torch.equal(broad[k][:10], v)
        else:
            assert torch.equal(broad[k], v)
    # a fresh 11-class LeNet loads the widened weights (the checkpoint path)
    fresh = widen_classifier(build_model("lenet"))
    fresh.load_state_dict(broad)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fresh(x)[:, :10], lenet(x), atol=1e-6)


def _fool(folder, iterations, callback=None, model=None):
    torch.manual_seed(0)
    model = model or build_model("lenet")
    return fooling_class_retraining(model, _data(200), _data(50, seed=1), iterations=iterations,
                                    encodings={"direct": DirectEncoding()}, generations=2, offspring=8,
                                    per_iteration=20, collect_threshold=0.0, epochs=1, batch_size=64,
                                    name="t", folder=folder, progress=False, callback=callback)


def _untimed(rows):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def test_fooling_class_resumes_to_the_same_result(tmp_path):
    straight = _fool(tmp_path / "a", 2)
    assert [r["iteration"] for r in straight.rows] == [0, 1, 2]
    assert straight.model.out.out_features == 11 and len(straight.fooling) == 40
    assert straight.rows[1]["fooling_share"] == pytest.approx(20 / 220)
    # run one iteration, then ask for two: the first is reused
    _fool(tmp_path / "b", 1)
    extended = _fool(tmp_path / "b", 2)
    assert extended.info["resumed_from"] == 1

    def stop(k, row):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fool(tmp_path / "c", 2, callback=stop)
    resumed = _fool(tmp_path / "c", 2)
    for other in (extended, resumed):
        assert _untimed(other.rows) == _untimed(straight.rows)
        assert torch.equal(other.fooling, straight.fooling)
        for a, b in zip(straight.model.state_dict().values(), other.model.state_dict().values()):
            assert torch.equal(a, b)


def test_saved_states_are_keyed_by_the_code_that_made_them(tmp_path, monkeypatch):
    """A changed evolution or training code (another random stream, renderer, attack) does not
    resume from what the old code saved; the same code does."""
    import course.retraining.adversarial as adv
    import course.retraining.fooling_class as fc

    _fool(tmp_path / "f", 1)
    assert _fool(tmp_path / "f", 1).info["resumed_from"] == 1
    _adv(tmp_path / "a", 1)
    assert _adv(tmp_path / "a", 1).info["resumed_from_epoch"] == 1
    monkeypatch.setattr(fc, "source_fingerprint", lambda *modules: "other code")
    monkeypatch.setattr(adv, "source_fingerprint", lambda *modules: "other code")
    assert _fool(tmp_path / "f", 1).info["resumed_from"] == 0
    assert _adv(tmp_path / "a", 1).info["resumed_from_epoch"] == 0


def test_source_fingerprint_follows_every_file_of_a_package(tmp_path, monkeypatch):
    import importlib

    from course.checkpoints import source_fingerprint

    pkg = tmp_path / "fp_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "sub" / "b.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    package, module = importlib.import_module("fp_pkg"), importlib.import_module("fp_pkg.a")
    before = source_fingerprint(package)
    assert source_fingerprint(package) == before and len(before) == 16
    assert source_fingerprint(module) != before                       # one file is not the package
    (pkg / "sub" / "b.py").write_text("Y = 3\n")                       # a file deep inside
    after = source_fingerprint(package)
    assert after != before
    (pkg / "sub" / "b.py").write_text("Y = 2\n")
    assert source_fingerprint(package) == before


def test_fooling_class_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="iterations must be a positive"):
        _fool(tmp_path, 0)

    class Twelve(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 12)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ValueError, match="12 outputs"):
        _fool(tmp_path, 1, model=Twelve())
