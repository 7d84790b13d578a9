"""Old name of :mod:`yolo11_jax.options` (the declarative option system); kept so that existing
imports keep working."""

from yolo11_jax.options import *  # noqa: F401,F403
from yolo11_jax.options import _base_type  # noqa: F401
