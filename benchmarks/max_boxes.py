"""What a large box padding ``M`` (``--max-boxes``) costs the assigners: one jitted assignment of
a batch whose images hold ``--real`` boxes each, padded to ``M``, for each assigner.

Run:  python benchmarks/max_boxes.py [--batch 16 --img-size 128 --classes 80 --real 8
                                      --m 8 32 128 512 --repeats 10]

Assigners: ``spec`` (``assign.task_aligned_assign``, dense ``(B, M, A)``), ``chunked`` and
``chunked-sparse`` (``assign_chunked``, chunks of anchors), ``ultralytics``
(``assign_ultralytics.ultralytics_assign``, dense ``(B, M, A)``, the Ultralytics recipe's).
Compilation is excluded (one untimed call first); the median of ``--repeats`` calls is printed,
in milliseconds, with the ratio to ``M = --real`` (the padding's own cost). The inputs are those
of ``benchmarks/assigner.py`` (random predictions near the anchors).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from assigner import make_inputs  # noqa: E402
from yolo11_jax.anchors import feature_sizes  # noqa: E402
from yolo11_jax.assign import task_aligned_assign  # noqa: E402
from yolo11_jax.assign_chunked import chunked_assigner  # noqa: E402
from yolo11_jax.assign_ultralytics import ultralytics_assign  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--real", type=int, default=8, help="real boxes per image (the rest is padding)")
    ap.add_argument("--m", type=int, nargs="+", default=[8, 32, 128, 512], help="padded box counts M")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--assigners", nargs="+", default=["spec", "chunked", "chunked-sparse", "ultralytics"])
    args = ap.parse_args()
    feat = feature_sizes((args.img_size, args.img_size))
    fns = {"spec": task_aligned_assign, "chunked": chunked_assigner(feat, method="dense"),
           "chunked-sparse": chunked_assigner(feat, method="sparse"), "ultralytics": ultralytics_assign}
    print(f"{os.cpu_count()} CPUs, jax {jax.__version__}; B={args.batch}, {args.img_size} px, {args.classes} classes, "
          f"{args.real} real boxes per image; median of {args.repeats} calls, ms (ratio to M={args.m[0]})")
    print("assigner        " + "".join(f"{'M=' + str(m):>16}" for m in args.m))
    for name in args.assigners:
        fn = jax.jit(fns[name])
        row, base = [], None
        for m in args.m:
            anchors, _, ps, pb, gl, gb, gm = make_inputs(args.batch, args.img_size, max(m, args.real), args.classes)
            gm = gm.copy()
            gm[:, args.real:] = False
            inputs = [jax.device_put(x) for x in (ps, pb, anchors, gl, gb, gm)]
            jax.block_until_ready(fn(*inputs))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*inputs))
                times.append(time.perf_counter() - t0)
            ms = 1e3 * statistics.median(times)
            base = base or ms
            row.append(f"{ms:9.1f} ({ms / base:4.1f}x)")
        print(f"{name:<16}" + "".join(f"{c:>16}" for c in row), flush=True)


if __name__ == "__main__":
    main()
