"""The spec assigner (batched, padded) against the notebook's assigner looped per image, and the
chunked assigner against the spec.

Labels and foreground masks must be identical; bboxes and scores agree to 1e-5 (abs).
Every case runs the spec (``assign.task_aligned_assign``) and both passes of the chunked
assigner (``assign_chunked``, ``method='dense' | 'sparse'``) at several chunk sizes; the
chunked results must equal the spec's bit for bit.
"""

import itertools

import jax

import numpy as np
import pytest
import torch

from reference_torch import TaskAlignedAssigner
from yolo11_jax import assign, assign_chunked
from yolo11_jax.anchors import feature_sizes, make_anchor_points, row_chunk_size
from yolo11_jax.assign import task_aligned_assign
from yolo11_jax.assign_chunked import task_aligned_assign_chunked

# (name, function(*args, chunk_size, **kw)): the spec first; chunk_size concerns the others only.
WAYS = [("spec", lambda *args, chunk_size=None, **kw: task_aligned_assign(*args, **kw))] + [
    (f"chunked-{m}", lambda *args, m=m, **kw: task_aligned_assign_chunked(*args, method=m, **kw))
    for m in assign_chunked.METHODS]
METHODS = [name for name, _ in WAYS]


def make_batch(seed, img_size=128, num_classes=6, counts=(3, 0, 7, 1), max_boxes=8):
    """Predictions near the anchors and ground truth that includes competing, overlapping
    boxes, tiny boxes containing no anchor, and images without boxes."""
    rng = np.random.default_rng(seed)
    anchors, strides = make_anchor_points(feature_sizes((img_size, img_size)))
    b, a = len(counts), len(anchors)
    ltrb = rng.uniform(0.2, 4.0, (b, a, 4)) * strides[None, :, None]
    pred_bboxes = np.concatenate([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], -1).astype(np.float32)
    pred_scores = rng.uniform(0.0, 1.0, (b, a, num_classes)).astype(np.float32) ** 3
    gt_bboxes = np.zeros((b, max_boxes, 4), np.float32)
    gt_labels = np.zeros((b, max_boxes), np.int32)
    gt_mask = np.zeros((b, max_boxes), bool)
    for i, n in enumerate(counts):
        for j in range(n):
            if j % 3 == 2:  # tiny box, may contain no anchor
                xy = rng.uniform(0, img_size - 4, 2)
                box = np.concatenate([xy, xy + rng.uniform(0.5, 3.0, 2)])
            elif j % 3 == 1 and j > 0:  # overlaps the previous box to compete for anchors
                prev = gt_bboxes[i, j - 1]
                box = prev + rng.uniform(-10, 10, 4)
            else:
                xy = rng.uniform(0, img_size * 0.7, 2)
                box = np.concatenate([xy, xy + rng.uniform(10, img_size * 0.5, 2)])
            box = np.clip(box, 0, img_size)
            box[2:] = np.maximum(box[2:], box[:2] + 0.5)
            gt_bboxes[i, j] = box
            gt_labels[i, j] = rng.integers(0, num_classes)
            gt_mask[i, j] = True
        # garbage in the padding rows must not matter
        gt_bboxes[i, n:] = rng.uniform(0, img_size, (max_boxes - n, 4))
        gt_labels[i, n:] = rng.integers(0, num_classes, max_boxes - n)
    return anchors, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask


def reference_assign(anchors, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask, **kw):
    assigner = TaskAlignedAssigner(**kw)
    outs = []
    for i in range(len(pred_scores)):
        n = int(gt_mask[i].sum())
        outs.append(assigner.assign(
            torch.from_numpy(pred_scores[i]), torch.from_numpy(pred_bboxes[i]),
            torch.from_numpy(gt_labels[i, :n]).long(), torch.from_numpy(gt_bboxes[i, :n]),
            torch.from_numpy(anchors), torch.from_numpy(strides)))
    labels = np.stack([o[0].numpy() for o in outs])
    return labels, np.stack([o[1].numpy() for o in outs]), np.stack([o[2].numpy() for o in outs])


def check_equal(batch, chunk_sizes=(None,), **kw):
    anchors, strides, *rest = batch
    want_labels, want_bboxes, want_scores = reference_assign(anchors, strides, *rest, **kw)
    pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = rest
    first = None
    for (method, fn), chunk_size in itertools.product(WAYS, chunk_sizes):
        out = fn(pred_scores, pred_bboxes, anchors, gt_labels, gt_bboxes, gt_mask, chunk_size=chunk_size, **kw)
        labels, bboxes, scores, fg = (np.asarray(x) for x in out)
        np.testing.assert_array_equal(labels, want_labels, err_msg=method)
        np.testing.assert_array_equal(fg, want_labels >= 0, err_msg=method)
        np.testing.assert_allclose(bboxes, want_bboxes, rtol=0, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5, err_msg=method)
        if first is None:
            first = (labels, bboxes, scores, fg)
        else:  # the chunked ways differ from the spec only in how they find the same top-k
            for x, y in zip(first, (labels, bboxes, scores, fg)):
                np.testing.assert_array_equal(x, y, err_msg=method)
    return want_labels


