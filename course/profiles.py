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
        "train.epochs.fc10": 5,
        "train.epochs.mlp": 15,
        "train.epochs.ae_pretrain": 3,
        "train.epochs.ae": 10,
        "train.epochs.lenet": 3,
        "train.batch_size": 128,
        # --- 02 probing ---------------------------------------------------------
        "probing.k": 8,                # top images per direction (the paper's rows of 8)
        "probing.n_units": 100,        # units per layer scored (None = every live unit)
        "probing.n_random": 100,       # random directions per layer
        # --- 03 lbfgs -----------------------------------------------------------
        "lbfgs.n_images": 16,          # test images attacked
        "lbfgs.c_init": 10.0,          # largest c of the grid (c·‖r‖² + CE)
        "lbfgs.c_factor": 10.0,        # ratio between neighbours of the grid
        "lbfgs.c_steps": 4,            # grid points: c_init, c_init/c_factor, ...
        "lbfgs.refine_steps": 1,       # rounds refining c after the grid
        "lbfgs.refine_points": 3,      # values of c tried per round (1 = bisection)
        "lbfgs.max_iter": 50,          # L-BFGS iterations per run
        "lbfgs.history": 10,           # L-BFGS memory (pairs)
        # --- 04 transfer --------------------------------------------------------
        "transfer.n_images": 16,       # test images attacked per model for Tables 2-4
        # --- 05 stability -------------------------------------------------------
        "stability.power_iters": 300,  # power iterations checking each FFT conv bound (100: not 1e-3)
        "stability.alexnet_dense": False,  # AlexNet's 3 dense layers too (~10-40 s on 2 cores)
        # --- 06/07 evolution ----------------------------------------------------
        "evolution.initial": 20,       # random genomes in the first population
        "evolution.offspring": 20,     # offspring per generation
        "evolution.generations": 10,   # MAP-Elites generations (per run)
        "evolution.runs": 1,           # independent seeded runs per encoding
        # --- 08 gradient ascent -------------------------------------------------
        "ascent.steps": 30,            # gradient steps per fooling image
        # --- 09/10 retraining ---
        "adv.epochs": 6,               # epochs for every variant of lesson 09 (same for all)
        "adv.pool_size": 300,          # adversarial examples per pool
        "adv.refresh": 0.2,            # share of each pool replaced at a refresh
        "adv.refresh_every": 10,       # batches between refreshes
        "adv.per_batch": 32,           # pool entries mixed into each batch of train.batch_size
        "adv.n_attack": 32,            # held-out images attacked to measure robustness
        "fool.iterations": 2,          # retraining rounds with the fooling class
        "fool.generations": 10,        # MAP-Elites generations per encoding and iteration
        "fool.offspring": 20,          # offspring per generation
        "fool.per_iteration": 300,     # fooling images added per iteration (at most)
        "fool.epochs": 1,              # fine-tuning epochs per iteration
        # --- 11-12 imagenet (EfficientNet-Lite0, real weights; inputs shrunk to 96 px) ---
        "imagenet.size": 96,             # the network's input side (the real one: 224 for Lite0)
        "imagenet.batch_cap": 32,        # most images per forward pass (memory decides below this)
        "imagenet.n_heldout": 64,        # ImageFolder images used as the held-out set (kept in memory)
        "imagenet.photo_crops": 3,       # random crops per shipped photograph (probing)
        "imagenet.probing.n_dirs": 8,    # units and random directions compared
        "imagenet.lbfgs.n_images": 3,    # photographs turned into an ostrich
        "imagenet.lbfgs.c_init": 10.0,   # largest c of the grid
        "imagenet.lbfgs.c_steps": 3,     # c_init, c_init/10, ...
        "imagenet.lbfgs.refine_steps": 0,
        "imagenet.lbfgs.max_iter": 15,   # L-BFGS iterations per run
        "imagenet.transfer_models": ("efficientnet_lite1",),
        "imagenet.bounds.size": 32,      # input side for the Lipschitz bounds
        "imagenet.bounds.power_iters": 20,
        "imagenet.cppn.image_size": 96,  # side of the evolved images (= imagenet.size: scored whole)
        "imagenet.cppn.ten_crop": False, # the authors' 10-crop fitness (needs image_size > size)
        "imagenet.cppn.initial": 16,
        "imagenet.cppn.offspring": 16,
        "imagenet.cppn.generations": 3,
        "imagenet.direct.generations": 2,
        "imagenet.ascent.n_classes": 3,
        "imagenet.ascent.steps": 10,
        "imagenet.ascent.rms_step": 0.02,  # size of the first step (RMS over pixels) sets the rate
        "imagenet.retrain.photo_crops": 2, # natural images for the 1001-class head: crops per photograph
        "imagenet.retrain.epochs": 2,
        "imagenet.retrain.generations": 2,  # CPPN generations against the retrained network
    },
    "default": {
        "data.n_train": None,
        "data.n_test": None,
        "train.epochs.fc10": 10,
        "train.epochs.mlp": 30,
        "train.epochs.ae_pretrain": 10,
        "train.epochs.ae": 20,
        "train.epochs.lenet": 6,
        "train.batch_size": 128,
        # 03 lbfgs
        "lbfgs.n_images": 300,
        "lbfgs.c_init": 10.0,
        "lbfgs.c_factor": 10.0,
        "lbfgs.c_steps": 5,
        "lbfgs.refine_steps": 2,
        "lbfgs.refine_points": 3,
        "lbfgs.max_iter": 100,
        "lbfgs.history": 10,
        # 06/07 evolution
        "evolution.initial": 200,
        "evolution.offspring": 200,
        "evolution.generations": 200,
        "evolution.runs": 1,
        # 08 gradient ascent
        "ascent.steps": 500,
        # 05 stability
        "stability.power_iters": 300,
        "stability.alexnet_dense": True,
        # 04 transfer
        "transfer.n_images": 300,
        # 02 probing
        "probing.k": 8,
        "probing.n_units": None,
        "probing.n_random": 500,
        # 09/10 retraining
        "adv.epochs": 20,
        "adv.pool_size": 1000,
        "adv.refresh": 0.2,
        "adv.refresh_every": 100,
        "adv.per_batch": 32,
        "adv.n_attack": 100,
        "fool.iterations": 3,
        "fool.generations": 200,
        "fool.offspring": 100,
        "fool.per_iteration": 6000,
        "fool.epochs": 1,
        # 11-12 imagenet
        "imagenet.size": 224,
        "imagenet.batch_cap": 64,
        "imagenet.n_heldout": 1000,
        "imagenet.photo_crops": 24,
        "imagenet.probing.n_dirs": 100,
        "imagenet.lbfgs.n_images": 12,
        "imagenet.lbfgs.c_init": 10.0,
        "imagenet.lbfgs.c_steps": 4,
        "imagenet.lbfgs.refine_steps": 1,
        "imagenet.lbfgs.max_iter": 30,
        "imagenet.transfer_models": ("efficientnet_lite1", "efficientnet_lite2", "alexnet"),
        "imagenet.bounds.size": 224,
        "imagenet.bounds.power_iters": 50,
        "imagenet.cppn.image_size": 224,
        "imagenet.cppn.ten_crop": False,
        "imagenet.cppn.initial": 400,
        "imagenet.cppn.offspring": 400,  # the paper's
        "imagenet.cppn.generations": 320,  # 128,400 images (the paper: 2,000,400)
        "imagenet.direct.generations": 10,
        "imagenet.ascent.n_classes": 12,
        "imagenet.ascent.steps": 100,  # 80 gave 10-11 of 12 plain (rounding differs with the thread count); 100: 12
        "imagenet.ascent.rms_step": 0.02,
        "imagenet.retrain.photo_crops": 16,
        "imagenet.retrain.epochs": 10,
        "imagenet.retrain.generations": 40,
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
        # 03 lbfgs
        "lbfgs.n_images": 10000,
        "lbfgs.c_init": 100.0,
        "lbfgs.c_factor": 10.0,
        "lbfgs.c_steps": 6,
        "lbfgs.refine_steps": 3,
        "lbfgs.refine_points": 3,
        "lbfgs.max_iter": 200,
        "lbfgs.history": 10,
        # 06/07 evolution
        "evolution.initial": 200,
        "evolution.offspring": 200,
        "evolution.generations": 1000,
        "evolution.runs": 5,
        # 08 gradient ascent
        "ascent.steps": 500,
        # 05 stability
        "stability.power_iters": 1000,
        "stability.alexnet_dense": True,
        # 04 transfer
        "transfer.n_images": 10000,
        # 02 probing
        "probing.k": 8,
        "probing.n_units": None,
        "probing.n_random": 1000,
        # 09/10 retraining
        "adv.epochs": 30,
        "adv.pool_size": 10000,
        "adv.refresh": 0.2,
        "adv.refresh_every": 50,
        "adv.per_batch": 32,
        "adv.n_attack": 1000,
        "fool.iterations": 15,
        "fool.generations": 1000,
        "fool.offspring": 200,
        "fool.per_iteration": 6000,
        "fool.epochs": 2,
        # 11-12 imagenet
        "imagenet.size": 224,
        "imagenet.batch_cap": 256,
        "imagenet.n_heldout": 5000,
        "imagenet.photo_crops": 64,
        "imagenet.probing.n_dirs": 1000,
        "imagenet.lbfgs.n_images": 64,
        "imagenet.lbfgs.c_init": 10.0,
        "imagenet.lbfgs.c_steps": 5,
        "imagenet.lbfgs.refine_steps": 3,
        "imagenet.lbfgs.max_iter": 100,
        "imagenet.transfer_models": ("efficientnet_lite1", "efficientnet_lite2", "alexnet"),
        "imagenet.bounds.size": 224,
        "imagenet.bounds.power_iters": 200,
        "imagenet.cppn.image_size": 256,
        "imagenet.cppn.ten_crop": True,
        "imagenet.cppn.initial": 400,
        "imagenet.cppn.offspring": 400,
        "imagenet.cppn.generations": 5000,
        "imagenet.direct.generations": 5000,
        "imagenet.ascent.n_classes": 50,
        "imagenet.ascent.steps": 500,
        "imagenet.ascent.rms_step": 0.02,
        "imagenet.retrain.photo_crops": 64,
        "imagenet.retrain.epochs": 20,
        "imagenet.retrain.generations": 5000,
    },
}


def resolve_profile(name: str | None = None) -> str:
    """The profile in force: ``COURSE_PROFILE`` if set, else ``name``, else ``default``."""
    env = os.environ.get("COURSE_PROFILE")
    chosen = env or name or "default"
    if chosen not in PROFILES:
        where = "the environment variable COURSE_PROFILE" if env else "the profile argument"
        fix = ("unset COURSE_PROFILE (it overrides every notebook's profile) or set it to one of them"
               if env else "pass one of them")
        raise ValueError(f"Unknown profile {chosen!r} (from {where}). Profiles: {', '.join(NAMES)}; {fix}.")
    return chosen


def setting(key: str, profile: str | None = None) -> Any:
    """The value of ``key`` (e.g. ``"train.epochs.mlp"``) in the profile in force."""
    prof = resolve_profile(profile)
    table = PROFILES[prof]
    if key not in table:
        known = ", ".join(sorted(k for k in table if k.split(".")[0] == key.split(".")[0])) or "none"
        raise KeyError(f"No setting {key!r} in profile {prof!r}. Settings in that group: {known}.")
    return table[key]
