"""Tests of yolo11_jax.postprocess against a plain NumPy greedy NMS reference."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from yolo11_jax.anchors import make_anchor_points
from yolo11_jax.postprocess import (
    _postprocess_jit,
    decode_predictions,
    non_max_suppression,
    postprocess,
)

# ----------------------------------------------------------------------------- NumPy reference


def iou_matrix_numpy(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, N)`` in float64; 0 where the union is empty."""
    b = np.asarray(boxes_xyxy, np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    iw = np.maximum(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0)
    ih = np.maximum(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_numpy(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Textbook greedy NMS: indices kept, in decreasing score (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = iou_matrix_numpy(boxes_xyxy)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def postprocess_numpy(boxes_xyxy, scores, *, conf_threshold, iou_threshold, max_det, max_candidates):
    """Single image reference. ``boxes_xyxy (A,4)``, ``scores (A,C)`` -> kept anchor indices, classes, scores.

    Single label per anchor, ``score > conf``, stable top-k, then ``nms_numpy`` run
    separately for every class; the per-class results are merged in (score desc,
    anchor rank asc) order and truncated to ``max_det``.
    """
    best = scores.max(-1)
    cls = scores.argmax(-1)
    cand = np.nonzero(best > conf_threshold)[0]
    cand = cand[np.argsort(-best[cand], kind="stable")][:max_candidates]  # anchor indices in rank order
    kept_ranks = []
    for c in np.unique(cls[cand]):
        ranks = np.nonzero(cls[cand] == c)[0]  # ascending rank = sorted by score, ties by anchor index
        kept_ranks.extend(ranks[nms_numpy(boxes_xyxy[cand[ranks]], best[cand[ranks]], iou_threshold)])
    kept_ranks = np.sort(np.asarray(kept_ranks, np.int64))[:max_det]
    kept = cand[kept_ranks]
    return kept, cls[kept], best[kept]


# ----------------------------------------------------------------------------- random cases


def random_case(rng, num_anchors, num_classes, *, img=200.0):
    """Clustered boxes (so suppression happens) with quantised scores (so ties happen)."""
    num_clusters = rng.integers(1, 8)
    centres = rng.uniform(0, img, size=(num_clusters, 2))
    sizes = rng.uniform(8, 60, size=(num_clusters, 2))
    which = rng.integers(0, num_clusters, size=num_anchors)
    cxcy = centres[which] + rng.normal(0, 4, size=(num_anchors, 2))
    wh = sizes[which] * rng.uniform(0.7, 1.3, size=(num_anchors, 2))
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], -1).astype(np.float32)
    # quantised scores: many exact ties, both between anchors and between classes of one anchor
    scores = (rng.integers(0, 12, size=(num_anchors, num_classes)) / 16.0).astype(np.float32)
    return boxes, scores


def near_threshold(boxes, iou_threshold, eps=1e-5):
    """True when some IoU is so close to the threshold that float32 rounding could flip it."""
    iou = iou_matrix_numpy(boxes)
    return bool(np.any(np.abs(iou - iou_threshold) < eps))


def make_batch(seed, batch, num_anchors, num_classes, iou_threshold):
    rng = np.random.default_rng(seed)
    boxes, scores = [], []
    while len(boxes) < batch:
        b, s = random_case(rng, num_anchors, num_classes)
        if not near_threshold(b, iou_threshold):
            boxes.append(b)
            scores.append(s)
    return np.stack(boxes), np.stack(scores)


def assert_matches_reference(out, boxes, scores, **kw):
    max_det = out["valid"].shape[1]
    out = jax.tree.map(np.asarray, out)
    for b in range(boxes.shape[0]):
        kept, cls, sc = postprocess_numpy(boxes[b], scores[b], **kw)
        n = len(kept)
        assert out["valid"][b].sum() == n
        assert out["valid"][b, :n].all() and not out["valid"][b, n:].any()
        np.testing.assert_array_equal(out["anchor_indices"][b, :n], kept)
        np.testing.assert_array_equal(out["classes"][b, :n], cls)
        np.testing.assert_array_equal(out["scores"][b, :n], sc)
        np.testing.assert_array_equal(out["boxes_xyxy"][b, :n], boxes[b, kept])
        # padding
        assert (out["anchor_indices"][b, n:] == -1).all() and (out["classes"][b, n:] == -1).all()
        assert (out["scores"][b, n:] == 0).all() and (out["boxes_xyxy"][b, n:] == 0).all()
        assert n <= max_det


@pytest.mark.parametrize(
    "conf_threshold,iou_threshold,max_det,max_candidates",
    [
        (0.1, 0.5, 300, 30000),  # no caps active
        (0.3, 0.7, 12, 60),  # max_det and the pre-NMS top-k both bite
        (0.0, 0.3, 50, 200),
    ],
)
def test_nms_matches_numpy_reference(conf_threshold, iou_threshold, max_det, max_candidates):
    num_anchors, num_classes, batch = 150, 3, 8
    saw_suppression = saw_truncation = False
    start = non_max_suppression._cache_size()
    for seed in range(8):
        boxes, scores = make_batch(seed, batch, num_anchors, num_classes, iou_threshold)
        out = non_max_suppression(
            boxes,
            scores,
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            max_det=max_det,
            max_candidates=max_candidates,
        )
        kw = dict(
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            max_det=max_det,
            max_candidates=max_candidates,
        )
        assert_matches_reference(out, boxes, scores, **kw)
        n_cand = np.minimum((scores.max(-1) > conf_threshold).sum(1), max_candidates)
        for b in range(batch):
            n_nms = len(postprocess_numpy(boxes[b], scores[b], **{**kw, "max_det": 10**9})[0])
            saw_suppression |= n_nms < n_cand[b]
            saw_truncation |= n_nms > max_det
    assert saw_suppression  # the cases do exercise suppression
    if max_det < 50:
        assert saw_truncation
    # one compilation for this static config and shape
    assert non_max_suppression._cache_size() - start <= 1


def test_reference_nms_sanity():
    """The reference itself: a hand-checked case."""
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.9], np.float32)
    # order: 1, 3 (tie -> lower index), 0, 2. IoU(1,3)=72/(100+90-72)=0.61 -> 3 suppressed; IoU(1,0)=81/119 -> 0 suppressed
    np.testing.assert_array_equal(nms_numpy(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(nms_numpy(boxes, scores, 0.7), [1, 3, 2])


def test_score_ties_break_by_lower_anchor_index():
    # identical boxes, identical scores: the lowest anchor index must win
    boxes = np.tile(np.array([[10, 10, 50, 50]], np.float32), (5, 1))[None]
    scores = np.full((1, 5, 2), 0.25, np.float32)
    out = non_max_suppression(boxes, scores, conf_threshold=0.1, iou_threshold=0.5, max_det=4, max_candidates=100)
    np.testing.assert_array_equal(np.asarray(out["anchor_indices"][0]), [0, -1, -1, -1])
    np.testing.assert_array_equal(np.asarray(out["classes"][0]), [0, -1, -1, -1])  # class tie -> class 0
    # make anchor 3 best in class 1: it is kept first, then anchor 0 (class 0, not suppressed across classes)
    scores[0, 3, 1] = 0.5
    out = non_max_suppression(boxes, scores, conf_threshold=0.1, iou_threshold=0.5, max_det=4, max_candidates=100)
    np.testing.assert_array_equal(np.asarray(out["anchor_indices"][0]), [3, 0, -1, -1])
    np.testing.assert_array_equal(np.asarray(out["classes"][0]), [1, 0, -1, -1])


def test_strict_thresholds():
    # IoU of these two boxes is exactly 0.5; score 0.5 equals the conf threshold exactly
    boxes = np.array([[[0, 0, 4, 4], [0, 0, 4, 2], [100, 100, 110, 110]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.5]]], np.float32)
    kw = dict(max_det=3, max_candidates=10)
    out = non_max_suppression(boxes, scores, conf_threshold=0.5, iou_threshold=0.5, **kw)
    np.testing.assert_array_equal(np.asarray(out["anchor_indices"][0]), [0, 1, -1])  # IoU == thr: kept
    out = non_max_suppression(boxes, scores, conf_threshold=0.5, iou_threshold=0.49, **kw)
    np.testing.assert_array_equal(np.asarray(out["anchor_indices"][0]), [0, -1, -1])  # IoU > thr: suppressed
    out = non_max_suppression(boxes, scores, conf_threshold=0.49, iou_threshold=0.5, **kw)
    np.testing.assert_array_equal(np.asarray(out["anchor_indices"][0]), [0, 1, 2])  # score > conf: valid


def test_nothing_above_threshold_gives_all_invalid():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, size=(3, 40, 4)).astype(np.float32)
    scores = rng.uniform(0, 0.2, size=(3, 40, 5)).astype(np.float32)
    out = non_max_suppression(boxes, scores, conf_threshold=0.2, iou_threshold=0.7, max_det=10, max_candidates=30)
    assert not np.asarray(out["valid"]).any()
    assert (np.asarray(out["boxes_xyxy"]) == 0).all() and (np.asarray(out["scores"]) == 0).all()
    assert (np.asarray(out["classes"]) == -1).all()
    # sanity: the same inputs with a lower threshold do give detections
    out = non_max_suppression(boxes, scores, conf_threshold=0.1, iou_threshold=0.7, max_det=10, max_candidates=30)
    assert np.asarray(out["valid"]).all()


