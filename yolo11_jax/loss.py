"""The notebook's composite detection loss: BCE (soft TAL targets) + CIoU + DFL.

``notebook_detection_loss`` is the notebook's loss; ``detection_loss(..., recipe=...)`` chooses
between it (the default) and Ultralytics' (``loss_ultralytics``) for callers that name a loss by
string. This docstring describes the notebook's.

``detection_loss`` is a pure function of the network output and a padded batch
of targets; it jit-compiles and makes no host sync. Semantics are the notebook's
``YOLOv11Loss``:

* classification: BCE with logits against the soft TAL targets, summed over
  *all* anchors and classes (an image without boxes has all-zero targets);
* box: ``1 - CIoU`` between decoded predictions and assigned boxes, summed over
  the foreground;
* DFL: cross-entropy on the two bins around ``(anchor - x1y1) / stride`` and
  ``(x2y2 - anchor) / stride``, clamped to ``[0, reg_max - 1 - 0.01]``, summed
  over the foreground and the four sides;
* each part is weighted and divided by ``max(positives in the whole batch, 1)``.

Deviation from the notebook: it hard-codes 640 when converting normalised
targets to pixels; ``img_size`` generalises that and defaults to 640. A
mismatch with the input size implied by the feature maps triggers a warning
at trace time.

Arithmetic is in float32 (lower-precision predictions are promoted), or in
float64 when the predictions are float64 (JAX x64 enabled); the loss parts
then come out in float64 too.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import jax
import jax.numpy as jnp

from yolo11_jax.anchors import STRIDES, cxcywh_to_xyxy, decode_ltrb, flatten_levels, make_anchor_points
from yolo11_jax.assign import task_aligned_assign
from yolo11_jax.iou import bbox_iou_elementwise
from yolo11_jax.loss_common import SAFE_BOX, Assigner, bce_with_logits
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss

# The losses ``detection_loss(recipe=...)`` dispatches to (the recipes in ``yolo11_jax.recipes``
# call their loss functions directly).
LOSS_NAMES = ("notebook", "ultralytics")
NOTEBOOK_TOPK = 13     # the notebook's TaskAlignedAssigner() defaults
NOTEBOOK_ALPHA = 1.0


def detection_loss(
    predictions: Sequence[tuple[jax.Array, jax.Array, jax.Array]],
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    *,
    img_size: int | tuple[int, int] = 640,
    num_classes: int | None = None,
    reg_max: int = 16,
    strides: Sequence[int] = STRIDES,
    cls_weight: float = 0.5,
    box_weight: float = 7.5,
    dfl_weight: float = 1.5,
    topk: int | None = None,
    alpha: float | None = None,
    beta: float = 6.0,
    eps: float = 1e-9,
    assigner: Assigner | None = None,
    recipe: str = "notebook",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The detection loss of a recipe on a padded batch: the notebook's YOLOv11 loss (default),
    or Ultralytics' ``v8DetectionLoss`` with ``recipe="ultralytics"``.

    ``recipe="ultralytics"`` returns ``loss_ultralytics.ultralytics_detection_loss(...)`` with the
    same arguments, except that ``topk``, ``alpha`` and ``assigner`` left at ``None`` take that
    function's defaults (Ultralytics' top-10, alpha 0.5 and ``assign_ultralytics.ultralytics_assign``),
    not the notebook's. Its ``total`` is the per-image loss that Ultralytics logs; Ultralytics
    backpropagates ``batch_size * total`` (see ``step.make_train_step``, which applies that factor).
    The rest of this docstring describes the notebook recipe.

    Args:
      predictions: the network output, per level ``(cls_logits (B,H,W,C),
        box_ltrb (B,H,W,4), box_raw (B,H,W,4*reg_max))``.
      gt_boxes: ``(B, M, 4)`` normalised ``cxcywh`` (the notebook's targets).
      gt_labels: ``(B, M)`` class ids.
      gt_mask: ``(B, M)`` bool, False for padding rows.
      img_size: input size in pixels (int or ``(h, w)``) used to convert targets
        to pixels; the notebook's 640 by default.
      num_classes: checked against the logits if given.
      reg_max, strides: the head's DFL bins and level strides.
      cls_weight, box_weight, dfl_weight: the notebook's 0.5 / 7.5 / 1.5.
      topk, alpha, beta, eps: assigner options; ``topk`` and ``alpha`` default (``None``) to the
        recipe's: 13 and 1.0 for the notebook, 10 and 0.5 for Ultralytics.
      assigner: the label assignment (``None``: the recipe's), called as ``assigner(pred_scores
        (B,A,C), pred_bboxes (B,A,4), anchor_points (A,2), gt_labels (B,M), gt_bboxes (B,M,4),
        gt_mask (B,M), *, topk, alpha, beta, eps)`` with scores after sigmoid and boxes in xyxy
        pixels, and returning an ``assign.Assignment``. The notebook's default: the spec,
        ``assign.task_aligned_assign`` (``assign_chunked.chunked_assigner(...)`` gives the same
        result by chunks).
      recipe: ``"notebook"`` or ``"ultralytics"`` (see above).

    Returns:
      ``(total, parts)`` where ``parts`` has float32 scalars ``cls_loss``,
      ``box_loss``, ``dfl_loss``, ``total_loss`` and the int32 scalar ``num_pos``
      (the notebook reports ``max(num_pos, 1)``; so does this), and ``num_fg``, the raw count.
    """
    if recipe == "ultralytics":
        options = {k: v for k, v in (("topk", topk), ("alpha", alpha), ("assigner", assigner)) if v is not None}
        return ultralytics_detection_loss(
            predictions, gt_boxes, gt_labels, gt_mask, img_size=img_size, num_classes=num_classes,
            reg_max=reg_max, strides=strides, box_weight=box_weight, cls_weight=cls_weight,
            dfl_weight=dfl_weight, beta=beta, eps=eps, **options)
    if recipe != "notebook":
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {LOSS_NAMES}")
    return notebook_detection_loss(predictions, gt_boxes, gt_labels, gt_mask, img_size=img_size,
                                   num_classes=num_classes, reg_max=reg_max, strides=strides, cls_weight=cls_weight,
                                   box_weight=box_weight, dfl_weight=dfl_weight, topk=topk, alpha=alpha, beta=beta,
                                   eps=eps, assigner=assigner)


