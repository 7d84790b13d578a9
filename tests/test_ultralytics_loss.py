"""Ultralytics 8.4's loss and assigner in JAX (``assign_ultralytics``, ``loss_ultralytics``) against the
PyTorch reference ``reference_torch.ultralytics_loss``.

Tolerances (float32 on both sides):

* assigner: labels and foreground mask identical; assigned boxes and soft scores within 1e-5 abs
  (ASSIGN_ATOL);
* loss parts: relative error <= 1e-5 each (PART_RTOL); num_fg equal;
* gradients with respect to the head outputs (cls_logits, box_ltrb, box_raw of every level):
  relative L2 <= 1e-4 per tensor (HEAD_GRAD_RTOL);
* gradients with respect to every parameter of a network: relative L2 <= 1e-3 per tensor
  (PARAM_GRAD_RTOL), except tensors whose exact gradient is zero (ZERO_GRADIENT_TENSORS), held to
  an absolute floor of 1e-3 x the largest gradient norm of any tensor, as in tests/test_loss.py.

Ties: both sides take the lower anchor index first among equal alignment metrics (``lax.top_k``;
a stable descending sort in the reference) and the first box among equal overlaps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from reference_torch.ultralytics_loss import UltralyticsDetectionLoss, UltralyticsTaskAlignedAssigner
from yolo11_jax import convert
from yolo11_jax.anchors import feature_sizes, make_anchor_points
from yolo11_jax.assign_ultralytics import ultralytics_assign
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
from tests.helpers import nchw, randomize_batchnorm, rel_l2

ASSIGN_ATOL = 1e-5
PART_RTOL = 1e-5
HEAD_GRAD_RTOL = 1e-4
PARAM_GRAD_RTOL = 1e-3
ZERO_GRAD_FLOOR = 1e-3  # x the largest gradient norm

PART_KEYS = ("box_loss", "cls_loss", "dfl_loss", "total_loss", "target_scores_sum")

# Tensors whose exact gradient is zero, so both frameworks hold only float32 noise (see tests/test_loss.py).
ZERO_GRADIENT_TENSORS = {
    # notebook family: out_proj.bias adds a per-channel constant that the train-mode BatchNorms
    # after it remove
    "c2psa.attn.out_proj.bias",
    # YOLO11 (C2PSA = model.10): each of these BatchNorm biases adds a per-channel constant that
    # reaches only 1x1 convolutions followed by train-mode BatchNorms (attn.proj, ffn.0, C2PSA's
    # cv2), which subtract it again; measured gradient norms ~5e-10 x the largest, both sides
    "model.10.m.0.attn.pe.bn.bias",
    "model.10.m.0.attn.proj.bn.bias",
    "model.10.m.0.ffn.1.bn.bias",
}


# ----------------------------------------------------------------------------- assigner cases

def random_box(rng, kind, img_size, prev=None):
    """One xyxy pixel box of a kind: 'regular', 'crowd' (overlaps ``prev``), 'tiny' (0.5-3 px, often
    containing no anchor), 'small' (3-15 px sides, below the 16 px enlargement threshold), 'outside'
    (beyond the anchor grid: no candidate even after enlargement)."""
    if kind == "crowd" and prev is not None:
        box = prev + rng.uniform(-0.15, 0.15, 4) * (prev[2:] - prev[:2]).repeat(2)
    elif kind == "tiny":
        xy = rng.uniform(0, img_size - 4, 2)
        box = np.concatenate([xy, xy + rng.uniform(0.5, 3.0, 2)])
    elif kind == "small":
        xy = rng.uniform(0, img_size - 16, 2)
        box = np.concatenate([xy, xy + rng.uniform(3.0, 15.0, 2)])
    elif kind == "outside":
        xy = rng.uniform(img_size + 20, img_size + 60, 2)
        return np.concatenate([xy, xy + rng.uniform(5, 20, 2)])
    else:
        xy = rng.uniform(0, img_size * 0.7, 2)
        box = np.concatenate([xy, xy + rng.uniform(10, img_size * 0.5, 2)])
    box = np.clip(box, 0, img_size)
    box[2:] = np.maximum(box[2:], box[:2] + 0.5)
    return box


KINDS = ("regular", "crowd", "crowd", "tiny", "small", "regular", "crowd", "outside")


def make_assign_case(seed, img_size=128, num_classes=6, counts=(6, 0, 9, 2), extra_rows=3):
    """Predictions near the anchors and padded ground truth.

    Real boxes cycle through KINDS (crowds of overlapping boxes compete for anchors). In the JAX
    arrays the real rows sit at random positions among ``extra_rows`` or more padding rows filled
    with garbage (random boxes, NaN, labels out of range); the reference gets the real rows as
    per-image lists, zero-padded at the end as Ultralytics pads them.
    """
    rng = np.random.default_rng(seed)
    anchors, strides = make_anchor_points(feature_sizes((img_size, img_size)))
    b, a = len(counts), len(anchors)
    ltrb = rng.uniform(0.2, 4.0, (b, a, 4)) * strides[None, :, None]
    pred_bboxes = np.concatenate([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], -1).astype(np.float32)
    pred_scores = (rng.uniform(0.0, 1.0, (b, a, num_classes)) ** 3).astype(np.float32)
    m = max(counts) + extra_rows
    gt_bboxes = rng.uniform(-img_size, 2 * img_size, (b, m, 4)).astype(np.float32)
    gt_bboxes[:, ::4] = np.nan
    gt_labels = rng.integers(-3, num_classes + 5, (b, m)).astype(np.int32)
    gt_mask = np.zeros((b, m), bool)
    lists = []
    for i, n in enumerate(counts):
        boxes, labels, prev = [], [], None
        for j in range(n):
            prev = random_box(rng, KINDS[j % len(KINDS)], img_size, prev)
            boxes.append(prev)
            labels.append(rng.integers(0, num_classes))
        rows = np.sort(rng.choice(m, n, replace=False))
        gt_bboxes[i, rows] = np.asarray(boxes, np.float32).reshape(n, 4)
        gt_labels[i, rows] = labels
        gt_mask[i, rows] = True
        lists.append((np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(labels, np.int64)))
    return dict(anchors=anchors, pred_scores=pred_scores, pred_bboxes=pred_bboxes, gt_labels=gt_labels,
                gt_bboxes=gt_bboxes, gt_mask=gt_mask, lists=lists, num_classes=num_classes)


def reference_assign(case):
    """The reference assigner on Ultralytics' zero-padded targets; returns its outputs and stats."""
    lists = case["lists"]
    n = max(len(bx) for bx, _ in lists)
    labels = torch.zeros((len(lists), n, 1))
    boxes = torch.zeros((len(lists), n, 4))
    for i, (bx, lb) in enumerate(lists):
        boxes[i, :len(bx)] = torch.from_numpy(bx)
        labels[i, :len(bx), 0] = torch.from_numpy(lb).float()
    mask_gt = (boxes.sum(2, keepdim=True) > 0).float()
    assigner = UltralyticsTaskAlignedAssigner(num_classes=case["num_classes"])
    out = assigner(torch.from_numpy(case["pred_scores"]), torch.from_numpy(case["pred_bboxes"]),
                   torch.from_numpy(case["anchors"]), labels, boxes, mask_gt)
    return [x.numpy() for x in out], assigner.last_stats


