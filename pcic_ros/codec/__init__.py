"""The codec library: image + LiDAR scan + calibration <-> container bytes, with no ROS, no command line
and no plotting. ``api`` (``Codec``), ``projection`` (eq. 1-3), ``bitstream`` (the container),
``fixed_point`` (the exact entropy-parameter path), ``zoo`` (the model registry and checkpoint storage),
``frames`` (frame <-> model tensors).

The API's names are loaded on first use: the models (``pcic_ros.models``) use ``fixed_point`` from
here, and the registry uses the models, so importing ``api`` with the package would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Codec", "EncodedFrame", "ScanError", "default_device", "depth_input"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pcic_ros.codec.api"), name)
    raise AttributeError(f"module 'pcic_ros.codec' has no attribute {name!r}")
