"""Time one full training step (forward, loss, backward, optimizer) in JAX and in reference_torch.

Two recipes (``--recipe``; by default the model's own: ``ultralytics`` for ``yolo11*``, else
``notebook``):

* ``ultralytics``: Ultralytics' YOLO11 step on both sides: forward, ``v8DetectionLoss`` (its
  assigner), backward of ``batch * loss``, clipping at 10, AdamW with the three parameter groups
  (``optim_ultralytics.ultralytics_recipe``, accumulation 1: ``nbs`` = batch) and the EMA; the
  PyTorch side is ``reference_torch.YOLO11`` with ``UltralyticsDetectionLoss`` and the
  optimizer, clipping and ``ModelEMA`` of ``reference_torch.ultralytics_train``, written with
  Ultralytics' rules, on ``--torch-threads`` threads, by default in a process of its own
  (``--torch-process separate``: spawned, with glibc and OpenMP at their defaults, as a user's
  Ultralytics process runs; the JAX side runs under ``--host-malloc``, as ``yolo11_jax.train``
  does). The two sides are timed **interleaved**: ``--rounds`` rounds of ``--steps-per-round``
  JAX steps then as many torch steps, so that a busy machine slows both alike; it prints each
  side's median round and the ratio torch / JAX (> 1: JAX faster). ``--conv-impl lax,cpu_taps`` compares the convolution kernels
  (``yolo11_jax.kernels``) in one run.

      python benchmarks/train_step.py --model yolo11n --img-size 128 --batch-size 16
      python benchmarks/train_step.py --model yolo11n --img-size 640 --batch-size 4 --rounds 3
      python benchmarks/train_step.py --model yolo11s --img-size 128 --batch-size 16 --conv-impl lax,cpu_taps

* ``notebook``: the notebook's network, loss and AdamW, below.

Run (CPU):
    python benchmarks/train_step.py --model small --img-size 128 --batch 16
    python benchmarks/train_step.py --model notebook --img-size 640 --batch 4 --repeats 3
    python benchmarks/train_step.py --model small --devices 1,2 --skip-torch   # 2 simulated CPU devices
Run (GPU):
    python benchmarks/train_step.py --model notebook --img-size 640 --batch 16,64 \\
        --dtype float32,bfloat16 --skip-fwd-bwd
    python benchmarks/train_step.py --model notebook --img-size 640 --batch 64 --dtype bfloat16 \
        --skip-fwd-bwd --skip-torch --profile /tmp/prof     # where the step's time goes

Same preset, same batch, same device, one process. For every (batch, dtype, devices) it
reports the JAX step time and images/s with every step waited for (as the reference's step
is), the same for ``--repeats`` steps dispatched back to back and waited for once ("pipelined":
how ``yolo11_jax.train`` runs, which syncs every ``--log-every`` steps; on a GPU the host's
dispatch then overlaps the device's work), the compile time (separately), achieved GFLOP/s
(XLA's count of the step), XLA's memory estimate of the step, and on GPU the device's peak
memory and the model FLOP utilisation (3 x forward FLOPs per image, against ``--peak-tflops``).
The reference step (float32, the notebook's code) runs on the same device for each batch
size, and the ratio torch time / JAX time is printed (> 1: JAX is faster).
``--devices 1,2`` runs the data-parallel step on meshes of 1 and 2 devices (on CPU the
devices are simulated with ``--xla_force_host_platform_device_count``, set by this script).
Without ``--skip-fwd-bwd`` it also times the JAX forward+backward alone (no loss, assigner or
optimizer: a sum of the outputs) to show what the non-convolution work costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="network preset: notebook, small, tiny, yolo11n ... yolo11x")
    ap.add_argument("--recipe", default=None, choices=("notebook", "ultralytics"),
                    help="the step timed (default: ultralytics for yolo11* models, else notebook)")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", "--batch-size", dest="batch", default="16",
                    help="global batch size(s), comma-separated")
    ap.add_argument("--conv-impl", default=None,
                    help="convolution kernels of the JAX model, comma-separated: lax, cpu_depthwise, cpu_taps "
                         "(yolo11_jax.kernels; default: cpu_depthwise for the ultralytics recipe, cpu_taps for the "
                         "notebook's, the fastest of each on a CPU in RESULTS.md)")
    ap.add_argument("--rounds", type=int, default=5, help="ultralytics recipe: interleaved timing rounds")
    ap.add_argument("--steps-per-round", type=int, default=2, help="ultralytics recipe: steps per side per round")
    ap.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    ap.add_argument("--omp-wait-policy", default="default", choices=("PASSIVE", "ACTIVE", "default"),
                    help="OMP_WAIT_POLICY for torch's OpenMP threads (default: %(default)s, torch as users run it: "
                         "the figure to compare with). On a quiet machine PASSIVE made the torch step 2.3x slower; "
                         "on a machine whose cores other jobs share, the default spin-waiting made it 20x slower "
                         "(RESULTS.md): use PASSIVE there, and say so")
    ap.add_argument("--host-malloc", default="auto", choices=("auto", "reuse", "default"),
                    help="host memory policy of the process (yolo11_jax.host_memory; default: %(default)s, as "
                         "yolo11_jax.train: on a CPU backend glibc keeps freed memory in one arena, so XLA:CPU's "
                         "per-step scratch block is not page-faulted in afresh every step). It is process-wide: "
                         "the torch side, in the same process, runs under it too; 'default' leaves glibc alone")
    ap.add_argument("--torch-process", default="separate", choices=("separate", "same"),
                    help="ultralytics recipe: run the torch side in a process of its own (default), as a user's "
                         "Ultralytics run is, or in this one. In one process the two sides disturb each other: "
                         "torch's spinning OpenMP threads and --host-malloc are shared (RESULTS.md)")
    ap.add_argument("--compile-cache", default="", metavar="DIR",
                    help="JAX's persistent compilation cache folder (yolo11_jax.compile_cache; default: off)")
    ap.add_argument("--dtype", default="float32", help="JAX compute dtype(s): float32, bfloat16 (comma-separated)")
    ap.add_argument("--devices", default="1", help="data-parallel device count(s), comma-separated")
    ap.add_argument("--classes", type=int, default=None,
                    help="default: 3 for the ultralytics recipe (the fine-tuning jobs of issue 25), else 80")
    ap.add_argument("--max-boxes", type=int, default=8)
    ap.add_argument("--assigner", default="dense", choices=("dense", "chunked", "chunked-sparse"),
                    help="label assignment, as train --assigner (dense: the spec)")
    ap.add_argument("--no-torch-compat", dest="torch_compat", action="store_false",
                    help="the plain Optax optimizer chain instead of the notebook recipe's torch-compatible one")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-repeats", type=int, default=None, help="default: --repeats")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-fwd-bwd", action="store_true")
    ap.add_argument("--torch-first", action="store_true",
                    help="time the reference before JAX (on a GPU, with XLA_PYTHON_CLIENT_PREALLOCATE=false, so that "
                         "both get the whole card)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="after timing, trace --profile-steps steps of each configuration with "
                         "jax.profiler into DIR/<config> and print where the time goes "
                         "(benchmarks/trace_summary.py)")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="accelerator peak for the FLOP utilisation (default: H100/H200 SXM dense bf16)")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batch.split(",")]
    args.dtypes = args.dtype.split(",")
    args.device_counts = [int(d) for d in args.devices.split(",")]
    if args.recipe is None:
        args.recipe = "ultralytics" if args.model.startswith("yolo11") else "notebook"
    if args.conv_impl is None:
        args.conv_impl = "cpu_depthwise" if args.recipe == "ultralytics" else "cpu_taps"
    args.conv_impls = args.conv_impl.split(",")
    if args.classes is None:
        args.classes = 3 if args.recipe == "ultralytics" else 80
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.omp_wait_policy != "default":
    os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy  # read when torch's OpenMP runtime starts
if ARGS is not None and max(ARGS.device_counts) > 1 and "xla_force_host_platform_device_count" not in \
        os.environ.get("XLA_FLAGS", ""):
    # Only the host (CPU) platform is affected; must be set before JAX starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(ARGS.device_counts)}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference_torch as R  # noqa: E402
from yolo11_jax import convert, parallel  # noqa: E402
from yolo11_jax.model import set_compute_dtype  # noqa: E402
from yolo11_jax.anchors import feature_sizes  # noqa: E402
from yolo11_jax.assign import task_aligned_assign  # noqa: E402
from yolo11_jax.assign_chunked import chunked_assigner  # noqa: E402
from yolo11_jax.optim import make_optimizer, make_schedule  # noqa: E402
from yolo11_jax.presets import build_model, get_preset  # noqa: E402
from yolo11_jax.step import TrainState, make_train_step, split_model  # noqa: E402
from yolo11_jax.train_config import DTYPES  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trace_summary  # noqa: E402
from yolo11_jax import host_memory  # noqa: E402

HOST_MALLOC = host_memory.configure(ARGS.host_malloc) if ARGS is not None else None  # before any backend starts

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


def _cost(compiled, key):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get(key, float("nan")))


def _xla_bytes(compiled):
    try:
        m = compiled.memory_analysis()
        return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    except Exception:  # not every backend reports it
        return float("nan")


def _device_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan"))


def main(args):
    p = get_preset(args.model)
    dev = jax.devices()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} ({dev.platform}: "
          f"{dev.device_kind}, {jax.device_count()} devices); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}); "
          f"host memory {HOST_MALLOC}")
    print(f"model {args.model} (base {p.base}, depth {p.depth}), {args.classes} classes, {args.img_size}px, "
          f"max_boxes {args.max_boxes}, assigner {args.assigner}; batches {args.batches}, dtypes {args.dtypes}, devices {args.device_counts}")

    torch.manual_seed(0)
    ref = R.YOLOv11(num_classes=args.classes, base=p.base, depth=p.depth)
    # The JAX weights are the reference's (converted), so initial values do not matter here:
    # the cheaper-to-compile 'rbg' generator makes the throwaway initialisation fast.
    prng = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    model = build_model(args.model, num_classes=args.classes, conv_impl=args.conv_impls[0], rngs=nnx.Rngs(0))
    jax.config.update("jax_default_prng_impl", prng)
    convert.load_state_dict(model, ref.state_dict())
    model.train()
    host_state = None
    torch_times = run_torch_and_release(args, ref) if args.torch_first and not args.skip_torch else None

    # ---- JAX: build and compile every configuration
    configs = []
    for batch_size in args.batches:
        batch = make_batch(batch_size, args.img_size, args.classes, args.max_boxes)
        for dtype in args.dtypes:
            for n_dev in args.device_counts:
                configs.append(dict(batch_size=batch_size, batch=batch, dtype=dtype, n_dev=n_dev))
    for c in configs:
        set_compute_dtype(model, DTYPES[c["dtype"]])
        graphdef, params, rest = split_model(model)
        if host_state is None:
            host_state = jax.device_get((params, rest))
        lr_fn = make_schedule(1e-3, schedule="epoch-cosine", epochs=5, steps_per_epoch=100)
        tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0, torch_compat=args.torch_compat)
        mesh = parallel.make_mesh(c["n_dev"])
        parallel.check_batch_size(c["batch_size"], mesh, "--batch")
        state = TrainState(step=jnp.zeros((), jnp.int32), params=host_state[0], rest=host_state[1],
                           opt_state=tx.init(host_state[0]))
        c["state"] = parallel.replicate(state, mesh)
        c["dev_batch"] = parallel.global_batch(c["batch"], mesh)
        assigner = task_aligned_assign if args.assigner == "dense" else chunked_assigner(
            feature_sizes((args.img_size, args.img_size)), method=args.assigner.removeprefix("chunked-") if
            args.assigner == "chunked-sparse" else "dense")
        c["step"] = make_train_step(graphdef, tx, lr_fn=lr_fn, mesh=mesh, img_size=args.img_size,
                                    num_classes=args.classes, torch_compat=args.torch_compat, assigner=assigner)
        c["graphdef"] = graphdef
    set_compute_dtype(model, None)

    def compile_one(c):
        t0 = time.perf_counter()
        compiled = c["step"].lower(c["state"], c["dev_batch"]).compile()
        return compiled, time.perf_counter() - t0

    # One after the other: on an H200, compiling two notebook-size steps at once in threads did
    # not finish in 170 s, while one alone compiles in 44-68 s (RESULTS.md).
    for c in configs:
        c["compiled"], c["compile_s"] = compile_one(c)

    # Model FLOPs: 3 x the float32 forward FLOPs (forward + backward), per image. Counted by XLA's
    # CPU compiler: on a GPU the convolutions are cuDNN calls that its cost analysis leaves out.
    with jax.default_device(jax.devices("cpu")[0]):
        fwd = jax.jit(lambda s, x: nnx.merge(configs[0]["graphdef"], *s)(x))
        fwd_flops = _cost(fwd.lower(host_state, np.zeros((1, args.img_size, args.img_size, 3), np.float32)
                                    ).compile(), "flops")
    print(f"forward: {fwd_flops / 1e9:.2f} GFLOP per image (XLA CPU count); model FLOPs/step = 3 x forward x batch")

    rows = []
    for c in configs:
        holder = {"state": c["state"]}
        compiled, dev_batch = c["compiled"], c["dev_batch"]

        def jax_step():
            holder["state"], m = compiled(holder["state"], dev_batch)
            jax.block_until_ready(m)

        secs = timed(jax_step, args.repeats)

        def jax_steps_pipelined():  # as the trainer runs: no host sync until --log-every steps
            metrics = []
            for _ in range(args.repeats):
                holder["state"], m = compiled(holder["state"], dev_batch)
                metrics.append(m)
            jax.block_until_ready(metrics)

        t0 = time.perf_counter()
        jax_steps_pipelined()
        pipelined_secs = (time.perf_counter() - t0) / args.repeats
        if args.profile:
            trace_dir = os.path.join(args.profile, f"b{c['batch_size']}_{c['dtype']}_x{c['n_dev']}")
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                for _ in range(args.profile_steps):
                    jax_step()
            trace_summary.print_summary(trace_summary.summarize(trace_dir), args.profile_steps)
        c["state"] = holder.pop("state")
        flops = _cost(compiled, "flops")  # XLA's count of the whole step (GPU: without cuDNN convolutions)
        mfu = 3 * fwd_flops * c["batch_size"] / secs / (args.peak_tflops * 1e12)
        row = dict(batch=c["batch_size"], dtype=c["dtype"], devices=c["n_dev"], ms=secs * 1e3,
                   pipelined_ms=pipelined_secs * 1e3,
                   pipelined_mfu=3 * fwd_flops * c["batch_size"] / pipelined_secs / (args.peak_tflops * 1e12),
                   img_s=c["batch_size"] / secs, compile_s=c["compile_s"], gflops_s=flops / secs / 1e9,
                   xla_gib=_xla_bytes(compiled) / 2**30, mfu=mfu)
        if not args.skip_fwd_bwd and c["n_dev"] == 1:
            graphdef = c["graphdef"]

            def fwd_bwd_loss(params, rest, images):
                m = nnx.merge(graphdef, params, rest, copy=True)
                return sum(jnp.sum(o) * 1e-3 for lvl in m(images) for o in lvl)

            st = c["state"]
            fb = jax.jit(jax.grad(fwd_bwd_loss)).lower(st.params, st.rest, dev_batch["images"]).compile()
            fb_s = timed(lambda: jax.block_until_ready(fb(st.params, st.rest, dev_batch["images"])), args.repeats)
            row["fwd_bwd_ms"] = fb_s * 1e3
            row["non_conv_pct"] = 100 * (secs - fb_s) / secs
        rows.append(row)
        del c["state"], c["compiled"]
        print(f"JAX  batch {row['batch']:3d} {row['dtype']:8s} x{row['devices']} dev: {row['ms']:9.1f} ms/step  "
              f"{row['img_s']:8.1f} img/s  compile {row['compile_s']:6.1f} s  {row['gflops_s']:9.1f} GFLOP/s  "
              f"XLA memory {row['xla_gib']:.2f} GiB"
              + (f"  MFU {100 * row['mfu']:.1f}% of {args.peak_tflops:.0f} TFLOP/s" if dev.platform == "gpu" else "")
              + f"\n     pipelined ({args.repeats} steps, one wait): {row['pipelined_ms']:9.1f} ms/step  "
                f"{row['batch'] * 1e3 / row['pipelined_ms']:8.1f} img/s"
              + (f"  MFU {100 * row['pipelined_mfu']:.1f}%" if dev.platform == "gpu" else "")
              + (f"  fwd+bwd only {row['fwd_bwd_ms']:.1f} ms (non-conv {row['non_conv_pct']:.1f}%)"
                 if "fwd_bwd_ms" in row else ""), flush=True)
    if dev.platform == "gpu":
        print(f"JAX device peak memory (all configurations): {_device_peak_bytes() / 2**30:.2f} GiB")
    base = {(r["batch"], r["dtype"]): r for r in rows if r["devices"] == 1}
    for r in rows:
        if r["devices"] > 1 and (r["batch"], r["dtype"]) in base:
            b = base[(r["batch"], r["dtype"])]
            print(f"data parallel: batch {r['batch']} {r['dtype']} on {r['devices']} devices takes "
                  f"{r['ms'] / b['ms']:.2f}x the 1-device step time")

    torch_ms = torch_times if torch_times is not None else ({} if args.skip_torch else run_torch(args, ref))
    for batch_size, ms in torch_ms.items():
        for r in rows:
            if r["batch"] == batch_size:
                print(f"ratio torch / JAX at batch {batch_size} ({r['dtype']}, {r['devices']} dev): "
                      f"{ms / r['ms']:6.2f}x  (torch {batch_size / ms * 1e3:.1f} img/s, JAX {r['img_s']:.1f} img/s;"
                      f" > 1: JAX faster)")
    return rows


def run_torch(args, ref) -> dict:
    """The reference step (float32, the notebook's code) per batch size: {batch: ms}."""
    use_cuda = torch.cuda.is_available()
    tdev = torch.device("cuda" if use_cuda else "cpu")
    ref = ref.to(tdev).train()
    loss_fn = R.YOLOv11Loss(num_classes=args.classes, img_size=args.img_size)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.05)
    out = {}
    for batch_size in args.batches:
        batch = make_batch(batch_size, args.img_size, args.classes, args.max_boxes)
        imgs = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous().to(tdev)
        gtb = [torch.from_numpy(batch["boxes_cxcywh"][i][batch["mask"][i]]).to(tdev) for i in range(batch_size)]
        gtl = [torch.from_numpy(batch["labels"][i][batch["mask"][i]]).long().to(tdev) for i in range(batch_size)]

        def torch_step(imgs=imgs, gtb=gtb, gtl=gtl):
            loss, _ = loss_fn(ref(imgs), gtb, gtl)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=10.0)
            opt.step()
            if use_cuda:
                torch.cuda.synchronize()

        if use_cuda:
            torch.cuda.reset_peak_memory_stats()
        torch_s = timed(torch_step, args.torch_repeats or args.repeats)
        peak = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if use_cuda else ""
        print(f"torch batch {batch_size:3d} float32 ({tdev.type}): {torch_s * 1e3:9.1f} ms/step  "
              f"{batch_size / torch_s:8.1f} img/s{peak}", flush=True)
        out[batch_size] = torch_s * 1e3
    ref.to("cpu")
    return out


