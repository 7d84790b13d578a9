"""Inference post-processing: box decoding and batched, fixed-size, per-class NMS.

Network output format (``predictions``): a sequence of 3 levels (strides 8, 16,
32), each a tuple ``(cls_logits (B,H,W,C), box_ltrb (B,H,W,4), box_raw (B,H,W,4*reg_max))``
in NHWC. ``box_ltrb`` is the DFL expectation of the distances left, top, right,
bottom from the anchor centre, in grid units of that level.

Conventions shared by :func:`non_max_suppression` and :func:`postprocess`
(the NumPy reference in ``tests/test_postprocess.py`` follows the same rules):

* **Single label per anchor** (as Ultralytics with ``multi_label=False``): each
  anchor contributes one candidate, its best class ``argmax_c score[c]`` (lowest
  class index on a tie) with score ``max_c score[c]``.
* **Confidence**: a candidate is valid iff ``score > conf_threshold`` (strict).
* **Pre-NMS top-k**: the valid candidates are sorted by decreasing score, ties
  broken by lower anchor index (stable sort), and only the first
  ``min(max_candidates, A)`` are kept.
* **Greedy per-class NMS**: in that order, a candidate is kept unless an earlier
  kept candidate *of the same class* overlaps it with ``IoU > iou_threshold``
  (strict), until ``max_det`` are kept. Classes are separated by comparing class
  ids inside the suppression test rather than by the class-offset trick: the
  result is identical to the offset trick with a large enough offset, but exact
  (adding ``class * 7680`` to float32 coordinates loses up to ~0.06 px).
  ``class_offset > 0`` selects Ultralytics' own way instead: the IoU is computed
  on boxes shifted by ``class * class_offset`` (float32) and every kept box may
  suppress (``non_max_suppression`` in Ultralytics 8.4 with ``max_wh=7680``), so
  IoUs near the threshold round exactly as there.
* **IoU**: ``inter / union`` with areas ``max(x2-x1,0) * max(y2-y1,0)``; 0 when
  ``union <= 0``.
* **Outputs** are fixed-size, in selection order (decreasing score); padded
  slots have ``valid=False``, zero boxes and scores, class and anchor index -1.
  NMS runs on unclipped boxes; :func:`postprocess` clips the kept boxes to the
  image afterwards (as Ultralytics does in ``scale_boxes``).

Cost: one stable sort of the ``A`` anchors, then a ``lax.while_loop`` with one
iteration per *kept* box (at most ``max_det``), each ``O(K)`` with
``K = min(max_candidates, A)`` -- no ``K x K`` IoU matrix is materialised.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yolo11_jax.anchors import STRIDES, decode_ltrb, flatten_levels, make_anchor_points

#: Ultralytics' ``max_nms``: default pre-NMS candidate cap (clamped to the anchor count).
DEFAULT_MAX_CANDIDATES = 30000


def decode_predictions(predictions, *, strides: Sequence[int] = STRIDES) -> tuple[jax.Array, jax.Array]:
    """Decodes the raw per-level head outputs into pixel boxes and class scores.

    Args:
      predictions: sequence of levels (in the order of ``strides``), each
        ``(cls_logits (B,H,W,C), box_ltrb (B,H,W,4), box_raw)``; ``box_raw`` is
        ignored. ``box_ltrb`` in grid units (distances from the anchor centre).
      strides: stride in pixels of each level.

    Returns:
      ``boxes_xyxy (B, A, 4)`` float32 in input-image pixels (unclipped) and
      ``scores (B, A, C)`` float32 = ``sigmoid(cls_logits)``, with
      ``A = sum(H_l * W_l)``, levels concatenated in order, each flattened
      row-major (``reshape(B, H * W, .)``).
    """
    if len(predictions) != len(strides):
        raise ValueError(f"got {len(predictions)} levels for strides {tuple(strides)}")
    (cls_logits, ltrb), feat_sizes = flatten_levels([level[:2] for level in predictions])
    anchor_points_xy, anchor_strides = make_anchor_points(feat_sizes, strides)  # (A,2), (A,) NumPy constants
    boxes_xyxy = decode_ltrb(ltrb.astype(jnp.float32), anchor_points_xy, anchor_strides)  # (B,A,4) pixels
    cls_logits = cls_logits.astype(jnp.float32)
    return boxes_xyxy, jax.nn.sigmoid(cls_logits)


def _iou_one_to_many(box_xyxy: jax.Array, boxes_xyxy: jax.Array) -> jax.Array:
    """IoU of one box ``(4,)`` with ``(K, 4)`` boxes -> ``(K,)``; 0 where the union is empty."""
    area_one = jnp.maximum(box_xyxy[2] - box_xyxy[0], 0.0) * jnp.maximum(box_xyxy[3] - box_xyxy[1], 0.0)
    areas = jnp.maximum(boxes_xyxy[:, 2] - boxes_xyxy[:, 0], 0.0) * jnp.maximum(
        boxes_xyxy[:, 3] - boxes_xyxy[:, 1], 0.0
    )
    inter_w = jnp.maximum(jnp.minimum(box_xyxy[2], boxes_xyxy[:, 2]) - jnp.maximum(box_xyxy[0], boxes_xyxy[:, 0]), 0.0)
    inter_h = jnp.maximum(jnp.minimum(box_xyxy[3], boxes_xyxy[:, 3]) - jnp.maximum(box_xyxy[1], boxes_xyxy[:, 1]), 0.0)
    inter = inter_w * inter_h
    union = area_one + areas - inter
    return jnp.where(union > 0.0, inter / jnp.where(union > 0.0, union, 1.0), 0.0)


def _nms_single_image(boxes_xyxy, scores, conf_threshold, iou_threshold, class_offset, *, max_det: int,
                      max_candidates: int):
    """Single-image NMS. ``boxes_xyxy (A,4)``, ``scores (A,C)`` -> dict of ``(max_det, ...)``."""
    num_anchors = boxes_xyxy.shape[0]
    k = min(max_candidates, num_anchors)

    best_scores = jnp.max(scores, axis=-1)  # (A,)
    best_classes = jnp.argmax(scores, axis=-1).astype(jnp.int32)  # (A,) first max on ties
    is_candidate = best_scores > conf_threshold  # strict; NaN -> False
    sort_key = jnp.where(is_candidate, best_scores, -jnp.inf)
    order = jnp.argsort(-sort_key, stable=True)[:k].astype(jnp.int32)  # (K,) anchor indices, ties -> lower index

    cand_boxes = boxes_xyxy[order]  # (K,4)
    cand_scores = best_scores[order]
    cand_classes = best_classes[order]
    cand_valid = is_candidate[order]
    # Ultralytics' class-aware trick when class_offset > 0: IoU on class-shifted boxes, no class test.
    offset_boxes = cand_boxes + (cand_classes.astype(jnp.float32) * class_offset)[:, None]
    use_offset = class_offset > 0

    def cond(state):
        remaining, _, count = state
        return (count < max_det) & jnp.any(remaining)

    def body(state):
        remaining, keep, count = state
        i = jnp.argmax(remaining)  # first remaining candidate = highest score, lowest index on ties
        iou = _iou_one_to_many(offset_boxes[i], offset_boxes)
        suppressed = (iou > iou_threshold) & ((cand_classes == cand_classes[i]) | use_offset)
        remaining = remaining & ~suppressed
        remaining = remaining.at[i].set(False)
        keep = keep.at[count].set(i.astype(jnp.int32), mode="drop")
        return remaining, keep, count + 1

    init = (cand_valid, jnp.full((max_det,), -1, jnp.int32), jnp.zeros((), jnp.int32))
    _, keep, _ = jax.lax.while_loop(cond, body, init)  # keep: (max_det,) positions into the candidates, -1 = pad

    valid = keep >= 0
    pos = jnp.maximum(keep, 0)
    return {
        "boxes_xyxy": jnp.where(valid[:, None], cand_boxes[pos], 0.0),
        "scores": jnp.where(valid, cand_scores[pos], 0.0),
        "classes": jnp.where(valid, cand_classes[pos], -1),
        "anchor_indices": jnp.where(valid, order[pos], -1),
        "valid": valid,
    }


@functools.partial(jax.jit, static_argnames=("max_det", "max_candidates"))
def non_max_suppression(
    boxes_xyxy: jax.Array,
    scores: jax.Array,
    *,
    conf_threshold: float | jax.Array = 0.001,
    iou_threshold: float | jax.Array = 0.7,
    max_det: int = 300,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    class_offset: float | jax.Array = 0.0,
) -> dict[str, jax.Array]:
    """Batched single-label, per-class greedy NMS with fixed-size outputs.

    See the module docstring for the exact selection rules. Jitted: ``max_det``
    and ``max_candidates`` are static; the thresholds are traced (changing them
    does not recompile).

    Args:
      boxes_xyxy: ``(B, A, 4)`` boxes ``(x1, y1, x2, y2)``, any consistent unit.
      scores: ``(B, A, C)`` per-class scores (probabilities).
      conf_threshold: candidates need ``score > conf_threshold``.
      iou_threshold: a candidate is suppressed by a kept box of its class when
        ``IoU > iou_threshold``.
      max_det: maximum number of kept boxes per image (output size).
      max_candidates: pre-NMS top-k by score (clamped to ``A``).
      class_offset: 0 compares class ids (exact); > 0 uses Ultralytics' offset
        trick with this offset (7680 in Ultralytics). Traced.

    Returns:
      dict with ``boxes_xyxy (B, max_det, 4)`` float32 (unclipped),
      ``scores (B, max_det)`` float32, ``classes (B, max_det)`` int32,
      ``anchor_indices (B, max_det)`` int32 (index into ``A``), and
      ``valid (B, max_det)`` bool; rows sorted by decreasing score, padded
      rows (``valid=False``) have zero box/score and class/anchor index -1.
    """
    fn = functools.partial(_nms_single_image, max_det=max_det, max_candidates=max_candidates)
    return jax.vmap(fn, in_axes=(0, 0, None, None, None))(
        boxes_xyxy.astype(jnp.float32),
        scores.astype(jnp.float32),
        jnp.asarray(conf_threshold, jnp.float32),
        jnp.asarray(iou_threshold, jnp.float32),
        jnp.asarray(class_offset, jnp.float32),
    )


def _img_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, (int, np.integer)):
        return int(img_size), int(img_size)
    h, w = img_size
    return int(h), int(w)


@functools.partial(jax.jit, static_argnames=("img_size", "max_det", "max_candidates", "strides"))
def _postprocess_jit(predictions, conf_threshold, iou_threshold, class_offset, *, img_size, max_det, max_candidates,
                     strides):
    boxes_xyxy, scores = decode_predictions(predictions, strides=strides)
    out = non_max_suppression(
        boxes_xyxy,
        scores,
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_det=max_det,
        max_candidates=max_candidates,
        class_offset=class_offset,
    )
    h, w = img_size
    upper = jnp.array([w, h, w, h], jnp.float32)
    out["boxes_xyxy"] = jnp.clip(out["boxes_xyxy"], 0.0, upper)
    return out


def postprocess(
    predictions,
    *,
    img_size: int | Sequence[int],
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    strides: Sequence[int] = STRIDES,
    class_offset: float | jax.Array = 0.0,
) -> dict[str, jax.Array]:
    """Decode + NMS + clipping: raw head outputs to fixed-size detections.

    A thin wrapper that normalises its arguments (``img_size`` to ``(h, w)``,
    ``predictions`` to tuples) and calls one jitted function whose static
    arguments are ``img_size``, ``max_det``, ``max_candidates`` and ``strides``;
    so it compiles once per batch shape and static configuration (the
    thresholds are traced). It may also be called inside another jitted
    function.

    Args:
      predictions: the network output, see :func:`decode_predictions`.
      img_size: network input size in pixels, an int (square) or ``(h, w)``.
      conf_threshold: candidates need ``score > conf_threshold``.
      iou_threshold: same-class suppression when ``IoU > iou_threshold``.
      max_det: number of output slots per image.
      max_candidates: pre-NMS top-k by score (clamped to the anchor count).
      strides: stride in pixels of each level.
      class_offset: see :func:`non_max_suppression` (0: exact class test;
        7680: Ultralytics' offset trick). Traced.

    Returns:
      dict with ``boxes_xyxy (B, max_det, 4)`` float32 in input pixels, clipped
      to ``x in [0, w]``, ``y in [0, h]`` (after NMS); ``scores (B, max_det)``
      float32; ``classes (B, max_det)`` int32; ``anchor_indices (B, max_det)``
      int32; ``valid (B, max_det)`` bool. See :func:`non_max_suppression`.
    """
    predictions = tuple(tuple(level) for level in predictions)
    return _postprocess_jit(
        predictions,
        conf_threshold,
        iou_threshold,
        class_offset,
        img_size=_img_hw(img_size),
        max_det=int(max_det),
        max_candidates=int(max_candidates),
        strides=tuple(int(s) for s in strides),
    )
