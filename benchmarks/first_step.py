"""Time to the first training step, with and without JAX's persistent compilation cache.

Run:  python benchmarks/first_step.py --model yolo11n --img-size 128 --batch-size 16 [--conv-impl cpu_taps]

Starts the same child process three times: with the cache off, then twice on a fresh cache
folder (the first run fills it, the second compiles from it). Each child builds the network
(``build_model``), Ultralytics' recipe (``optim_ultralytics.ultralytics_recipe``, its loss and
the EMA), jits the train step and runs one step on a random batch; it reports the seconds from
its interpreter start to the end of that step, split into imports, building the model and
the recipe (eager initialisation compiles many small programs), tracing + lowering the step
(Python), compiling it (or loading it from the cache) and running it.

With ``--trace-cache on`` (the default, as in the trainer) the runs on the cache folder also keep
the traced step (``yolo11_jax.step_cache``): the first run traces and saves it, the second loads
it, so its "trace+lower" is only the lowering of one call of the saved program, and it is
reported together with the compilation ("trace cache: loaded"). ``--trace-cache off`` traces
the step in every run, as before the trace cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
t_start = float(sys.argv[1])
import functools
import jax, numpy as np
from flax import nnx
from yolo11_jax import compile_cache, step_cache
from yolo11_jax.presets import build_model
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
from yolo11_jax.optim_ultralytics import ultralytics_recipe
from yolo11_jax.step import init_train_state, make_train_step, split_model
model_name, img, bs, impl, cache = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
trace_cache = sys.argv[7] == "on" and bool(cache)
compile_cache.enable(cache or None)
t_import = time.time()
model = build_model(model_name, num_classes=3, conv_impl=impl, rngs=nnx.Rngs(0))
graphdef, params, rest = split_model(model)
tx, schedule, _ = ultralytics_recipe(params, optimizer="auto", num_classes=3, batch_size=bs, steps_per_epoch=100,
                                     epochs=10, iterations=1000, nbs=bs)
loss = functools.partial(ultralytics_detection_loss, img_size=img, num_classes=3)
step = make_train_step(graphdef, tx, loss=loss, hyperparams_fn=schedule, loss_scale="batch")
state = init_train_state(params, rest, tx, ema=True)
rng = np.random.default_rng(0)
batch = dict(images=rng.integers(0, 255, (bs, img, img, 3), dtype=np.uint8),
             boxes_cxcywh=np.tile(np.array([[0.5, 0.5, 0.2, 0.3]], np.float32), (bs, 4, 1)),
             labels=np.zeros((bs, 4), np.int32), mask=np.ones((bs, 4), bool))
t_built = time.time()
outcome = "off"
if trace_cache:
    key = step_cache.cache_key(graphdef, state, batch, dict(model=model_name, img=img, bs=bs, conv_impl=impl))
    compiled = step_cache.compile_step(step, state, batch, folder=os.path.join(cache, step_cache.SUBDIR), key=key)
    outcome = compiled.outcome
    t_lowered = t_built  # (tracing, lowering and compiling are one call here: all of it in compile_s)
else:
    lowered = step.lower(state, batch)
    t_lowered = time.time()
    compiled = lowered.compile()
t_compiled = time.time()
state, metrics = compiled(state, batch)
jax.block_until_ready(metrics)
t_end = time.time()
print(json.dumps(dict(first_step_s=t_end - t_start, imports_s=t_import - t_start, build_s=t_built - t_import,
                      lower_s=t_lowered - t_built, compile_s=t_compiled - t_lowered, step_s=t_end - t_compiled,
                      trace_cache=outcome)))
"""


def run_child(args, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("JAX_COMPILATION_CACHE_DIR", "YOLO11_JAX_COMPILE_CACHE"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", CHILD, repr(time.time()), args.model, str(args.img_size),
                          str(args.batch_size), args.conv_impl, cache, args.trace_cache], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolo11n")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--conv-impl", default="cpu_taps")
    ap.add_argument("--trace-cache", choices=("on", "off"), default="on",
                    help="keep the traced step in the cache folder too (yolo11_jax.step_cache), as the trainer does")
    ap.add_argument("--skip-uncached", action="store_true", help="only the two runs on a fresh cache")
    args = ap.parse_args()
    print(f"{args.model}, {args.img_size} px, batch {args.batch_size}, conv_impl {args.conv_impl}: seconds from "
          "interpreter start to the end of the first train step")
    with tempfile.TemporaryDirectory() as cache:
        runs = [] if args.skip_uncached else [("cache off", "")]
        runs += [("cache, first run", cache), ("cache, second run", cache)]
        for label, folder in runs:
            r = run_child(args, folder)
            print(f"  {label:18s}: first step at {r['first_step_s']:6.1f} s (imports {r['imports_s']:.1f}, "
                  f"build {r['build_s']:.1f}, trace+lower {r['lower_s']:.1f}, compile {r['compile_s']:.1f}, "
                  f"step {r['step_s']:.1f}; trace cache: {r['trace_cache']})", flush=True)


if __name__ == "__main__":
    main()