# ----------------------------------------------------------------------------- decoding


def make_predictions(rng, batch, img_hw, num_classes, *, reg_max=16, strides=(8, 16, 32)):
    levels = []
    for s in strides:
        h, w = img_hw[0] // s, img_hw[1] // s
        levels.append(
            (
                rng.normal(-3, 2, size=(batch, h, w, num_classes)).astype(np.float32),
                rng.uniform(0, 4, size=(batch, h, w, 4)).astype(np.float32),
                rng.normal(size=(batch, h, w, 4 * reg_max)).astype(np.float32),
            )
        )
    return levels


def test_decode_hand_made_example():
    img_hw = (32, 64)  # non-square: feature maps (4,8), (2,4), (1,2); A = 32 + 8 + 2 = 42
    rng = np.random.default_rng(0)
    preds = make_predictions(rng, 2, img_hw, 3)
    # level 1 (stride 16), batch 1, row 1, col 2: anchor centre x = 2.5*16 = 40, y = 1.5*16 = 24
    preds[1][1][1, 1, 2] = [1.0, 0.5, 2.0, 1.5]
    preds[1][0][1, 1, 2] = [0.0, 2.0, -1.0]
    # level 2 (stride 32), batch 0, row 0, col 1: anchor centre (48, 16)
    preds[2][1][0, 0, 1] = [0.25, 0.5, 0.0, 0.125]
    boxes, scores = decode_predictions(preds)
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    assert boxes.shape == (2, 42, 4) and scores.shape == (2, 42, 3)
    idx = 32 + 1 * 4 + 2  # level offset + row-major index
    np.testing.assert_allclose(boxes[1, idx], [40 - 16, 24 - 8, 40 + 32, 24 + 24], rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores[1, idx], [0.5, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0))], atol=1e-6)
    np.testing.assert_allclose(boxes[0, 32 + 8 + 1], [48 - 8, 16 - 16, 48, 16 + 4], rtol=0, atol=1e-5)
    # every anchor against an independent loop-based decode
    for b in range(2):
        a = 0
        for (cls, ltrb, _), s in zip(preds, (8, 16, 32)):
            for y in range(cls.shape[1]):
                for x in range(cls.shape[2]):
                    cx, cy = (x + 0.5) * s, (y + 0.5) * s
                    l, t, r, bt = ltrb[b, y, x] * s
                    np.testing.assert_allclose(boxes[b, a], [cx - l, cy - t, cx + r, cy + bt], atol=1e-4)
                    np.testing.assert_allclose(scores[b, a], 1 / (1 + np.exp(-cls[b, y, x].astype(np.float64))), atol=1e-6)
                    a += 1
    assert a == 42


