"""task_aligned_assign (batched, padded) against the notebook's assigner looped per image.

Labels and foreground masks must be identical; bboxes and scores agree to 1e-5 (abs).
"""

import numpy as np
import pytest
import torch

from reference_torch import TaskAlignedAssigner
from yolo11_jax.anchors import feature_sizes, make_anchor_points
from yolo11_jax.assign import task_aligned_assign


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


def check_equal(batch, **kw):
    anchors, strides, *rest = batch
    want_labels, want_bboxes, want_scores = reference_assign(anchors, strides, *rest, **kw)
    pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask = rest
    labels, bboxes, scores, fg = task_aligned_assign(
        pred_scores, pred_bboxes, anchors, gt_labels, gt_bboxes, gt_mask, **kw)
    np.testing.assert_array_equal(np.asarray(labels), want_labels)
    np.testing.assert_array_equal(np.asarray(fg), want_labels >= 0)
    np.testing.assert_allclose(np.asarray(bboxes), want_bboxes, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=0, atol=1e-5)
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


def test_notebook_size_batch_matches_reference():
    """640 px (8400 anchors), 80 classes, up to 32 boxes per image."""
    batch = make_batch(30, img_size=640, num_classes=80, counts=(32, 5, 0, 17), max_boxes=32)
    labels = check_equal(batch)
    assert (labels >= 0).sum() > 50
