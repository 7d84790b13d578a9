"""What the losses share: the assigner's signature, the harmless box of masked rows, and BCE with
logits. (``loss`` is the notebook's loss, ``loss_ultralytics`` Ultralytics'; both use these.)"""

from __future__ import annotations

from typing import Callable

import jax

from yolo11_jax.assign import Assignment

# assigner(pred_scores (B,A,C), pred_bboxes (B,A,4) xyxy px, anchor_points (A,2) px, gt_labels (B,M),
#          gt_bboxes (B,M,4) xyxy px, gt_mask (B,M), *, topk, alpha, beta, eps) -> Assignment
Assigner = Callable[..., Assignment]

# A harmless box substituted for masked (background / padding) rows before CIoU, so that no inf or
# NaN can arise in a branch that is masked out afterwards ("double where").
SAFE_BOX = (0.0, 0.0, 1.0, 1.0)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``torch.nn.BCEWithLogitsLoss(reduction="none")``, elementwise: ``(1 - t) * x - log_sigmoid(x)``."""
    return (1.0 - targets) * logits - jax.nn.log_sigmoid(logits)
