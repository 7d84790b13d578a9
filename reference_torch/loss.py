"""The notebook's IoU variants, Task-Aligned assigner and composite loss."""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


def compute_iou(box1, box2, mode="ciou", eps=1e-7):
    """Pairwise IoU variants: box1 (N, 4), box2 (M, 4) in xyxy -> (N, M)."""
    inter_x1 = torch.max(box1[:, None, 0], box2[None, :, 0])
    inter_y1 = torch.max(box1[:, None, 1], box2[None, :, 1])
    inter_x2 = torch.min(box1[:, None, 2], box2[None, :, 2])
    inter_y2 = torch.min(box1[:, None, 3], box2[None, :, 3])
    inter = (inter_x2 - inter_x1).clamp(0) * (inter_y2 - inter_y1).clamp(0)

    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    union = area1[:, None] + area2[None, :] - inter
    iou = inter / (union + eps)
    if mode == "iou":
        return iou

    enc_x1 = torch.min(box1[:, None, 0], box2[None, :, 0])
    enc_y1 = torch.min(box1[:, None, 1], box2[None, :, 1])
    enc_x2 = torch.max(box1[:, None, 2], box2[None, :, 2])
    enc_y2 = torch.max(box1[:, None, 3], box2[None, :, 3])
    enc_area = (enc_x2 - enc_x1) * (enc_y2 - enc_y1)
    if mode == "giou":
        return iou - (enc_area - union) / (enc_area + eps)

    cx1 = (box1[:, 0] + box1[:, 2]) / 2
    cy1 = (box1[:, 1] + box1[:, 3]) / 2
    cx2 = (box2[:, 0] + box2[:, 2]) / 2
    cy2 = (box2[:, 1] + box2[:, 3]) / 2
    center_dist = (cx1[:, None] - cx2[None, :]) ** 2 + (cy1[:, None] - cy2[None, :]) ** 2
    diag_dist = (enc_x2 - enc_x1) ** 2 + (enc_y2 - enc_y1) ** 2
    if mode == "diou":
        return iou - center_dist / (diag_dist + eps)

    w1 = box1[:, 2] - box1[:, 0]
    h1 = box1[:, 3] - box1[:, 1]
    w2 = box2[:, 2] - box2[:, 0]
    h2 = box2[:, 3] - box2[:, 1]
    v = (4 / math.pi**2) * (
        torch.atan(w2[None, :] / (h2[None, :] + eps)) - torch.atan(w1[:, None] / (h1[:, None] + eps))
    ) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - center_dist / (diag_dist + eps) - alpha * v


