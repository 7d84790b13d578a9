"""The optimizers of the recipes, one module each, imported here under one name:

* ``optim_notebook``: the notebook's AdamW on every parameter, its cosine schedule and the
  ``torch_compat`` details (``make_optimizer``, ``make_schedule``, ``skip_group``);
* ``optim_ultralytics``: Ultralytics' YOLO11 optimizer: parameter groups, optimizer=auto,
  accumulation, warmup, linear decay (``ultralytics_recipe``).

The recipes (``yolo11_jax.recipes``) pick one of them; nothing here knows which recipe runs.
"""

from yolo11_jax.optim_notebook import *  # noqa: F401,F403
from yolo11_jax.optim_notebook import __all__ as _notebook_all
from yolo11_jax.optim_ultralytics import *  # noqa: F401,F403
from yolo11_jax.optim_ultralytics import __all__ as _ultralytics_all

__all__ = [*_notebook_all, *_ultralytics_all]
