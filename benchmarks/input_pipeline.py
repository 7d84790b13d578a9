"""Images per second of the input pipeline at 640 px, from a YOLO folder of JPEGs.

Run:  python benchmarks/input_pipeline.py [--images 256 --img-size 640 --batch 16 --workers 0,1,2]

It writes a synthetic YOLO folder (``images/train/*.jpg`` of COCO-like sizes, 480x640 and
640x427, quality 90, with ``labels/train/*.txt``) into ``--dir`` (default: a temporary folder),
then, for every worker count and for ``--augment none`` and ``ultralytics``, times
``TrainPipeline.dataset`` (Grain; workers = processes, 0 = in-process threads) over ``--batches``
batches after one untimed batch (worker start-up excluded). Every figure is images/s and
images/s per core used: ``workers`` cores, or 2 for ``--workers 0``, whose in-process path reads
with 2 threads (the main process's own share of a core is not counted).

The reference, measured in the same run: ``torch.utils.data.DataLoader`` over the same files
with the notebook's preprocessing (PIL decode, plain resize to 640, ``ToTensor``-style float
conversion), ``num_workers`` = the same counts. The ratio printed is JAX-side / reference
images/s (> 1: the Grain pipeline is faster). The Grain pipeline's ``none`` does the same work
(decode, plain resize) but hands over uint8 (the float conversion happens on the device).

It also prints the cores needed per GPU to feed ``--gpu-images-per-s`` (412: the notebook
network's bfloat16 training step on an H200, batch 64; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yolo11_jax.data import ULTRALYTICS, Augment, TrainPipeline, build_dataset  # noqa: E402


IN_PROCESS_THREADS = 2  # data.pipeline._read_options: grain.ReadOptions(num_threads=2) in-process


def write_folder(root: Path, n: int, seed: int = 0) -> Path:
    """A YOLO folder of ``n`` noisy JPEGs with 1 to 8 boxes each (written once, reused)."""
    img_dir, lab_dir = root / "images" / "train", root / "labels" / "train"
    if img_dir.is_dir() and len(list(img_dir.glob("*.jpg"))) == n:
        return root
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (480, 640) if i % 2 == 0 else (427, 640)
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        noise = rng.integers(-12, 12, (h, w, 3))
        Image.fromarray(np.clip(np.asarray(img, np.int32) + noise, 0, 255).astype(np.uint8)).save(
            img_dir / f"{i:06d}.jpg", quality=90)
        k = int(rng.integers(1, 9))
        cxcy, wh = rng.uniform(0.2, 0.8, (k, 2)), rng.uniform(0.05, 0.3, (k, 2))
        lines = [f"{int(rng.integers(0, 80))} {a:.5f} {b:.5f} {c:.5f} {d:.5f}" for (a, b), (c, d) in zip(cxcy, wh)]
        (lab_dir / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    return root


def time_grain(source, args, augment: Augment, workers: int) -> float:
    pipe = TrainPipeline(source, batch_size=args.batch, img_size=args.img_size, max_boxes=100, seed=0,
                         augment=augment, epochs=100, workers=workers)
    it = iter(pipe.dataset(args.batches + 1))
    next(it)  # start-up (worker processes, first decode)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    return args.batches * args.batch / (time.perf_counter() - t0)


class _NotebookDataset:
    """The notebook's preprocessing on files: decode, plain resize, float CHW tensor in [0, 1]."""

    def __init__(self, files, img_size):
        self.files, self.img_size = files, img_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch

        img = Image.open(self.files[i]).convert("RGB").resize((self.img_size, self.img_size))
        return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255.0


