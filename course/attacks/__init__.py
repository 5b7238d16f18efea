"""Adversarial attacks: Szegedy et al.'s box-constrained L-BFGS (§4.1), batched over images and c.

>>> from course.attacks import lbfgs_attack
>>> result = lbfgs_attack(model, images, targets)   # result.adversarial, .success, .distortion, .c
"""
from .lbfgs import AttackResult, LBFGSBResult, attack_objective, distortion, lbfgs_attack, lbfgsb_batched
from .transfer import (amplify, correct_for_all, gaussian_noise, lbfgs_settings, noise_of_distortion,
                       random_wrong_targets, transfer_error, transfer_heatmap)

__all__ = ["AttackResult", "LBFGSBResult", "attack_objective", "distortion", "lbfgs_attack", "lbfgsb_batched",
           "amplify", "correct_for_all", "gaussian_noise", "lbfgs_settings", "noise_of_distortion",
           "random_wrong_targets", "transfer_error", "transfer_heatmap"]
