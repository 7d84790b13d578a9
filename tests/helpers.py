"""Helpers shared by the tests: parity metrics, layout conversions, synthetic targets and batches,
run directories, child-process environments. (Fixtures live in ``conftest.py``.)"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
import torch
from flax import nnx

from reference_torch.testing import randomize_batchnorm  # noqa: F401  (re-exported for tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_CACHE_DIR = os.environ.get("YOLO11_JAX_TEST_CACHE",
                               os.path.join(tempfile.gettempdir(), "yolo11_jax_test_xla_cache"))


def subprocess_env(**extra) -> dict:
    """Environment for a test's child Python process: the repository on the path, the same
    persistent compilation cache, unbuffered output, no multi-process settings."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=XLA_CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def rel_err(a, b) -> float:
    """``max|a - b| / max(1, max|b|)``: the parity metric of docs/parity.md (b is the reference)."""
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


def make_targets(rng, batch_size, num_classes, counts, max_boxes):
    """Padded random targets: ``boxes_cxcywh (B, M, 4)`` normalised, ``labels (B, M)``, ``mask (B, M)``,
    with ``counts[i]`` real boxes in image ``i``."""
    boxes = np.zeros((batch_size, max_boxes, 4), np.float32)
    labels = np.zeros((batch_size, max_boxes), np.int32)
    mask = np.zeros((batch_size, max_boxes), bool)
    for i, n in enumerate(counts):
        cxcy = rng.uniform(0.15, 0.85, (n, 2))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        boxes[i, :n] = np.concatenate([cxcy, wh], 1)
        labels[i, :n] = rng.integers(0, num_classes, n)
        mask[i, :n] = True
    return boxes, labels, mask


def torch_targets(boxes, labels, mask):
    """The padded targets as the notebook's per-image lists of tensors."""
    return ([torch.from_numpy(boxes[i][mask[i]]) for i in range(len(boxes))],
            [torch.from_numpy(labels[i][mask[i]]).long() for i in range(len(boxes))])


def make_batches(num_classes, img_size, batch_size, num_batches, max_boxes, seed=0):
    """Random training batches (images and padded targets), at least 2 boxes in each first image."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        counts = rng.integers(0, max_boxes + 1, batch_size)
        counts[0] = max(counts[0], 2)
        boxes, labels, mask = make_targets(rng, batch_size, num_classes, counts, max_boxes)
        images = rng.random((batch_size, img_size, img_size, 3), dtype=np.float32)
        batches.append(dict(images=images, boxes_cxcywh=boxes, labels=labels, mask=mask))
    return batches


def loss_and_grads(model: nnx.Module, batch, **loss_kwargs):
    """One train-mode forward and backward: ``(parts, grads)``; grads is an ``nnx.State`` of
    the model's Params. The model's BatchNorm statistics are updated in place."""
    from yolo11_jax.step import make_loss_fn, split_model

    model.train()
    graphdef, params, rest = split_model(model)
    fn = jax.jit(jax.value_and_grad(make_loss_fn(graphdef, **loss_kwargs), has_aux=True))
    (_, (parts, new_rest)), grads = fn(params, rest, batch)
    nnx.update(model, new_rest)
    return parts, grads


RUN_IMG_SIZE = 64


def make_run_dir(path, letterbox: bool = False):
    """A run directory as ``train.py`` leaves it (config.json + weights.safetensors), with
    random, untrained ``tiny`` weights: for the evaluate and predict commands."""
    import json

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
