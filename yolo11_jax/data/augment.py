"""Training-time augmentation in the style of Ultralytics' YOLO11 recipe, on the host (NumPy + PIL).

Each sample is drawn from ``rng = np.random.default_rng([seed, epoch, record])``, so the
augmented batch is a pure function of (seed, epoch, record), whatever the number of worker
processes. The steps, as Ultralytics orders them (``v8_transforms``):

1. load: the image resized so that its long side is ``img_size`` (bilinear, aspect kept);
2. mosaic (probability ``mosaic``): four images (this one and three drawn uniformly from the
   dataset) around a centre drawn uniformly in ``[s/2, 3s/2]`` of a ``2s x 2s`` canvas of grey
   114; without mosaic, the image is centred on an ``s x s`` grey canvas (letterbox);
3. random affine to ``s x s``: scale ``U(1 - scale, 1 + scale)``, translation
   ``U(0.5 - translate, 0.5 + translate) * s`` of the centre, rotation ``U(-degrees, degrees)``,
   shear; grey 114 outside the image; boxes follow (their four corners, then the enclosing box),
   are clipped to the image and kept only if ``w > 2`` and ``h > 2`` pixels, their area is above
   ``0.1`` of the (scaled) original, and their aspect ratio below 100 (Ultralytics'
   ``box_candidates``);
4. HSV: hue, saturation and value gains ``1 + U(-1, 1) * (h, s, v)`` through lookup tables;
5. horizontal flip with probability ``fliplr``.

The geometry and colour work is OpenCV's (``cv2.resize`` / ``warpAffine`` with bilinear
interpolation, ``cvtColor`` to HSV with hue in 0..180, ``LUT``), as in Ultralytics; images are
RGB here (Ultralytics' are BGR: the HSV maths is the same). Images are decoded with PIL. Mosaic
partners are three other records of the same batch (:mod:`.pipeline`), whose decoded images a
worker already holds, as Ultralytics draws them from its buffer of recently loaded images.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
from PIL import Image

GREY = 114


@dataclasses.dataclass(frozen=True)
class Augment:
    """Augmentation settings; the defaults switch everything off (the notebook's recipe).

    ``ULTRALYTICS`` holds Ultralytics' defaults for YOLO11 (``cfg/default.yaml``).
    ``close_mosaic``: no mosaic in the last N epochs of a run (the other parts keep running).
    """

    mosaic: float = 0.0
    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.0
    fliplr: float = 0.0
    close_mosaic: int = 0

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "close_mosaic")


ULTRALYTICS = Augment(mosaic=1.0, translate=0.1, scale=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, fliplr=0.5,
                      close_mosaic=10)


def resize_long_side(img: np.ndarray, size: int) -> np.ndarray:
    """``uint8 (H, W, 3)`` resized so that the long side is ``size`` pixels, keeping the aspect
    ratio (Ultralytics' ``load_image``: ``ceil`` of each side, at most ``size``; bilinear)."""
    h, w = img.shape[:2]
    r = size / max(w, h)
    if r == 1:
        return img
    new = (min(math.ceil(w * r), size), min(math.ceil(h * r), size))
    return cv2.resize(img, new, interpolation=cv2.INTER_LINEAR)


def cxcywh_norm_to_xyxy_px_np(boxes_cxcywh: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalised ``(N, 4)`` cxcywh -> float64 ``(N, 4)`` xyxy pixels of a ``width x height`` image
    (NumPy, for the input pipeline; ``anchors.cxcywh_to_xyxy`` is the JAX one, with ``img_hw``)."""
    b = np.asarray(boxes_cxcywh, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] - b[:, 2] / 2) * width, (b[:, 1] - b[:, 3] / 2) * height,
                     (b[:, 0] + b[:, 2] / 2) * width, (b[:, 1] + b[:, 3] / 2) * height], axis=1)


def mosaic4(tiles: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images ``(uint8 (h, w, 3), boxes_xyxy (n, 4) pixels, labels (n,))`` on a ``2s x 2s``
    grey canvas: tile 0 top-left of a centre ``(xc, yc)`` drawn in ``[s/2, 3s/2]``, then
    top-right, bottom-left, bottom-right, each cropped where it runs past the canvas.
    Returns the canvas, the boxes shifted with their tiles and clipped to it (zero-area boxes
    dropped), and their labels."""
    s = size
    canvas = np.full((2 * s, 2 * s, 3), GREY, np.uint8)
    yc, xc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
    all_boxes, all_labels = [], []
    for i, (img, boxes, labels) in enumerate(tiles):
        h, w = img.shape[:2]
        if i == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        all_boxes.append(boxes + np.array([x1a - x1b, y1a - y1b] * 2, np.float64))
        all_labels.append(labels)
    boxes = np.clip(np.concatenate(all_boxes, 0), 0, 2 * s)
    labels = np.concatenate(all_labels, 0)
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return canvas, boxes[keep], labels[keep]


def letterbox_canvas(img: np.ndarray, boxes_xyxy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre an image whose long side is at most ``size`` on a ``size`` squared grey canvas."""
    h, w = img.shape[:2]
    top, left = round((size - h) / 2 - 0.1), round((size - w) / 2 - 0.1)
    canvas = np.full((size, size, 3), GREY, np.uint8)
    canvas[top:top + h, left:left + w] = img
    return canvas, boxes_xyxy + np.array([left, top, left, top], np.float64)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2.0, ar_thr: float = 100.0,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Ultralytics' filter: ``(N,)`` bool, True where the transformed box ``after`` (xyxy) is
    wider and taller than ``wh_thr`` pixels, keeps more than ``area_thr`` of the area of
    ``before`` (the original box scaled by the affine's scale), and has an aspect ratio below
    ``ar_thr``."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_affine(img: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, size: int, aug: Augment,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Warp ``img (H, W, 3)`` to ``size x size`` with ``M = T S R C`` (centre to the origin,
    rotate and scale, shear, translate; Ultralytics' order, no perspective). Returns the image,
    the transformed boxes (clipped, filtered by :func:`box_candidates`), their labels, and the
    number of boxes removed."""
    h_in, w_in = img.shape[:2]
    c = np.eye(3)
    c[0, 2], c[1, 2] = -w_in / 2, -h_in / 2
    angle = math.radians(rng.uniform(-aug.degrees, aug.degrees))
    scale = rng.uniform(1 - aug.scale, 1 + aug.scale)
    r = np.eye(3)
    r[:2, :2] = scale * np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-aug.shear, aug.shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-aug.shear, aug.shear)))
    t = np.eye(3)
    t[0, 2] = rng.uniform(0.5 - aug.translate, 0.5 + aug.translate) * size
    t[1, 2] = rng.uniform(0.5 - aug.translate, 0.5 + aug.translate) * size
    m = t @ sh @ r @ c
    out = cv2.warpAffine(img, m[:2], dsize=(size, size), flags=cv2.INTER_LINEAR, borderValue=(GREY, GREY, GREY))
    n = len(boxes_xyxy)
    if n == 0:
        return out, boxes_xyxy.reshape(0, 4), labels, 0
    x1, y1, x2, y2 = (boxes_xyxy[:, i] for i in range(4))
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y2], 1), np.stack([x1, y2], 1),
                        np.stack([x2, y1], 1)], 1)                                       # (n, 4, 2)
    moved = corners @ m[:2, :2].T + m[:2, 2]
    new = np.concatenate([moved.min(1), moved.max(1)], 1)
    new = np.clip(new, 0, size)
    keep = box_candidates(boxes_xyxy * scale, new)
    return out, new[keep], labels[keep], int(n - keep.sum())