def check_assign(case):
    """Assert parity of the JAX assigner with the reference; return the reference's outputs and stats."""
    (t_labels, t_bboxes, t_scores, t_fg, t_idx), stats = reference_assign(case)
    out = ultralytics_assign(case["pred_scores"], case["pred_bboxes"], case["anchors"], case["gt_labels"],
                             case["gt_bboxes"], case["gt_mask"])
    labels, bboxes, scores, fg = (np.asarray(x) for x in out)
    np.testing.assert_array_equal(fg, t_fg)
    np.testing.assert_array_equal(labels, np.where(t_fg, t_labels, -1))
    np.testing.assert_allclose(bboxes, np.where(t_fg[..., None], t_bboxes, 0.0), rtol=0, atol=ASSIGN_ATOL)
    np.testing.assert_allclose(scores, t_scores, rtol=0, atol=ASSIGN_ATOL)
    return dict(labels=t_labels, fg=t_fg, gt_idx=t_idx, scores=t_scores), stats


@pytest.mark.parametrize("seed", range(5))
def test_assigner_matches_reference(seed):
    """Random batches with garbage padding rows anywhere, an image without boxes, tiny and small
    boxes, crowds of overlapping boxes and boxes outside the anchor grid: labels and fg identical,
    boxes and scores to 1e-5 abs."""
    ref, stats = check_assign(make_assign_case(seed))
    assert ref["fg"].sum() > 30 and not ref["fg"][1].any()
    assert stats["claimed_by_several"] > 0  # the conflict resolution was exercised


