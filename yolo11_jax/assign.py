"""Task-Aligned label assignment (TAL): the plain, dense, batched version. This is the spec.

It reproduces the notebook's ``TaskAlignedAssigner.assign`` called image by image on the
unpadded boxes, as one computation over a padded batch, in five steps on dense
``(B, M, A)`` arrays (images, boxes, anchors):

1. ``candidate_mask``: anchor ``a`` is a candidate of box ``g`` when it lies strictly
   inside it, ``min(a - x1y1, x2y2 - a) > 0`` (and ``g`` is not padding);
2. ``alignment_metric``: ``t = s ** alpha * iou ** beta`` for candidates, else 0, with ``s``
   the predicted score of the box's class and ``iou`` the predicted box's IoU with the box,
   clamped to [0, 1];
3. top-k: each box keeps its ``k = min(topk, #anchors with t > 0)`` best anchors;
4. conflicts: an anchor kept by several boxes goes to the one of highest alignment (the
   first on exact ties, as ``argmax``); it is background when that maximum is ``< eps``;
5. targets: the box's class and coordinates, and the soft score
   ``t / (max t over the image's foreground + eps)`` at that class.

Only membership of the top-k set matters. Exact ties at the k-th place go to the lower
anchor index (``lax.top_k``); the notebook leaves that order to ``torch.topk``.

``assign_chunked.task_aligned_assign_chunked`` computes the same result without the dense
``(B, M, A)`` arrays (a speed option for CPUs, tested bit for bit against this function).
Any function with this signature can be passed to ``loss.detection_loss(assigner=...)``.

Arithmetic is in float32 (lower-precision predictions are promoted), or in float64 when
the predictions are float64 (JAX x64 enabled). No gradient flows through the outputs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from yolo11_jax.iou import bbox_iou_elementwise


class Assignment(NamedTuple):
    """The targets of every anchor of a batch.

    labels: ``(B, A)`` int32 class id, -1 for background.
    bboxes: ``(B, A, 4)`` the assigned box, xyxy pixels; zeros for background.
    scores: ``(B, A, C)`` soft class targets, zero except at the assigned class.
    fg_mask: ``(B, A)`` bool, True for foreground anchors.
    """

    labels: jax.Array
    bboxes: jax.Array
    scores: jax.Array
    fg_mask: jax.Array


def candidate_mask(anchor_points: jax.Array, gt_bboxes: jax.Array, gt_mask: jax.Array) -> jax.Array:
    """Which anchors are candidates of which boxes: those strictly inside the box,
    ``min(a - x1y1, x2y2 - a) > 0``, of real boxes (``gt_mask``).

    Shapes broadcast as ``anchor_points (..., N, 2)``, ``gt_bboxes (..., 4)`` xyxy and
    ``gt_mask (...)`` to ``(..., N)``; the spec passes ``(A, 2)``, ``(B, M, 4)`` and
    ``(B, M)`` for ``(B, M, A)``.
    """
    ax, ay = anchor_points[..., 0], anchor_points[..., 1]                                # (..., N)
    x1, y1, x2, y2 = (gt_bboxes[..., i, None] for i in range(4))                         # (..., 1)
    return (ax - x1 > 0) & (ay - y1 > 0) & (x2 - ax > 0) & (y2 - ay > 0) & gt_mask[..., None]


def power(x: jax.Array, p: float) -> jax.Array:
    """``x ** p``; an integral ``p`` (the notebook's alpha 1 and beta 6) by repeated
    multiplication, which is exact where ``exp(p * log(x))`` is not."""
    if float(p) == 1.0:
        return x
    if float(p).is_integer() and 0 < p <= 16:
        return jax.lax.integer_pow(x, int(p))
    return jnp.power(x, p)


def alignment_metric(scores: jax.Array, pred_bboxes: jax.Array, gt_bboxes: jax.Array, candidates: jax.Array,
                     alpha: float, beta: float) -> jax.Array:
    """``s ** alpha * clip(iou, 0, 1) ** beta`` where ``candidates``, else 0.

    ``scores``: the predicted score of each box's class at each anchor; ``pred_bboxes`` and
    ``gt_bboxes`` broadcast against each other and against ``scores`` and ``candidates``
    (the spec passes ``(B, 1, A, 4)`` and ``(B, M, 1, 4)``).
    """
    iou = jnp.clip(bbox_iou_elementwise(pred_bboxes, gt_bboxes, "iou"), 0.0, 1.0)
    return jnp.where(candidates, power(scores, alpha) * power(iou, beta), 0.0)


def soft_scores(labels: jax.Array, fg_mask: jax.Array, max_alignment: jax.Array, num_classes: int,
                eps: float) -> jax.Array:
    """``(B, A, C)`` one-hot of ``labels`` times ``t / (max t over the image's foreground + eps)``."""
    fg_max = jnp.max(jnp.where(fg_mask, max_alignment, 0.0), axis=1, keepdims=True)   # (B, 1)
    value = jnp.where(fg_mask, max_alignment / (fg_max + eps), 0.0)                   # (B, A)
    return jax.nn.one_hot(jnp.maximum(labels, 0), num_classes, dtype=max_alignment.dtype) * value[..., None]


@functools.partial(jax.jit, static_argnames=("topk", "alpha", "beta", "eps"))
def task_aligned_assign(
    pred_scores: jax.Array,
    pred_bboxes: jax.Array,
    anchor_points: jax.Array,
    gt_labels: jax.Array,
    gt_bboxes: jax.Array,
    gt_mask: jax.Array,
    *,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> Assignment:
    """Assign ground truth to anchors for a padded batch (the notebook's TAL).

    Args:
      pred_scores: ``(B, A, C)`` class probabilities (after sigmoid).
      pred_bboxes: ``(B, A, 4)`` predicted boxes, xyxy pixels.
      anchor_points: ``(A, 2)`` anchor centres ``(x, y)`` in pixels.
      gt_labels: ``(B, M)`` integer class ids (any value where ``gt_mask`` is False).
      gt_bboxes: ``(B, M, 4)`` ground-truth boxes, xyxy pixels.
      gt_mask: ``(B, M)`` bool, True for real boxes, False for padding.
      topk, alpha, beta, eps: the notebook's assigner options.

    Returns:
      :class:`Assignment` ``(labels (B, A), bboxes (B, A, 4), scores (B, A, C), fg_mask (B, A))``.
    """
    dtype = jnp.result_type(pred_scores, pred_bboxes, jnp.float32)
    pred_scores = jax.lax.stop_gradient(jnp.asarray(pred_scores, dtype))
    pred_bboxes = jax.lax.stop_gradient(jnp.asarray(pred_bboxes, dtype))
    gt_bboxes, anchor_points = jnp.asarray(gt_bboxes, dtype), jnp.asarray(anchor_points, dtype)
    b, a, c = pred_scores.shape
    m = gt_bboxes.shape[1]
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_labels = jnp.where(gt_mask, jnp.asarray(gt_labels, jnp.int32), 0)

    # 1-2. Candidates and their alignment, (B, M, A).
    candidates = candidate_mask(anchor_points, gt_bboxes, gt_mask)
    box_scores = jnp.swapaxes(jnp.take_along_axis(pred_scores, gt_labels[:, None, :], axis=2), 1, 2)
    align = alignment_metric(box_scores, pred_bboxes[:, None, :, :], gt_bboxes[:, :, None, :], candidates,
                             alpha, beta)

    # 3. Each box's top-k anchors among those with positive alignment.
    top_vals, top_idx = jax.lax.top_k(align, min(topk, a))                            # (B, M, k)
    in_topk = jnp.zeros((b, m, a), bool).at[
        jnp.arange(b)[:, None, None], jnp.arange(m)[None, :, None], top_idx].set(top_vals > 0)
    align = jnp.where(in_topk, align, 0.0)

    # 4. Conflicts: each anchor to its box of highest alignment; background below eps.
    assigned_gt = jnp.argmax(align, axis=1)                                            # (B, A)
    max_alignment = jnp.max(align, axis=1)
    fg_mask = ~(max_alignment < eps)

    # 5. Targets.
    labels = jnp.where(fg_mask, jnp.take_along_axis(gt_labels, assigned_gt, axis=1), -1)
    bboxes = jnp.where(fg_mask[..., None], jnp.take_along_axis(gt_bboxes, assigned_gt[..., None], axis=1), 0.0)
    return Assignment(labels, bboxes, soft_scores(labels, fg_mask, max_alignment, c, eps), fg_mask)
