"""The jitted training step: trajectory parity with the notebook's PyTorch loop, and no recompilation.

Trajectory tolerance: loss parts relative error <= 1e-3 at every step; parameters after the
steps relative L2 <= 1e-3 per tensor (except the zero-gradient tensors named below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import reference_torch as R
from yolo11_jax import YOLOv11, convert
from yolo11_jax.optim import make_optimizer, make_schedule
from yolo11_jax.step import TrainState, make_train_step, split_model
from tests.helpers import make_batches, randomize_batchnorm, rel_l2, torch_targets

# Tensors whose exact gradient is zero (see tests/test_loss.py): both sides hold float32 noise
# there, and AdamW turns any noise into steps of about lr per element, so after the steps they
# are judged by |jax - torch| <= 2 * steps * lr per element (each side moves at most ~lr per
# step, plus weight decay), not by a relative error.
#  - c2psa.attn.out_proj.bias: feeds only per-channel constants into train-mode BatchNorms.
#  - c2psa.attn.in_proj_bias: its key third shifts every attention logit of a query by the
#    same amount (softmax is invariant to it) and its value third adds a constant per channel
#    (softmax weights sum to 1) that the following BatchNorms remove.
NOISE_ONLY = {"c2psa.attn.out_proj.bias", "c2psa.attn.in_proj_bias"}


@pytest.mark.slow
def test_trajectory_matches_reference_training_loop():
    num_classes, img_size, epochs, steps_per_epoch, lr = 5, 128, 2, 2, 1e-3
    torch.manual_seed(0)
    ref = R.YOLOv11(num_classes=num_classes, base=8, depth=1)
    # Non-zero BatchNorm biases: a zero-initialised tensor's "relative" error after a few steps is
    # the relative error of AdamW's near-sign updates themselves, which float32 noise in elements
    # with tiny gradients flips (measured: up to ~1e-1 on fresh BN biases, in float32 on both
    # sides). With non-trivial values the per-tensor parameter error measures what it should.
    randomize_batchnorm(ref, 0)
    model = YOLOv11(num_classes, base=8, depth=1, rngs=nnx.Rngs(0))
    convert.load_state_dict(model, ref.state_dict())
    # Batch 1 has no box at all: the notebook's loop then skips AdamW for the regression branch.
    batches = make_batches(num_classes, img_size, 4, steps_per_epoch, max_boxes=4)
    batches[1]["mask"][:] = False

    # Reference: the notebook's loop (AdamW 1e-3 / 0.05, clip 10, CosineAnnealingLR per epoch).
    loss_fn = R.YOLOv11Loss(num_classes=num_classes, img_size=img_size)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = [(torch.from_numpy(b["images"]).permute(0, 3, 1, 2).contiguous(), None,
               *torch_targets(b["boxes_cxcywh"], b["labels"], b["mask"])) for b in batches]
    ref_parts = []
    for epoch in range(epochs):
        R.train_one_epoch(ref, loader, opt, loss_fn, "cpu", epoch, log_every=0,
                          on_step=lambda i, d: ref_parts.append(d))
        sched.step()

    # JAX: the jitted functional step.
    model.train()
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(lr, schedule="epoch-cosine", epochs=epochs, steps_per_epoch=steps_per_epoch)
    # torch_compat: torch's clipping, and the regression branch frozen on the batch without boxes.
    tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0, torch_compat=True)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=img_size, num_classes=num_classes, torch_compat=True)
    jax_parts = []
    for epoch in range(epochs):
        for b in batches:
            state, metrics = step(state, b)
            jax_parts.append(jax.device_get(metrics))

    assert len(jax_parts) == len(ref_parts) == epochs * steps_per_epoch
    assert [int(p["num_fg"]) for p in jax_parts][1::2] == [0, 0]
    for i, (pj, pt) in enumerate(zip(jax_parts, ref_parts)):
        for key in ("cls_loss", "box_loss", "dfl_loss", "total_loss"):
            # A part that is exactly 0 (no positives in the batch) must be 0 on both sides.
            assert abs(float(pj[key]) - pt[key]) <= 1e-3 * abs(pt[key]), (i, key, float(pj[key]), pt[key])
        assert int(pj["num_pos"]) == pt["num_pos"], i
    # The learning rate followed the per-epoch cosine: 1e-3 then 5e-4.
    assert [float(p["lr"]) for p in jax_parts] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4], rel=1e-6)

    nnx.update(model, state.params, state.rest)
    ours, theirs = convert.to_state_dict(model), ref.state_dict()
    steps = epochs * steps_per_epoch
    moved = 0
    for key, p_t in ref.named_parameters():
        if key.endswith(".proj"):
            continue
        want, got = p_t.detach().numpy(), ours[key]
        if key in NOISE_ONLY:
            assert np.max(np.abs(got - want)) <= 2 * steps * lr, key
        else:
            assert rel_l2(got, want) <= 1e-3, (key, rel_l2(got, want))
        moved += 1
    print("worst parameter rel L2:", max(rel_l2(ours[k], p.detach().numpy()) for k, p in ref.named_parameters() if k not in NOISE_ONLY and not k.endswith(".proj")))
    assert moved > 100
    for key in theirs:  # BatchNorm running statistics after 4 train-mode steps
        if "running_" in key:
            assert rel_l2(ours[key], theirs[key].numpy()) <= 1e-3, key


@pytest.mark.slow
def test_train_step_never_recompiles_over_varying_box_counts():
    num_classes, img_size = 3, 64
    model = YOLOv11(num_classes, base=4, depth=1, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(1e-3, schedule="step-cosine", epochs=1, steps_per_epoch=4, warmup_steps=2)
    tx = make_optimizer(lr_fn)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=img_size)
    batches = make_batches(num_classes, img_size, 2, 4, max_boxes=6, seed=3)
    assert len({int(b["mask"].sum()) for b in batches}) > 1  # different numbers of real boxes
    for b in batches:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    assert step._cache_size() == 1
    assert int(state.step) == 4
    # A different padded size is a different shape: the counter does see recompilations.
    b = make_batches(num_classes, img_size, 2, 1, max_boxes=7, seed=4)[0]
    step(state, b)
    assert step._cache_size() == 2


def test_schedules():
    lr = make_schedule(1.0, schedule="epoch-cosine", epochs=4, steps_per_epoch=10)
    assert [float(lr(s)) for s in (0, 9, 10, 20, 39)] == pytest.approx(
        [1.0, 1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2], rel=1e-6)
    step_cos = make_schedule(1.0, schedule="step-cosine", epochs=1, steps_per_epoch=10, warmup_steps=5)
    assert float(step_cos(0)) == pytest.approx(0.2, rel=1e-6)
    assert float(step_cos(5)) == pytest.approx((1 + np.cos(np.pi * 0.5)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule(1.0, schedule="linear", epochs=1, steps_per_epoch=1)


@pytest.mark.slow
def test_without_torch_compat_the_step_is_the_plain_optax_chain():
    """``torch_compat=False``: the optimizer is ``optax.chain(clip_by_global_norm, adamw)`` (bit for
    bit on the same gradients), the step applies it (parameters within 1e-2 lr per element of
    that chain applied to separately computed gradients: the step is one fused XLA program, and
    Adam's first update, g / (|g| + eps), amplifies float32 rounding where a gradient is near 0),
    and on a batch without boxes the regression branch still moves (weight decay), where
    ``torch_compat=True`` leaves it untouched as the notebook does."""
    import optax

    from yolo11_jax.step import make_loss_fn

    num_classes, img_size, lr = 3, 64, 1e-3
    model = YOLOv11(num_classes, base=4, depth=1, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(lr, schedule="constant", epochs=1, steps_per_epoch=1)
    batch = make_batches(num_classes, img_size, 2, 1, max_boxes=3, seed=5)[0]
    empty = dict(batch, mask=np.zeros_like(batch["mask"]))

    def one_step(b, torch_compat):
        tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0, torch_compat=torch_compat)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                           rest=jax.tree.map(jnp.copy, rest), opt_state=tx.init(params))  # (the step donates them)
        step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=img_size, torch_compat=torch_compat)
        return step(state, b)[0].params

    grads = jax.jit(jax.grad(lambda p: make_loss_fn(graphdef, img_size=img_size)(p, rest, batch)[0]))(params)
    plain = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(lr_fn, weight_decay=0.05))
    ours = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0, torch_compat=False)
    want_updates, _ = plain.update(grads, plain.init(params), params)
    got_updates, _ = ours.update(grads, ours.init(params), params)
    for a, b in zip(jax.tree.leaves(got_updates), jax.tree.leaves(want_updates)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = optax.apply_updates(params, want_updates)
    got = one_step(batch, torch_compat=False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-2 * lr)

    reg = lambda p: p["head"]["heads"][0]["reg_pred"]["kernel"][...]  # noqa: E731
    before = np.asarray(reg(params))
    assert not np.array_equal(np.asarray(reg(one_step(empty, torch_compat=False))), before)
    np.testing.assert_array_equal(np.asarray(reg(one_step(empty, torch_compat=True))), before)


@pytest.mark.slow  # compiles two full steps
def test_uint8_images_are_converted_inside_the_step():
    """A uint8 batch trains exactly like the float32 batch ``images / 255`` computed by the same
    device arithmetic (``step.prepare_images``, jitted): bit-identical parameters and metrics, so
    the input pipeline can ship uint8 (4x less host-to-device traffic). ``prepare_images`` is within
    one float32 ulp of torch's ``img.float() / 255`` (XLA may divide by multiplying with the
    reciprocal) and leaves float32 input untouched."""
    from yolo11_jax.step import prepare_images

    num_classes, img_size = 3, 64
    model = YOLOv11(num_classes, base=4, depth=1, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(1e-3, schedule="constant", epochs=1, steps_per_epoch=1)
    tx = make_optimizer(lr_fn)
    batch = make_batches(num_classes, img_size, 2, 1, max_boxes=3, seed=6)[0]
    u8 = dict(batch, images=np.round(batch["images"] * 255).astype(np.uint8))
    f32 = dict(batch, images=np.asarray(jax.jit(prepare_images)(u8["images"])))
    assert f32["images"].dtype == np.float32
    np.testing.assert_allclose(f32["images"], u8["images"].astype(np.float32) / np.float32(255), rtol=1.2e-7, atol=0)
    np.testing.assert_array_equal(np.asarray(prepare_images(jnp.asarray(batch["images"]))), batch["images"])

    results = []
    for b in (u8, f32):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                           rest=jax.tree.map(jnp.copy, rest), opt_state=tx.init(params))
        step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=img_size)
        results.append(jax.device_get(step(state, b)))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_make_train_step_rejects_inconsistent_options():
    model = YOLOv11(3, base=4, depth=1, rngs=nnx.Rngs(0))
    graphdef, _, _ = split_model(model)
    lr_fn = make_schedule(1e-3, schedule="constant", epochs=1, steps_per_epoch=1)
    tx = make_optimizer(lr_fn)
    with pytest.raises(ValueError, match="unknown recipe"):
        make_train_step(graphdef, tx, recipe="yolov8")
    with pytest.raises(ValueError, match="torch_compat"):
        make_train_step(graphdef, tx, recipe="ultralytics", torch_compat=True)
    with pytest.raises(ValueError, match="not both"):
        make_train_step(graphdef, tx, lr_fn=lr_fn, hyperparams_fn=lambda step: {})


@pytest.mark.parametrize("preset,in_box_branch", [
    ("tiny", lambda keys: "reg_convs" in keys or "reg_pred" in keys),
    ("yolo11n", lambda keys: keys[:3] == ("model", 23, "cv2")),
])
def test_the_regression_group_is_each_familys_box_branch(preset, in_box_branch):
    """``torch_compat``'s regression group (what ``skip_group`` freezes on a batch without boxes)
    is exactly the box-regression branch: the notebook head's ``reg_convs`` / ``reg_pred``, and
    YOLO11's ``Detect`` box branch ``model/23/cv2`` (not the C3k2 / SPPF ``cv2`` convolutions)."""
    from yolo11_jax import build_model
    from yolo11_jax.optim import REG_GROUP, param_group

    params = nnx.state(build_model(preset, num_classes=3, rngs=nnx.Rngs(0)), nnx.Param)
    groups = [(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path), g)
              for path, g in jax.tree_util.tree_flatten_with_path(param_group(params))[0]]
    got = {keys for keys, g in groups if g == REG_GROUP}
    want = {keys for keys, _ in groups if in_box_branch(keys)}
    assert want and got == want
    if preset == "yolo11n":  # other cv2 convolutions exist and stay in the main group
        assert any("cv2" in keys for keys, g in groups if g != REG_GROUP)