def test_assigner_matches_reference_at_640():
    """640 px (8400 anchors), 80 classes, 30 and 17 boxes: as above, 1e-5 abs."""
    case = make_assign_case(100, img_size=640, num_classes=80, counts=(30, 17), extra_rows=4)
    ref, stats = check_assign(case)
    assert ref["fg"].sum() > 150 and stats["claimed_by_several"] > 0


def blank_case(img_size=128, num_classes=6, pred_box=(100.0, 100.0, 127.0, 127.0), score=0.9):
    """One image, every anchor predicting ``pred_box`` with ``score`` for every class; no boxes yet."""
    anchors, _ = make_anchor_points(feature_sizes((img_size, img_size)))
    a = len(anchors)
    return dict(anchors=anchors, num_classes=num_classes,
                pred_scores=np.full((1, a, num_classes), score, np.float32),
                pred_bboxes=np.tile(np.asarray(pred_box, np.float32), (1, a, 1)))


def with_boxes(case, boxes, labels, pad_front=1):
    """Add real boxes to a ``blank_case``; the JAX rows get ``pad_front`` garbage padding rows first."""
    boxes = np.asarray(boxes, np.float32)
    labels = np.asarray(labels, np.int64)
    case = dict(case, lists=[(boxes, labels)])
    case["gt_bboxes"] = np.concatenate([np.full((1, pad_front, 4), 7.0, np.float32), boxes[None]], 1)
    case["gt_labels"] = np.concatenate([np.full((1, pad_front), 99), labels[None]], 1).astype(np.int32)
    case["gt_mask"] = np.concatenate([np.zeros((1, pad_front), bool), np.ones((1, len(boxes)), bool)], 1)
    return case


def anchor_index(x, y, img_size=128):
    anchors, _ = make_anchor_points(feature_sizes((img_size, img_size)))
    return int(np.flatnonzero((anchors[:, 0] == x) & (anchors[:, 1] == y))[0])


def test_tiny_box_gets_candidates_only_through_enlargement():
    """A 2 px box inside the first stride-8 cell contains no anchor; widened to 16 px about its
    centre it contains the anchors (4, 4) and (8, 8) (stride 16), which become its positives.
    Parity as above; without the enlargement (min_box_size=0) it would get nothing."""
    case = blank_case(pred_box=(0.5, 0.5, 3.5, 3.5))
    case = with_boxes(case, [[1.0, 1.0, 3.0, 3.0]], [3])
    ref, _ = check_assign(case)
    assert set(np.flatnonzero(ref["fg"][0])) == {anchor_index(4, 4), anchor_index(8, 8)}
    assert (ref["labels"][0][ref["fg"][0]] == 3).all() and ref["scores"].max() > 0
    unenlarged = ultralytics_assign(case["pred_scores"], case["pred_bboxes"], case["anchors"], case["gt_labels"],
                                    case["gt_bboxes"], case["gt_mask"], min_box_size=0.0)
    assert not np.asarray(unenlarged.fg_mask).any()


def test_box_with_zero_metrics_takes_lowest_anchor_indices():
    """A box whose predictions all have CIoU <= 0 has all-zero metrics; its top-10 are then the ten
    lowest anchor indices over the whole image (row y=4 of stride 8: x = 4 ... 76), and those inside
    it become positives with target score 0 (Ultralytics passes topk_mask = mask_gt, so the
    "max metric > eps" filter is not applied). The tie rule decides which anchors these are."""
    case = with_boxes(blank_case(), [[0.0, 0.0, 40.0, 40.0]], [2])
    ref, stats = check_assign(case)
    assert list(np.flatnonzero(ref["fg"][0])) == [0, 1, 2, 3, 4]  # x = 4, 12, 20, 28, 36 at y = 4
    assert ref["scores"].max() == 0 and stats["zero_score_positives"] == 5


