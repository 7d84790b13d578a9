"""Ultralytics 8.4's Task-Aligned assigner (``utils/tal.py``, v8DetectionLoss's settings): the dense spec.

Semantics of ``ultralytics==8.4.190`` ``TaskAlignedAssigner(topk=10, alpha=0.5, beta=6.0,
stride=[8, 16, 32])`` for YOLO11 detection, as one batched computation on dense ``(B, M, A)``
arrays (images, boxes, anchors), in the steps of Ultralytics' ``_forward``:

1. candidates: anchor ``a`` lies strictly inside box ``g`` (all four margins ``> 1e-9``); for
   this test only, every side of a real box shorter than ``min_box_size`` (the middle stride,
   16 px) is widened to ``min_box_size`` about the box centre;
2. metrics, on (candidate, real box) pairs only, 0 elsewhere: ``overlap = max(CIoU(gt, pred), 0)``
   (:func:`ultralytics_ciou`, the ground truth as box 1) and ``align = s ** alpha * overlap ** beta``,
   ``s`` the predicted score of the box's class;
3. top-k: each real box takes the ``topk`` anchors of largest ``align``, whatever their value:
   Ultralytics passes ``topk_mask = mask_gt``, so its "best metric > eps" filter is not used and a
   box whose metrics are all 0 still takes ``topk`` anchors; positives are ``top-k & candidate``;
4. conflicts: an anchor positive for several boxes goes to the box of largest ``overlap`` among
   *all* real boxes (not only those that selected it); on equal overlaps (all 0 included) to the
   first real box, so the winner can be a box that did not select the anchor, or not even contain
   it; such an anchor is foreground with a target score of 0;
5. targets: the winner's class and box;
6. normalisation: the score at the class is ``align * max_overlap(g) / (max_align(g) + eps)``,
   maxima over box ``g``'s final positives (and the maximum over boxes of that product per anchor,
   which is the winner's value since every other entry is 0).

Deterministic tie-breaking. ``torch.topk`` leaves the order of equal values open, and
Ultralytics' boxes with fewer than ``topk`` non-zero metrics fill their list with zeros, so the
choice among equal values matters. This spec takes the lower anchor index first (``lax.top_k``'s
rule); ``reference_torch.ultralytics_loss`` does the same with a stable descending sort.

Generalisation (no effect on Ultralytics' layout, where padding rows trail the real ones):
Ultralytics takes the conflict argmax over every row, padding included; here padding rows are
excluded, so that padding anywhere in ``gt_mask`` behaves like trailing padding.

Arithmetic is float32 (lower-precision inputs are promoted), or float64 when the predictions are
float64 (JAX x64 enabled). The inputs are under ``stop_gradient`` (Ultralytics' ``no_grad``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from yolo11_jax.assign import Assignment, power
from yolo11_jax.loss_common import SAFE_BOX

# Ultralytics' select_candidates_in_gts margin (its own default, not the assigner's eps).
CANDIDATE_EPS = 1e-9


def _clamp_min0(x: jax.Array) -> jax.Array:
    # torch's clamp(min=0): passes the gradient at exactly 0 (jnp.maximum would halve it).
    return jnp.where(x >= 0, x, 0.0)


def ultralytics_ciou(box1: jax.Array, box2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """CIoU of rows of ``box1 (..., 4)`` and ``box2 (..., 4)`` (xyxy, any one unit; they broadcast),
    with Ultralytics' ``bbox_iou(..., xywh=False, CIoU=True)`` eps placement (B.9):

    * ``eps`` is added to the heights only (``h = y2 - y1 + eps``; widths get none), and these
      heights are used in the areas and in ``atan(w / h)``;
    * ``iou = inter / (w1 h1 + w2 h2 - inter + eps)``;
    * ``c2 = cw ** 2 + ch ** 2 + eps`` (enclosing diagonal), ``rho2 = |centre offset| ** 2``
      computed as ``((x1' + x2' - x1 - x2) ** 2 + ...) / 4``;
    * ``v = 4 / pi ** 2 * (atan(w2 / h2) - atan(w1 / h1)) ** 2``,
      ``alpha = v / (1 - iou + v + eps)`` under ``stop_gradient`` (``no_grad``);
    * ``CIoU = iou - (rho2 / c2 + v * alpha)``.

    Unlike ``iou.bbox_iou_elementwise`` (the notebook's formula: eps in every denominator, none in
    the areas), the result depends on the unit, through ``eps``: Ultralytics' assigner calls it in
    pixels (ground truth as box 1), its box loss in grid units (prediction as box 1). The caller
    must keep masked-out rows valid boxes (``SAFE_BOX``): a zero-height box with zero width gives
    ``0 / eps`` only thanks to ``eps``, a degenerate one with ``h = -eps`` divides by zero.
    """
    b1x1, b1y1, b1x2, b1y2 = (box1[..., i] for i in range(4))
    b2x1, b2y1, b2x2, b2y2 = (box2[..., i] for i in range(4))
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    inter = (_clamp_min0(jnp.minimum(b1x2, b2x2) - jnp.maximum(b1x1, b2x1))
             * _clamp_min0(jnp.minimum(b1y2, b2y2) - jnp.maximum(b1y1, b2y1)))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jnp.maximum(b1x2, b2x2) - jnp.minimum(b1x1, b2x1)
    ch = jnp.maximum(b1y2, b2y2) - jnp.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return iou - (rho2 / c2 + v * alpha)


def enlarge_small_boxes(gt_bboxes: jax.Array, gt_mask: jax.Array, min_size: float) -> jax.Array:
    """``gt_bboxes (B, M, 4)`` xyxy pixels with every side of a real box (``gt_mask (B, M)``)
    shorter than ``min_size`` pixels set to ``min_size`` about the centre; the boxes of Ultralytics'
    candidate test. Every box goes through Ultralytics' xyxy -> cxcywh -> xyxy round trip
    (``cx = (x1 + x2) / 2``, ``x1' = cx - w / 2``), so its float rounding is reproduced too."""
    cxcy = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2
    wh = gt_bboxes[..., 2:] - gt_bboxes[..., :2]
    wh = jnp.where((wh < min_size) & gt_mask[..., None], jnp.asarray(min_size, wh.dtype), wh)
    half = wh / 2
    return jnp.concatenate([cxcy - half, cxcy + half], -1)


def inside_mask(anchor_points: jax.Array, boxes: jax.Array) -> jax.Array:
    """``(B, M, A)``: anchor ``(A, 2)`` strictly inside box ``(B, M, 4)``, each margin ``> 1e-9``."""
    ax, ay = anchor_points[:, 0], anchor_points[:, 1]
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
    return ((ax - x1 > CANDIDATE_EPS) & (ay - y1 > CANDIDATE_EPS)
            & (x2 - ax > CANDIDATE_EPS) & (y2 - ay > CANDIDATE_EPS))


def _power(x: jax.Array, p: float) -> jax.Array:
    # torch's pow special-cases the exponent 0.5 as sqrt; match it (the others: assign.power).
    return jnp.sqrt(x) if float(p) == 0.5 else power(x, p)


def _background(b: int, a: int, c: int, dtype) -> Assignment:
    return Assignment(jnp.full((b, a), -1, jnp.int32), jnp.zeros((b, a, 4), dtype),
                      jnp.zeros((b, a, c), dtype), jnp.zeros((b, a), bool))


@functools.partial(jax.jit, static_argnames=("topk", "alpha", "beta", "eps", "min_box_size"))
def ultralytics_assign(
    pred_scores: jax.Array,
    pred_bboxes: jax.Array,
    anchor_points: jax.Array,
    gt_labels: jax.Array,
    gt_bboxes: jax.Array,
    gt_mask: jax.Array,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
    min_box_size: float = 16.0,
) -> Assignment:
    """Ultralytics 8.4's task-aligned assignment of a padded batch (see the module docstring).

    Args:
      pred_scores: ``(B, A, C)`` class probabilities (after sigmoid).
      pred_bboxes: ``(B, A, 4)`` predicted boxes, xyxy pixels.
      anchor_points: ``(A, 2)`` anchor centres ``(x, y)`` in pixels.
      gt_labels: ``(B, M)`` integer class ids (anything where ``gt_mask`` is False).
      gt_bboxes: ``(B, M, 4)`` ground-truth boxes, xyxy pixels (anything where ``gt_mask`` is False).
      gt_mask: ``(B, M)`` bool, True for real boxes, False for padding.
      topk, alpha, beta, eps: Ultralytics' v8DetectionLoss settings 10, 0.5, 6.0, 1e-9.
      min_box_size: sides of real boxes shorter than this (pixels) are widened to it for the
        candidate test only; Ultralytics' middle stride (``stride[1]``, 16).

    Returns:
      :class:`~yolo11_jax.assign.Assignment`: ``labels (B, A)`` int32 (-1 for background),
      ``bboxes (B, A, 4)`` the assigned box in xyxy pixels (0 for background; Ultralytics leaves
      box 0 there), ``scores (B, A, C)`` soft targets, ``fg_mask (B, A)`` bool. A foreground anchor
      can have a score of 0 (step 3 and 4 of the module docstring).
    """
    dtype = jnp.result_type(pred_scores, pred_bboxes, jnp.float32)
    pred_scores = jax.lax.stop_gradient(jnp.asarray(pred_scores, dtype))
    pred_bboxes = jax.lax.stop_gradient(jnp.asarray(pred_bboxes, dtype))
    anchor_points = jax.lax.stop_gradient(jnp.asarray(anchor_points, dtype))
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_bboxes = jnp.where(gt_mask[..., None], jax.lax.stop_gradient(jnp.asarray(gt_bboxes, dtype)),
                          jnp.asarray(SAFE_BOX, dtype))
    gt_labels = jnp.where(gt_mask, jnp.asarray(gt_labels, jnp.int32), 0)
    b, a, c = pred_scores.shape
    m = gt_bboxes.shape[1]
    if m == 0:  # Ultralytics' n_max_boxes == 0 early return
        return _background(b, a, c, dtype)

    # 1. Candidates (B, M, A): strictly inside the box, small sides enlarged; real boxes only.
    candidates = inside_mask(anchor_points, enlarge_small_boxes(gt_bboxes, gt_mask, min_box_size))
    candidates = candidates & gt_mask[..., None]

    # 2. Metrics on candidate pairs, 0 elsewhere (sanitised boxes there: no NaN in a masked branch).
    box_scores = jnp.swapaxes(jnp.take_along_axis(pred_scores, gt_labels[:, None, :], axis=2), 1, 2)
    pair = candidates[..., None]
    safe = jnp.asarray(SAFE_BOX, dtype)
    ciou = ultralytics_ciou(jnp.where(pair, gt_bboxes[:, :, None, :], safe),
                            jnp.where(pair, pred_bboxes[:, None, :, :], safe))
    overlaps = jnp.where(candidates, _clamp_min0(ciou), 0.0)
    align = jnp.where(candidates, _power(box_scores, alpha) * _power(overlaps, beta), 0.0)

    # 3. Top-k per real box over all anchors, zeros included; lower anchor index first on ties.
    _, top_idx = jax.lax.top_k(align, min(topk, a))                                   # (B, M, k)
    in_topk = jnp.zeros((b, m, a), bool).at[
        jnp.arange(b)[:, None, None], jnp.arange(m)[None, :, None], top_idx].set(True)
    mask_pos = in_topk & candidates

    # 4. Conflicts: largest overlap among all real boxes, first one on ties.
    claimed = jnp.sum(mask_pos, axis=1, dtype=jnp.int32) > 1                           # (B, A)
    best = jnp.argmax(jnp.where(gt_mask[..., None], overlaps, -1.0), axis=1)            # (B, A)
    winner = jnp.arange(m)[None, :, None] == best[:, None, :]
    mask_pos = jnp.where(claimed[:, None, :], winner, mask_pos)
    fg_mask = jnp.any(mask_pos, axis=1)
    gt_idx = jnp.argmax(mask_pos, axis=1)                                               # (B, A)

    # 5. Targets of the winner.
    labels = jnp.where(fg_mask, jnp.take_along_axis(gt_labels, gt_idx, axis=1), -1)
    bboxes = jnp.where(fg_mask[..., None], jnp.take_along_axis(gt_bboxes, gt_idx[..., None], axis=1), 0.0)

    # 6. Normalisation: align * max_overlap / (max_align + eps), per box over its positives.
    align = jnp.where(mask_pos, align, 0.0)
    pos_align = jnp.max(align, axis=2, keepdims=True)                                   # (B, M, 1)
    pos_overlaps = jnp.max(jnp.where(mask_pos, overlaps, 0.0), axis=2, keepdims=True)   # (B, M, 1)
    norm = jnp.max(align * pos_overlaps / (pos_align + eps), axis=1)                    # (B, A)
    scores = jax.nn.one_hot(jnp.maximum(labels, 0), c, dtype=dtype) * jnp.where(fg_mask, norm, 0.0)[..., None]
    return Assignment(labels, bboxes, scores, fg_mask)
