"""Worst forward-parity error per output kind and mode, JAX vs reference_torch (float32, CPU).

Run: python benchmarks/parity_report.py [--notebook]

Metric: max|jax - torch| / max(1, max|torch|) over all three levels, random images, a
randomly initialised reference with randomised BatchNorm statistics, converted with
yolo11_jax.convert.load_state_dict. The README's parity table comes from this script.
"""

import argparse

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import reference_torch as R
from reference_torch.testing import randomize_batchnorm
from yolo11_jax import YOLOv11, convert
from yolo11_jax.model import jit_forward

KINDS = ("cls_logits", "box_ltrb", "box_raw")


def worst_errors(base, depth, num_classes, shape, seed=0):
    torch.manual_seed(seed)
    ref = R.YOLOv11(num_classes=num_classes, base=base, depth=depth)
    randomize_batchnorm(ref, seed)
    model = YOLOv11(num_classes, base=base, depth=depth, rngs=nnx.Rngs(0))
    convert.load_state_dict(model, ref.state_dict())
    images = np.random.default_rng(seed).random(shape, dtype=np.float32)
    out = {}
    for mode in ("eval", "train"):
        getattr(ref, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            want = ref(torch.from_numpy(images).permute(0, 3, 1, 2))
        got = jit_forward(model, jnp.asarray(images))
        for i, kind in enumerate(KINDS):
            out[(mode, kind)] = max(
                float(np.max(np.abs(np.asarray(g[i]) - w[i].permute(0, 2, 3, 1).numpy())))
                / max(1.0, float(w[i].abs().max())) for g, w in zip(got, want))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--notebook", action="store_true", help="also the 110M network at 640 (batch 1)")
    args = ap.parse_args()
    configs = [("tiny (base 8, depth 1)", 8, 1, 7, (2, 128, 96, 3)),
               ("small (base 16, depth 2)", 16, 2, 80, (2, 128, 128, 3))]
    if args.notebook:
        configs.append(("notebook (base 64, depth 2)", 64, 2, 80, (1, 640, 640, 3)))
    print("| network | input | mode | cls_logits | box_ltrb | box_raw |")
    print("|---|---|---|---|---|---|")
    for name, base, depth, nc, shape in configs:
        errs = worst_errors(base, depth, nc, shape)
        for mode in ("eval", "train"):
            print(f"| {name} | {shape[0]}x{shape[1]}x{shape[2]} | {mode} | "
                  + " | ".join(f"{errs[(mode, k)]:.1e}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
