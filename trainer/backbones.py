"""Backbone registry: name -> Keras application constructor, its preprocess_input, sizes.

Importing this module does not import TensorFlow; `constructor()` and
`preprocess_input()` import the Keras application module on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    module: str  # tf_keras.applications submodule holding its preprocess_input
    default_size: int  # the ImageNet input size the weights were trained at
    min_size: int  # the smallest input Keras accepts with include_top=False

    def _module(self):
        return importlib.import_module(f"tf_keras.applications.{self.module}")

    def constructor(self) -> Callable:
        return getattr(importlib.import_module("tf_keras.applications"), self.name)

    def preprocess_input(self, images):
        """The backbone's own input normalisation, on float images in [0, 255]."""
        return self._module().preprocess_input(images)


_SPECS = [
    BackboneSpec("MobileNetV2", "mobilenet_v2", 224, 32),
    BackboneSpec("MobileNetV3Small", "mobilenet_v3", 224, 32),
    BackboneSpec("MobileNetV3Large", "mobilenet_v3", 224, 32),
    BackboneSpec("EfficientNetB0", "efficientnet", 224, 32),
    BackboneSpec("EfficientNetV2B0", "efficientnet_v2", 224, 32),
    BackboneSpec("ResNet50", "resnet50", 224, 32),
    BackboneSpec("ResNet50V2", "resnet_v2", 224, 32),
    BackboneSpec("Xception", "xception", 299, 71),
    BackboneSpec("InceptionV3", "inception_v3", 299, 75),
    BackboneSpec("DenseNet121", "densenet", 224, 32),
]
_BY_NAME = {s.name: s for s in _SPECS}


def names() -> list[str]:
    return [s.name for s in _SPECS]


def get(name: str) -> BackboneSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(names())}") from None
