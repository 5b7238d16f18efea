"""ImageNet for the course: networks by name with their weights, preprocessing and classes
(:mod:`.registry`, :mod:`.weights`, :mod:`.classes`), real photographs and ImageFolders
(:mod:`.data`), and whole-image scoring (:mod:`.scoring`).

>>> from course import imagenet
>>> net = imagenet.create_model("efficientnet_lite0")      # real ImageNet weights, offline
>>> held = imagenet.heldout_images(net.spec)                # shipped photos (or COURSE_IMAGENET)
"""
from .classes import N_CLASSES, OSTRICH, class_index, class_names
from .data import HeldOut, folder_class_map, folder_images, heldout_images, imagenet_folder, photo_crops, \
    photo_files, sample_photos
from .registry import DEFAULT_MODEL, MODEL_NAMES, REGISTRY, ImageNetModel, ModelSpec, availability, \
    create_model, create_or_untrained, get_spec, load_alexnet
from .scoring import CropScorer, centre_crop, ten_crop_probs, ten_crops
from .weights import UNTRAINED, WeightsCorruptError, WeightsUnavailableError, how_to_get_alexnet

__all__ = [
    "CropScorer", "DEFAULT_MODEL", "HeldOut", "ImageNetModel", "MODEL_NAMES", "ModelSpec", "N_CLASSES", "OSTRICH",
    "REGISTRY", "UNTRAINED", "WeightsCorruptError", "WeightsUnavailableError", "availability", "centre_crop",
    "class_index", "class_names", "create_model", "create_or_untrained", "folder_class_map", "folder_images",
    "get_spec", "heldout_images", "how_to_get_alexnet", "imagenet_folder", "load_alexnet", "photo_crops",
    "photo_files", "sample_photos", "ten_crop_probs", "ten_crops",
]
