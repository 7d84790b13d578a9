"""Float64 loss and gradient parity of the notebook network against reference_torch.

Run by ``tests/test_loss.py::test_notebook_network_gradients_match_reference_at_640_in_float64``
as a subprocess, because JAX's x64 mode must be switched on before JAX starts:

    JAX_ENABLE_X64=1 python tests/_float64_grad_check.py [--img-size 640 --counts 9 ...]

The defaults are the notebook network (80 classes, base 64, depth 2) at 640 x 640, one image
with 9 boxes: about 2 minutes on 2 CPU cores (two images: about 5).

Both networks start from the same float32 weights (reference_torch.YOLOv11 with randomized
BatchNorm, converted with ``convert.load_state_dict``); then the torch module is cast with
``.double()`` (default dtype float64, since the reference assigner allocates with it) and every
floating leaf of the NNX state is cast to float64. Same images and targets, both in train mode.

Checks (a failure exits with status 1):
  * the JAX computation really is float64;
  * each loss part: relative error <= PART_TOL; num_pos equal;
  * every parameter gradient: relative L2 <= GRAD_TOL, except ZERO_GRADIENT_TENSORS (exact
    gradient zero), held to an absolute floor of 1e-3 x the largest gradient norm.
The last line of stdout is a JSON summary with the worst errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import reference_torch as R  # noqa: E402
from tests.helpers import (loss_and_grads, make_targets, nchw, randomize_batchnorm, rel_l2,  # noqa: E402
                           torch_targets)
from tests.test_loss import PART_KEYS, ZERO_GRADIENT_TENSORS, jax_grads_in_torch_layout  # noqa: E402
from yolo11_jax import YOLOv11, convert  # noqa: E402

# Measured at 640 (batch 1, 9 boxes): loss parts <= 4.3e-15, gradients <= 1.1e-12 (batch 2,
# boxes 9 and 3: 2.5e-15 and 1.4e-12). The float32 tests hold gradients to 1e-3.
# GRAD_TOL is 1e-9, not looser: one float32 step anywhere in a float64 computation shows as
# ~1e-8 (a float32 accumulation in the CPU kernel-gradient path gave 2.6e-8 and passed the
# earlier 1e-6 unnoticed).
PART_TOL = 1e-10
GRAD_TOL = 1e-9
ZERO_GRAD_FLOOR = 1e-3  # x the largest gradient norm, as in test_loss.py


def to_float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--counts", default="9", help="boxes per image, comma-separated (sets the batch size)")
    p.add_argument("--max-boxes", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = tuple(int(c) for c in args.counts.split(","))

    if not jax.config.jax_enable_x64:
        print("JAX x64 is off: run with JAX_ENABLE_X64=1", file=sys.stderr)
        return 2
    timings = {}
    t0 = time.perf_counter()

    # The same float32 weights on both sides, then float64 everywhere.
    torch.manual_seed(args.seed)
    ref = R.YOLOv11(num_classes=args.num_classes, base=args.base, depth=args.depth)
    randomize_batchnorm(ref, args.seed)
    model = YOLOv11(args.num_classes, base=args.base, depth=args.depth, rngs=nnx.Rngs(args.seed))
    convert.load_state_dict(model, ref.state_dict())
    nnx.update(model, to_float64(nnx.state(model)))
    ref = ref.double()
    rng = np.random.default_rng(args.seed)
    images = rng.random((len(counts), args.img_size, args.img_size, 3), dtype=np.float32).astype(np.float64)
    boxes, labels, mask = make_targets(rng, len(counts), args.num_classes, counts, args.max_boxes)
    boxes = boxes.astype(np.float64)

    # Reference, float64 (the assigner allocates with the default dtype).
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref.train()
        loss_fn = R.YOLOv11Loss(num_classes=args.num_classes, img_size=args.img_size)
        total_t, parts_t = loss_fn(ref(nchw(images)), *torch_targets(boxes, labels, mask))
        ref.zero_grad()
        total_t.backward()
    finally:
        torch.set_default_dtype(default_dtype)
    assert total_t.dtype == torch.float64, total_t.dtype
    grads_t = {k: p.grad.numpy().copy() for k, p in ref.named_parameters() if p.grad is not None}
    param_keys = {k for k, _ in ref.named_parameters() if not k.endswith(".proj")}
    del ref, loss_fn, total_t
    gc.collect()
    timings["torch_s"] = time.perf_counter() - t0

    # JAX, float64.
    t1 = time.perf_counter()
    batch = dict(images=jnp.asarray(images), boxes_cxcywh=jnp.asarray(boxes),
                 labels=jnp.asarray(labels), mask=jnp.asarray(mask))
    parts_j, grads = loss_and_grads(model, batch, img_size=args.img_size)
    grads_j = jax_grads_in_torch_layout(model, grads)
    timings["jax_s"] = time.perf_counter() - t1

    failures = []
    dtypes = {str(parts_j["total_loss"].dtype)} | {str(g.dtype) for g in jax.tree.leaves(grads)}
    if dtypes != {"float64"}:
        failures.append(f"JAX did not run in float64: {sorted(dtypes)}")

    part_rel = {k: abs(float(parts_j[k]) - parts_t[k]) / abs(parts_t[k]) for k in PART_KEYS}
    failures += [f"{k}: rel {r:.3e} > {PART_TOL}" for k, r in part_rel.items() if not r <= PART_TOL]
    num_pos = {"torch": int(parts_t["num_pos"]), "jax": int(parts_j["num_pos"])}
    if num_pos["torch"] != num_pos["jax"] or num_pos["torch"] <= 1:
        failures.append(f"num_pos {num_pos}")

    if set(grads_t) != param_keys:
        failures.append(f"torch gradients missing for {sorted(param_keys - set(grads_t))}")
    max_norm = max(np.linalg.norm(g) for g in grads_t.values())
    grad_rel, zero_grad = {}, {}
    for key, g_t in grads_t.items():
        g_j = np.asarray(grads_j[key])
        if not np.all(np.isfinite(g_j)):
            failures.append(f"{key}: non-finite JAX gradient")
        elif key in ZERO_GRADIENT_TENSORS:
            zero_grad[key] = float(np.linalg.norm(g_j - g_t) / max_norm)  # in units of the largest norm
            if not zero_grad[key] <= ZERO_GRAD_FLOOR:
                failures.append(f"{key}: |diff| / max norm {zero_grad[key]:.3e} > {ZERO_GRAD_FLOOR}")
        else:
            grad_rel[key] = rel_l2(g_j, g_t)
            if not grad_rel[key] <= GRAD_TOL:
                failures.append(f"{key}: grad rel L2 {grad_rel[key]:.3e} > {GRAD_TOL}")

    worst = sorted(grad_rel.items(), key=lambda kv: -kv[1])[:5]
    summary = {
        "config": {"num_classes": args.num_classes, "base": args.base, "depth": args.depth,
                   "img_size": args.img_size, "counts": counts, "seed": args.seed, "dtype": "float64"},
        "tolerances": {"part_rel": PART_TOL, "grad_rel_l2": GRAD_TOL, "zero_grad_floor": ZERO_GRAD_FLOOR},
        "num_pos": num_pos,
        "part_rel": part_rel,
        "worst_part_rel": max(part_rel.values()),
        "num_grad_tensors": len(grad_rel),
        "worst_grad_rel_l2": worst[0][1] if worst else None,
        "worst_grad_tensors": dict(worst),
        "zero_grad_diff_over_max_norm": zero_grad,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "failures": failures,
        "ok": not failures,
    }
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
