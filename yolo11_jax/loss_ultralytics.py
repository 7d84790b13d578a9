"""Ultralytics 8.4's detection loss (``v8DetectionLoss`` + ``BboxLoss`` + ``DFLoss``) on a padded batch.

Semantics of ``ultralytics==8.4.190`` for YOLO11, as one pure, jit-able computation:

* decoding: the head's ``box_ltrb`` (the DFL expectation, grid units) around the anchor points
  in grid units, ``(x + 0.5, y + 0.5)`` per level: ``pred = (anchor - lt, anchor + rb)`` (grid
  units); the assigner gets ``pred * stride`` (pixels) and the anchors in pixels;
* targets: normalised ``cxcywh`` scaled by ``(w, h, w, h)`` of ``img_size`` first, then converted
  to xyxy (``x1 = cx - w / 2``), Ultralytics' order of operations;
* assignment: ``assign_ultralytics.ultralytics_assign`` (TAL, top-10, alpha 0.5, beta 6, small
  boxes enlarged to the middle stride for the candidate test);
* normaliser ``target_scores_sum = max(sum of all target scores, 1)``;
* classification: BCE with logits against the soft targets, summed over every anchor and class,
  divided by the normaliser;
* box: ``(1 - CIoU(pred, target))`` with the prediction as box 1, **in grid units** (Ultralytics
  divides the assigned boxes by the stride; the eps of its CIoU makes the unit matter), weighted
  per foreground anchor by the sum of its target scores, summed, divided by the normaliser;
* DFL: targets ``(anchor - x1y1, x2y2 - anchor)`` in grid units clamped to
  ``[0, reg_max - 1 - 0.01]``, ``CE(left bin) * wl + CE(right bin) * wr`` with
  ``wl = (floor(t) + 1) - t`` and ``wr = 1 - wl``, averaged over the four sides, weighted and
  normalised as the box term;
* gains: box 7.5, cls 0.5, dfl 1.5.

A foreground anchor can have a target score of 0 (see ``assign_ultralytics``); it counts in
``num_fg`` but adds nothing to the box and DFL terms (weight 0).

Masked rows never produce NaN gradients: background rows go through CIoU with a harmless box on
both sides ("double where"), so nothing masked out divides by zero.

Arithmetic is float32 (lower-precision predictions are promoted), or float64 when the predictions
are float64 (JAX x64 enabled).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import jax
import jax.numpy as jnp

from yolo11_jax.anchors import STRIDES, flatten_levels, make_anchor_points
from yolo11_jax.assign_ultralytics import ultralytics_assign, ultralytics_ciou
from yolo11_jax.loss_common import SAFE_BOX, Assigner, bce_with_logits

_DEFAULT_MIN_BOX_SIZE = 16.0  # ultralytics_assign's default: the middle of the strides (8, 16, 32)


def scale_targets(gt_boxes_cxcywh: jax.Array, img_hw: tuple[int, int]) -> jax.Array:
    """Normalised ``cxcywh (..., 4)`` -> xyxy pixels of an ``img_hw = (h, w)`` input, in Ultralytics'
    order: scale by ``(w, h, w, h)``, then ``x1 = cx - w / 2``, ``x2 = cx + w / 2``."""
    h, w = img_hw
    px = gt_boxes_cxcywh * jnp.asarray([w, h, w, h], gt_boxes_cxcywh.dtype)
    half = px[..., 2:] / 2
    return jnp.concatenate([px[..., :2] - half, px[..., :2] + half], -1)


def ultralytics_detection_loss(
    predictions: Sequence[tuple[jax.Array, jax.Array, jax.Array]],
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    *,
    img_size: int | tuple[int, int] = 640,
    num_classes: int | None = None,
    reg_max: int = 16,
    strides: Sequence[int] = STRIDES,
    box_weight: float = 7.5,
    cls_weight: float = 0.5,
    dfl_weight: float = 1.5,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
    assigner: Assigner = ultralytics_assign,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Ultralytics 8.4's ``v8DetectionLoss`` of a padded batch (see the module docstring).

    The total is **not** multiplied by the batch size. Ultralytics backpropagates
    ``batch_size * (box + cls + dfl)``; a trainer that wants its gradients must apply that factor
    itself (or scale the learning rate accordingly).

    Args:
      predictions: the network output, per level ``(cls_logits (B,H,W,C), box_ltrb (B,H,W,4) in
        grid units (the DFL expectation), box_raw (B,H,W,4*reg_max))``, levels in ``strides`` order.
      gt_boxes: ``(B, M, 4)`` normalised ``cxcywh`` (anything on padding rows).
      gt_labels: ``(B, M)`` class ids.
      gt_mask: ``(B, M)`` bool, False for padding rows (anywhere in the row, not only trailing).
      img_size: input size in pixels, int or ``(h, w)``; converts the targets to pixels.
        Ultralytics derives it from the first feature map (``H_0 * stride_0``); a mismatch warns.
      num_classes: checked against the logits if given.
      reg_max, strides: DFL bins and level strides in pixels (powers of two keep the grid/pixel
        conversions exact, as in Ultralytics).
      box_weight, cls_weight, dfl_weight: Ultralytics' gains 7.5 / 0.5 / 1.5.
      topk, alpha, beta, eps: assigner options (Ultralytics: 10, 0.5, 6.0, 1e-9).
      assigner: called as ``assigner(pred_scores (B,A,C) after sigmoid, pred_bboxes (B,A,4) xyxy px,
        anchor_points (A,2) px, gt_labels (B,M), gt_bboxes (B,M,4) xyxy px, gt_mask (B,M), *, topk,
        alpha, beta, eps)``, returning an ``assign.Assignment``. When ``strides`` make the middle
        stride differ from 16, ``min_box_size=`` (that stride) is passed too.

    Returns:
      ``(total, parts)``: ``total`` the float scalar ``box_loss + cls_loss + dfl_loss``; ``parts``
      has the gain-weighted ``box_loss``, ``cls_loss``, ``dfl_loss`` (what Ultralytics logs),
      ``total_loss`` (= total), ``target_scores_sum`` (the normaliser, ``>= 1``), the int32
      ``num_fg`` (foreground anchors) and ``num_pos = max(num_fg, 1)``.
    """
    img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(predictions) != len(strides):
        raise ValueError(f"{len(predictions)} prediction levels but {len(strides)} strides")
    (cls_logits, ltrb, raw), feat_sizes = flatten_levels(predictions)
    b, a, c = cls_logits.shape
    if num_classes is not None and c != num_classes:
        raise ValueError(f"predictions have {c} classes, num_classes={num_classes}")
    if raw.shape[-1] != 4 * reg_max:
        raise ValueError(f"box_raw has {raw.shape[-1]} channels, expected 4 * reg_max = {4 * reg_max}")
    if ltrb.shape[-1] != 4:
        raise ValueError(f"box_ltrb has {ltrb.shape[-1]} channels, expected 4")
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[2] != 4:
        raise ValueError(f"gt_boxes must be (B={b}, M, 4), got {gt_boxes.shape}")
    if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels {gt_labels.shape} and gt_mask {gt_mask.shape} must be {gt_boxes.shape[:2]}")
    implied = (feat_sizes[0][0] * strides[0], feat_sizes[0][1] * strides[0])
    if implied != img_hw:
        warnings.warn(f"ultralytics_detection_loss: img_size={img_size} but the feature maps imply a "
                      f"{implied[0]}x{implied[1]} input (Ultralytics uses the latter); targets are "
                      "scaled to img_size", stacklevel=2)

    dtype = jnp.result_type(cls_logits, ltrb, raw, jnp.float32)  # float32, or float64 under x64
    anchor_px_np, stride_np = make_anchor_points(feat_sizes, strides)
    anchor_grid = jnp.asarray(anchor_px_np / stride_np[:, None], dtype)       # (A, 2) grid units
    stride = jnp.asarray(stride_np, dtype)[:, None]                           # (A, 1)
    cls_logits, ltrb, raw = cls_logits.astype(dtype), ltrb.astype(dtype), raw.astype(dtype)

    pred_grid = jnp.concatenate([anchor_grid - ltrb[..., :2], anchor_grid + ltrb[..., 2:]], -1)  # (B, A, 4)
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_xyxy = scale_targets(jnp.asarray(gt_boxes, dtype), img_hw)            # (B, M, 4) px

    options = dict(topk=topk, alpha=alpha, beta=beta, eps=eps)
    min_box_size = float(strides[1] if len(strides) > 1 else strides[0])
    if min_box_size != _DEFAULT_MIN_BOX_SIZE:
        options["min_box_size"] = min_box_size
    _, target_px, target_scores, fg = assigner(
        jax.nn.sigmoid(cls_logits), pred_grid * stride, anchor_grid * stride, gt_labels, gt_xyxy, gt_mask,
        **options)
    target_scores = jax.lax.stop_gradient(target_scores.astype(dtype))      # (B, A, C)
    target_grid = jax.lax.stop_gradient(target_px.astype(dtype)) / stride   # (B, A, 4) grid units
    fg = jax.lax.stop_gradient(fg)
    num_fg = jnp.sum(fg, dtype=jnp.int32)
    target_scores_sum = jnp.maximum(jnp.sum(target_scores), 1.0)

    # Classification: BCE over every anchor and class.
    cls_sum = jnp.sum(bce_with_logits(cls_logits, target_scores))

    # Box: (1 - CIoU(pred, target)) in grid units, weighted; harmless boxes on background rows.
    weight = jnp.sum(target_scores, axis=-1)                                  # (B, A)
    fg4 = fg[..., None]
    safe = jnp.asarray(SAFE_BOX, dtype)
    ciou = ultralytics_ciou(jnp.where(fg4, pred_grid, safe), jnp.where(fg4, target_grid, safe))
    box_sum = jnp.sum(jnp.where(fg, (1.0 - ciou) * weight, 0.0))

    # DFL: the two bins around each clamped ltrb target, mean over the sides, weighted.
    target_ltrb = jnp.concatenate([anchor_grid - target_grid[..., :2], target_grid[..., 2:] - anchor_grid], -1)
    target_ltrb = jnp.clip(target_ltrb, 0.0, reg_max - 1 - 0.01)             # (B, A, 4)
    left = jnp.floor(target_ltrb).astype(jnp.int32)
    w_left = (left + 1).astype(dtype) - target_ltrb
    w_right = 1.0 - w_left
    log_probs = jax.nn.log_softmax(raw.reshape(b, a, 4, reg_max), axis=-1)
    lp_left = jnp.take_along_axis(log_probs, left[..., None], axis=-1)[..., 0]
    lp_right = jnp.take_along_axis(log_probs, (left + 1)[..., None], axis=-1)[..., 0]
    dfl = -jnp.mean(lp_left * w_left + lp_right * w_right, axis=-1)          # (B, A)
    dfl_sum = jnp.sum(jnp.where(fg, dfl * weight, 0.0))

    box_loss = box_weight * (box_sum / target_scores_sum)
    cls_loss = cls_weight * (cls_sum / target_scores_sum)
    dfl_loss = dfl_weight * (dfl_sum / target_scores_sum)
    total = box_loss + cls_loss + dfl_loss
    parts = {"box_loss": box_loss, "cls_loss": cls_loss, "dfl_loss": dfl_loss, "total_loss": total,
             "target_scores_sum": target_scores_sum, "num_fg": num_fg, "num_pos": jnp.maximum(num_fg, 1)}
    return total, parts

