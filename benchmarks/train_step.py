"""Time one full training step (forward, loss, backward, optimizer) in JAX and in reference_torch.

Run:  python benchmarks/train_step.py --model small --img-size 128 --batch 16
      python benchmarks/train_step.py --model notebook --img-size 640 --batch 4 --repeats 3

Same preset, same batch, same CPU threads, one process. Reports both step times, their
ratio (torch time / JAX time: > 1 means JAX is faster), achieved GFLOP/s (XLA's count of
the JAX step), the JAX compile time, and the JAX forward+backward alone (no loss, assigner
or optimizer: a sum of the outputs) to show what the non-convolution work costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import reference_torch as R
from yolo11_jax import convert
from yolo11_jax.optim import make_optimizer, make_schedule
from yolo11_jax.presets import build_model, get_preset
from yolo11_jax.step import TrainState, make_train_step, split_model


def make_batch(batch, img_size, num_classes, max_boxes, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_boxes + 1, batch)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    labels = np.zeros((batch, max_boxes), np.int32)
    mask = np.zeros((batch, max_boxes), bool)
    for i, n in enumerate(counts):
        boxes[i, :n] = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], 1)
        labels[i, :n] = rng.integers(0, num_classes, n)
        mask[i, :n] = True
    images = rng.random((batch, img_size, img_size, 3), dtype=np.float32)
    return dict(images=images, boxes_cxcywh=boxes, labels=labels, mask=mask)


def timed(fn, repeats):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--max-boxes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    p = get_preset(args.model)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} "
          f"({jax.devices()[0].platform}); torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"model {args.model} (base {p.base}, depth {p.depth}), {args.classes} classes, "
          f"batch {args.batch} at {args.img_size}px, max_boxes {args.max_boxes}")
    batch = make_batch(args.batch, args.img_size, args.classes, args.max_boxes)

    torch.manual_seed(0)
    ref = R.YOLOv11(num_classes=args.classes, base=p.base, depth=p.depth)
    model = build_model(args.model, num_classes=args.classes, rngs=nnx.Rngs(0))
    convert.load_state_dict(model, ref.state_dict())
    model.train()

    # ---- JAX: full step
    graphdef, params, rest = split_model(model)
    lr_fn = make_schedule(1e-3, schedule="epoch-cosine", epochs=5, steps_per_epoch=100)
    tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=args.img_size, num_classes=args.classes)
    dev_batch = jax.device_put(batch)
    t0 = time.perf_counter()
    compiled = step.lower(state, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    holder = {"state": state}

    def jax_step():
        holder["state"], m = compiled(holder["state"], dev_batch)
        jax.block_until_ready(m)

    jax_s = timed(jax_step, args.repeats)

    # ---- JAX: forward + backward alone (no loss/assigner/optimizer)
    def fwd_bwd_loss(params, rest, images):
        m = nnx.merge(graphdef, params, rest, copy=True)
        return sum(jnp.sum(o) * 1e-3 for lvl in m(images) for o in lvl)

    fb = jax.jit(jax.grad(fwd_bwd_loss)).lower(params, rest, dev_batch["images"]).compile()
    fb_s = timed(lambda: jax.block_until_ready(fb(holder["state"].params, rest, dev_batch["images"])),
                 args.repeats)

    print(f"JAX compile (full step):      {compile_s:8.1f} s")
    print(f"JAX full step:                {jax_s * 1e3:8.1f} ms   ({flops / jax_s / 1e9:.1f} GFLOP/s, "
          f"{flops / 1e9:.1f} GFLOP/step)")
    print(f"JAX forward+backward only:    {fb_s * 1e3:8.1f} ms   (non-conv work = "
          f"{100 * (jax_s - fb_s) / jax_s:.1f}% of the step)")

    if not args.skip_torch:
        ref.train()
        loss_fn = R.YOLOv11Loss(num_classes=args.classes, img_size=args.img_size)
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.05)
        imgs = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous()
        gtb = [torch.from_numpy(batch["boxes_cxcywh"][i][batch["mask"][i]]) for i in range(args.batch)]
        gtl = [torch.from_numpy(batch["labels"][i][batch["mask"][i]]).long() for i in range(args.batch)]

        def torch_step():
            loss, _ = loss_fn(ref(imgs), gtb, gtl)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=10.0)
            opt.step()

        torch_s = timed(torch_step, args.repeats)
        print(f"torch full step:              {torch_s * 1e3:8.1f} ms")
        print(f"ratio (torch / JAX):          {torch_s / jax_s:8.2f}x  (> 1: JAX faster)")


if __name__ == "__main__":
    main()
