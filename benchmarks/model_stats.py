"""Parameter counts and forward GFLOPs of each preset.

Run: python benchmarks/model_stats.py [--img-size 640]
GFLOPs come from XLA's cost analysis of the jitted eval-mode forward at batch 1.
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from yolo11_jax.model import count_parameters
from yolo11_jax.presets import PRESETS, build_model


def forward_flops(model, img_size: int) -> float:
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
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--img-size", type=int, default=640)
    args = ap.parse_args()
    print(f"| preset | base | depth | parameters (notebook count) | trainable | GFLOPs @ {args.img_size} |")
    print("|---|---|---|---|---|---|")
    for name, p in PRESETS.items():
        model = build_model(name, rngs=nnx.Rngs(0))
        gflops = forward_flops(model, args.img_size) / 1e9
        print(f"| {name} | {p.base} | {p.depth} | {count_parameters(model):,} | "
              f"{count_parameters(model, notebook_style=False):,} | {gflops:.1f} |")


if __name__ == "__main__":
    main()
