"""detection_loss against reference_torch.YOLOv11Loss, in value and in gradient.

Tolerances: each loss part relative error <= 1e-5; num_pos equal; the gradient of the
total with respect to every parameter tensor relative L2 <= 1e-3, except tensors whose
gradient is zero in exact arithmetic (listed in ZERO_GRADIENT_TENSORS), which are held
to an absolute floor of 1e-3 x the largest gradient norm of any tensor.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import reference_torch as R
from yolo11_jax import YOLOv11, convert
from yolo11_jax.loss import detection_loss
from yolo11_jax.step import loss_and_grads
from tests.conftest import nchw, randomize_batchnorm, rel_l2

PART_KEYS = ("cls_loss", "box_loss", "dfl_loss", "total_loss")

# Tensors whose exact gradient is zero, so both frameworks hold only float32 noise:
ZERO_GRADIENT_TENSORS = {
    # out_proj.bias adds a per-channel constant to every token; everything downstream of it
    # (cv2 and ffn.0) starts with a 1x1 conv followed by a train-mode BatchNorm, which
    # subtracts the per-channel mean and removes any per-channel constant.
    "c2psa.attn.out_proj.bias",
}


def make_targets(rng, batch_size, num_classes, counts, max_boxes):
    boxes = np.zeros((batch_size, max_boxes, 4), np.float32)
    labels = np.zeros((batch_size, max_boxes), np.int32)
    mask = np.zeros((batch_size, max_boxes), bool)
    for i, n in enumerate(counts):
        cxcy = rng.uniform(0.15, 0.85, (n, 2))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        boxes[i, :n] = np.concatenate([cxcy, wh], 1)
        labels[i, :n] = rng.integers(0, num_classes, n)
        mask[i, :n] = True
    return boxes, labels, mask


def torch_targets(boxes, labels, mask):
    return ([torch.from_numpy(boxes[i][mask[i]]) for i in range(len(boxes))],
            [torch.from_numpy(labels[i][mask[i]]).long() for i in range(len(boxes))])


def jax_grads_in_torch_layout(model, grads):
    """Map an nnx.State of gradients to torch keys with the weight-conversion rules."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_model = nnx.merge(graphdef, grads, rest)
    sd = convert.to_state_dict(grad_model)
    return {k: v for k, v in sd.items()}


def compare(num_classes, base, depth, img_size, counts, max_boxes, seed=0):
    torch.manual_seed(seed)
    ref = R.YOLOv11(num_classes=num_classes, base=base, depth=depth)
    randomize_batchnorm(ref, seed)
    model = YOLOv11(num_classes, base=base, depth=depth, rngs=nnx.Rngs(seed))
    convert.load_state_dict(model, ref.state_dict())
    rng = np.random.default_rng(seed)
    images = rng.random((len(counts), img_size, img_size, 3), dtype=np.float32)
    boxes, labels, mask = make_targets(rng, len(counts), num_classes, counts, max_boxes)

    ref.train()
    loss_fn = R.YOLOv11Loss(num_classes=num_classes, img_size=img_size)
    total_t, parts_t = loss_fn(ref(nchw(images)), *torch_targets(boxes, labels, mask))
    ref.zero_grad()
    total_t.backward()
    grads_t = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}

    batch = dict(images=jnp.asarray(images), boxes_cxcywh=jnp.asarray(boxes),
                 labels=jnp.asarray(labels), mask=jnp.asarray(mask))
    parts_j, grads = loss_and_grads(model, batch, img_size=img_size)
    grads_j = jax_grads_in_torch_layout(model, grads)

    for key in PART_KEYS:
        rel = abs(float(parts_j[key]) - parts_t[key]) / abs(parts_t[key])
        assert rel <= 1e-5, (key, float(parts_j[key]), parts_t[key])
    assert int(parts_j["num_pos"]) == parts_t["num_pos"]
    assert parts_t["num_pos"] > 1

    assert set(grads_t) == {k for k, _ in ref.named_parameters() if not k.endswith(".proj")}
    floor = 1e-3 * max(np.linalg.norm(g) for g in grads_t.values())
    worst = {}
    for key, g_t in grads_t.items():
        g_j = grads_j[key]
        assert np.all(np.isfinite(g_j)), key
        if key in ZERO_GRADIENT_TENSORS:
            assert np.linalg.norm(g_j - g_t) <= floor, key
        else:
            worst[key] = rel_l2(g_j, g_t)
            assert worst[key] <= 1e-3, (key, worst[key])
    return parts_t, worst