def run_torch_and_release(args, ref) -> dict:
    out = run_torch(args, ref)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the memory back before JAX runs (see --torch-first)
    return out


def _ultralytics_torch_step(args, sd, batch, batch_size, iterations):
    """The Ultralytics-recipe step of reference_torch (Ultralytics' rules, accumulation 1: nbs =
    batch) on the weights ``sd``: returns a function that runs one step."""
    from reference_torch import ultralytics_train as UT
    from reference_torch.ultralytics_loss import UltralyticsDetectionLoss
    from reference_torch.yolo11 import YOLO11 as TorchYOLO11
    from yolo11_jax.optim_ultralytics import auto_optimizer

    name, lr, momentum = auto_optimizer(args.classes, iterations)
    tref = TorchYOLO11(get_preset(args.model).scale, nc=args.classes)
    tref.load_state_dict(sd)
    tref.train()
    loss_t = UltralyticsDetectionLoss(args.classes, img_size=args.img_size)
    opt = UT.build_optimizer(tref, name, lr, momentum, 5e-4)  # 5e-4 * batch * accumulate / nbs, nbs = batch
    ema_t = UT.ModelEMA(tref)
    imgs = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous()
    gtb = [torch.from_numpy(batch["boxes_cxcywh"][i][batch["mask"][i]]) for i in range(batch_size)]
    gtl = [torch.from_numpy(batch["labels"][i][batch["mask"][i]]).long() for i in range(batch_size)]

    def torch_step():
        total, _ = loss_t(tref(imgs), gtb, gtl)
        (total * batch_size).backward()
        torch.nn.utils.clip_grad_norm_(tref.parameters(), max_norm=10.0)
        opt.step()
        opt.zero_grad()
        ema_t.update(tref)

    return torch_step