def test_conflict_goes_to_largest_overlap_among_all_boxes():
    """Two small boxes select the anchors around (60, 60) (they have few candidates, so every one is
    in their top-10); a large box containing them has the larger CIoU there but did not select those
    anchors (it has ten better ones). Ultralytics gives the anchors to the large box: positives of
    a box that did not select them. Parity as above."""
    case = blank_case(pred_box=(20.0, 20.0, 100.0, 100.0))
    p = anchor_index(60, 60)
    case["pred_bboxes"][0, p] = [30.0, 30.0, 90.0, 90.0]  # CIoU 0.5625 with the large box
    case = with_boxes(case, [[55.0, 55.0, 66.0, 66.0], [56.0, 54.0, 64.0, 67.0], [20.0, 20.0, 100.0, 100.0]],
                      [0, 1, 2])
    ref, stats = check_assign(case)
    assert stats["won_without_selecting"] >= 1 and ref["fg"][0, p] and ref["labels"][0, p] == 2
    assert ref["scores"][0, p, 2] > 0


def test_conflict_with_zero_overlaps_goes_to_the_first_box():
    """Two tiny boxes near the top row both select anchor (20, 4) with zero metrics; all its
    overlaps are 0, so the argmax over boxes picks the first real box, which does not even contain
    the anchor: a foreground anchor labelled with box 0's class and a target score of 0. The JAX
    rows start with a padding row, which the argmax must skip (first *real* box)."""
    case = blank_case()
    case = with_boxes(case, [[90.0, 90.0, 120.0, 120.0], [17.0, 0.0, 23.0, 6.0], [18.0, 1.0, 24.0, 7.0]], [4, 1, 5])
    ref, stats = check_assign(case)
    q = anchor_index(20, 4)
    assert ref["fg"][0, q] and ref["labels"][0, q] == 4 and ref["gt_idx"][0, q] == 0
    assert ref["scores"][0, q].max() == 0 and stats["won_without_selecting"] >= 1


def test_assigner_without_box_rows():
    """M = 0 (Ultralytics' n_max_boxes == 0 early return): everything background."""
    case = make_assign_case(7, counts=(1, 2))
    out = ultralytics_assign(case["pred_scores"], case["pred_bboxes"], case["anchors"],
                             np.zeros((2, 0), np.int32), np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), bool))
    assert not np.asarray(out.fg_mask).any() and (np.asarray(out.labels) == -1).all()
    assert float(jnp.abs(out.scores).max()) == 0.0


# ----------------------------------------------------------------------------- the loss

def make_head_outputs(rng, batch, img_size, num_classes, reg_max=16):
    """Random per-level head outputs, NHWC: ``box_ltrb`` is the DFL expectation of ``box_raw``
    (as the networks compute it), the logits varied enough to give a spread of metrics."""
    out = []
    for h, w in feature_sizes((img_size, img_size)):
        cls = rng.normal(-1.0, 2.0, (batch, h, w, num_classes)).astype(np.float32)
        raw = (rng.normal(0.0, 2.5, (batch, h, w, 4, reg_max)) - 0.3 * np.arange(reg_max)).astype(np.float32)
        prob = np.exp(raw - raw.max(-1, keepdims=True))
        ltrb = (prob / prob.sum(-1, keepdims=True) @ np.arange(reg_max, dtype=np.float32)).astype(np.float32)
        out.append((cls, ltrb, raw.reshape(batch, h, w, 4 * reg_max)))
    return out


def make_loss_targets(rng, img_size, num_classes, counts, extra_rows=2):
    """Padded normalised cxcywh targets (garbage in the padding rows, anywhere) and the per-image
    lists for the reference. Boxes cycle through KINDS except 'outside'."""
    m = max(counts) + extra_rows
    boxes = rng.uniform(-1, 2, (len(counts), m, 4)).astype(np.float32)
    labels = rng.integers(-2, num_classes + 3, (len(counts), m)).astype(np.int32)
    mask = np.zeros((len(counts), m), bool)
    lists = ([], [])
    for i, n in enumerate(counts):
        rows, prev = [], None
        for j in range(n):
            prev = random_box(rng, KINDS[j % (len(KINDS) - 1)], img_size, prev)
            rows.append(prev)
        xyxy = np.asarray(rows, np.float64).reshape(n, 4) / img_size
        cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1).astype(np.float32)
        cls = rng.integers(0, num_classes, n).astype(np.int32)
        where = np.sort(rng.choice(m, n, replace=False))
        boxes[i, where], labels[i, where], mask[i, where] = cxcywh, cls, True
        lists[0].append(torch.from_numpy(cxcywh))
        lists[1].append(torch.from_numpy(cls).long())
    return boxes, labels, mask, lists