@pytest.mark.parametrize("seed", range(6))
def test_assignment_equals_reference_looped_per_image(seed):
    labels = check_equal(make_batch(seed))
    assert (labels >= 0).sum() > 10  # the case is not trivially all background
    assert (labels[1] == -1).all()   # the image without boxes


def test_competing_boxes_resolve_to_highest_alignment():
    """Two nearly identical boxes of different classes: each anchor goes to one of them,
    exactly as the reference decides, and both boxes' candidates overlap."""
    batch = list(make_batch(10, counts=(2,)))
    gt = batch[5]
    gt[0, 0] = [20, 20, 100, 100]
    gt[0, 1] = [22, 18, 98, 104]
    batch[4][0, :2] = [1, 4]
    labels = check_equal(batch)
    assert set(np.unique(labels[0])) - {-1} == {1, 4}


def test_box_without_anchor_gets_nothing():
    batch = list(make_batch(11, counts=(1,)))
    batch[5][0, 0] = [1.0, 1.0, 3.0, 3.0]  # inside the first stride-8 cell, misses its centre (4, 4)
    labels = check_equal(batch)
    assert (labels == -1).all()


@pytest.mark.parametrize("kw", [dict(topk=1), dict(topk=5, alpha=0.5, beta=2.0), dict(topk=40)])
def test_assigner_options_match_reference(kw):
    check_equal(make_batch(20), **kw)


