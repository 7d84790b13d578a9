"""Time Task-Aligned assignment: the jitted JAX function vs the notebook's assigner looped per image.

Run:  python benchmarks/assigner.py [--batch 16 --img-size 640 --boxes 32 --classes 80 --repeats 10]

Both sides get the same inputs (random predictions near the anchors, 32 boxes per image).
JAX compilation is timed separately and excluded from the per-call time. Prints both
times and the speed-up ratio (reference time / JAX time).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np
import torch

from reference_torch import TaskAlignedAssigner
from yolo11_jax.anchors import feature_sizes, make_anchor_points
from yolo11_jax.assign import task_aligned_assign


def make_inputs(batch, img_size, boxes, classes, seed=0):
    rng = np.random.default_rng(seed)
    anchors, strides = make_anchor_points(feature_sizes((img_size, img_size)))
    a = len(anchors)
    ltrb = rng.uniform(0.2, 4.0, (batch, a, 4)) * strides[None, :, None]
    pred_bboxes = np.concatenate([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], -1).astype(np.float32)
    pred_scores = rng.uniform(0, 1, (batch, a, classes)).astype(np.float32)
    xy = rng.uniform(0, img_size * 0.8, (batch, boxes, 2))
    wh = rng.uniform(8, img_size * 0.3, (batch, boxes, 2))
    gt_bboxes = np.clip(np.concatenate([xy, xy + wh], -1), 0, img_size).astype(np.float32)
    gt_labels = rng.integers(0, classes, (batch, boxes)).astype(np.int32)
    gt_mask = np.ones((batch, boxes), bool)
    return anchors, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes, gt_mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--boxes", type=int, default=32)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    anchors, strides, ps, pb, gl, gb, gm = make_inputs(args.batch, args.img_size, args.boxes, args.classes)
    dev = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {dev.platform}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"B={args.batch}, {args.img_size}x{args.img_size} ({len(anchors)} anchors), "
          f"{args.boxes} boxes/image, {args.classes} classes")

    j_in = [jax.device_put(x) for x in (ps, pb, anchors, gl, gb, gm)]
    t0 = time.perf_counter()
    compiled = task_aligned_assign.lower(*j_in).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*j_in))
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        out = compiled(*j_in)
    jax.block_until_ready(out)
    jax_s = (time.perf_counter() - t0) / args.repeats

    assigner = TaskAlignedAssigner()
    tdev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # same device as JAX's
    t_in = [torch.from_numpy(x).to(tdev) for x in (ps, pb, gl, gb, anchors, strides)]
    ref_repeats = max(1, args.repeats // 5)

    def ref_batch():
        for i in range(args.batch):
            assigner.assign(t_in[0][i], t_in[1][i], t_in[2][i].long(), t_in[3][i], t_in[4], t_in[5])
        if tdev.type == "cuda":
            torch.cuda.synchronize()

    if tdev.type == "cuda":
        ref_batch()  # warm-up (CUDA context, kernels)
    t0 = time.perf_counter()
    for _ in range(ref_repeats):
        ref_batch()
    ref_s = (time.perf_counter() - t0) / ref_repeats

    print(f"JAX compile:            {compile_s * 1e3:9.1f} ms (once)")
    print(f"JAX jitted, per batch:  {jax_s * 1e3:9.1f} ms")
    print(f"reference, per batch:   {ref_s * 1e3:9.1f} ms (looped over {args.batch} images, torch on {tdev.type})")
    print(f"speed-up (reference / JAX): {ref_s / jax_s:.1f}x")


if __name__ == "__main__":
    main()
