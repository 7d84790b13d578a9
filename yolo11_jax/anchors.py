"""Anchor points of the three detection levels, the flattening of the head's levels in the same
order, and the decoding of ``ltrb`` distances into boxes.

The notebook builds, for each level, ``meshgrid(arange(h), arange(w), indexing='ij')``,
stacks it as ``(x, y)``, adds 0.5 and multiplies by the stride. Levels are
concatenated in the order of ``strides`` (8, 16, 32), each flattened row-major.
Predictions flattened with ``reshape(B, H * W, C)`` in NHWC follow the same order
(:func:`flatten_levels`). The loss and the post-processing both use these functions.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
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


def flatten_levels(predictions) -> tuple[list[jax.Array], list[tuple[int, int]]]:
    """The head's output, levels ``[(cls (B,H,W,C), ltrb (B,H,W,4), raw (B,H,W,4R)), ...]``, as one
    ``(B, A, ·)`` array per output (levels concatenated in order, each flattened row-major),
    and the feature sizes ``[(H, W), ...]``."""
    feat_sizes = [(int(level[0].shape[1]), int(level[0].shape[2])) for level in predictions]
    flat = [jnp.concatenate([level[i].reshape(level[i].shape[0], -1, level[i].shape[-1]) for level in predictions],
                            axis=1) for i in range(len(predictions[0]))]
    return flat, feat_sizes


def decode_ltrb(ltrb: jax.Array, anchor_points: jax.Array, anchor_strides: jax.Array) -> jax.Array:
    """Distances ``ltrb (..., A, 4)`` in grid units -> boxes ``(..., A, 4)`` xyxy in pixels, for
    anchors ``(A, 2)`` in pixels with strides ``(A,)``."""
    s = anchor_strides[:, None]
    return jnp.concatenate([anchor_points - ltrb[..., :2] * s, anchor_points + ltrb[..., 2:] * s], -1)


def cxcywh_to_xyxy(boxes_cxcywh: jax.Array, img_hw: tuple[int, int]) -> jax.Array:
    """Normalised ``cxcywh (..., 4)`` -> ``xyxy (..., 4)`` pixels of an image of ``img_hw = (h, w)``."""
    h, w = img_hw
    cx, cy, bw, bh = (boxes_cxcywh[..., i] for i in range(4))
    return jnp.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
