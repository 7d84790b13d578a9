"""Shared fixtures and helpers. Parity tests run in float32 on the CPU."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from reference_torch.testing import randomize_batchnorm  # noqa: E402,F401  (re-exported for tests)

jax.config.update("jax_default_matmul_precision", "highest")
# Several tests compile the same programs again (each train() run builds its own jitted
# step); a persistent compilation cache for the session turns those into cache hits.
import tempfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

XLA_CACHE_DIR = os.environ.get("YOLO11_JAX_TEST_CACHE",
                               os.path.join(tempfile.gettempdir(), "yolo11_jax_test_xla_cache"))
jax.config.update("jax_compilation_cache_dir", XLA_CACHE_DIR)
# Everything, also the ~0.2 s programs that eager parameter initialisation compiles per shape.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def subprocess_env(**extra) -> dict:
    """Environment for a test's child Python process: the repository on the path, the same
    persistent compilation cache, unbuffered output, no multi-process settings."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=XLA_CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def rel_err(a, b) -> float:
    """``max|a - b| / max(1, max|b|)``: the parity metric of PARITY_NOTES.md (b is the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if a.size else 0.0


def rel_l2(a, b) -> float:
    """``||a - b|| / ||b||`` (b is the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


RUN_IMG_SIZE = 64


def make_run_dir(path, letterbox: bool = False):
    """A run directory as ``train.py`` leaves it (config.json + weights.safetensors), with
    random, untrained ``tiny`` weights: for the evaluate and predict commands."""
    import json

    from flax import nnx

    from yolo11_jax import convert
    from yolo11_jax.data import SHAPES_CLASS_NAMES
    from yolo11_jax.presets import build_model

    path.mkdir(parents=True, exist_ok=True)
    model = build_model("tiny", num_classes=4, rngs=nnx.Rngs(0))
    convert.save_safetensors(model, path / "weights.safetensors")
    cfg = dict(model="tiny", num_classes=4, class_names=list(SHAPES_CLASS_NAMES), img_size=RUN_IMG_SIZE,
               letterbox=letterbox, data="shapes", val_data=None, val_split="validation",
               shapes_img_size=RUN_IMG_SIZE, shapes_val_images=16)
    (path / "config.json").write_text(json.dumps(cfg))
    return path