HEAD_TRACES = []  # one entry per trace of loss_and_head_grads


@functools.partial(jax.jit, static_argnames=("img_size",))
def loss_and_head_grads(predictions, boxes, labels, mask, img_size):
    """``((total, parts), d total / d predictions)`` of the JAX loss; targets are arguments, so one
    compilation serves every batch of the same padded shapes."""
    HEAD_TRACES.append(img_size)
    return jax.value_and_grad(
        lambda p: ultralytics_detection_loss(p, boxes, labels, mask, img_size=img_size), has_aux=True)(predictions)


def part_errors(parts_j, parts_t):
    errors = {k: abs(float(parts_j[k]) - float(parts_t[k])) / abs(float(parts_t[k])) for k in PART_KEYS}
    assert int(parts_j["num_fg"]) == parts_t["num_fg"] > 0
    assert int(parts_j["num_pos"]) == max(parts_t["num_fg"], 1)
    for k, e in errors.items():
        assert e <= PART_RTOL, (k, float(parts_j[k]), float(parts_t[k]))
    return errors


@pytest.mark.parametrize("seed", range(3))
def test_loss_parts_and_head_gradients_match_reference(seed):
    """Random head outputs at 160 px, 3 images (one without boxes), 5 classes: each part (box, cls,
    dfl, total, target_scores_sum) to relative 1e-5, num_fg equal; the gradients with respect to
    cls_logits, box_ltrb and box_raw of every level to relative L2 1e-4."""
    rng = np.random.default_rng(seed)
    img_size, num_classes = 160, 5
    heads = make_head_outputs(rng, 3, img_size, num_classes)
    boxes, labels, mask, lists = make_loss_targets(rng, img_size, num_classes, (5, 0, 8))

    leaves = [[nchw(x).requires_grad_() for x in level] for level in heads]
    total_t, parts_t = UltralyticsDetectionLoss(num_classes, img_size=img_size)(leaves, *lists)
    total_t.backward()

    (total_j, parts_j), grads = loss_and_head_grads([tuple(jnp.asarray(x) for x in level) for level in heads],
                                                    boxes, labels, mask, img_size)
    part_errors(parts_j, parts_t)
    assert abs(float(total_j) - total_t.item()) <= PART_RTOL * abs(total_t.item())
    nonzero = {}
    for level, (g_level, t_level) in enumerate(zip(grads, leaves)):
        for name, g, t in zip(("cls_logits", "box_ltrb", "box_raw"), g_level, t_level):
            want = t.grad.permute(0, 2, 3, 1).numpy()
            nonzero[name] = nonzero.get(name, 0) + int(np.count_nonzero(want))
            err = rel_l2(np.asarray(g), want)  # an all-zero reference (no positive on a level) needs 0
            assert err <= HEAD_GRAD_RTOL, (level, name, err)
    assert min(nonzero.values()) > 0, nonzero


def network_pair(family, num_classes, seed=0):
    """``(torch reference, NNX model with the same weights)``, BatchNorms randomised."""
    torch.manual_seed(seed)
    if family == "tiny":
        import reference_torch as R
        from yolo11_jax import YOLOv11
        ref = R.YOLOv11(num_classes=num_classes, base=8, depth=1)
        abstract = lambda: YOLOv11(num_classes, base=8, depth=1, rngs=nnx.Rngs(seed))  # noqa: E731
    else:
        from reference_torch.yolo11 import YOLO11 as RefYOLO11
        from yolo11_jax.presets import build_model
        ref = RefYOLO11(family.removeprefix("yolo11"), num_classes)
        abstract = lambda: build_model(family, num_classes=num_classes, rngs=nnx.Rngs(seed))  # noqa: E731
    randomize_batchnorm(ref, seed)
    model = nnx.eval_shape(abstract)
    convert.load_state_dict(model, ref.state_dict())
    return ref, model


