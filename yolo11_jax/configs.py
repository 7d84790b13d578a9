"""Old name of :mod:`yolo11_jax.train_config` (the training options and the named configurations);
kept so that existing imports keep working."""

from yolo11_jax.train_config import *  # noqa: F401,F403
from yolo11_jax.train_config import (CONFIGS, DEPRECATED_CONFIG_NAMES, DESCRIPTIONS, DTYPES,  # noqa: F401
                                     RENAMED_KEYS, TrainConfig, named_config)