def test_decode_uses_anchor_module_order():
    rng = np.random.default_rng(1)
    preds = make_predictions(rng, 1, (64, 64), 2)
    for cls, ltrb, _ in preds:
        ltrb[...] = 0.0
    boxes, _ = decode_predictions(preds)
    pts, _ = make_anchor_points([(8, 8), (4, 4), (2, 2)])
    np.testing.assert_array_equal(np.asarray(boxes[0, :, :2]), pts)
    np.testing.assert_array_equal(np.asarray(boxes[0, :, 2:]), pts)


# ----------------------------------------------------------------------------- postprocess


def test_postprocess_matches_reference_clips_and_compiles_once():
    img_hw = (96, 128)
    kw = dict(conf_threshold=0.05, iou_threshold=0.6, max_det=40, max_candidates=150)
    start = _postprocess_jit._cache_size()
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        preds = make_predictions(rng, 3, img_hw, 4)
        out = postprocess(preds, img_size=img_hw, **kw)
        boxes, scores = map(np.asarray, decode_predictions(preds))
        assert (boxes[..., 0] < 0).any() and (boxes[..., 2] > img_hw[1]).any()  # clipping is exercised
        clipped = np.clip(boxes, 0, np.array([128, 96, 128, 96], np.float32))
        out = jax.tree.map(np.asarray, out)
        # compare unclipped-box selection, then clipped coordinates
        for b in range(3):
            kept, cls, sc = postprocess_numpy(boxes[b], scores[b], **kw)
            n = len(kept)
            assert n > 0
            np.testing.assert_array_equal(out["anchor_indices"][b, :n], kept)
            np.testing.assert_array_equal(out["classes"][b, :n], cls)
            np.testing.assert_array_equal(out["scores"][b, :n], sc)
            np.testing.assert_allclose(out["boxes_xyxy"][b, :n], clipped[b, kept], rtol=0, atol=1e-4)
            assert not out["valid"][b, n:].any()
        assert out["classes"].dtype == np.int32 and out["valid"].dtype == np.bool_
        assert out["boxes_xyxy"].shape == (3, 40, 4)
        assert out["boxes_xyxy"][..., 0::2].max() <= 128 and out["boxes_xyxy"][..., 1::2].max() <= 96
        assert out["boxes_xyxy"].min() >= 0
        # threshold changes must not recompile
        postprocess(preds, img_size=img_hw, **{**kw, "conf_threshold": 0.1 + 0.01 * seed})
    assert _postprocess_jit._cache_size() - start == 1
    # the counter does detect a new compilation (new batch shape)
    postprocess(make_predictions(np.random.default_rng(0), 2, img_hw, 4), img_size=img_hw, **kw)
    assert _postprocess_jit._cache_size() - start == 2