@pytest.mark.parametrize("base,depth,img_size,counts", [
    (8, 1, 128, (3, 0, 5)),
    (16, 2, 96, (1, 4)),
    (8, 2, 160, (6, 6)),
])
def test_loss_and_gradients_match_reference(base, depth, img_size, counts):
    compare(num_classes=6, base=base, depth=depth, img_size=img_size, counts=counts, max_boxes=8)


@pytest.mark.slow
def test_notebook_network_loss_and_gradients_match_reference_at_640():
    compare(num_classes=80, base=64, depth=2, img_size=640, counts=(9, 3), max_boxes=12)


def test_batch_without_boxes_has_only_classification_loss():
    rng = np.random.default_rng(0)
    model = YOLOv11(4, base=8, depth=1, rngs=nnx.Rngs(0))
    images = jnp.asarray(rng.random((2, 64, 64, 3), dtype=np.float32))
    preds = model(images)
    boxes, labels, mask = make_targets(rng, 2, 4, (0, 0), 5)
    _, parts = detection_loss(preds, boxes, labels, mask, img_size=64)
    assert float(parts["box_loss"]) == 0.0 and float(parts["dfl_loss"]) == 0.0
    assert int(parts["num_pos"]) == 1  # max(0, 1), as the notebook reports
    logits = np.concatenate([np.asarray(p[0]).reshape(2, -1, 4) for p in preds], 1)
    want = 0.5 * np.sum(np.logaddexp(0.0, logits))  # BCE against all-zero targets
    assert abs(float(parts["cls_loss"]) - want) / want < 1e-5


def test_padding_rows_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    model = YOLOv11(4, base=8, depth=1, rngs=nnx.Rngs(0))
    preds = model(jnp.asarray(rng.random((2, 64, 64, 3), dtype=np.float32)))
    boxes, labels, mask = make_targets(rng, 2, 4, (2, 3), 3)
    pad_boxes = np.concatenate([boxes, rng.random((2, 5, 4), dtype=np.float32)], 1)
    pad_labels = np.concatenate([labels, rng.integers(0, 4, (2, 5)).astype(np.int32)], 1)
    pad_mask = np.concatenate([mask, np.zeros((2, 5), bool)], 1)
    _, a = detection_loss(preds, boxes, labels, mask, img_size=64)
    _, b = detection_loss(preds, pad_boxes, pad_labels, pad_mask, img_size=64)
    for k in PART_KEYS:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6)
    assert int(a["num_pos"]) == int(b["num_pos"]) > 1


def test_img_size_mismatch_warns():
    model = YOLOv11(4, base=8, depth=1, rngs=nnx.Rngs(0))
    preds = model(jnp.zeros((1, 64, 64, 3)))
    boxes, labels, mask = make_targets(np.random.default_rng(0), 1, 4, (1,), 2)
    with pytest.warns(UserWarning, match="img_size=640"):
        detection_loss(preds, boxes, labels, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detection_loss(preds, boxes, labels, mask, img_size=64)


def test_loss_is_jittable_and_gradients_are_finite_with_padding():
    rng = np.random.default_rng(2)
    model = YOLOv11(3, base=8, depth=1, rngs=nnx.Rngs(0))
    boxes, labels, mask = make_targets(rng, 2, 3, (0, 2), 4)
    batch = dict(images=jnp.asarray(rng.random((2, 64, 64, 3), dtype=np.float32)),
                 boxes_cxcywh=jnp.asarray(boxes), labels=jnp.asarray(labels), mask=jnp.asarray(mask))
    parts, grads = loss_and_grads(model, batch, img_size=64)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
