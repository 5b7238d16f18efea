"""Training the blind spots away: adversarial training (Szegedy et al.) and a fooling class (Nguyen et al.).

>>> from course.retraining import AdversarialPool, adversarial_training, widen_classifier, fooling_class_retraining

- :mod:`.pool`: a fixed-size pool of adversarial examples, part of it replaced with fresh ones;
- :mod:`.layers`: a fully connected net cut at a hidden layer (the activations there, the layers above);
- :mod:`.adversarial`: training with pools of adversarial examples, for the input or for every layer;
- :mod:`.fooling_class`: evolve fooling images, add them as class n+1, retrain, repeat;
- :mod:`.imagenet_head`: the same on ImageNet, with a 1001st output and only the last layer trained;
- :mod:`.state`: atomic, config-keyed checkpoints of a whole training state (to resume a run).
"""
from .adversarial import (TRAINING_ATTACK, AdversarialTrainingResult, adversarial_training, fresh_adversarial,
                          robustness)
from .fooling_class import (FoolingClassResult, add_fooling_class, fooling_class_retraining, model_fingerprint,
                            widen_classifier)
from .imagenet_head import fine_tune_fooling_class, penultimate_features
from .layers import LayersAbove, activations_at, n_hidden_layers
from .pool import AdversarialPool
from .state import load_state, save_state

__all__ = [
    "AdversarialPool", "AdversarialTrainingResult", "FoolingClassResult", "LayersAbove", "TRAINING_ATTACK",
    "activations_at", "add_fooling_class", "fine_tune_fooling_class", "adversarial_training", "fooling_class_retraining", "fresh_adversarial",
    "load_state", "model_fingerprint", "n_hidden_layers", "penultimate_features", "robustness", "save_state", "widen_classifier",
]
