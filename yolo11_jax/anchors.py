"""Anchor points of the three detection levels, in the notebook's order.

The notebook builds, for each level, ``meshgrid(arange(h), arange(w), indexing='ij')``,
stacks it as ``(x, y)``, adds 0.5 and multiplies by the stride. Levels are
concatenated in the order of ``strides`` (8, 16, 32), each flattened row-major.
Predictions flattened with ``reshape(B, H * W, C)`` in NHWC follow the same order.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

STRIDES: tuple[int, int, int] = (8, 16, 32)


def feature_sizes(img_hw: tuple[int, int], strides: Sequence[int] = STRIDES) -> list[tuple[int, int]]:
    """Feature map sizes ``[(H / s, W / s), ...]`` for an input of ``img_hw`` pixels."""
    h, w = img_hw
    return [(h // s, w // s) for s in strides]


def row_chunk_size(feat_sizes: Sequence[tuple[int, int]]) -> int:
    """Anchors per chunk such that every chunk is a strip of one row of one feature map: the
    greatest common divisor of the map widths (20 at 640 px). ``task_aligned_assign`` takes
    it as its ``chunk_size`` hint."""
    return math.gcd(*(w for _, w in feat_sizes))


def make_anchor_points(
    feat_sizes: Sequence[tuple[int, int]], strides: Sequence[int] = STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres and their strides.

    Args:
      feat_sizes: ``[(H_l, W_l), ...]`` per level.
      strides: stride in pixels per level.

    Returns:
      ``anchor_points_xy (A, 2)`` float32, cell centres in pixels, and
      ``anchor_strides (A,)`` float32, with ``A = sum(H_l * W_l)``. Constants
      (NumPy), so they fold into a jitted computation.
    """
    points, per_anchor_strides = [], []
    for (h, w), s in zip(feat_sizes, strides):
        sy, sx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        xy = np.stack([sx.reshape(-1), sy.reshape(-1)], axis=-1).astype(np.float32)
        points.append((xy + 0.5) * np.float32(s))
        per_anchor_strides.append(np.full((h * w,), s, dtype=np.float32))
    return np.concatenate(points, 0), np.concatenate(per_anchor_strides, 0)
