"""Task-Aligned label assignment (TAL), batched and jit-able.

One computation over the whole padded batch, no Python loop over images or
boxes. It reproduces the notebook's ``TaskAlignedAssigner.assign`` called image
by image on the unpadded boxes:

1. anchor ``a`` lies inside box ``g`` when ``min(a - x1y1, x2y2 - a) > 0``;
2. alignment ``t = s ** alpha * iou ** beta``, with ``s`` the predicted score
   of the box's class and ``iou`` the predicted box's IoU, clamped to [0, 1];
   zero outside the box (and for padding boxes);
3. each box keeps its ``k = min(topk, #anchors with t > 0)`` best anchors;
4. an anchor claimed by several boxes goes to the highest alignment (the first
   such box on exact ties, as ``argmax``);
5. background where that maximum is ``< eps``;
6. soft class targets ``t / (max t over the image's foreground + eps)``.

Only membership of the top-k set matters. Exact ties in alignment at the k-th
place are broken towards the lower anchor index (``lax.top_k``); the notebook
leaves that order to ``torch.topk``.

Arithmetic is in float32 (lower-precision predictions are promoted), or in
float64 when the predictions are float64 (JAX x64 enabled).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from yolo11_jax.iou import _iou_broadcast


def _power(x: jax.Array, p: float) -> jax.Array:
    """``x ** p``; an integral ``p`` (the notebook's alpha 1 and beta 6) takes repeated
    multiplication, several times cheaper than ``exp(p * log(x))``."""
    if float(p) == 1.0:
        return x
    if float(p).is_integer() and 0 < p <= 16:
        return jax.lax.integer_pow(x, int(p))
    return jnp.power(x, p)


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
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Assign ground truth to anchors for a padded batch.

    Args:
      pred_scores: ``(B, A, C)`` class probabilities (after sigmoid).
      pred_bboxes: ``(B, A, 4)`` predicted boxes, xyxy pixels.
      anchor_points: ``(A, 2)`` anchor centres ``(x, y)`` in pixels.
      gt_labels: ``(B, M)`` integer class ids (any value where ``gt_mask`` is False).
      gt_bboxes: ``(B, M, 4)`` ground-truth boxes, xyxy pixels.
      gt_mask: ``(B, M)`` bool, True for real boxes, False for padding.
      topk, alpha, beta, eps: the notebook's assigner options.

    Returns:
      ``labels (B, A)`` int32 class id, -1 for background;
      ``bboxes (B, A, 4)`` the assigned box (xyxy pixels), zeros for background;
      ``scores (B, A, C)`` soft targets, zero except at the assigned class;
      ``fg_mask (B, A)`` bool.
      No gradient flows through any output.
    """
    dtype = jnp.result_type(pred_scores, pred_bboxes, jnp.float32)  # float32, or float64 under x64
    pred_scores = jax.lax.stop_gradient(pred_scores).astype(dtype)
    pred_bboxes = jax.lax.stop_gradient(pred_bboxes).astype(dtype)
    gt_bboxes = gt_bboxes.astype(dtype)
    b, a, c = pred_scores.shape
    m = gt_bboxes.shape[1]
    gt_labels = gt_labels.astype(jnp.int32)
    safe_labels = jnp.where(gt_mask, gt_labels, 0)

    # Everything below is laid out (B, M, A): anchors last, for top_k.
    ax = anchor_points[:, 0].astype(dtype)[None, None, :]                      # (1, 1, A)
    ay = anchor_points[:, 1].astype(dtype)[None, None, :]
    x1, y1, x2, y2 = (gt_bboxes[:, :, i, None] for i in range(4))             # (B, M, 1)
    # The notebook's min(a - x1y1, x2y2 - a) > 0, written per side: a trailing axis of 2
    # costs XLA more than the whole IoU.
    in_gt = (ax - x1 > 0) & (ay - y1 > 0) & (x2 - ax > 0) & (y2 - ay > 0) & gt_mask[:, :, None]

    # s[b, m, a] = pred_scores[b, a, gt_labels[b, m]]: gather along classes, then transpose the
    # (B, A, M) result, not the (B, A, C) scores.
    cls_scores = jnp.swapaxes(jnp.take_along_axis(pred_scores, safe_labels[:, None, :], axis=2), 1, 2)
    iou = _iou_broadcast(pred_bboxes[:, None, :, :], gt_bboxes[:, :, None, :], "iou", 1e-7)
    iou = jnp.clip(iou, 0.0, 1.0)
    alignment = _power(cls_scores, alpha) * _power(iou, beta)
    alignment = jnp.where(in_gt, alignment, 0.0)

    # Top-k anchors per box among those with positive alignment.
    k = min(topk, a)
    top_vals, top_idx = jax.lax.top_k(alignment, k)                            # (B, M, k)
    bi = jnp.arange(b)[:, None, None]
    mi = jnp.arange(m)[None, :, None]
    topk_mask = jnp.zeros((b, m, a), bool).at[bi, mi, top_idx].set(top_vals > 0)
    alignment = jnp.where(topk_mask, alignment, 0.0)

    assigned_gt = jnp.argmax(alignment, axis=1)                                # (B, A)
    max_alignment = jnp.max(alignment, axis=1)                                 # (B, A)
    fg_mask = ~(max_alignment < eps)

    labels = jnp.where(fg_mask, jnp.take_along_axis(safe_labels, assigned_gt, axis=1), -1)
    bboxes = jnp.take_along_axis(gt_bboxes, assigned_gt[:, :, None], axis=1)
    bboxes = jnp.where(fg_mask[:, :, None], bboxes, 0.0)

    fg_max = jnp.max(jnp.where(fg_mask, max_alignment, 0.0), axis=1, keepdims=True)  # (B, 1)
    norm_align = jnp.where(fg_mask, max_alignment / (fg_max + eps), 0.0)
    scores = jax.nn.one_hot(jnp.where(fg_mask, labels, 0), c, dtype=dtype) * norm_align[:, :, None]
    return labels, bboxes, scores, fg_mask
