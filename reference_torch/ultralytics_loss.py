"""PyTorch reference for Ultralytics 8.4's detection loss and Task-Aligned assigner.

Own code, written from the semantics of ``ultralytics==8.4.190`` (``utils/tal.py``,
``utils/loss.py``, ``utils/metrics.py``) as v8DetectionLoss uses them for YOLO11: top-10,
alpha 0.5, beta 6, CIoU overlaps, ground-truth sides below the middle stride widened to it for
the candidate test, conflicts to the largest overlap, soft targets ``align * max_overlap /
max_align``, BCE + (1 - CIoU) + DFL normalised by the sum of the target scores, gains
7.5 / 0.5 / 1.5. It works as Ultralytics does: targets padded with zero rows into
``(B, n_max, ·)`` tensors, ``mask_gt = (box coordinates sum > 0)``, metrics computed on the
(image, box, anchor) triples of candidates only and scattered into dense tensors, top-k
membership counted with ``scatter_add``, box and DFL terms on the foreground rows gathered by
index.

Two choices that Ultralytics leaves open are made deterministic:

* top-k: ``torch.topk`` leaves the order of equal metrics open (Ultralytics' boxes with fewer
  than ``topk`` non-zero metrics fill their lists with zeros); here a stable descending sort
  keeps the lower anchor index first among equals;
* conflicts: ``max(...).indices`` over boxes also leaves ties open (every overlap of an anchor
  can be 0); here the first box of largest overlap wins.

Differences from Ultralytics' interface, not from its arithmetic: predictions are the per-level
``(cls_logits (B,C,H,W), box_ltrb (B,4,H,W), box_raw (B,4R,H,W))`` triples of
``reference_torch.YOLOv11`` / ``YOLO11`` (``box_ltrb`` is the DFL expectation that Ultralytics'
``bbox_decode`` computes from the same logits), targets are per-image lists, ``img_size`` is
given, and the loss is returned without the ``* batch_size`` factor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def ultralytics_bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """CIoU of xyxy boxes ``(..., 4)`` (broadcasting) with Ultralytics' eps placement: ``eps`` on the
    heights only, in the union and in the squared enclosing diagonal; ``alpha`` without gradient.
    Returns ``(...)``."""
    ax1, ay1, ax2, ay2 = box1.unbind(-1)
    bx1, by1, bx2, by2 = box2.unbind(-1)
    aw, ah = ax2 - ax1, ay2 - ay1 + eps
    bw, bh = bx2 - bx1, by2 - by1 + eps
    overlap_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    overlap_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = overlap_w * overlap_h
    union = aw * ah + bw * bh - inter + eps
    iou = inter / union
    enclose_w = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    enclose_h = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    diag2 = enclose_w.pow(2) + enclose_h.pow(2) + eps
    centre2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4
    aspect = (4 / math.pi**2) * (torch.atan(bw / bh) - torch.atan(aw / ah)).pow(2)
    with torch.no_grad():
        trade_off = aspect / (1 - iou + aspect + eps)
    return iou - (centre2 / diag2 + aspect * trade_off)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[..., 2:] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], -1)


class UltralyticsTaskAlignedAssigner(nn.Module):
    """Ultralytics 8.4's TaskAlignedAssigner with v8DetectionLoss's settings (axis-aligned boxes).

    ``forward(pd_scores (b,A,C) sigmoid, pd_bboxes (b,A,4) xyxy px, anc_points (A,2) px,
    gt_labels (b,n,1), gt_bboxes (b,n,4) xyxy px, mask_gt (b,n,1))`` returns Ultralytics' tuple
    ``(target_labels (b,A) long, target_bboxes (b,A,4) px, target_scores (b,A,C), fg_mask (b,A)
    bool, target_gt_idx (b,A))``. On background anchors the labels, boxes and indices are those of
    box 0 (as in Ultralytics; only the foreground is meaningful), the scores 0.

    ``last_stats`` (for tests) counts, for the last call: ``claimed_by_several`` anchors positive for
    more than one box before conflict resolution, ``won_without_selecting`` of those that went to a
    box which had not selected them, ``zero_score_positives`` foreground anchors with target score 0.
    """

    def __init__(self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0,
                 stride: Sequence[int] = (8, 16, 32), eps: float = 1e-9):
        super().__init__()
        self.last_stats = {}
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.min_side = float(stride[1] if len(stride) > 1 else stride[0])
        self.eps = eps

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        bs, num_anchors, _ = pd_scores.shape
        n = gt_bboxes.shape[1]
        if n == 0:
            self.last_stats = {"claimed_by_several": 0, "won_without_selecting": 0, "zero_score_positives": 0}
            return (torch.full((bs, num_anchors), self.num_classes, dtype=torch.long),
                    torch.zeros_like(pd_bboxes), torch.zeros_like(pd_scores),
                    torch.zeros((bs, num_anchors), dtype=torch.bool),
                    torch.zeros((bs, num_anchors), dtype=torch.long))
        valid = mask_gt.bool()                                                # (b, n, 1)
        labels = gt_labels.long().squeeze(-1)                                 # (b, n)

        # Candidates: anchor strictly inside the (small-side-enlarged) box.
        in_gts = self._candidates(anc_points, gt_bboxes, valid)              # (b, n, A)
        pairs = in_gts & valid

        # Metrics on candidate pairs only, scattered into zero tensors.
        bi, gi, ai = pairs.nonzero(as_tuple=True)
        pair_scores = pd_scores[bi, ai, labels[bi, gi]]
        pair_overlaps = ultralytics_bbox_ciou(gt_bboxes[bi, gi], pd_bboxes[bi, ai]).clamp(min=0)
        overlaps = torch.zeros((bs, n, num_anchors), dtype=pd_bboxes.dtype)
        align = torch.zeros((bs, n, num_anchors), dtype=pd_scores.dtype)
        overlaps[bi, gi, ai] = pair_overlaps
        align[bi, gi, ai] = pair_scores.pow(self.alpha) * pair_overlaps.pow(self.beta)

        # Top-k per box (stable: lower anchor index first among equal metrics); padding boxes
        # point all k picks at anchor 0, whose count then exceeds 1 and is discarded.
        picks = torch.sort(align, dim=-1, descending=True, stable=True).indices[..., :self.topk]
        picks = picks.masked_fill(~valid, 0)
        counts = torch.zeros((bs, n, num_anchors), dtype=torch.int16)
        counts.scatter_add_(-1, picks, torch.ones_like(picks, dtype=torch.int16))
        mask_pos = (counts == 1) & in_gts & valid                            # (b, n, A)

        # Anchors positive for several boxes: the first box of largest overlap over all boxes.
        multi = mask_pos.sum(1, keepdim=True) > 1                             # (b, 1, A)
        box_index = torch.arange(n).view(1, n, 1)
        best = torch.where(overlaps == overlaps.amax(1, keepdim=True), box_index, n).amin(1, keepdim=True)
        resolved = torch.where(multi, box_index == best, mask_pos)
        self.last_stats = {
            "claimed_by_several": int(multi.sum()),
            "won_without_selecting": int((multi & resolved & ~mask_pos).sum()),
        }
        mask_pos = resolved
        fg_mask = mask_pos.any(1)                                             # (b, A)
        target_gt_idx = mask_pos.to(torch.uint8).argmax(1)                    # unique where fg

        # Targets of the assigned box.
        target_labels = labels.gather(1, target_gt_idx).clamp(min=0)
        target_bboxes = gt_bboxes.gather(1, target_gt_idx[..., None].expand(-1, -1, 4))
        target_scores = F.one_hot(target_labels, self.num_classes).to(pd_scores.dtype)
        target_scores = target_scores * fg_mask[..., None]

        # Soft scores: align * (box's best positive overlap) / (box's best positive align + eps).
        align = align * mask_pos
        best_align = align.amax(-1, keepdim=True)
        best_overlap = (overlaps * mask_pos).amax(-1, keepdim=True)
        scale = (align * best_overlap / (best_align + self.eps)).amax(1)     # (b, A)
        self.last_stats["zero_score_positives"] = int((fg_mask & (scale == 0)).sum())
        return target_labels, target_bboxes, target_scores * scale[..., None], fg_mask, target_gt_idx

    def _candidates(self, anc_points, gt_bboxes, valid, margin: float = 1e-9):
        cxcywh = xyxy_to_cxcywh(gt_bboxes)
        small = (cxcywh[..., 2:] < self.min_side) & valid
        cxcywh[..., 2:] = torch.where(small, torch.full_like(cxcywh[..., 2:], self.min_side), cxcywh[..., 2:])
        boxes = cxcywh_to_xyxy(cxcywh).unsqueeze(2)                           # (b, n, 1, 4)
        x, y = anc_points[:, 0], anc_points[:, 1]
        return ((x - boxes[..., 0] > margin) & (y - boxes[..., 1] > margin)
                & (boxes[..., 2] - x > margin) & (boxes[..., 3] - y > margin))


class UltralyticsDetectionLoss(nn.Module):
    """Ultralytics 8.4's ``v8DetectionLoss`` (with ``BboxLoss`` / ``DFLoss``) for YOLO11.

    ``forward(predictions, gt_boxes_list, gt_labels_list)``: ``predictions`` per level
    ``(cls_logits (B,C,H,W), box_ltrb (B,4,H,W) grid units, box_raw (B,4R,H,W))``; targets per
    image ``(G, 4)`` normalised cxcywh and ``(G,)`` class ids. Returns ``(total, parts)``: the
    differentiable ``box + cls + dfl`` (gain-weighted, **not** multiplied by the batch size as
    Ultralytics' return value is) and a dict of detached ``box_loss``, ``cls_loss``, ``dfl_loss``,
    ``total_loss``, ``target_scores_sum`` tensors and the int ``num_fg``. The last assignment's
    ``(target_bboxes px, target_scores, fg_mask)`` is kept in ``self.last_assignment``.
    """

    def __init__(self, num_classes: int = 80, reg_max: int = 16, strides: Sequence[int] = (8, 16, 32),
                 box_weight: float = 7.5, cls_weight: float = 0.5, dfl_weight: float = 1.5, img_size=640,
                 topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = list(strides)
        self.gains = (box_weight, cls_weight, dfl_weight)
        self.img_h, self.img_w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.assigner = UltralyticsTaskAlignedAssigner(topk, num_classes, alpha, beta, self.strides, eps)
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        self.last_assignment = None

    def anchors(self, feat_sizes, dtype=torch.float32):
        """Anchor points ``(A, 2)`` in grid units (cell centres) and strides ``(A, 1)``."""
        points, strides = [], []
        for (h, w), s in zip(feat_sizes, self.strides):
            ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype) + 0.5, torch.arange(w, dtype=dtype) + 0.5,
                                    indexing="ij")
            points.append(torch.stack([xs, ys], -1).reshape(-1, 2))
            strides.append(torch.full((h * w, 1), float(s), dtype=dtype))
        return torch.cat(points), torch.cat(strides)

    def pad_targets(self, gt_boxes_list, gt_labels_list, dtype=torch.float32):
        """Per-image lists -> ``labels (B, n, 1)``, ``boxes (B, n, 4)`` xyxy px, zero-padded."""
        n = max((len(b) for b in gt_boxes_list), default=0)
        labels = torch.zeros((len(gt_boxes_list), n, 1), dtype=dtype)
        boxes = torch.zeros((len(gt_boxes_list), n, 4), dtype=dtype)
        scale = torch.tensor([self.img_w, self.img_h, self.img_w, self.img_h], dtype=dtype)
        for i, (bx, lb) in enumerate(zip(gt_boxes_list, gt_labels_list)):
            if len(bx):
                boxes[i, :len(bx)] = cxcywh_to_xyxy(bx.to(dtype) * scale)
                labels[i, :len(bx), 0] = lb.to(dtype)
        return labels, boxes

    def forward(self, predictions, gt_boxes_list, gt_labels_list):
        dtype = predictions[0][0].dtype
        feat_sizes = [tuple(p[0].shape[2:]) for p in predictions]
        cls_logits = torch.cat([p[0].flatten(2) for p in predictions], 2).transpose(1, 2)   # (B, A, C)
        ltrb = torch.cat([p[1].flatten(2) for p in predictions], 2).transpose(1, 2)         # (B, A, 4)
        raw = torch.cat([p[2].flatten(2) for p in predictions], 2).transpose(1, 2)          # (B, A, 4R)
        anchor_points, stride = self.anchors(feat_sizes, dtype)

        gt_labels, gt_bboxes = self.pad_targets(gt_boxes_list, gt_labels_list, dtype)
        mask_gt = gt_bboxes.sum(2, keepdim=True) > 0
        pred_bboxes = torch.cat([anchor_points - ltrb[..., :2], anchor_points + ltrb[..., 2:]], -1)  # grid

        _, target_bboxes, target_scores, fg_mask, _ = self.assigner(
            cls_logits.detach().sigmoid(), pred_bboxes.detach() * stride, anchor_points * stride,
            gt_labels, gt_bboxes, mask_gt)
        self.last_assignment = (target_bboxes, target_scores, fg_mask)
        target_scores_sum = target_scores.sum().clamp(min=1)

        loss_cls = self.bce(cls_logits, target_scores).sum() / target_scores_sum

        fg = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[fg].sum(-1)                                                 # (N,)
        target_grid = (target_bboxes / stride)[fg]                                         # (N, 4)
        ciou = ultralytics_bbox_ciou(pred_bboxes[fg], target_grid)
        loss_box = ((1.0 - ciou) * weight).sum() / target_scores_sum

        anchors_fg = anchor_points.expand(len(fg_mask), -1, -1)[fg]
        target_ltrb = torch.cat([anchors_fg - target_grid[:, :2], target_grid[:, 2:] - anchors_fg], -1)
        target_ltrb = target_ltrb.clamp(0, self.reg_max - 1 - 0.01).reshape(-1)          # (4N,)
        left = target_ltrb.long()
        right = left + 1
        w_left = right.to(dtype) - target_ltrb
        w_right = 1 - w_left
        logits = raw[fg].reshape(-1, self.reg_max)                                         # (4N, R)
        side = (F.cross_entropy(logits, left, reduction="none") * w_left
                + F.cross_entropy(logits, right, reduction="none") * w_right)
        loss_dfl = (side.reshape(-1, 4).mean(-1) * weight).sum() / target_scores_sum

        box_loss = loss_box * self.gains[0]
        cls_loss = loss_cls * self.gains[1]
        dfl_loss = loss_dfl * self.gains[2]
        total = box_loss + cls_loss + dfl_loss
        parts = {"box_loss": box_loss.detach(), "cls_loss": cls_loss.detach(), "dfl_loss": dfl_loss.detach(),
                 "total_loss": total.detach(), "target_scores_sum": target_scores_sum.detach(),
                 "num_fg": int(fg_mask.sum())}
        return total, parts
