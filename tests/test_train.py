import os
import subprocess
import sys
import warnings

import pytest
import torch

from course import checkpoints
from course.checkpoints import checkpoint_paths, load_checkpoint, making, save_checkpoint
from course.models import build_model
from course.train import train_model


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_training_is_deterministic_on_cpu(tmp_cache):
    a = train_model("fc10_1e-4", seed=1, progress=False, device="cpu")
    b = train_model("fc10_1e-4", seed=1, progress=False, device="cpu", fresh=True)
    assert not a.info["cached"] and not b.info["cached"]
    assert _same(a.model, b.model)
    assert 0.0 <= a.info["test_error"] < 0.5 and a.info["source"] == "mnist-full"


def test_second_run_reuses_the_checkpoint(tmp_cache):
    first = train_model("fc10_1e-2", progress=False, device="cpu")
    second = train_model("fc10_1e-2", progress=False, device="cpu")
    assert second.info["cached"] and _same(first.model, second.model)
    assert second.info["test_error"] == first.info["test_error"]
    other_seed = train_model("fc10_1e-2", seed=5, progress=False, device="cpu")
    assert not other_seed.info["cached"]


def test_corrupt_checkpoint_is_moved_aside_and_rebuilt(tmp_cache):
    model, _ = train_model("fc10_1", progress=False, device="cpu")
    pt = next((tmp_cache / "checkpoints").glob("fc10_1-*.pt"))
    pt.write_bytes(pt.read_bytes()[:100])  # truncated, as after a crash
    with pytest.warns(UserWarning, match="unusable"):
        again = train_model("fc10_1", progress=False, device="cpu")
    assert not again.info["cached"] and _same(model, again.model)
    assert pt.with_name(pt.name + ".corrupt").exists() and pt.exists()


def test_mismatched_config_is_not_used(tmp_path):
    model = build_model("fc10_1e-4")
    config = {"name": "fc10_1e-4", "seed": 0}
    save_checkpoint(model, config, {"test_error": 0.1}, "fc10_1e-4", folder=tmp_path)
    pt, meta = checkpoint_paths("fc10_1e-4", config, tmp_path)
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 9'))
    with pytest.warns(UserWarning, match="config does not match"):
        assert load_checkpoint(build_model("fc10_1e-4"), config, "fc10_1e-4", folder=tmp_path) is None
    assert not pt.exists()


def test_writes_are_atomic(tmp_path, monkeypatch):
    model = build_model("fc10_1e-4")
    config = {"name": "fc10_1e-4"}
    save_checkpoint(model, config, {}, "fc10_1e-4", folder=tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(build_model("fc10_1e-4"), config, {}, "fc10_1e-4", folder=tmp_path)
    fresh = build_model("fc10_1e-4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(fresh, config, "fc10_1e-4", folder=tmp_path) is not None
    assert _same(fresh, model)
    assert not list(tmp_path.glob(".*tmp")), "a failed write left a temp file behind"


def test_p1_p2_models_differ(tmp_cache):
    p1 = train_model("fc10_1e-4", split="p1", progress=False, device="cpu")
    p2 = train_model("fc10_1e-4", split="p2", progress=False, device="cpu")
    assert p1.info["n_train"] == p2.info["n_train"] == 1500
    assert not _same(p1.model, p2.model)


def test_bad_split_is_explained():
    with pytest.raises(ValueError, match="p1"):
        train_model("fc10_1e-4", split="half")


def test_concurrent_processes_train_a_missing_model_once(tmp_cache):
    """Two lessons that need the same missing model at once: one trains it, the other waits for the
    lock and loads the checkpoint (without the lock both would train it)."""
    code = ("from course.train import train_model\n"
            "r = train_model('fc10_1e-4', progress=False, device='cpu')\n"
            "print(r.info['cached'], float(sum(p.double().sum() for p in r.model.parameters())))")
    env = {**os.environ, "COURSE_CACHE": str(tmp_cache), "COURSE_PROFILE": "ci", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cached, weights = zip(*(out.split() for out, _ in outs))
    assert sorted(cached) == ["False", "True"], outs
    assert len(set(weights)) == 1
    assert len(list((tmp_cache / "checkpoints").glob("fc10_1e-4-*.pt"))) == 1


def test_the_lock_is_held_and_released(tmp_path):
    config = {"name": "x"}
    lock_file = checkpoint_paths("x", config, tmp_path)[0].with_suffix(".lock")
    other = checkpoints.FileLock(lock_file)
    with making("x", config, tmp_path):
        with pytest.raises(checkpoints.Timeout):
            other.acquire(timeout=0)
    other.acquire(timeout=0)  # free again
    other.release()


def test_an_unwritable_cache_runs_without_a_lock(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self.lock_file))

    monkeypatch.setattr(checkpoints.FileLock, "acquire", refuse)
    ran = []
    with making("x", {"name": "x"}, tmp_path):
        ran.append(True)
    assert ran == [True]
