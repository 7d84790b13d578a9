"""detection_loss against reference_torch.YOLOv11Loss, in value and in gradient.

Tolerances: each loss part relative error <= 1e-5; num_pos equal; the gradient of the
total with respect to every parameter tensor relative L2 <= 1e-3, except tensors whose
gradient is zero in exact arithmetic (listed in ZERO_GRADIENT_TENSORS), which are held
to an absolute floor of 1e-3 x the largest gradient norm of any tensor.

All in float32, except the gradients of the notebook network at 640, which are compared
in float64 (tests/_float64_grad_check.py; see the test for why).
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import reference_torch as R
from yolo11_jax import YOLOv11, convert
from yolo11_jax.loss import detection_loss
from yolo11_jax.step import make_loss_fn, split_model
from tests.helpers import (loss_and_grads, make_targets, nchw, randomize_batchnorm, rel_l2, subprocess_env,
                           torch_targets)

FLOAT64_CHECK = Path(__file__).with_name("_float64_grad_check.py")

PART_KEYS = ("cls_loss", "box_loss", "dfl_loss", "total_loss")

# Tensors whose exact gradient is zero, so both frameworks hold only float32 noise:
ZERO_GRADIENT_TENSORS = {
    # out_proj.bias adds a per-channel constant to every token; everything downstream of it
    # (cv2 and ffn.0) starts with a 1x1 conv followed by a train-mode BatchNorm, which
    # subtracts the per-channel mean and removes any per-channel constant.
    "c2psa.attn.out_proj.bias",
}


def jax_grads_in_torch_layout(model, grads):
    """Map an nnx.State of gradients to torch keys with the weight-conversion rules."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_model = nnx.merge(graphdef, grads, rest)
    sd = convert.to_state_dict(grad_model)
    return {k: v for k, v in sd.items()}


def compare(num_classes, base, depth, img_size, counts, max_boxes, seed=0, check_grads=True):
    """Assert parity of the loss parts and, if ``check_grads``, of the parameter gradients.
    Returns ``(part_rel, grad_rel)``: the relative errors (``grad_rel`` empty without grads)."""
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
    with torch.set_grad_enabled(check_grads):
        total_t, parts_t = loss_fn(ref(nchw(images)), *torch_targets(boxes, labels, mask))

    batch = dict(images=jnp.asarray(images), boxes_cxcywh=jnp.asarray(boxes),
                 labels=jnp.asarray(labels), mask=jnp.asarray(mask))
    if check_grads:
        parts_j, grads = loss_and_grads(model, batch, img_size=img_size)
    else:
        model.train()
        graphdef, params, rest = split_model(model)
        _, (parts_j, _) = jax.jit(make_loss_fn(graphdef, img_size=img_size))(params, rest, batch)

    part_rel = {}
    for key in PART_KEYS:
        part_rel[key] = abs(float(parts_j[key]) - parts_t[key]) / abs(parts_t[key])
        assert part_rel[key] <= 1e-5, (key, float(parts_j[key]), parts_t[key])
    assert int(parts_j["num_pos"]) == parts_t["num_pos"]
    assert parts_t["num_pos"] > 1
    if not check_grads:
        return part_rel, {}

    ref.zero_grad()
    total_t.backward()
    grads_t = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}
    grads_j = jax_grads_in_torch_layout(model, grads)
    assert set(grads_t) == {k for k, _ in ref.named_parameters() if not k.endswith(".proj")}
    floor = 1e-3 * max(np.linalg.norm(g) for g in grads_t.values())
    grad_rel = {}
    for key, g_t in grads_t.items():
        g_j = grads_j[key]
        assert np.all(np.isfinite(g_j)), key
        if key in ZERO_GRADIENT_TENSORS:
            assert np.linalg.norm(g_j - g_t) <= floor, key
        else:
            grad_rel[key] = rel_l2(g_j, g_t)
            assert grad_rel[key] <= 1e-3, (key, grad_rel[key])
    return part_rel, grad_rel


@pytest.mark.parametrize("base,depth,img_size,counts", [
    (8, 1, 128, (3, 0, 5)),
    (16, 2, 96, (1, 4)),
    (8, 2, 160, (6, 6)),
])
def test_loss_and_gradients_match_reference(base, depth, img_size, counts):
    compare(num_classes=6, base=base, depth=depth, img_size=img_size, counts=counts, max_boxes=8)


@pytest.mark.slow
def test_notebook_network_loss_matches_reference_at_640():
    """The notebook network at 640, batch 2, float32: loss parts and num_pos. Its gradients
    are compared in float64 by the next test."""
    compare(num_classes=80, base=64, depth=2, img_size=640, counts=(9, 3), max_boxes=12, check_grads=False)


@pytest.mark.slow
def test_notebook_network_gradients_match_reference_at_640_in_float64():
    """Loss parts and every parameter gradient of the notebook network at 640, both sides in
    float64 (tests/_float64_grad_check.py, run with JAX_ENABLE_X64=1; one image, 9 boxes).

    Why not float32: at this size the float32 gradients of the reference itself are off by up
    to 6.1e-3 relative L2 per tensor (torch float32 vs torch float64, batch 2, worst
    backbone.s1_c3k2.bottlenecks.0.cv2.bn.bias; 5.8e-3 for backbone.stem.bn.weight; median
    8e-5), and those of JAX float32 by up to 1.6e-2. The cause is train-mode BatchNorm on large
    maps (320 x 320 after the stem: 2e5 elements per channel), whose float32 rounding in the
    batch statistics and in their backward is amplified along the chain of 75 BatchNorm
    layers. So float32 against float32 at 1e-3 cannot hold there for any implementation; the
    float32 tests keep 1e-3 on the small presets (above), and the float32 loss parts at 640
    agree to <= 1e-5 (previous test).

    Measured in float64: loss parts rel <= 4.3e-15, num_pos equal (112), gradient rel L2
    <= 1.1e-12 over all 240 tensors (the script asserts parts <= 1e-10, gradients <= 1e-9;
    the issue asks for 1e-3), c2psa.attn.out_proj.bias (exact gradient 0) within 3e-18 x the
    largest gradient norm. About 2 minutes on 2 CPU cores.
    """
    env = subprocess_env(JAX_ENABLE_X64="1")
    res = subprocess.run([sys.executable, str(FLOAT64_CHECK), "--img-size", "640", "--counts", "9"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["config"]["dtype"] == "float64", summary
    assert summary["num_grad_tensors"] > 200 and summary["worst_grad_rel_l2"] <= 1e-3, summary


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
