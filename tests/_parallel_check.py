"""Run by tests/test_parallel.py in a subprocess with two simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set before JAX starts).

Compares the data-parallel training step (2-device mesh) with the single-device step on the
same global batch, and prints one JSON object with the measured differences.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import reference_torch as R  # noqa: E402
from reference_torch.testing import randomize_batchnorm  # noqa: E402
from yolo11_jax import convert, parallel  # noqa: E402
from yolo11_jax.optim import make_optimizer, make_schedule  # noqa: E402
from yolo11_jax.presets import build_model  # noqa: E402
from yolo11_jax.step import TrainState, make_train_step, split_model  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
NUM_CLASSES, IMG, BATCH, MAX_BOXES, LR = 5, 64, 4, 6, 1e-3
PART_KEYS = ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "grad_norm")


def make_batch(seed):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((BATCH, MAX_BOXES, 4), np.float32)
    labels = np.zeros((BATCH, MAX_BOXES), np.int32)
    mask = np.zeros((BATCH, MAX_BOXES), bool)
    for i, n in enumerate([3, 0, 6, 2]):  # an image without boxes lands on the second device
        boxes[i, :n] = np.concatenate([rng.uniform(0.25, 0.75, (n, 2)), rng.uniform(0.1, 0.5, (n, 2))], 1)
        labels[i, :n] = rng.integers(0, NUM_CLASSES, n)
        mask[i, :n] = True
    images = rng.random((BATCH, IMG, IMG, 3), dtype=np.float32)
    return dict(images=images, boxes_cxcywh=boxes, labels=labels, mask=mask)


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def main():
    assert jax.device_count() == 2, jax.devices()
    torch.manual_seed(0)
    ref = R.YOLOv11(num_classes=NUM_CLASSES, base=8, depth=1)
    randomize_batchnorm(ref, 0)
    # The CPU kernels this check's tolerances were set with (before kernels became an explicit
    # choice, every CPU run used them); with lax's, one bias differs by 1.2e-5 relative.
    model = build_model("tiny", num_classes=NUM_CLASSES, conv_impl="cpu_taps", rngs=nnx.Rngs(0))
    convert.load_state_dict(model, ref.state_dict())
    model.train()
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(LR, schedule="epoch-cosine", epochs=5, steps_per_epoch=10)
    tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0)
    state0 = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    host0 = jax.device_get(state0)
    kw = dict(lr_fn=lr_fn, img_size=IMG, num_classes=NUM_CLASSES)
    single = make_train_step(graphdef, tx, **kw)
    mesh = parallel.make_mesh()
    sharded = make_train_step(graphdef, tx, mesh=mesh, **kw)
    b1, b2 = make_batch(1), make_batch(2)

    # Step 1 from the initial state: loss parts.
    s1_single, m1_single = single(jax.device_put(host0), b1)
    host1 = jax.device_get(s1_single)
    g1 = parallel.global_batch(b1, mesh)
    s1_dp, m1_dp = sharded(parallel.replicate(host0, mesh), g1)
    out = {
        "batch_sharding": str(g1["images"].sharding.spec),
        "batch_devices": len(g1["images"].sharding.device_set),
        "state_devices": len(jax.tree.leaves(s1_dp.params)[0].sharding.device_set),
        "state_replicated": bool(jax.tree.leaves(s1_dp.params)[0].sharding.is_fully_replicated),
        "step1": {k: [float(m1_single[k]), float(m1_dp[k])] for k in PART_KEYS},
    }

    # Step 2 from one common state (the single-device state after step 1). AdamW's first update
    # is about lr * sign(g) per element, so any reordering of float32 sums flips the sign of
    # elements whose gradient is at noise level; from a state with warm moments the update is
    # a smooth function of the gradient and the comparison measures the step itself.
    s2_single, m2_single = single(jax.device_put(host1), b2)
    s2_dp, m2_dp = sharded(parallel.replicate(host1, mesh), parallel.global_batch(b2, mesh))
    out["step2"] = {k: [float(m2_single[k]), float(m2_dp[k])] for k in PART_KEYS}
    p_single, p_dp = flat(jax.device_get(s2_single.params)), flat(parallel.to_host(s2_dp.params))
    r_single, r_dp = flat(jax.device_get(s2_single.rest)), flat(parallel.to_host(s2_dp.rest))
    out["params_rel_l2"] = {k: rel_l2(p_dp[k], p_single[k]) for k in p_single}
    out["params_max_abs"] = {k: float(np.max(np.abs(p_dp[k] - p_single[k]))) for k in p_single}
    out["rest_rel_l2"] = {k: rel_l2(r_dp[k], r_single[k]) for k in r_single if r_single[k].dtype.kind == "f"}
    out["rest_int_equal"] = all(np.array_equal(r_dp[k], r_single[k]) for k in r_single
                                if r_single[k].dtype.kind != "f")

    # A global batch that does not split over the devices is refused with a clear message.
    try:
        parallel.check_batch_size(3, mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