def _torch_worker(conn, args, sd_arrays, batch, batch_size, iterations):
    """``--torch-process separate``: the torch side in its own process (started with 'spawn', so
    with glibc's and OpenMP's settings as a user's PyTorch process has them). Receives a step
    count, runs that many steps, sends back the seconds; ``None`` ends it."""
    torch.set_num_threads(args.torch_threads)
    sd = {k: torch.from_numpy(v) for k, v in sd_arrays.items()}
    step = _ultralytics_torch_step(args, sd, batch, batch_size, iterations)
    step()  # warm-up
    conn.send(("ready", torch.get_num_threads()))
    while (n := conn.recv()) is not None:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        conn.send(time.perf_counter() - t0)


def _round_timer(fn):
    """A side of the interleaved timing: ``n -> seconds`` for n back-to-back steps of ``fn``."""
    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0
    return run


def main_ultralytics(args):
    """The Ultralytics-recipe step, JAX vs reference_torch, timed interleaved (see the docstring)."""
    import functools

    from reference_torch.yolo11 import YOLO11 as TorchYOLO11
    from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
    from yolo11_jax.optim_ultralytics import ultralytics_recipe
    from yolo11_jax.step import init_train_state

    from yolo11_jax import compile_cache
    compile_cache.enable(args.compile_cache or None)
    torch.set_num_threads(args.torch_threads)
    p = get_preset(args.model)
    if p.family != "yolo11":
        raise SystemExit(f"--recipe ultralytics times the YOLO11 family; got --model {args.model}")
    dev = jax.devices()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} ({dev.platform}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); host memory {HOST_MALLOC}")
    print(f"Ultralytics-recipe step: {args.model}, {args.classes} classes, {args.img_size} px, batches {args.batches}, "
          f"conv_impl {args.conv_impls}; {args.rounds} rounds x {args.steps_per_round} steps per side, interleaved")
    torch.manual_seed(0)
    ref = TorchYOLO11(p.scale, nc=args.classes).train()
    sd = ref.state_dict()
    results = []
    for batch_size in args.batches:
        batch = make_batch(batch_size, args.img_size, args.classes, args.max_boxes)
        iterations = 1000  # Ultralytics' 'auto' picks AdamW at lr_fit below 10,000 iterations
        # ---- torch: Ultralytics' rules (reference_torch.ultralytics_train), here or in a process of its own
        if args.torch_process == "same":
            torch_round = _round_timer(_ultralytics_torch_step(args, sd, batch, batch_size, iterations))
            torch_round(1)  # warm-up
        else:
            import multiprocessing
            parent_conn, child_conn = multiprocessing.get_context("spawn").Pipe()
            worker = multiprocessing.get_context("spawn").Process(
                target=_torch_worker, daemon=True,
                args=(child_conn, args, {k: v.numpy() for k, v in sd.items()}, batch, batch_size, iterations))
            worker.start()
            _, threads = parent_conn.recv()
            print(f"torch side: a separate process (spawned; {threads} threads, glibc and OpenMP at their defaults "
                  f"unless set in the environment)", flush=True)

            def torch_round(n, conn=parent_conn):
                conn.send(n)
                return conn.recv()

        # ---- JAX: every conv_impl, the same weights
        jax_steps = {}
        for impl in args.conv_impls:
            model = build_model(args.model, num_classes=args.classes, conv_impl=impl, rngs=nnx.Rngs(0))
            convert.load_state_dict(model, sd)
            model.train()
            graphdef, params, rest = split_model(model)
            tx, schedule, _ = ultralytics_recipe(params, optimizer="auto", num_classes=args.classes,
                                                 batch_size=batch_size, steps_per_epoch=100, epochs=10,
                                                 iterations=iterations, nbs=batch_size)
            loss = functools.partial(ultralytics_detection_loss, img_size=args.img_size, num_classes=args.classes)
            step = make_train_step(graphdef, tx, loss=loss, hyperparams_fn=schedule, loss_scale="batch")
            state = init_train_state(params, rest, tx, ema=True)
            t0 = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            holder = {"state": state}

            def jax_step(compiled=compiled, holder=holder):
                holder["state"], m = compiled(holder["state"], batch)
                jax.block_until_ready(m)

            jax_step()  # warm-up
            jax_steps[impl] = (jax_step, compile_s, compiled)
        rounds = {impl: [] for impl in args.conv_impls}
        rounds["torch"] = []
        sides = [(impl, _round_timer(jax_steps[impl][0])) for impl in args.conv_impls] + [("torch", torch_round)]
        for _ in range(args.rounds):
            for side, run_round in sides:
                rounds[side].append(run_round(args.steps_per_round) / args.steps_per_round)
        if args.torch_process == "separate":
            parent_conn.send(None)
            worker.join(timeout=60)
        torch_ms = 1e3 * float(np.median(rounds["torch"]))
        print(f"torch  batch {batch_size:3d}: {torch_ms:8.1f} ms/step (median of rounds; "
              f"{', '.join(f'{1e3 * t:.0f}' for t in rounds['torch'])})")
        for impl in args.conv_impls:
            ms = 1e3 * float(np.median(rounds[impl]))
            per_round = np.median(np.asarray(rounds["torch"]) / np.asarray(rounds[impl]))
            if args.profile:
                trace_dir = os.path.join(args.profile, f"{args.model}_{args.img_size}_b{batch_size}_{impl}")
                with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                    for _ in range(args.profile_steps):
                        jax_steps[impl][0]()
                trace_summary.print_summary(trace_summary.summarize(trace_dir), args.profile_steps)
                hlo_text = jax_steps[impl][2].as_text()
                with open(os.path.join(trace_dir, "step.hlo.txt"), "w") as f:
                    f.write(hlo_text)
                trace_summary.print_breakdown(trace_summary.breakdown(trace_dir, hlo_text), args.profile_steps)
            print(f"JAX    batch {batch_size:3d} conv_impl {impl:8s}: {ms:8.1f} ms/step (median of rounds; "
                  f"{', '.join(f'{1e3 * t:.0f}' for t in rounds[impl])}), compile {jax_steps[impl][1]:.1f} s")
            print(f"ratio torch / JAX ({args.model}, {args.img_size} px, batch {batch_size}, {impl}): "
                  f"{torch_ms / ms:.2f}x (median per-round ratio {per_round:.2f}x; > 1: JAX faster)", flush=True)
            results.append(dict(batch=batch_size, conv_impl=impl, jax_ms=ms, torch_ms=torch_ms,
                                ratio=torch_ms / ms, compile_s=jax_steps[impl][1]))
    return results


if __name__ == "__main__":
    if ARGS.recipe == "ultralytics":
        main_ultralytics(ARGS)
    else:
        main(ARGS)
