"""task_aligned_assign (batched, padded) against the notebook's assigner looped per image.

Labels and foreground masks must be identical; bboxes and scores agree to 1e-5 (abs).
Every case runs each way of finding the chunk maxima (``method='dense' | 'sparse' | 'auto'``),
and the ways must also agree with each other bit for bit.
"""

import itertools

import numpy as np
import pytest
import torch

from reference_torch import TaskAlignedAssigner
from yolo11_jax.anchors import feature_sizes, make_anchor_points, row_chunk_size
from yolo11_jax.assign import METHODS, task_aligned_assign


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
    for method, chunk_size in itertools.product(METHODS, chunk_sizes):
        out = task_aligned_assign(pred_scores, pred_bboxes, anchors, gt_labels, gt_bboxes, gt_mask,
                                  method=method, chunk_size=chunk_size, **kw)
        labels, bboxes, scores, fg = (np.asarray(x) for x in out)
        np.testing.assert_array_equal(labels, want_labels, err_msg=method)
        np.testing.assert_array_equal(fg, want_labels >= 0, err_msg=method)
        np.testing.assert_allclose(bboxes, want_bboxes, rtol=0, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5, err_msg=method)
        if first is None:
            first = (labels, bboxes, scores, fg)
        else:  # methods and chunkings differ only in how they find the same top-k
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
    """With at most 2k chunks (here 84 anchors at 64 px, chunks of 1, k = 50) the two-pass
    search is skipped for one ``top_k`` over all anchors."""
    from yolo11_jax.assign import _chunk_size

    batch = make_batch(36, img_size=64, counts=(1, 0, 4, 1), max_boxes=5)
    batch[5][0, 0] = [1.0, 1.0, 63.0, 63.0]  # holds ~70 anchors: more than k have positive alignment
    assert -(-len(batch[0]) // _chunk_size(len(batch[0]), 50)) <= 2 * 50  # the path under test
    labels = check_equal(batch, topk=50)
    assert (labels[0] >= 0).sum() == 50


def test_notebook_size_batch_matches_reference():
    """640 px (8400 anchors), 80 classes, up to 32 boxes per image, with the chunk hint the
    loss passes (rows of 20 anchors) and without it (chunks of 25 that straddle rows)."""
    batch = make_batch(30, img_size=640, num_classes=80, counts=(32, 5, 0, 17), max_boxes=32)
    labels = check_equal(batch, chunk_sizes=(row_chunk_size(feature_sizes((640, 640))), None))
    assert (labels >= 0).sum() > 50


def test_more_than_32_boxes_per_image():
    """The sparse pass packs each (image, chunk)'s box hits into 32-bit words: 40 boxes take
    two words."""
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
    for method in METHODS:
        *_, fg = task_aligned_assign(pred_scores, pred_bboxes, anchors, *gt, topk=topk,
                                     chunk_size=_SCENE_CHUNK, method=method)
        result[method] = sorted(np.flatnonzero(np.asarray(fg)[0]))
    return result


def test_ties_at_the_kth_place_go_to_the_lower_anchor_index():
    """Equal alignments straddling the k-th place go to the lower anchor index (lax.top_k's
    rule), although the search meets the best chunk's candidates first: here the chunk with
    the largest value has the higher index, so without the check for such ties the search
    would keep its anchor. (torch.topk leaves the order of ties open, so this is checked
    against the rule, not the reference.)"""
    anchors, pred_bboxes, gt, (low, high) = _one_box_scene()
    best, second = high * _SCENE_CHUNK, low * _SCENE_CHUNK                 # chunk maxima 0.9 > 0.8
    tie_low, tie_high = low * _SCENE_CHUNK + 2, high * _SCENE_CHUNK + 2    # 0.5 each
    scores = {best: 0.9, second: 0.8, tie_low: 0.5, tie_high: 0.5}
    for method, fg in _foreground(anchors, pred_bboxes, gt, scores, topk=3).items():
        assert fg == sorted([best, second, tie_low]), method


@pytest.mark.parametrize("topk", [2, 3, 4])
def test_a_chunk_maximum_shared_by_two_anchors(topk):
    """Two anchors of one chunk share its maximum. The CPU's search moves each chunk's first
    maximum to the front of the candidates; the other must stay among them (topk 3, 4: both
    are kept), and when only one of the pair fits (topk 2) the lower anchor index wins."""
    anchors, pred_bboxes, gt, (other, shared) = _one_box_scene()
    top, third = other * _SCENE_CHUNK + 1, other * _SCENE_CHUNK
    pair = [shared * _SCENE_CHUNK + 3, shared * _SCENE_CHUNK + 1]
    scores = {top: 0.95, pair[0]: 0.9, pair[1]: 0.9, third: 0.5}
    expected = {2: [top, min(pair)], 3: [top, *pair], 4: [top, *pair, third]}[topk]
    for method, fg in _foreground(anchors, pred_bboxes, gt, scores, topk=topk).items():
        assert fg == sorted(expected), method


@pytest.mark.parametrize("img_size, counts", [(128, (3, 0, 7, 1)), (640, (32, 5, 0, 17))])
def test_scores_per_anchor(img_size, counts):
    """``scores_per_anchor=True`` (what the loss uses) gives the same assignment, and the
    soft targets as one value per anchor: its one-hot product equals the (B, A, C) scores bit
    for bit."""
    batch = make_batch(35, img_size=img_size, num_classes=80 if img_size == 640 else 6,
                       counts=counts, max_boxes=max(counts))
    anchors, _, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = batch
    args = (pred_scores, pred_bboxes, anchors, gt_labels, gt_bboxes, gt_mask)
    chunk = row_chunk_size(feature_sizes((img_size, img_size)))
    for method in METHODS:
        full = [np.asarray(x) for x in task_aligned_assign(*args, method=method, chunk_size=chunk)]
        per_anchor = [np.asarray(x) for x in task_aligned_assign(
            *args, method=method, chunk_size=chunk, scores_per_anchor=True)]
        for i in (0, 1, 3):
            np.testing.assert_array_equal(per_anchor[i], full[i], err_msg=method)
        labels, value = per_anchor[0], per_anchor[2]
        assert value.shape == labels.shape and (value[labels < 0] == 0).all()
        one_hot = np.eye(pred_scores.shape[-1], dtype=np.float32)[np.maximum(labels, 0)]
        np.testing.assert_array_equal(one_hot * value[..., None], full[2], err_msg=method)
        assert (value > 0).sum() > 10


def test_per_axis_indexing_of_large_arrays(monkeypatch):
    """Arrays of 2**31 elements or more are indexed per axis instead of by flat int32 offsets
    (a score gather, the soft-score scatter). Forced here on a small batch by lowering the
    limit: same results as the reference and, bit for bit, as the flat path."""
    import jax

    from yolo11_jax import assign

    anchors, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = make_batch(
        34, counts=(5, 0, 8), max_boxes=8)
    # 331 of the 336 anchors (a prime count): the last chunk is padded, and the sparse pass
    # gathers its scores by index (the path that has a per-axis form).
    anchors, strides, pred_scores, pred_bboxes = anchors[:331], strides[:331], pred_scores[:, :331], pred_bboxes[:, :331]
    batch = (anchors, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask)
    want = reference_assign(*batch)
    raw = assign.task_aligned_assign.__wrapped__  # traced afresh by each jax.jit below
    args = (pred_scores, pred_bboxes, anchors, gt_labels, gt_bboxes, gt_mask)
    for method in METHODS:
        def run():
            return [np.asarray(x) for x in jax.jit(lambda *xs: raw(*xs, method=method))(*args)]

        flat = run()
        with monkeypatch.context() as patch:
            patch.setattr(assign, "_FLAT_INDEX_LIMIT", 0)
            per_axis = run()
        for x, y in zip(flat, per_axis):
            np.testing.assert_array_equal(x, y, err_msg=method)
        np.testing.assert_array_equal(per_axis[0], want[0], err_msg=method)
        np.testing.assert_allclose(per_axis[2], want[2], rtol=0, atol=1e-5, err_msg=method)
    assert (want[0] >= 0).sum() > 10


def test_unknown_method_is_an_error():
    anchors, _, *rest = make_batch(33)
    with pytest.raises(ValueError, match="unknown assignment method 'fast'"):
        task_aligned_assign(rest[0], rest[1], anchors, *rest[2:], method="fast")


@pytest.mark.parametrize("rows", [16, 4])
def test_row_chunk_size(rows):
    sizes = feature_sizes((rows * 32, 640))
    assert row_chunk_size(sizes) == 20
    assert row_chunk_size([(4, 6), (2, 3)]) == 3
