"""Time Task-Aligned assignment: the jitted JAX function vs the notebook's assigner looped per image.

Run:  python benchmarks/assigner.py [--assigner spec|chunked|chunked-sparse --batch 16 --img-size 640
                                     --boxes 32 --classes 80 --rounds 9]
      python benchmarks/assigner.py --malloc-tuning      # glibc keeps freed memory (both sides)

Both sides get the same inputs (random predictions near the anchors, 32 boxes per image).
JAX is the spec (``assign.task_aligned_assign``) or the chunked assigner
(``assign_chunked``, chunks = the anchor grid's row length, as ``train --assigner`` passes),
through the jitted function as a user would call it (its C++ dispatch path; the ahead-of-time
``Compiled`` object's Python ``__call__`` adds ~0.2 ms per call). JAX compilation is timed
separately (an ahead-of-time ``lower().compile()``) and excluded from the per-call time, and
each JAX call is waited for before the next (a batch's latency, as the reference's). The two
sides are timed in alternating rounds of about equal length (this machine's speed drifts by
tens of percent within minutes); each round gives a ratio, and the median round is printed
with the spread. Each side's round starts with ``--warmup-s`` seconds of untimed calls: on the
2-core VM, JAX's two-thread calls right after the reference's mostly one-core batch are slow
for ~200 ms (after a 140 ms pause, ~10 ms per call falling to ~7.5 ms over 30 calls; after a
10 ms pause, no slow-down), while the reference's batches right after JAX's round are not
(benchmarks/RESULTS.md, seventh session). ``--warmup-s 0`` times the rounds cold.

Each round also times an output floor: a jitted function that only fills buffers of the
assigner's output shapes with zeros. Reference / floor is the most that any JAX implementation
returning these outputs can reach on the machine.

``--malloc-tuning`` sets glibc's mmap and trim thresholds with ``mallopt`` at start-up, for
both sides alike: by default glibc hands every freed block over 32 MiB back to the kernel,
so the (16, 8400, 80) soft-score output (43 MB) is page-faulted in afresh on every call;
this costs the JAX function more than its whole computation on a 2-core machine (and the
reference about a third of its time). The same effect is had with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864``
in the environment, or with jemalloc / tcmalloc.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from reference_torch import TaskAlignedAssigner
from yolo11_jax.anchors import feature_sizes, make_anchor_points
from yolo11_jax.assign import task_aligned_assign
from yolo11_jax.assign_chunked import chunked_assigner

ASSIGNERS = ("spec", "chunked", "chunked-sparse")


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process (glibc only): mmap threshold 1 GiB, no trimming,
    64 MiB top pad. Returns False where glibc's ``mallopt`` is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(libc.mallopt(opt, val) == 1 for opt, val in (
        (m_mmap_threshold, 1 << 30), (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 << 20)))


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
    ap.add_argument("--assigner", default="spec", choices=ASSIGNERS,
                    help="spec: assign.task_aligned_assign; chunked / chunked-sparse: assign_chunked's dense / "
                         "sparse pass 1")
    ap.add_argument("--rounds", type=int, default=9, help="alternating timing rounds")
    ap.add_argument("--repeats", type=int, default=20,
                    help="JAX calls per round (reference: a twentieth as many batches, at least 1; "
                         "about as long as the JAX calls, so that both sides of a round meet the "
                         "same machine speed)")
    ap.add_argument("--warmup-s", type=float, default=0.3,
                    help="seconds of untimed calls of each side at the start of each of its rounds "
                         "(at least one call; 0: none)")
    ap.add_argument("--malloc-tuning", action="store_true",
                    help="keep freed memory in the process (glibc mallopt), for both sides")
    args = ap.parse_args()

    tuned = tune_glibc_malloc() if args.malloc_tuning else False
    anchors, strides, ps, pb, gl, gb, gm = make_inputs(args.batch, args.img_size, args.boxes, args.classes)
    feat = feature_sizes((args.img_size, args.img_size))
    fn = task_aligned_assign if args.assigner == "spec" else chunked_assigner(
        feat, method="sparse" if args.assigner == "chunked-sparse" else "dense")
    dev = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {dev.platform}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"B={args.batch}, {args.img_size}x{args.img_size} ({len(anchors)} anchors), "
          f"{args.boxes} boxes/image, {args.classes} classes; assigner={args.assigner}; "
          f"glibc malloc tuning: {'on' if tuned else 'off'}")

    j_in = [jax.device_put(x) for x in (ps, pb, anchors, gl, gb, gm)]
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*j_in).compile()
    compile_s = time.perf_counter() - t0
    del compiled

    def jax_batch():
        return fn(*j_in)

    jax.block_until_ready(jax_batch())  # the jit cache's own compilation (not timed)

    # The floor: a jitted function that only writes zeros into buffers of the assigner's output
    # shapes. It pays the same output allocation (and, with glibc's defaults, the same page
    # faults) and nothing else, so reference / floor bounds what any JAX implementation of the
    # function can reach on this machine.
    out_shapes = jax.eval_shape(jax_batch)
    fill = jax.jit(lambda z: tuple(jnp.full(o.shape, z, o.dtype) for o in out_shapes))
    zero = jax.device_put(np.float32(0))

    def floor_batch():
        return fill(zero)

    jax.block_until_ready(floor_batch())

    assigner = TaskAlignedAssigner()
    tdev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # same device as JAX's
    t_in = [torch.from_numpy(x).to(tdev) for x in (ps, pb, gl, gb, anchors, strides)]
    ref_repeats = max(1, args.repeats // 20)

    def ref_batch():
        for i in range(args.batch):
            assigner.assign(t_in[0][i], t_in[1][i], t_in[2][i].long(), t_in[3][i], t_in[4], t_in[5])
        if tdev.type == "cuda":
            torch.cuda.synchronize()

    ref_batch()  # warm-up (allocator, CUDA context)

    def warm_up(batch):
        """Untimed calls for ``--warmup-s`` seconds (at least one, unless 0)."""
        if args.warmup_s <= 0:
            return
        t0 = time.perf_counter()
        while True:
            batch()
            if time.perf_counter() - t0 >= args.warmup_s:
                return

    def time_jax(batch):
        warm_up(lambda: jax.block_until_ready(batch()))
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            # One batch at a time, as the reference's loop: without waiting, up to `repeats`
            # calls are queued, each with its own 43 MB soft-score output alive.
            jax.block_until_ready(batch())
        return (time.perf_counter() - t0) / args.repeats

    jax_times, ref_times, floor_times = [], [], []
    for _ in range(args.rounds):
        jax_times.append(time_jax(jax_batch))
        floor_times.append(time_jax(floor_batch))
        warm_up(ref_batch)
        t0 = time.perf_counter()
        for _ in range(ref_repeats):
            ref_batch()
        ref_times.append((time.perf_counter() - t0) / ref_repeats)
    ratios = np.array(ref_times) / np.array(jax_times)
    mid = int(np.argsort(ratios)[len(ratios) // 2])

    print(f"JAX compile:            {compile_s * 1e3:9.1f} ms (once)")
    print(f"JAX jitted, per batch:  {jax_times[mid] * 1e3:9.1f} ms "
          f"(rounds: {', '.join(f'{t * 1e3:.1f}' for t in jax_times)})")
    print(f"reference, per batch:   {ref_times[mid] * 1e3:9.1f} ms "
          f"(rounds: {', '.join(f'{t * 1e3:.1f}' for t in ref_times)}; looped over {args.batch} images, torch on {tdev.type})")
    print(f"speed-up (reference / JAX): {ratios[mid]:.1f}x median round "
          f"(min {ratios.min():.1f}x, max {ratios.max():.1f}x over {args.rounds} rounds)")
    floor_ratios = np.array(ref_times) / np.array(floor_times)
    fmid = int(np.argsort(floor_ratios)[len(floor_ratios) // 2])
    print(f"output floor, per batch: {floor_times[fmid] * 1e3:9.2f} ms "
          f"(rounds: {', '.join(f'{t * 1e3:.2f}' for t in floor_times)}): a jitted function that "
          f"only fills buffers of the outputs' shapes with zeros")
    print(f"ceiling (reference / floor): {floor_ratios[fmid]:.1f}x median round: the most any "
          f"jitted JAX function returning these outputs can reach here")


if __name__ == "__main__":
    main()