@pytest.mark.parametrize("family,img_size", [("tiny", 128), ("yolo11n", 96)])
def test_parameter_gradients_match_reference(family, img_size):
    """A network in train mode, batch 2 (one image with crowded, small and regular boxes, one with
    two boxes), 4 classes: loss parts to relative 1e-5, num_fg equal, and the gradient of the total
    with respect to every parameter tensor to relative L2 1e-3 (ZERO_GRADIENT_TENSORS on an absolute
    floor of 1e-3 x the largest gradient norm)."""
    num_classes = 4
    ref, model = network_pair(family, num_classes)
    rng = np.random.default_rng(3)
    images = rng.random((2, img_size, img_size, 3), dtype=np.float32)
    boxes, labels, mask, lists = make_loss_targets(rng, img_size, num_classes, (6, 2))

    ref.train()
    total_t, parts_t = UltralyticsDetectionLoss(num_classes, img_size=img_size)(ref(nchw(images)), *lists)
    ref.zero_grad()
    total_t.backward()
    grads_t = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.requires_grad}

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def total(params):
        predictions = nnx.merge(graphdef, params, rest, copy=True)(jnp.asarray(images))
        return ultralytics_detection_loss(predictions, boxes, labels, mask, img_size=img_size)

    (_, parts_j), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    part_errors(parts_j, parts_t)
    grads_j = convert.to_state_dict(nnx.merge(graphdef, grads, rest))
    floor = ZERO_GRAD_FLOOR * max(np.linalg.norm(g) for g in grads_t.values())
    worst = 0.0
    for key, g_t in grads_t.items():
        g_j = np.asarray(grads_j[key])
        assert np.all(np.isfinite(g_j)), key
        if key in ZERO_GRADIENT_TENSORS:
            assert np.linalg.norm(g_j - g_t) <= floor, key
        else:
            err = rel_l2(g_j, g_t)
            worst = max(worst, err)
            assert err <= PARAM_GRAD_RTOL, (key, err)
    assert len(grads_t) > 50 and worst > 0


def test_loss_jits_once_and_is_finite_with_padding_and_without_boxes():
    """One compilation for batches with different numbers of real boxes (same padded shape);
    finite gradients and non-zero box and DFL terms with garbage (NaN included) in the padding rows;
    an all-empty batch gives box = dfl = 0, num_fg 0, num_pos 1, target_scores_sum 1, total = cls =
    0.5 * sum softplus(logits) (relative 1e-6), finite gradients, and zero gradients for box_ltrb
    and box_raw. Same shapes as the head-gradient test (160 px, 3 images, 10 rows), so a session
    running both compiles once."""
    rng = np.random.default_rng(5)
    img_size, num_classes, rows = 160, 5, 10
    heads = [tuple(jnp.asarray(x) for x in level) for level in make_head_outputs(rng, 3, img_size, num_classes)]
    finite = lambda tree: all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))  # noqa: E731
    traces = None
    for counts in [(3, 1, 0), (0, 8, 5), (8, 8, 8), (1, 0, 2)]:
        boxes, labels, mask, _ = make_loss_targets(rng, img_size, num_classes, counts, extra_rows=rows - max(counts))
        boxes[~mask] = np.nan
        (total, parts), grads = loss_and_head_grads(heads, boxes, labels, mask, img_size)
        traces = len(HEAD_TRACES) if traces is None else traces
        assert np.isfinite(float(total)) and finite(grads) and int(parts["num_fg"]) > 0
        assert float(parts["box_loss"]) > 0 and float(parts["dfl_loss"]) > 0
    assert len(HEAD_TRACES) == traces

    boxes[:], mask[:] = np.nan, False
    (total, parts), grads = loss_and_head_grads(heads, boxes, labels, mask, img_size)
    assert len(HEAD_TRACES) == traces
    assert float(parts["box_loss"]) == 0.0 and float(parts["dfl_loss"]) == 0.0
    assert int(parts["num_fg"]) == 0 and int(parts["num_pos"]) == 1 and float(parts["target_scores_sum"]) == 1.0
    logits = np.concatenate([np.asarray(level[0], np.float64).reshape(-1) for level in heads])
    want = 0.5 * np.sum(np.logaddexp(0.0, logits))
    assert float(total) == float(parts["cls_loss"])
    assert abs(float(total) - want) <= 1e-6 * want
    assert finite(grads)
    assert all(float(jnp.abs(g).max()) == 0.0 for level in grads for g in level[1:])  # no box terms
