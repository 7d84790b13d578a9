"""yolo11-jax: YOLOv11 training in JAX and Flax NNX, numerically equal to the notebook's PyTorch.

Public entry points:

* ``YOLOv11``: the network (``yolo11_jax.model``); ``build_model`` / ``PRESETS`` for named sizes.
* ``yolo11_jax.convert``: torch state dict <-> NNX, and ``.safetensors`` files.
"""

from yolo11_jax.model import YOLOv11, count_parameters
from yolo11_jax.presets import PRESETS, build_model, get_preset

__all__ = ["YOLOv11", "count_parameters", "PRESETS", "build_model", "get_preset"]
