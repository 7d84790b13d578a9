"""Parameter counts and forward GFLOPs of each preset.

Run: python benchmarks/model_stats.py [--img-size 640] [--models yolo11n yolo11s ...]

Parameters are counted as torch's ``sum(p.numel() for p in model.parameters())`` (the notebook's
and Ultralytics' count: the frozen DFL values included); "trainable" leaves those out. GFLOPs
come from XLA's cost analysis of the jitted eval-mode forward at batch 1 (a multiply-add counts
as 2 FLOPs). Models are built abstractly (``nnx.eval_shape``), so nothing is initialised.

Ultralytics' published GFLOPs for YOLO11 are those of its fused model (BatchNorm folded into
the convolutions); this network keeps the BatchNorms, whose normalisation, plus the
activations, the attention softmax and the DFL decoding, XLA counts too.
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from yolo11_jax.model import count_parameters
from yolo11_jax.presets import PRESETS, build_model

# Ultralytics' published GFLOPs at 640 for its YOLO11 detection models.
OFFICIAL_GFLOPS = {"yolo11n": 6.5, "yolo11s": 21.5, "yolo11m": 68.0, "yolo11l": 86.9, "yolo11x": 194.9}


def forward_flops(model, img_size: int) -> float:
    """FLOPs of one eval-mode forward pass on a (1, img_size, img_size, 3) image."""
    model.eval()
    graphdef, state = nnx.split(model)

    def fwd(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    cost = jax.jit(fwd).lower(state, x).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost["flops"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=640, help="square input size in pixels (default 640)")
    ap.add_argument("--models", nargs="+", choices=sorted(PRESETS), default=list(PRESETS),
                    help="presets to report (default: all)")
    args = ap.parse_args()
    print(f"| preset | size | parameters | trainable | GFLOPs @ {args.img_size} | official GFLOPs |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        p = PRESETS[name]
        model = nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0)))
        gflops = forward_flops(model, args.img_size) / 1e9
        size = f"scale {p.scale}" if p.family == "yolo11" else f"base {p.base}, depth {p.depth}"
        official = OFFICIAL_GFLOPS.get(name) if args.img_size == 640 else None
        print(f"| {name} | {size} | {count_parameters(model):,} | {count_parameters(model, notebook_style=False):,} | "
              f"{gflops:.1f} | {official if official is not None else '-'} |")


if __name__ == "__main__":
    main()
