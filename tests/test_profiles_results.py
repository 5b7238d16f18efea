import json

import pytest
import torch

import course
from course.profiles import PROFILES, resolve_profile, setting


def test_every_profile_has_the_same_settings():
    keys = set(PROFILES["ci"])
    for name, table in PROFILES.items():
        assert set(table) == keys, f"profile {name} differs: {set(table) ^ keys}"


def test_environment_overrides_and_bad_names(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "paper")
    assert resolve_profile("ci") == "paper"
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="COURSE_PROFILE"):
        resolve_profile()
    monkeypatch.delenv("COURSE_PROFILE")
    assert resolve_profile(None) == "default"
    with pytest.raises(KeyError, match="train"):
        setting("train.epochs.nothing", "ci")


def test_record_writes_machine_readable_results(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    monkeypatch.setenv("COURSE_RESULTS_FILE", str(target))
    course.record("x.error", torch.tensor(0.25), paper=0.2, source="mnist-full")
    course.record("x.list", [torch.tensor(1.0), 2.0])
    data = json.loads(target.read_text())["metrics"]
    assert data["x.error"]["value"] == 0.25 and data["x.error"]["paper"] == 0.2
    assert data["x.error"]["source"] == "mnist-full" and data["x.error"]["profile"] == "ci"
    assert data["x.list"]["value"] == [1.0, 2.0]
    assert "x.error" in course.results_table()
