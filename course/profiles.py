"""One switch for scale: the ``ci``, ``default`` and ``paper`` profiles.

Every number that depends on the profile lives in :data:`PROFILES`, one table, so a lesson
never hides a literal. ``COURSE_PROFILE`` in the environment overrides the profile a notebook
or function asks for (so ``pytest`` and ``nbval`` can run every notebook in ``ci``).

- ``ci``: seconds per notebook, tiny data, used by the tests.
- ``default``: a laptop CPU in minutes; what a student gets.
- ``paper``: the paper's scale (full MNIST, the authors' generations); a GPU recommended.
"""
from __future__ import annotations

import os
from typing import Any

NAMES = ("ci", "default", "paper")

PROFILES: dict[str, dict[str, Any]] = {
    "ci": {
        # --- data ---------------------------------------------------------------
        "data.n_train": 3000,          # training images used (None = all)
        "data.n_test": 1000,           # held-out images used (None = all)
        # --- 01 training --------------------------------------------------------
        "train.epochs.fc10": 2,
        "train.epochs.mlp": 3,
        "train.epochs.ae_pretrain": 1,
        "train.epochs.ae": 2,
        "train.epochs.lenet": 2,
        "train.batch_size": 128,
        # --- 02 probing ---------------------------------------------------------
        # --- 03 lbfgs -----------------------------------------------------------
        # --- 04 transfer --------------------------------------------------------
        # --- 05 stability -------------------------------------------------------
        # --- 06/07 evolution ----------------------------------------------------
        # --- 08 gradient ascent -------------------------------------------------
    },
    "default": {
        "data.n_train": None,
        "data.n_test": None,
        "train.epochs.fc10": 10,
        "train.epochs.mlp": 30,
        "train.epochs.ae_pretrain": 10,
        "train.epochs.ae": 20,
        "train.epochs.lenet": 4,
        "train.batch_size": 128,
    },
    "paper": {
        "data.n_train": None,
        "data.n_test": None,
        "train.epochs.fc10": 30,
        "train.epochs.mlp": 60,
        "train.epochs.ae_pretrain": 30,
        "train.epochs.ae": 60,
        "train.epochs.lenet": 15,
        "train.batch_size": 128,
    },
}


def resolve_profile(name: str | None = None) -> str:
    """The profile in force: ``COURSE_PROFILE`` if set, else ``name``, else ``default``."""
    env = os.environ.get("COURSE_PROFILE")
    chosen = env or name or "default"
    if chosen not in PROFILES:
        where = "the environment variable COURSE_PROFILE" if env else "the profile argument"
        raise ValueError(
            f"Unknown profile {chosen!r} (from {where}). Use one of: {', '.join(NAMES)}."
        )
    return chosen


def setting(key: str, profile: str | None = None) -> Any:
    """The value of ``key`` (e.g. ``"train.epochs.mlp"``) in the profile in force."""
    prof = resolve_profile(profile)
    table = PROFILES[prof]
    if key not in table:
        known = ", ".join(sorted(k for k in table if k.split(".")[0] == key.split(".")[0])) or "none"
        raise KeyError(f"No setting {key!r} in profile {prof!r}. Settings in that group: {known}.")
    return table[key]