class TaskAlignedAssigner:
    """The notebook's per-image Task-Aligned assigner."""

    def __init__(self, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9):
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def assign(self, pred_scores, pred_bboxes, gt_labels, gt_bboxes, anchor_points, stride):
        """One image: pred_scores (A, C) sigmoid, pred_bboxes (A, 4) xyxy px, gt (G,) / (G, 4).

        Returns labels (A,) with -1 for background, bboxes (A, 4), scores (A, C).
        """
        device = pred_scores.device
        num_anchors = pred_scores.shape[0]
        num_gt = gt_bboxes.shape[0]
        num_classes = pred_scores.shape[1]
        if num_gt == 0:
            return (
                torch.full((num_anchors,), -1, dtype=torch.long, device=device),
                torch.zeros((num_anchors, 4), device=device),
                torch.zeros((num_anchors, num_classes), device=device),
            )

        lt = anchor_points[:, None, :] - gt_bboxes[None, :, :2]
        rb = gt_bboxes[None, :, 2:] - anchor_points[:, None, :]
        in_gt = torch.cat([lt, rb], dim=-1).min(dim=-1).values > 0

        gt_cls_scores = pred_scores[:, gt_labels]
        pair_iou = compute_iou(pred_bboxes, gt_bboxes, mode="iou").clamp(0, 1)
        alignment = gt_cls_scores.pow(self.alpha) * pair_iou.pow(self.beta)
        alignment[~in_gt] = 0

        topk_mask = torch.zeros_like(alignment, dtype=torch.bool)
        for j in range(num_gt):
            vals = alignment[:, j]
            k = min(self.topk, (vals > 0).sum().item())
            if k > 0:
                _, topk_idx = vals.topk(k)
                topk_mask[topk_idx, j] = True
        alignment[~topk_mask] = 0

        assigned_gt = alignment.argmax(dim=1)
        max_alignment = alignment.max(dim=1).values
        bg_mask = max_alignment < self.eps
        assigned_gt[bg_mask] = -1

        assigned_labels = torch.where(
            bg_mask, torch.tensor(-1, device=device), gt_labels[assigned_gt.clamp(min=0)]
        )
        assigned_labels[bg_mask] = -1
        assigned_bboxes = torch.zeros((num_anchors, 4), device=device)
        assigned_bboxes[~bg_mask] = gt_bboxes[assigned_gt[~bg_mask]]

        assigned_scores = torch.zeros((num_anchors, num_classes), device=device)
        fg_mask = ~bg_mask
        if fg_mask.any():
            norm_align = max_alignment[fg_mask] / (max_alignment[fg_mask].max() + self.eps)
            assigned_scores[fg_mask, assigned_labels[fg_mask]] = norm_align
        return assigned_labels, assigned_bboxes, assigned_scores


