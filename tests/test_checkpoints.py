"""Checkpoints with integrity: digests, non-finite weights, quarantine names, temp files, permissions."""
import json
import os
import stat
import time
import warnings

import pytest
import torch

from course import checkpoints
from course.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from course.models import build_model

NAME, CONFIG = "fc10_1e-4", {"name": "fc10_1e-4", "seed": 0}


def _saved(folder):
    model = build_model(NAME)
    save_checkpoint(model, CONFIG, {"test_error": 0.143}, NAME, folder=folder)
    return model, *checkpoint_paths(NAME, CONFIG, folder)


def _load(folder):
    return load_checkpoint(build_model(NAME), CONFIG, NAME, folder=folder)


def _no_warning_load(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return _load(folder)


def test_the_json_records_the_sha256_of_the_weights(tmp_path):
    _, pt, meta = _saved(tmp_path)
    assert json.loads(meta.read_text())["sha256"] == checkpoints.sha256(pt)
    assert _no_warning_load(tmp_path) == {"test_error": 0.143}


def test_flipped_bytes_are_caught_by_the_digest(tmp_path):
    _, pt, _ = _saved(tmp_path)
    blob = bytearray(pt.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 100] = bytes(b ^ 0xFF for b in blob[mid:mid + 100])  # inside the weights' bytes
    pt.write_bytes(bytes(blob))
    with pytest.warns(UserWarning) as caught:
        assert _load(tmp_path) is None
    text = str(caught[0].message)
    assert "SHA-256" in text and "damaged" in text and "rebuilding it now" in text
    assert pt.with_name(pt.name + ".corrupt").exists() and not pt.exists()


def test_nan_weights_written_over_the_file_are_rejected(tmp_path):
    model, pt, _ = _saved(tmp_path)
    torch.save({k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}, pt)
    with pytest.warns(UserWarning, match="SHA-256"):
        assert _load(tmp_path) is None


def test_nan_weights_saved_with_their_digest_are_rejected(tmp_path):
    model = build_model(NAME)
    with torch.no_grad():
        model.out.weight[0, 0] = float("nan")
    save_checkpoint(model, CONFIG, {"test_error": 0.143}, NAME, folder=tmp_path)
    with pytest.warns(UserWarning, match=r"NaN or inf in out\.weight.*rebuilding it now"):
        assert _load(tmp_path) is None


def test_a_damaged_json_is_quarantined_with_its_weights(tmp_path):
    _, pt, meta = _saved(tmp_path)
    meta.write_text('{"config": {"name": ')
    with pytest.warns(UserWarning, match="JSONDecodeError.*rebuilding it now"):
        assert _load(tmp_path) is None
    assert pt.with_name(pt.name + ".corrupt").exists() and meta.with_name(meta.name + ".corrupt").exists()


def test_truncated_file_is_quarantined_and_said_so(tmp_path):
    _, pt, meta = _saved(tmp_path)
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unusable.*moved aside to .*corrupt.*rebuilding it now"):
        assert _load(tmp_path) is None
    assert meta.with_name(meta.name + ".corrupt").exists()


def test_a_second_quarantine_never_overwrites_the_first(tmp_path):
    _, pt, _ = _saved(tmp_path)
    pt.write_bytes(b"first damaged copy")
    with pytest.warns(UserWarning):
        _load(tmp_path)
    _saved(tmp_path)
    pt.write_bytes(b"second damaged copy")
    with pytest.warns(UserWarning, match=r"corrupt\.2"):
        _load(tmp_path)
    assert pt.with_name(pt.name + ".corrupt").read_bytes() == b"first damaged copy"
    assert pt.with_name(pt.name + ".corrupt.2").read_bytes() == b"second damaged copy"


def test_a_checkpoint_from_before_digests_loads_and_gains_one(tmp_path):
    _, pt, meta = _saved(tmp_path)
    saved = json.loads(meta.read_text())
    del saved["sha256"]
    meta.write_text(json.dumps(saved))
    assert _no_warning_load(tmp_path) == {"test_error": 0.143}
    assert json.loads(meta.read_text())["sha256"] == checkpoints.sha256(pt)


def test_temp_files_of_interrupted_saves_are_removed_by_the_next_save(tmp_path):
    _, pt, meta = _saved(tmp_path)
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max default: no such process
    host = checkpoints_host()
    old_style = tmp_path / f".{pt.name}.abc123.tmp"            # today's names: no writer recorded
    killed = tmp_path / f".{pt.name}.{host}.{dead_pid}.xyz.tmp"
    live = tmp_path / f".{pt.name}.{host}.{os.getppid()}.qrs.tmp"  # a save still running elsewhere
    json_left = tmp_path / f".{meta.name}.{host}.{dead_pid}.j.tmp"
    fresh_old_style = tmp_path / f".{pt.name}.def456.tmp"        # may be an older version saving now
    ancient_live = tmp_path / f".{pt.name}.{host}.{os.getppid()}.old.tmp"
    for f in (old_style, killed, live, json_left, fresh_old_style, ancient_live):
        f.write_bytes(b"half a file")
    an_hour_ago, two_days_ago = time.time() - 3600, time.time() - 2 * 86400
    os.utime(old_style, (an_hour_ago, an_hour_ago))
    os.utime(ancient_live, (two_days_ago, two_days_ago))
    _saved(tmp_path)
    assert not old_style.exists() and not killed.exists() and not json_left.exists()
    assert not ancient_live.exists(), "a day-old temp file is a leftover, whoever wrote it"
    assert live.exists(), "a temp file whose writer is alive was removed"
    assert fresh_old_style.exists(), "a recent temp file without a recorded writer may be a save in progress"
    assert _no_warning_load(tmp_path) is not None


def checkpoints_host():
    from pathlib import Path

    from course.results import _tmp_prefix

    return _tmp_prefix(Path("x")).split(".")[2]


def test_files_follow_the_umask_so_a_class_can_share_the_cache(tmp_path):
    old = os.umask(0o002)
    try:
        _, pt, meta = _saved(tmp_path / "shared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pt.stat().st_mode) == 0o664
    assert stat.S_IMODE(meta.stat().st_mode) == 0o664
    old = os.umask(0o077)
    try:
        _, pt, _ = _saved(tmp_path / "private")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pt.stat().st_mode) == 0o600


def _deny(monkeypatch, cls, method):
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(cls, method, denied)


def test_an_unreadable_checkpoint_is_a_permission_problem_not_corruption(tmp_path, monkeypatch):
    _, pt, _ = _saved(tmp_path)
    if os.geteuid() == 0:  # root reads every file: make the read fail as it would for a student
        _deny(monkeypatch, type(pt), "read_bytes")
    else:
        pt.chmod(0o000)
    try:
        with pytest.warns(UserWarning) as caught:
            assert _load(tmp_path) is None
    finally:
        monkeypatch.undo()
        pt.chmod(0o644)
    text = " ".join(str(w.message) for w in caught)
    assert "permission denied" in text and "COURSE_CACHE" in text
    assert "unusable" not in text and "corrupt" not in text
    assert pt.exists() and not list(tmp_path.glob("*.corrupt*"))


def test_an_unwritable_cache_keeps_the_model_and_says_why(tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes every folder
        monkeypatch.setattr(checkpoints, "make_temp", lambda path: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied", str(path))))
    try:
        with pytest.warns(UserWarning, match="not saved: permission denied.*COURSE_CACHE"):
            assert save_checkpoint(build_model(NAME), CONFIG, {}, NAME, folder=folder) is None
    finally:
        folder.chmod(0o755)


def test_a_checkpoint_that_cannot_replace_the_old_one_is_kept_in_memory(tmp_path, monkeypatch):
    _saved(tmp_path)

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(checkpoints.os, "replace", denied)  # another user's file in a sticky folder
    with pytest.warns(UserWarning, match="not saved: permission denied"):
        assert save_checkpoint(build_model(NAME), CONFIG, {}, NAME, folder=tmp_path) is None
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp")), "the refused save left its temp file"


def test_the_lock_file_follows_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with checkpoints.making(NAME, CONFIG, tmp_path):
            lock = checkpoint_paths(NAME, CONFIG, tmp_path)[0].with_suffix(".lock")
            assert stat.S_IMODE(lock.stat().st_mode) & 0o060 == 0o060, "the class could not take the lock"
    finally:
        os.umask(old)


def test_another_users_damaged_file_is_never_moved(tmp_path, monkeypatch):
    _, pt, _ = _saved(tmp_path)
    pt.write_bytes(b"damaged")
    monkeypatch.setattr(checkpoints.os, "getuid", lambda: pt.stat().st_uid + 1)
    with pytest.warns(UserWarning, match="belongs to another user.*left in place"):
        assert _load(tmp_path) is None
    assert pt.read_bytes() == b"damaged" and not list(tmp_path.glob("*.corrupt*"))


def test_train_model_never_reports_a_damaged_checkpoint_as_cached(tmp_cache):
    from course.train import train_model

    first = train_model("fc10_1", progress=False, device="cpu")
    pt = next((tmp_cache / "checkpoints").glob("fc10_1-*.pt"))
    blob = bytearray(pt.read_bytes())
    blob[len(blob) // 2:len(blob) // 2 + 100] = bytes(100)
    pt.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="SHA-256"):
        again = train_model("fc10_1", progress=False, device="cpu")
    assert not again.info["cached"] and again.info["test_error"] == first.info["test_error"]


def test_a_save_in_progress_elsewhere_is_not_taken_for_damage(tmp_path, monkeypatch):
    """Another process has replaced the JSON but not yet the weights: read again, do not quarantine."""
    _, pt, meta = _saved(tmp_path)
    new = build_model(NAME)
    with torch.no_grad():
        new.out.bias.fill_(0.5)
    other = tmp_path / "other"
    save_checkpoint(new, CONFIG, {"test_error": 0.1}, NAME, folder=other)
    new_pt, new_meta = checkpoint_paths(NAME, CONFIG, other)
    meta.write_text(new_meta.read_text())  # the JSON is already the new one ...
    monkeypatch.setattr(checkpoints.time, "sleep", lambda s: pt.write_bytes(new_pt.read_bytes()))  # ... then the weights
    fresh = build_model(NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(fresh, CONFIG, NAME, folder=tmp_path) == {"test_error": 0.1}
    assert float(fresh.out.bias.detach()[0]) == 0.5 and not list(tmp_path.glob("*.corrupt*"))
