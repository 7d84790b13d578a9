"""Test configuration and fixtures. Parity tests run in float32 on the CPU; shared helpers are in
``tests/helpers.py``."""

import os

import jax
import pytest
import torch

from tests.helpers import XLA_CACHE_DIR

# Training runs (train_config's --compile-cache-dir default) use the same cache as the session,
# not the user's cache directory; subprocesses inherit it.
os.environ.setdefault("YOLO11_JAX_COMPILE_CACHE", XLA_CACHE_DIR)

jax.config.update("jax_default_matmul_precision", "highest")
# Several tests compile the same programs again (each train() run builds its own jitted
# step); a persistent compilation cache for the session turns those into cache hits.
jax.config.update("jax_compilation_cache_dir", XLA_CACHE_DIR)
# Everything, also the ~0.2 s programs that eager parameter initialisation compiles per shape.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
