"""Test configuration and fixtures. Parity tests run in float32 on the CPU; shared helpers are in
``tests/helpers.py``."""

import os

import jax
import pytest
import torch

from tests.helpers import XLA_CACHE_DIR

# The commands' default compilation cache (train, predict and evaluate turn it on) is the test
# session's, never the user's ~/.cache/yolo11_jax/xla.
os.environ.setdefault("YOLO11_JAX_COMPILE_CACHE", XLA_CACHE_DIR)
# ... and the shapes data's box index (data/shapes.py) is kept beside it, not in ~/.cache.
os.environ.setdefault("YOLO11_JAX_SHAPES_CACHE", XLA_CACHE_DIR + "_shapes")

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


def pytest_collection_modifyitems(config, items):
    """``multiprocess`` and ``network`` tests are slow too: ``-m "not slow"`` (the fast tier) leaves
    them out, and ``-m "not network"`` leaves out only those."""
    for item in items:
        if item.get_closest_marker("multiprocess") or item.get_closest_marker("network"):
            item.add_marker(pytest.mark.slow)