def time_torch(files, args, workers: int) -> float:
    import torch

    loader = torch.utils.data.DataLoader(_NotebookDataset(files, args.img_size), batch_size=args.batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
    return args.batches * args.batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="JPEGs in the folder")
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    ap.add_argument("--workers", default="0,1,2", help="worker counts, comma-separated")
    ap.add_argument("--dir", type=Path, default=None, help="folder for the JPEGs (default: a temporary one)")
    ap.add_argument("--gpu-images-per-s", type=float, default=412.0)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--against-step", action="store_true",
                    help="time the pipeline against a stand-in training step instead (see against_step)")
    ap.add_argument("--model", default="small", help="--against-step: the network")
    ap.add_argument("--augment", default="none", choices=("none", "ultralytics"), help="--against-step")
    ap.add_argument("--steps", type=int, default=30, help="--against-step: timed steps per configuration")
    args = ap.parse_args()
    if args.against_step:
        return against_step(args)
    root = args.dir or Path(tempfile.gettempdir()) / f"yolo11_jax_bench_jpegs_{args.images}"
    write_folder(root, args.images)
    data = build_dataset(str(root), split="train", img_size=None, num_classes=80)
    files = sorted((root / "images" / "train").glob("*.jpg"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {len(data.examples)} JPEGs (640x480 / 640x427) "
          f"in {root}; {args.img_size} px, batch {args.batch}, {args.batches} timed batches")
    print("| augment | workers | Grain images/s | per core | reference (torch DataLoader) images/s | ratio |")
    print("|---|---|---|---|---|---|")
    best = {}
    for name, augment in (("none", Augment()), ("ultralytics", ULTRALYTICS)):
        for workers in (int(w) for w in args.workers.split(",")):
            ours = time_grain(data.examples, args, augment, workers)
            ref = float("nan") if args.skip_torch else time_torch(files, args, workers)
            per_core = ours / (workers if workers > 0 else IN_PROCESS_THREADS)
            best[name] = max(best.get(name, 0.0), per_core)
            print(f"| {name} | {workers} | {ours:.1f} | {per_core:.1f} | {ref:.1f} | {ours / ref:.2f}x |")
    for name, per_core in best.items():
        print(f"cores per GPU at {args.gpu_images_per_s:.0f} images/s, augment {name}: "
              f"{args.gpu_images_per_s / per_core:.1f} (at {per_core:.1f} images/s per core)")



# ----------------------------------------------------------------------------- against the step
#
#   python benchmarks/input_pipeline.py --against-step [--model small --augment none --steps 30]
#
# The cost of the input path to the training loop, which data_wait_fraction cannot show: the
# pipeline's threads compete with XLA's for the cores. A stand-in step (the network's forward and
# backward on a plain loss of its outputs, and an SGD update, jitted, images uint8 -> float32
# inside) at the cpu config's shape (shapes data, 128 px, batch 16) is timed
#   * alone, on one batch already in memory (step-only), and
#   * fed by TrainPipeline (end to end), for in-process threads 1 and 2, with the decoded-image
#     cache off and on, and for one worker process,
# each after two untimed steps. Printed: seconds per step and step-only / end-to-end (1.0: the
# input path costs the step nothing).


def against_step(args) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yolo11_jax.presets import build_model

    data = build_dataset("shapes", img_size=128)
    model = build_model(args.model, num_classes=4, rngs=nnx.Rngs(0))
    model.eval()  # BatchNorm on its running statistics: the stand-in step has no state to update
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, images):
        def loss_fn(p, r):
            m = nnx.merge(graphdef, p, r)
            outs = m(images.astype(jnp.float32) / 255.0)
            return sum(jnp.mean(o.astype(jnp.float32) ** 2) for level in outs for o in level)
        loss, grads = jax.value_and_grad(loss_fn)(params, rest)
        return jax.tree.map(lambda p, g: p - 1e-4 * g, params, grads), loss

    augment = ULTRALYTICS if args.augment == "ultralytics" else Augment()
    first = TrainPipeline(data.examples, batch_size=16, img_size=128, max_boxes=8, augment=augment,
                          cache_images=False).batch(0)
    images = jax.device_put(first["images"])
    p = params
    for _ in range(2):
        p, loss = step(p, rest, images)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        p, loss = step(p, rest, images)
    jax.block_until_ready(loss)
    alone = (time.perf_counter() - t0) / args.steps
    print(f"{os.cpu_count()} CPUs; model {args.model}, 128 px, batch 16, augment {args.augment}; "
          f"step alone {alone * 1e3:.0f} ms")
    print(f"{'pipeline':<34}{'s/step':>8}{'step-only / end-to-end':>26}")
    for label, kw in (("threads 2, no cache (before)", dict(threads=2, cache_images=False)),
                      ("threads 1, no cache", dict(threads=1, cache_images=False)),
                      ("threads 2, decoded cache", dict(threads=2, cache_images=True)),
                      ("threads 1, decoded cache", dict(threads=1, cache_images=True)),
                      ("1 worker process, decoded cache", dict(workers=1, cache_images=True))):
        pipe = TrainPipeline(data.examples, batch_size=16, img_size=128, max_boxes=8, augment=augment, seed=1, **kw)
        it = iter(pipe.dataset(args.steps + 2))
        p = params
        for _ in range(2):
            p, loss = step(p, rest, jax.device_put(next(it)["images"]))
        jax.block_until_ready(loss)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            p, loss = step(p, rest, jax.device_put(next(it)["images"]))
        jax.block_until_ready(loss)
        e2e = (time.perf_counter() - t0) / args.steps
        print(f"{label:<34}{e2e:>8.3f}{alone / e2e:>26.2f}", flush=True)
        del it


if __name__ == "__main__":
    main()
