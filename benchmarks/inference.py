"""Inference throughput of the YOLO11 presets: JAX (jitted, eval mode) against the PyTorch
reference (``reference_torch.YOLO11``, eval mode, ``torch.inference_mode``), same weights, same
inputs, measured in the same run.

Run:
  python benchmarks/inference.py                      # yolo11n and yolo11s, 640 px, batch 1 and 16
  python benchmarks/inference.py --quick              # a few seconds: checks that it runs
  python benchmarks/inference.py --models yolo11n --batch-sizes 1 --seconds 20

Both sides compute the same outputs: per level the class logits, the raw box distribution and
its DFL decoding (no NMS). JAX runs the functional pattern (``nnx.split`` once, a ``jax.jit``
function of the state and the images); its compile time is reported separately and not
counted. After an untimed warm-up, each measurement alternates JAX and torch in rounds, so
that a change in machine load hits both, and reports the median round. Thread counts are the
libraries' defaults (printed). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from reference_torch.yolo11 import YOLO11 as TorchYOLO11
from yolo11_jax import convert
from yolo11_jax.presets import PRESETS, build_model


def time_calls(fn, seconds: float, min_calls: int = 2) -> float:
    """Seconds per call: call ``fn`` until ``seconds`` have passed (at least ``min_calls`` times)."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def measure(name: str, batch: int, img_size: int, seconds: float, rounds: int, warmup_s: float) -> dict:
    p = PRESETS[name]
    torch.manual_seed(0)
    ref = TorchYOLO11(p.scale, p.num_classes).eval()
    model = nnx.eval_shape(lambda: build_model(name, rngs=nnx.Rngs(0)))
    convert.load_state_dict(model, ref.state_dict())
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

    images = np.random.default_rng(0).random((batch, img_size, img_size, 3), dtype=np.float32)
    x_jax = jax.device_put(jnp.asarray(images))
    x_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run_jax():
        jax.block_until_ready(forward(state, x_jax))

    def run_torch():
        with torch.inference_mode():
            ref(x_torch)

    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    # Untimed warm-up; torch's first few calls at a new shape are several times slower.
    time_calls(run_jax, warmup_s, min_calls=3)
    time_calls(run_torch, warmup_s, min_calls=3)
    per_round = seconds / rounds
    jax_s, torch_s = [], []
    for _ in range(rounds):
        jax_s.append(time_calls(run_jax, per_round))
        torch_s.append(time_calls(run_torch, per_round))
    jax_ips = batch / statistics.median(jax_s)
    torch_ips = batch / statistics.median(torch_s)
    return dict(model=name, batch=batch, jax=jax_ips, torch=torch_ips, ratio=jax_ips / torch_ips, compile_s=compile_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["yolo11n", "yolo11s"],
                    choices=[n for n, p in PRESETS.items() if p.family == "yolo11"], help="YOLO11 presets to time")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16], help="batch sizes to time")
    ap.add_argument("--img-size", type=int, default=640, help="square input size in pixels (multiple of 32)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="timed seconds per measurement and side, split over --rounds (default 20)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating JAX/torch rounds per measurement (default 5)")
    ap.add_argument("--warmup-s", type=float, default=3.0,
                    help="untimed seconds of calls per side before timing, at least 3 calls (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="a check that the script runs: yolo11n, batch 1 and 2, 320 px, 1 s per side")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch_sizes, args.img_size = ["yolo11n"], [1, 2], 320
        args.seconds, args.rounds, args.warmup_s = 1.0, 2, 1.0

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"{args.img_size} px, float32, {args.seconds:g} s per side in {args.rounds} rounds")
    print("| model | batch | JAX img/s | reference img/s | JAX / reference | JAX compile s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batch_sizes:
            r = measure(name, batch, args.img_size, args.seconds, args.rounds, args.warmup_s)
            print(f"| {r['model']} | {r['batch']} | {r['jax']:.2f} | {r['torch']:.2f} | {r['ratio']:.2f}x | "
                  f"{r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
