"""Ultralytics' predict pipeline in plain PyTorch and OpenCV: the yardstick of ``yolo11_jax``'s
predict for Ultralytics weights.

Written from the rules of Ultralytics 8.4.190 (its predictor for a ``.pt`` model, ``LetterBox``,
``Detect``'s inference decoding, ``nms.non_max_suppression`` and ``ops.scale_boxes``), without
its code, and independently of ``yolo11_jax/letterbox.py``:

1. ``letterbox``: ``r = min(s / H, s / W)``; resize to ``(max(round(W r), 1), max(round(H r), 1))``
   with ``cv2.resize(..., INTER_LINEAR)``; pad ``(s - new) % 32`` per axis (``auto``), split as
   ``round(d / 2 - 0.1)`` before and ``round(d / 2 + 0.1)`` after, ``cv2.copyMakeBorder`` with 114;
2. ``to_tensor``: BGR -> RGB, HWC -> CHW, ``float() / 255``;
3. ``detect_output``: the network's per-level maps -> ``(B, 4 + C, A)``: per anchor (cell centre
   ``(i + 0.5, j + 0.5)``, levels in stride order, rows flattened row-major) the box as
   ``(cx, cy, w, h) * stride`` from the DFL distances, then ``sigmoid`` of the class logits;
4. ``non_max_suppression``: candidates ``max class score > conf``; boxes ``xywh -> xyxy``; best
   class per anchor; at most ``max_nms`` by score; class-aware by adding ``class * max_wh`` to the
   coordinates; greedy NMS (suppress ``IoU > iou``, areas ``(x2 - x1) (y2 - y1)``) in plain torch
   (torchvision may be absent); first ``max_det`` kept;
5. ``scale_boxes``: gain ``min(h_in / H, w_in / W)``, ``new = max(round(side * gain), 1)``, offsets
   ``round((in - new) / 2 - 0.1)``, per-axis gains ``new / side``, then clipping to the image.

All in float32 tensors, as Ultralytics computes on a CPU.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

STRIDES = (8, 16, 32)


def letterbox(image: np.ndarray, imgsz: int = 640, *, auto: bool = True, stride: int = 32,
              pad_value: int = 114) -> np.ndarray:
    """``uint8 (H, W, 3)`` -> letterboxed ``uint8 (h_in, w_in, 3)`` (channel order kept)."""
    h, w = image.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_wh = (max(int(round(w * r)), 1), max(int(round(h * r)), 1))
    dw, dh = imgsz - new_wh[0], imgsz - new_wh[1]
    if auto:
        dw, dh = int(np.mod(dw, stride)), int(np.mod(dh, stride))
    dw, dh = dw / 2, dh / 2
    if (w, h) != new_wh:
        image = cv2.resize(image, new_wh, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)


def to_tensor(images_bgr: list[np.ndarray]) -> torch.Tensor:
    """Letterboxed BGR ``uint8 (h, w, 3)`` images of one shape -> float32 ``(B, 3, h, w)`` RGB in [0, 1]."""
    x = torch.from_numpy(np.stack(images_bgr))
    return x.permute(0, 3, 1, 2).flip(1).contiguous().float() / 255


def detect_output(levels) -> torch.Tensor:
    """``[(cls_logits (B,C,h,w), box_ltrb (B,4,h,w), ...)]`` per stride -> ``(B, 4 + C, A)``:
    ``(cx, cy, w, h)`` in input pixels, then the class probabilities."""
    boxes, scores = [], []
    for (cls, ltrb, *_), s in zip(levels, STRIDES):
        b, _, h, w = ltrb.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
        anchor = torch.stack([xs, ys]).view(1, 2, h * w)
        d = ltrb.reshape(b, 4, h * w)
        x1y1, x2y2 = anchor - d[:, :2], anchor + d[:, 2:]
        boxes.append(torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * s)
        scores.append(cls.reshape(b, cls.shape[1], h * w).sigmoid())
    return torch.cat([torch.cat(boxes, 2), torch.cat(scores, 2)], 1)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices kept by greedy NMS, by decreasing score: a box is dropped when its IoU with an
    already kept one exceeds ``iou_thres``."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_thres]
    return torch.tensor(keep, dtype=torch.long)


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.7, *,
                        max_det: int = 300, max_nms: int = 30000, max_wh: float = 7680.0) -> list[torch.Tensor]:
    """``(B, 4 + C, A)`` -> per image ``(K, 6)``: ``x1, y1, x2, y2, score, class``, by decreasing score."""
    out = []
    for x in prediction.transpose(1, 2):  # (A, 4 + C)
        x = x[x[:, 4:].amax(1) > conf_thres]
        xy, wh = x[:, :2], x[:, 2:4] / 2
        box = torch.cat([xy - wh, xy + wh], 1)
        conf, j = x[:, 4:].max(1, keepdim=True)
        x = torch.cat([box, conf, j.float()], 1)[conf.view(-1) > conf_thres]
        if x.shape[0] > max_nms:
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        if not x.shape[0]:
            out.append(x)
            continue
        keep = greedy_nms(x[:, :4] + x[:, 5:6] * max_wh, x[:, 4], iou_thres)[:max_det]
        out.append(x[keep])
    return out


def scale_boxes(input_hw, boxes: torch.Tensor, orig_hw) -> torch.Tensor:
    """xyxy boxes in letterboxed-input pixels -> original-image pixels, clipped (a new tensor)."""
    (ih, iw), (h, w) = input_hw, orig_hw
    gain = min(ih / h, iw / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_x, pad_y = round((iw - new_w) / 2 - 0.1), round((ih - new_h) / 2 - 0.1)
    b = boxes.clone()
    b[:, [0, 2]] -= pad_x
    b[:, [1, 3]] -= pad_y
    b[:, [0, 2]] /= new_w / w
    b[:, [1, 3]] /= new_h / h
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
    return b


@torch.no_grad()
def predict(model: torch.nn.Module, image_bgr: np.ndarray, *, imgsz: int = 640, conf: float = 0.25,
            iou: float = 0.7, max_det: int = 300) -> dict[str, np.ndarray]:
    """One BGR ``uint8`` image through the whole pipeline with ``model`` (``reference_torch.YOLO11``
    in eval mode): ``boxes_xyxy (K, 4)`` original pixels, ``scores (K,)``, ``classes (K,)``,
    ``input_hw``."""
    lb = letterbox(image_bgr, imgsz)
    det = non_max_suppression(detect_output(model(to_tensor([lb]))), conf, iou, max_det=max_det)[0]
    boxes = scale_boxes(lb.shape[:2], det[:, :4], image_bgr.shape[:2])
    return {"boxes_xyxy": boxes.numpy().astype(np.float64), "scores": det[:, 4].numpy().astype(np.float64),
            "classes": det[:, 5].numpy().astype(np.int64), "input_hw": lb.shape[:2]}