def notebook_detection_loss(
    predictions: Sequence[tuple[jax.Array, jax.Array, jax.Array]],
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    *,
    img_size: int | tuple[int, int] = 640,
    num_classes: int | None = None,
    reg_max: int = 16,
    strides: Sequence[int] = STRIDES,
    cls_weight: float = 0.5,
    box_weight: float = 7.5,
    dfl_weight: float = 1.5,
    topk: int | None = None,
    alpha: float | None = None,
    beta: float = 6.0,
    eps: float = 1e-9,
    assigner: Assigner | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The notebook's loss (the module docstring); arguments and result as :func:`detection_loss`
    with ``recipe="notebook"``. The notebook recipe (``recipes/notebook.py``) calls this directly."""
    topk = NOTEBOOK_TOPK if topk is None else topk
    alpha = NOTEBOOK_ALPHA if alpha is None else alpha
    assigner = task_aligned_assign if assigner is None else assigner
    img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    (cls_logits, ltrb, raw), feat_sizes = flatten_levels(predictions)
    b, a, c = cls_logits.shape
    if num_classes is not None and c != num_classes:
        raise ValueError(f"predictions have {c} classes, num_classes={num_classes}")
    if raw.shape[-1] != 4 * reg_max:
        raise ValueError(f"box_raw has {raw.shape[-1]} channels, expected 4 * reg_max = {4 * reg_max}")
    implied = (feat_sizes[0][0] * strides[0], feat_sizes[0][1] * strides[0])
    if implied != img_hw:
        warnings.warn(f"detection_loss: img_size={img_size} but the feature maps imply a "
                      f"{implied[0]}x{implied[1]} input; targets are scaled to img_size "
                      "(the notebook's 640 is only right for 640x640 inputs)", stacklevel=2)

    dtype = jnp.result_type(cls_logits, ltrb, raw, jnp.float32)  # float32, or float64 under x64
    anchor_np, stride_np = make_anchor_points(feat_sizes, strides)
    anchors, anchor_strides = jnp.asarray(anchor_np, dtype), jnp.asarray(stride_np, dtype)
    cls_logits = cls_logits.astype(dtype)
    ltrb = ltrb.astype(dtype)
    raw = raw.astype(dtype)
    pred_bboxes = decode_ltrb(ltrb, anchors, anchor_strides)                  # (B, A, 4) px
    gt_mask = gt_mask.astype(bool)
    gt_xyxy = cxcywh_to_xyxy(gt_boxes.astype(dtype), img_hw)                   # (B, M, 4) px

    _, target_bboxes, target_scores, fg = assigner(
        jax.nn.sigmoid(cls_logits), pred_bboxes, anchors, gt_labels, gt_xyxy, gt_mask,
        topk=topk, alpha=alpha, beta=beta, eps=eps)
    target_scores = target_scores.astype(dtype)                                 # (B, A, C)
    num_pos = jnp.sum(fg, dtype=jnp.int32)
    denom = jnp.maximum(num_pos, 1).astype(dtype)

    # Classification: sum over every anchor and class (per image first, then batch).
    cls_sum = jnp.sum(jnp.sum(bce_with_logits(cls_logits, target_scores), axis=(1, 2)))

    # Box: 1 - CIoU over the foreground, with safe boxes on background rows.
    fg4 = fg[:, :, None]
    safe_box = jnp.asarray(SAFE_BOX, dtype)
    ciou = bbox_iou_elementwise(jnp.where(fg4, pred_bboxes, safe_box),
                                jnp.where(fg4, target_bboxes, safe_box), mode="ciou")
    box_sum = jnp.sum(jnp.where(fg, 1.0 - ciou, 0.0))

    # DFL on the two bins around each clamped ltrb target.
    s = anchor_strides[None, :, None]
    target_ltrb = jnp.concatenate([(anchors - target_bboxes[..., :2]) / s,
                                   (target_bboxes[..., 2:] - anchors) / s], -1)
    target_ltrb = jnp.clip(target_ltrb, 0.0, reg_max - 1 - 0.01)              # (B, A, 4)
    left = jnp.floor(target_ltrb).astype(jnp.int32)
    right = jnp.minimum(left + 1, reg_max - 1)
    w_right = target_ltrb - left.astype(dtype)
    w_left = 1.0 - w_right
    log_probs = jax.nn.log_softmax(raw.reshape(b, a, 4, reg_max), axis=-1)
    ce_left = -jnp.take_along_axis(log_probs, left[..., None], axis=-1)[..., 0]
    ce_right = -jnp.take_along_axis(log_probs, right[..., None], axis=-1)[..., 0]
    dfl = jnp.sum(ce_left * w_left + ce_right * w_right, axis=-1)             # (B, A)
    dfl_sum = jnp.sum(jnp.where(fg, dfl, 0.0))

    loss_cls = cls_weight * cls_sum / denom
    loss_box = box_weight * box_sum / denom
    loss_dfl = dfl_weight * dfl_sum / denom
    total = loss_cls + loss_box + loss_dfl
    parts = {"cls_loss": loss_cls, "box_loss": loss_box, "dfl_loss": loss_dfl,
             "total_loss": total, "num_pos": jnp.maximum(num_pos, 1), "num_fg": num_pos}
    return total, parts
