"""Inter-task transfer: the found cell as a backbone for detection, segmentation and keypoints.

``python -m relnas.transfer +experiment=voc_ssdlite backbone=RelativeNAS backbone.weights=<run>``
(also ``cityscapes_bisenet``, ``coco_simplebaseline``). Backbones: :mod:`relnas.transfer.backbones`;
tasks: :mod:`relnas.transfer.tasks` (the contract is in :mod:`relnas.transfer.tasks.base`).
"""
from relnas.transfer.backbones import (
    TORCHVISION_BACKBONES,
    Backbone,
    BackboneError,
    FeatureInfo,
    build_backbone,
    list_backbones,
)

__all__ = ["Backbone", "BackboneError", "FeatureInfo", "TORCHVISION_BACKBONES", "build_backbone", "list_backbones"]