def test_postprocess_inside_jit_and_int_img_size():
    preds = make_predictions(np.random.default_rng(3), 2, (64, 64), 3)
    expected = postprocess(preds, img_size=64, max_det=20)

    @jax.jit
    def f(p):
        return postprocess(p, img_size=(64, 64), max_det=20)

    got = f(preds)
    for k in expected:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(expected[k]))
    assert np.asarray(got["valid"]).any()


# ----------------------------------------------------------------------------- Ultralytics' NMS


@pytest.mark.parametrize("conf_threshold,max_det", [(0.25, 300), (0.001, 300), (0.05, 7)])
def test_class_offset_nms_matches_the_ultralytics_yardstick(conf_threshold, max_det):
    """``class_offset=7680`` against ``reference_torch.ultralytics_predict.non_max_suppression``
    (Ultralytics' rules in plain torch): the same detections, in the same order, exactly.

    Clustered boxes of 5 classes over a 640 x 480 frame, so that same-class and cross-class
    overlaps both occur; the yardstick's xywh -> xyxy conversion feeds both sides."""
    import torch

    from reference_torch import ultralytics_predict as ref

    rng = np.random.default_rng(11)
    a, c = 2000, 5
    centres = rng.uniform([0, 0], [640, 480], (40, 2))
    xy = centres[rng.integers(0, 40, a)] + rng.normal(0, 6, (a, 2))
    wh = rng.uniform(8, 200, (a, 2)) * rng.uniform(0.9, 1.1, (a, 1))
    logits = rng.normal(-3, 2.0, (a, c))
    pred = torch.from_numpy(np.concatenate([xy, wh, 1 / (1 + np.exp(-logits))], 1).T[None].astype(np.float32))
    want = ref.non_max_suppression(pred.clone(), conf_threshold, 0.7, max_det=max_det)[0].numpy()

    x = pred[0].T
    boxes_xyxy = torch.cat([x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2], 1).numpy()
    got = jax.device_get(non_max_suppression(boxes_xyxy[None], x[:, 4:].numpy()[None], conf_threshold=conf_threshold,
                                             iou_threshold=0.7, max_det=max_det, class_offset=7680.0))
    valid = got["valid"][0]
    assert 3 < len(want) <= max_det and int(valid.sum()) == len(want)
    np.testing.assert_array_equal(got["classes"][0][valid], want[:, 5].astype(np.int32))
    np.testing.assert_array_equal(got["scores"][0][valid], want[:, 4])
    np.testing.assert_array_equal(got["boxes_xyxy"][0][valid], want[:, :4])
    # Class ids compared exactly (offset 0) agree here too: no IoU this close to the threshold.
    exact = jax.device_get(non_max_suppression(boxes_xyxy[None], x[:, 4:].numpy()[None],
                                               conf_threshold=conf_threshold, iou_threshold=0.7, max_det=max_det))
    np.testing.assert_array_equal(exact["anchor_indices"], got["anchor_indices"])