def random_hsv(img: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Ultralytics' ``RandomHSV``: ``r = 1 + U(-1, 1) * gains``; through lookup tables on OpenCV's
    HSV (hue 0..180), hue ``(x + (r_h - 1) * 180) mod 180``, saturation and value ``clip(x * r)``
    (saturation 0 stays 0)."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x + (r[0] - 1) * 180) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_s[0] = 0
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv = cv2.LUT(hsv, np.stack([lut_h, lut_s, lut_v], -1).reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flip_lr(img: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right; ``x1' = W - x2``, ``x2' = W - x1``."""
    w = img.shape[1]
    flipped = boxes_xyxy.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes_xyxy[:, 2], w - boxes_xyxy[:, 0]
    return cv2.flip(img, 1), flipped


def augment_sample(load, index: int, partners, size: int, aug: Augment, rng: np.random.Generator,
                   use_mosaic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One augmented training image: ``(uint8 (s, s, 3), boxes_xyxy (n, 4) pixels, labels (n,),
    boxes removed by the affine)``. ``load(i) -> (uint8 image with long side s, boxes_xyxy,
    labels)`` reads record ``i``; a mosaic's three other tiles are drawn (with replacement) from
    the records ``partners``."""
    if use_mosaic and aug.mosaic > 0 and rng.uniform() <= aug.mosaic:
        others = rng.choice(np.asarray(partners), 3)
        img, boxes, labels = mosaic4([load(index)] + [load(int(j)) for j in others], size, rng)
    else:
        img, boxes, labels = load(index)
        img, boxes = letterbox_canvas(img, boxes, size)
    img, boxes, labels, removed = random_affine(img, boxes, labels, size, aug, rng)
    if aug.hsv_h or aug.hsv_s or aug.hsv_v:
        img = random_hsv(img, (aug.hsv_h, aug.hsv_s, aug.hsv_v), rng)
    if aug.fliplr and rng.uniform() < aug.fliplr:
        img, boxes = flip_lr(img, boxes)
    return img, boxes, labels, removed
