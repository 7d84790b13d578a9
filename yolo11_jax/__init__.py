"""yolo11-jax: YOLOv11 training in JAX and Flax NNX, numerically equal to the notebook's PyTorch.

Public entry points:

* ``YOLOv11``: the notebook's network (``yolo11_jax.model``); ``YOLO11``: Ultralytics' YOLO11
  detection family, scales n/s/m/l/x (``yolo11_jax.yolo11``); ``build_model`` / ``PRESETS``
  for named sizes (``notebook``, ``small``, ``tiny``, ``yolo11n`` ... ``yolo11x``).
* ``yolo11_jax.convert``: torch state dict <-> NNX, ``.safetensors`` files, fine-tuning loads
  (``load_pretrained``) and Ultralytics ``.pt`` checkpoints (``load_ultralytics``, read without
  Ultralytics or torch and without running code from the file).
"""

from yolo11_jax.model import YOLOv11, count_parameters
from yolo11_jax.presets import PRESETS, build_model, get_preset
from yolo11_jax.yolo11 import YOLO11

__all__ = ["YOLOv11", "YOLO11", "count_parameters", "PRESETS", "build_model", "get_preset"]