class YOLOv11Loss(nn.Module):
    """The notebook's composite loss: BCE (soft TAL targets) + CIoU + DFL."""

    def __init__(
        self,
        num_classes: int = 80,
        reg_max: int = 16,
        strides: List[int] = (8, 16, 32),
        cls_weight: float = 0.5,
        box_weight: float = 7.5,
        dfl_weight: float = 1.5,
        img_size=640,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        eps: float = 1e-9,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = list(strides)
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.dfl_weight = dfl_weight
        self.img_h, self.img_w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.assigner = TaskAlignedAssigner(topk=topk, alpha=alpha, beta=beta, eps=eps)
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        self.last_parts = None

    def _make_anchor_points(self, feat_sizes, device):
        all_points, all_strides = [], []
        for (h, w), stride in zip(feat_sizes, self.strides):
            sy, sx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            points = torch.stack([sx.flatten(), sy.flatten()], dim=-1).float()
            all_points.append((points + 0.5) * stride)
            all_strides.append(torch.full((h * w,), stride, dtype=torch.float32))
        return torch.cat(all_points).to(device), torch.cat(all_strides).to(device)

    def _decode_boxes(self, box_pred, anchor_points, strides):
        lt = box_pred[:, :2] * strides.unsqueeze(-1)
        rb = box_pred[:, 2:] * strides.unsqueeze(-1)
        return torch.cat([anchor_points - lt, anchor_points + rb], dim=-1)

    def forward(self, predictions, gt_boxes_list, gt_labels_list):
        """predictions: [(cls (B,C,H,W), ltrb (B,4,H,W), raw (B,4R,H,W))] per level;
        gt_boxes_list: per image (G, 4) normalised cxcywh; gt_labels_list: per image (G,)."""
        device = predictions[0][0].device
        batch_size = predictions[0][0].shape[0]
        feat_sizes = [(p[0].shape[2], p[0].shape[3]) for p in predictions]
        anchor_points, anchor_strides = self._make_anchor_points(feat_sizes, device)

        all_cls = torch.cat([p[0].flatten(2).permute(0, 2, 1) for p in predictions], dim=1)
        all_box = torch.cat([p[1].flatten(2).permute(0, 2, 1) for p in predictions], dim=1)
        all_raw = torch.cat([p[2].flatten(2).permute(0, 2, 1) for p in predictions], dim=1)

        total_cls_loss = torch.tensor(0.0, device=device)
        total_box_loss = torch.tensor(0.0, device=device)
        total_dfl_loss = torch.tensor(0.0, device=device)
        num_pos = 0
        for b in range(batch_size):
            cls_pred = all_cls[b].sigmoid()
            box_pred = all_box[b]
            raw_pred = all_raw[b]
            pred_bboxes = self._decode_boxes(box_pred, anchor_points, anchor_strides)
            gt_boxes = gt_boxes_list[b]
            gt_labels = gt_labels_list[b]
            if len(gt_boxes) == 0:
                total_cls_loss += self.bce(all_cls[b], torch.zeros_like(all_cls[b])).sum()
                continue

            gt_xyxy = torch.zeros_like(gt_boxes)
            gt_xyxy[:, 0] = (gt_boxes[:, 0] - gt_boxes[:, 2] / 2) * self.img_w
            gt_xyxy[:, 1] = (gt_boxes[:, 1] - gt_boxes[:, 3] / 2) * self.img_h
            gt_xyxy[:, 2] = (gt_boxes[:, 0] + gt_boxes[:, 2] / 2) * self.img_w
            gt_xyxy[:, 3] = (gt_boxes[:, 1] + gt_boxes[:, 3] / 2) * self.img_h

            assigned_labels, assigned_bboxes, assigned_scores = self.assigner.assign(
                cls_pred, pred_bboxes, gt_labels.long(), gt_xyxy, anchor_points, anchor_strides
            )
            fg_mask = assigned_labels >= 0
            num_fg = fg_mask.sum().item()
            num_pos += num_fg
            total_cls_loss += self.bce(all_cls[b], assigned_scores.to(device)).sum()

            if num_fg > 0:
                fg_pred_boxes = pred_bboxes[fg_mask]
                fg_gt_boxes = assigned_bboxes[fg_mask].to(device)
                ciou = compute_iou(fg_pred_boxes, fg_gt_boxes, mode="ciou")
                total_box_loss += (1.0 - torch.diag(ciou)).sum()

                fg_raw = raw_pred[fg_mask].view(-1, self.reg_max)
                fg_target_ltrb = torch.zeros((num_fg, 4), device=device)
                fg_strides = anchor_strides[fg_mask].unsqueeze(-1)
                fg_target_ltrb[:, :2] = (anchor_points[fg_mask] - fg_gt_boxes[:, :2]) / fg_strides
                fg_target_ltrb[:, 2:] = (fg_gt_boxes[:, 2:] - anchor_points[fg_mask]) / fg_strides
                fg_target_ltrb = fg_target_ltrb.clamp(0, self.reg_max - 1 - 0.01)
                target_flat = fg_target_ltrb.view(-1)
                target_left = target_flat.long()
                target_right = target_left + 1
                weight_right = target_flat - target_left.float()
                weight_left = 1.0 - weight_right
                dfl_loss = (
                    F.cross_entropy(fg_raw, target_left, reduction="none") * weight_left
                    + F.cross_entropy(fg_raw, target_right.clamp(max=self.reg_max - 1), reduction="none")
                    * weight_right
                )
                total_dfl_loss += dfl_loss.sum()

        num_pos = max(num_pos, 1)
        loss_cls = self.cls_weight * total_cls_loss / num_pos
        loss_box = self.box_weight * total_box_loss / num_pos
        loss_dfl = self.dfl_weight * total_dfl_loss / num_pos
        total_loss = loss_cls + loss_box + loss_dfl
        self.last_parts = {"cls_loss": loss_cls, "box_loss": loss_box, "dfl_loss": loss_dfl,
                           "total_loss": total_loss, "num_pos": num_pos}
        return total_loss, {
            "cls_loss": loss_cls.item(),
            "box_loss": loss_box.item(),
            "dfl_loss": loss_dfl.item(),
            "total_loss": total_loss.item(),
            "num_pos": num_pos,
        }
