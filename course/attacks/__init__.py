"""Adversarial attacks: Szegedy et al.'s box-constrained L-BFGS (§4.1), batched over images and c.

>>> from course.attacks import lbfgs_attack
>>> result = lbfgs_attack(model, images, targets)   # result.adversarial, .success, .distortion, .c
"""
from .lbfgs import AttackResult, LBFGSBResult, attack_objective, distortion, lbfgs_attack, lbfgsb_batched

__all__ = ["AttackResult", "LBFGSBResult", "attack_objective", "distortion", "lbfgs_attack", "lbfgsb_batched"]