def test_few_chunks_take_one_top_k_over_all_anchors():
    """With at most 2k chunks (here 84 anchors at 64 px, chunks of 1, k = 50) the chunked
    assigner hands over to the spec (one ``top_k`` over all anchors)."""
    batch = make_batch(36, img_size=64, counts=(1, 0, 4, 1), max_boxes=5)
    batch[5][0, 0] = [1.0, 1.0, 63.0, 63.0]  # holds ~70 anchors: more than k have positive alignment
    assert -(-len(batch[0]) // assign_chunked.chunk_size_for(len(batch[0]), 50)) <= 2 * 50  # the path under test
    labels = check_equal(batch, topk=50)
    assert (labels[0] >= 0).sum() == 50


def test_notebook_size_batch_matches_reference():
    """640 px (8400 anchors), 80 classes, up to 32 boxes per image, with the chunk hint the
    loss passes (rows of 20 anchors) and without it (chunks of 25 that straddle rows)."""
    batch = make_batch(30, img_size=640, num_classes=80, counts=(32, 5, 0, 17), max_boxes=32)
    labels = check_equal(batch, chunk_sizes=(row_chunk_size(feature_sizes((640, 640))), None))
    assert (labels >= 0).sum() > 50


def test_more_than_32_boxes_per_image():
    """Many boxes per image: the sparse pass enumerates (image, chunk, box) hits in that order."""
    labels = check_equal(make_batch(31, counts=(37, 2, 40), max_boxes=40))
    assert (labels >= 0).sum() > 30


def test_arbitrary_anchor_layout_and_padded_chunks():
    """Nothing assumes a grid: anchors at random positions in random order, and a count (331,
    a prime) that no chunk length divides, so the last chunk is padded; also a chunk hint that
    does not divide the count (ignored) and one that does (7 x 47 = 329 is not 331: ignored
    too), and an explicit divisor on a grid."""
    rng = np.random.default_rng(32)
    anchors_grid, strides, *rest = make_batch(32)
    a = 331
    anchors = rng.uniform(0, 128, (a, 2)).astype(np.float32)
    b = rest[0].shape[0]
    ltrb = rng.uniform(1.0, 30.0, (b, a, 4))
    pred_bboxes = np.concatenate([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], -1).astype(np.float32)
    pred_scores = rng.uniform(0.0, 1.0, (b, a, rest[0].shape[2])).astype(np.float32) ** 3
    batch = (anchors, np.full(a, 8.0, np.float32), pred_scores, pred_bboxes, *rest[2:])
    labels = check_equal(batch, chunk_sizes=(None, 7))
    assert (labels >= 0).sum() > 10
    check_equal((anchors_grid, strides, *rest), chunk_sizes=(16,))


_SCENE_CHUNK = 4


def _one_box_scene():
    """One ground-truth box over most of a 128 px image, every predicted box equal to it (equal
    IoU everywhere, so an anchor's alignment is its score), and two chunks of
    ``_SCENE_CHUNK`` anchors wholly inside the box, the first lower than the second.
    Returns ``anchors, pred_bboxes, gt (labels, boxes, mask), (low_chunk, high_chunk)``."""
    anchors, _ = make_anchor_points(feature_sizes((128, 128)))
    box = np.array([6.0, 6.0, 122.0, 122.0], np.float32)
    pred_bboxes = np.broadcast_to(box, (1, len(anchors), 4)).copy()
    inside = np.flatnonzero((anchors[:, 0] > box[0]) & (anchors[:, 1] > box[1])
                            & (anchors[:, 0] < box[2]) & (anchors[:, 1] < box[3]))
    chunks = inside[8] // _SCENE_CHUNK, inside[-8] // _SCENE_CHUNK
    for c in chunks:
        assert set(range(c * _SCENE_CHUNK, (c + 1) * _SCENE_CHUNK)) <= set(inside)
    gt = (np.zeros((1, 1), np.int32), box[None, None], np.ones((1, 1), bool))
    return anchors, pred_bboxes, gt, chunks


def _foreground(anchors, pred_bboxes, gt, anchor_scores, topk):
    """The foreground anchors of each method, with ``anchor_scores`` ({anchor: score}) set in
    class 0 over a floor of 0.1."""
    pred_scores = np.full((1, len(anchors), 2), 0.1, np.float32)
    pred_scores[0, list(anchor_scores), 0] = list(anchor_scores.values())
    result = {}
    for method, fn in WAYS:
        *_, fg = fn(pred_scores, pred_bboxes, anchors, *gt, topk=topk, chunk_size=_SCENE_CHUNK)
        result[method] = sorted(np.flatnonzero(np.asarray(fg)[0]))
    return result


def test_ties_at_the_kth_place_go_to_the_lower_anchor_index():
    """Equal alignments straddling the k-th place go to the lower anchor index (lax.top_k's
    rule) in every way, although the chunk with the largest value has the higher index.
    (torch.topk leaves the order of ties open, so this is checked against the rule, not the
    reference.)"""
    anchors, pred_bboxes, gt, (low, high) = _one_box_scene()
    best, second = high * _SCENE_CHUNK, low * _SCENE_CHUNK                 # chunk maxima 0.9 > 0.8
    tie_low, tie_high = low * _SCENE_CHUNK + 2, high * _SCENE_CHUNK + 2    # 0.5 each
    scores = {best: 0.9, second: 0.8, tie_low: 0.5, tie_high: 0.5}
    for method, fg in _foreground(anchors, pred_bboxes, gt, scores, topk=3).items():
        assert fg == sorted([best, second, tie_low]), method


@pytest.mark.parametrize("topk", [2, 3, 4])
def test_a_chunk_maximum_shared_by_two_anchors(topk):
    """Two anchors of one chunk share its maximum: both stay among the candidates (topk 3, 4:
    both are kept), and when only one of the pair fits (topk 2) the lower anchor index wins."""
    anchors, pred_bboxes, gt, (other, shared) = _one_box_scene()
    top, third = other * _SCENE_CHUNK + 1, other * _SCENE_CHUNK
    pair = [shared * _SCENE_CHUNK + 3, shared * _SCENE_CHUNK + 1]
    scores = {top: 0.95, pair[0]: 0.9, pair[1]: 0.9, third: 0.5}
    expected = {2: [top, min(pair)], 3: [top, *pair], 4: [top, *pair, third]}[topk]
    for method, fg in _foreground(anchors, pred_bboxes, gt, scores, topk=topk).items():
        assert fg == sorted(expected), method


def test_unknown_method_is_an_error():
    anchors, _, *rest = make_batch(33)
    with pytest.raises(ValueError, match="unknown assignment method 'fast'"):
        task_aligned_assign_chunked(rest[0], rest[1], anchors, *rest[2:], method="fast")


def test_sparse_pass_refuses_a_candidate_rule_it_cannot_honour(monkeypatch):
    """The sparse pass skips chunks that do not meet a box. A spec whose candidate rule selects
    anchors outside the box (here: boxes enlarged to at least 16 px about their centre, as
    Ultralytics' assigner does) must make it raise, not silently lose candidates; the dense
    pass still follows the changed spec, bit for bit."""
    original = assign.candidate_mask

    def enlarged(anchor_points, gt_bboxes, gt_mask):
        centre, half = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2, (gt_bboxes[..., 2:] - gt_bboxes[..., :2]) / 2
        half = jax.numpy.maximum(half, 8.0)
        return original(anchor_points, jax.numpy.concatenate([centre - half, centre + half], -1), gt_mask)

    anchors, strides, *rest = make_batch(37)
    args = (rest[0], rest[1], anchors, *rest[2:])
    kw = dict(beta=1.0)  # so that the tiny boxes' anchors (IoU ~0.02) align above eps
    monkeypatch.setattr(assign, "candidate_mask", enlarged)
    with pytest.raises(ValueError, match="selects anchors outside their box"):
        task_aligned_assign_chunked.__wrapped__(*args, method="sparse", **kw)
    spec = task_aligned_assign.__wrapped__(*args, **kw)
    dense = task_aligned_assign_chunked.__wrapped__(*args, method="dense", **kw)
    for x, y in zip(spec, dense):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the changed rule is really in use: it gives another foreground than the original
    monkeypatch.setattr(assign, "candidate_mask", original)
    assert (np.asarray(spec.fg_mask) != np.asarray(task_aligned_assign.__wrapped__(*args, **kw).fg_mask)).any()
    task_aligned_assign_chunked.__wrapped__(*args, method="sparse", **kw)  # the original rule passes the probe


@pytest.mark.parametrize("rows", [16, 4])
def test_row_chunk_size(rows):
    sizes = feature_sizes((rows * 32, 640))
    assert row_chunk_size(sizes) == 20
    assert row_chunk_size([(4, 6), (2, 3)]) == 3
