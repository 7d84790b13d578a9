"""IoU, GIoU, DIoU and CIoU between boxes in xyxy format, as the notebook's ``compute_iou``.

``bbox_iou`` is pairwise, ``(N, 4) x (M, 4) -> (N, M)``; ``bbox_iou_elementwise``
pairs rows, ``(..., 4) x (..., 4) -> (...)``, which is what the loss needs (the
notebook builds the pairwise matrix over the foreground and takes its diagonal:
the same values and gradients at O(N) memory).

Both are one formula on broadcast arrays, with the notebook's ``eps`` placement,
its ``clamp(0)`` on the intersection sides (gradient passes at exactly 0, as
``torch.clamp``), and CIoU's ``alpha`` under ``stop_gradient`` (``no_grad`` in
the notebook). Every division has ``+ eps`` in its denominator, so values and
gradients are finite for valid boxes, including identical, far-apart,
zero-width / zero-height boxes and all-zero padding rows.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MODES = ("iou", "giou", "diou", "ciou")


def _clamp_min0(x: jax.Array) -> jax.Array:
    # torch.clamp(min=0) passes the gradient at x == 0; jnp.maximum would halve it.
    return jnp.where(x >= 0, x, 0.0)


def _iou_broadcast(b1: jax.Array, b2: jax.Array, mode: str, eps: float) -> jax.Array:
    """IoU variant of boxes ``b1 (..., 4)`` and ``b2 (..., 4)`` that broadcast together."""
    if mode not in MODES:
        raise ValueError(f"unknown IoU mode {mode!r}; choose one of {MODES}")
    x1a, y1a, x2a, y2a = (b1[..., i] for i in range(4))
    x1b, y1b, x2b, y2b = (b2[..., i] for i in range(4))

    inter_w = _clamp_min0(jnp.minimum(x2a, x2b) - jnp.maximum(x1a, x1b))
    inter_h = _clamp_min0(jnp.minimum(y2a, y2b) - jnp.maximum(y1a, y1b))
    inter = inter_w * inter_h
    area_a = (x2a - x1a) * (y2a - y1a)
    area_b = (x2b - x1b) * (y2b - y1b)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    if mode == "iou":
        return iou

    enc_w = jnp.maximum(x2a, x2b) - jnp.minimum(x1a, x1b)
    enc_h = jnp.maximum(y2a, y2b) - jnp.minimum(y1a, y1b)
    if mode == "giou":
        enc_area = enc_w * enc_h
        return iou - (enc_area - union) / (enc_area + eps)

    center_dist = ((x1a + x2a) / 2 - (x1b + x2b) / 2) ** 2 + ((y1a + y2a) / 2 - (y1b + y2b) / 2) ** 2
    diag_dist = enc_w**2 + enc_h**2
    diou = iou - center_dist / (diag_dist + eps)
    if mode == "diou":
        return diou

    w_a, h_a = x2a - x1a, y2a - y1a
    w_b, h_b = x2b - x1b, y2b - y1b
    v = (4 / math.pi**2) * (jnp.arctan(w_b / (h_b + eps)) - jnp.arctan(w_a / (h_a + eps))) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return diou - alpha * v


def bbox_iou(box1: jax.Array, box2: jax.Array, mode: str = "ciou", eps: float = 1e-7) -> jax.Array:
    """Pairwise IoU variant, exactly the notebook's ``compute_iou``.

    Args:
      box1: ``(N, 4)`` boxes ``[x1, y1, x2, y2]`` (any unit, same as box2).
      box2: ``(M, 4)`` boxes.
      mode: ``'iou' | 'giou' | 'diou' | 'ciou'``.
      eps: added to every denominator.

    Returns:
      ``(N, M)``: entry ``[i, j]`` compares ``box1[i]`` with ``box2[j]``.
    """
    return _iou_broadcast(box1[:, None, :], box2[None, :, :], mode, eps)


def bbox_iou_elementwise(box1: jax.Array, box2: jax.Array, mode: str = "ciou", eps: float = 1e-7) -> jax.Array:
    """Row-by-row IoU variant: ``(..., 4) x (..., 4) -> (...)``.

    Equal to the diagonal of ``bbox_iou(box1, box2)`` for ``(N, 4)`` inputs, in
    value and gradient.
    """
    return _iou_broadcast(box1, box2, mode, eps)
