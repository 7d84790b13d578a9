"""Train YOLOv11 with the notebook's recipe: ``python -m yolo11_jax.train``.

Reads top to bottom: configuration, data, model, optimizer, one jitted train step,
the loop (logging every N steps, evaluation, checkpoints every epoch), final export.

Presets (``--preset``; every other option overrides the preset):

* ``cpu`` (default): the embedded shapes dataset (4 classes, 128 px), the ``small``
  network (notebook architecture at base width 16, 6.95M parameters), batch 16.
  ``python -m yolo11_jax.train`` -- about 10 minutes on a 2-core CPU; see README for
  the figures it reaches.
* ``notebook``: the notebook's run: the full network (110.2M), 640 px, batch 4,
  5 epochs, 32 images streamed from ``detection-datasets/coco`` (needs the Hub).
* ``smoke``: a seconds-long run of the tiny network, for tests and trying options.

Data parallelism: the step runs on a ``jax.sharding.Mesh`` over all devices (``--devices``
takes fewer), the global ``--batch-size`` split over them; BatchNorm statistics and the loss
are global, so results do not depend on the device count (see ``yolo11_jax.parallel``).
Several processes (hosts): give each ``--coordinator-address HOST:PORT --num-processes N
--process-id I`` (or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``)
and the same ``--run-dir``; each prepares its rows of every batch, process 0 writes the logs,
plots and exports, and all take part in the Orbax checkpoints.

Outputs in the run directory: ``config.json``, ``metrics.jsonl``, ``checkpoints/``
(Orbax), ``weights.safetensors`` (the reference's key names), ``loss_curves.png``,
``sample_batch.png``, ``iou_variants.png`` and, with evaluation, ``map_curve.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax import convert, parallel, plots
from yolo11_jax.data import BatchLoader, build_dataset
from yolo11_jax.evaluate import eval_graphdef, evaluate_examples
from yolo11_jax.model import count_parameters
from yolo11_jax.optim import SCHEDULES, make_optimizer, make_schedule
from yolo11_jax.presets import PRESETS, build_model
from yolo11_jax.step import TrainState, make_train_step, split_model

BATCH_KEYS = ("images", "boxes_cxcywh", "labels", "mask")
LOSS_KEYS = ("total_loss", "cls_loss", "box_loss", "dfl_loss")


@dataclasses.dataclass
class TrainConfig:
    """Everything needed to repeat a run (written to ``config.json``)."""

    preset: str = "cpu"
    model: str = "small"
    data: str = "shapes"
    split: str = "train"
    val_data: Optional[str] = None          # default: same source as data
    val_split: Optional[str] = "validation"  # None or '' disables evaluation
    image_dir: Optional[str] = None
    val_image_dir: Optional[str] = None     # default: image_dir, or guessed for a separate val_data json
    bbox_format: Optional[str] = None
    num_classes: Optional[int] = None       # default: from the data
    class_names: Optional[list] = None
    max_samples: Optional[int] = None
    val_max_samples: Optional[int] = None
    shapes_train_images: int = 2000
    shapes_val_images: int = 200
    shapes_img_size: int = 128
    img_size: int = 128
    letterbox: bool = False
    batch_size: int = 16
    max_boxes: int = 8
    epochs: int = 6
    lr: float = 1e-3
    weight_decay: float = 0.05
    clip_norm: float = 10.0
    schedule: str = "epoch-cosine"
    warmup_steps: int = 0
    cls_weight: float = 0.5
    box_weight: float = 7.5
    dfl_weight: float = 1.5
    topk: int = 13
    seed: int = 0
    log_every: int = 20
    eval_every: int = 2                      # epochs; 0 = never
    eval_batch_size: int = 32
    keep_checkpoints: int = 3
    workers: int = 2
    run_dir: Optional[str] = None
    dtype: str = "float32"
    devices: Optional[int] = None            # default: all devices (of all processes)
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "notebook": dict(model="notebook", data="detection-datasets/coco", max_samples=32, val_split=None,
                     img_size=640, batch_size=4, epochs=5, max_boxes=100, num_classes=80, log_every=2,
                     eval_every=0),
    "smoke": dict(model="tiny", shapes_train_images=64, shapes_val_images=16, shapes_img_size=64, img_size=64,
                  batch_size=8, epochs=2, log_every=4, eval_batch_size=16),
}


class NonFiniteLossError(RuntimeError):
    pass


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=None,
                    help="starting configuration (default: cpu; with --resume the run's saved configuration "
                         "is the start instead)")
    ap.add_argument("--resume", type=Path, help="continue the run in this directory from its last checkpoint")
    helps = {
        "model": f"network size: {', '.join(f'{k} ({v.description})' for k, v in PRESETS.items())}",
        "data": "training data: 'shapes' (embedded), a Hub name (e.g. detection-datasets/coco, streamed), "
                "a save_to_disk folder, parquet files, a COCO instances_*.json, or a YOLO images/labels folder",
        "split": "split of --data to train on",
        "val_data": "validation data spec (default: --data)",
        "val_split": "validation split; 'none' disables evaluation",
        "image_dir": "image folder for a COCO .json --data file (default: guessed from the json's location)",
        "val_image_dir": "image folder for a COCO .json --val-data file (default: guessed from its location; "
                         "--image-dir when the validation split comes from --data)",
        "bbox_format": "bbox convention of Hugging Face data: xywh (COCO pixels, the notebook's), xyxy, cxcywh_norm",
        "num_classes": "number of classes (default: from the data)",
        "max_samples": "use at most this many training images",
        "val_max_samples": "evaluate at most this many images",
        "shapes_train_images": "embedded dataset: training images",
        "shapes_val_images": "embedded dataset: validation images",
        "shapes_img_size": "embedded dataset: rendered image size",
        "img_size": "network input size in pixels (multiple of 32); images are resized to it",
        "letterbox": "resize keeping the aspect ratio with grey padding (default: plain resize, as the notebook)",
        "batch_size": "images per step; the last partial batch of an epoch is dropped",
        "max_boxes": "ground-truth boxes per image after padding (more are dropped with a warning)",
        "epochs": "training epochs",
        "lr": "peak AdamW learning rate",
        "weight_decay": "AdamW decoupled weight decay (all parameters, as the notebook)",
        "clip_norm": "global gradient-norm clipping (0 disables)",
        "schedule": "epoch-cosine (the notebook's CosineAnnealingLR stepped per epoch), step-cosine, constant",
        "warmup_steps": "linear learning-rate warmup steps",
        "cls_weight": "classification loss weight",
        "box_weight": "CIoU loss weight",
        "dfl_weight": "DFL loss weight",
        "topk": "TAL anchors per box",
        "seed": "seed for initialisation and shuffling",
        "log_every": "steps between host reads of the metrics (log lines, progress bar, NaN check)",
        "eval_every": "evaluate COCO mAP on the validation split every N epochs (0: never)",
        "eval_batch_size": "batch size for evaluation",
        "keep_checkpoints": "checkpoints kept (the newest)",
        "workers": "background threads preparing batches",
        "run_dir": "output directory (default: runs/<time>; give the same one to every process)",
        "dtype": "compute dtype of the convolutions and attention: float32, or bfloat16 (mixed precision: "
                 "parameters, BatchNorm statistics, loss and assigner stay float32; recommended on GPU)",
        "devices": "use the first N devices for data parallelism (default: all; the batch size must be "
                   "divisible by N)",
        "coordinator_address": "multi-process: HOST:PORT of process 0's coordinator (env JAX_COORDINATOR_ADDRESS)",
        "num_processes": "multi-process: number of processes (env JAX_NUM_PROCESSES)",
        "process_id": "multi-process: this process's index, 0 .. N-1 (env JAX_PROCESS_ID)",
    }
    skip = {"preset", "class_names"}
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        default = TrainConfig.__dataclass_fields__[field.name].default
        kind = {"int": int, "float": float, "str": str}.get(str(field.type).replace("Optional[", "").rstrip("]"), str)
        if field.type == "bool":
            ap.add_argument(_flag(field.name), action=argparse.BooleanOptionalAction, default=None,
                            help=f"{helps[field.name]} (cpu preset: {default})")
        else:
            kw = {"schedule": dict(choices=SCHEDULES), "dtype": dict(choices=sorted(DTYPES))}.get(field.name, {})
            ap.add_argument(_flag(field.name), type=kind, default=None,
                            help=f"{helps[field.name]} (cpu preset: {default})", **kw)
    return ap


def _overrides(args: argparse.Namespace) -> dict:
    """The configuration fields given on the command line (``'none'`` as ``--val-split``: None)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None and f.name != "preset"}
    if isinstance(values.get("val_split"), str) and values["val_split"].lower() in ("", "none"):
        values["val_split"] = None
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    preset = args.preset or "cpu"
    return TrainConfig(**{**TRAIN_PRESETS[preset], "preset": preset, **_overrides(args)})


def check_config(cfg: TrainConfig) -> None:
    problems = []
    if cfg.img_size % 32:
        problems.append(f"--img-size must be a multiple of 32, got {cfg.img_size}")
    for name in ("batch_size", "max_boxes", "epochs", "log_every", "eval_batch_size", "keep_checkpoints",
                 "topk", "shapes_train_images", "shapes_img_size"):
        if getattr(cfg, name) < 1:
            problems.append(f"{_flag(name)} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "workers", "warmup_steps", "clip_norm", "weight_decay", "shapes_val_images"):
        if getattr(cfg, name) < 0:
            problems.append(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    for name in ("max_samples", "val_max_samples", "num_classes"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            problems.append(f"{_flag(name)} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if cfg.img_size < 32:
        problems.append(f"--img-size must be >= 32, got {cfg.img_size}")
    if cfg.dtype not in DTYPES:
        problems.append(f"--dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    if cfg.devices is not None and cfg.devices < 1:
        problems.append(f"--devices must be >= 1, got {cfg.devices}")
    if cfg.model not in PRESETS:
        problems.append(f"--model must be one of {sorted(PRESETS)}, got {cfg.model!r}")
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_manager(run_dir: Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(run_dir.absolute() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save_checkpoint(mngr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
    step = int(parallel.to_host(state.step))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)
    mngr.wait_until_finished()


def restore_checkpoint(mngr: ocp.CheckpointManager, like: TrainState, step: int | None = None):
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return out.state, out.meta


# ----------------------------------------------------------------------------- the run

def _run_name() -> str:
    """``YYYYmmdd-HHMMSS`` of process 0, so that every process writes to the same run directory."""
    now = datetime.datetime.now()
    stamp = np.array([int(now.strftime("%Y%m%d")), int(now.strftime("%H%M%S"))], np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        parallel.barrier("run-name")
        stamp = np.asarray(multihost_utils.broadcast_one_to_all(stamp))
    return f"{int(stamp[0]):08d}-{int(stamp[1]):06d}"


def _has_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a saved step (Orbax: one folder per step)."""
    ckpt = run_dir / "checkpoints"
    return ckpt.is_dir() and any(p.is_dir() and p.name.isdigit() for p in ckpt.iterdir())


def _val_image_dir(cfg: TrainConfig) -> Optional[str]:
    """``--val-image-dir``; else ``--image-dir`` when validation comes from ``--data``, else None
    (guessed from the ``--val-data`` json's location)."""
    if cfg.val_image_dir is not None:
        return cfg.val_image_dir
    return cfg.image_dir if not cfg.val_data or cfg.val_data == cfg.data else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (those of the restored checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


def _mean_metrics(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train(cfg: TrainConfig, *, resume: Path | None = None, progress: bool = True,
          stop_after_epochs: int | None = None) -> dict:
    """Run training; returns a summary dict. Raises ``NonFiniteLossError`` if the loss diverges.

    ``stop_after_epochs`` ends this call after that many epochs (checkpoint written), as an
    interruption would; ``resume=run_dir`` continues it.
    """
    check_config(cfg)
    parallel.initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    primary = parallel.is_primary()  # only process 0 logs and writes files (Orbax: all take part)
    mesh = parallel.make_mesh(cfg.devices)
    parallel.check_batch_size(cfg.batch_size, mesh)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / _run_name()
    if resume is None and _has_checkpoints(run_dir):
        # (Checkpoints are written after every process has passed the setup barrier, so all
        # processes see the same answer here.)
        raise ValueError(f"{run_dir} already holds a run with checkpoints: continue it with --resume {run_dir}, "
                         "or choose another --run-dir")
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    progress = progress and primary
    log = tqdm.write if progress else (lambda s: None)

    # ---- data
    train_data = build_dataset(cfg.data, split=cfg.split, num_classes=cfg.num_classes, img_size=cfg.img_size,
                               letterbox=cfg.letterbox, max_samples=cfg.max_samples, bbox_format=cfg.bbox_format,
                               image_dir=cfg.image_dir, shapes_num_images=cfg.shapes_train_images,
                               shapes_img_size=cfg.shapes_img_size, shapes_seed=cfg.seed, progress=progress)
    cfg.num_classes = cfg.num_classes or train_data.num_classes
    cfg.class_names = cfg.class_names or train_data.class_names
    log(f"train data: {len(train_data.examples)} images from {cfg.data!r} ({cfg.split}); "
        f"{train_data.stats.summary()}")
    val_data = None
    val_spec = cfg.val_data or cfg.data
    if cfg.val_split and cfg.eval_every > 0:
        val_data = build_dataset(val_spec, split=cfg.val_split, num_classes=cfg.num_classes,
                                 img_size=cfg.img_size, letterbox=cfg.letterbox, max_samples=cfg.val_max_samples,
                                 bbox_format=cfg.bbox_format, image_dir=_val_image_dir(cfg),
                                 shapes_num_images=cfg.shapes_val_images, shapes_img_size=cfg.shapes_img_size,
                                 shapes_seed=cfg.seed, skip_empty=False, progress=progress)
        log(f"validation data: {len(val_data.examples)} images from {val_spec!r} "
            f"({cfg.val_split}); {val_data.stats.summary()}")
        if not val_data.examples:
            raise ValueError(f"validation data {val_spec!r} ({cfg.val_split}) has no usable "
                             f"images ({val_data.stats.summary()}); fix it, or disable evaluation with "
                             "--val-split none")
    if cfg.class_names is not None and len(cfg.class_names) != cfg.num_classes:
        raise ValueError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes "
                         f"(--num-classes {cfg.num_classes}, the data names {list(cfg.class_names)})")
    loader = BatchLoader(train_data.examples, batch_size=cfg.batch_size, img_size=cfg.img_size,
                         max_boxes=cfg.max_boxes, shuffle=True, seed=cfg.seed, drop_last=True,
                         letterbox=cfg.letterbox, num_workers=cfg.workers, stats=train_data.stats,
                         rows=parallel.process_rows(cfg.batch_size))
    steps_per_epoch = len(loader)
    if primary:
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    # ---- model, optimizer, step
    model = build_model(cfg.model, num_classes=cfg.num_classes, dtype=DTYPES[cfg.dtype], rngs=nnx.Rngs(cfg.seed))
    eval_gd = eval_graphdef(model)
    model.train()
    graphdef, params, rest = split_model(model)
    log(f"model: {cfg.model}, {count_parameters(model):,} parameters, {cfg.num_classes} classes, "
        f"{cfg.img_size}px, {cfg.dtype}; {steps_per_epoch} steps/epoch x {cfg.epochs} epochs; "
        f"batch {cfg.batch_size} over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))
    lr_fn = make_schedule(cfg.lr, schedule=cfg.schedule, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                          warmup_steps=cfg.warmup_steps)
    tx = make_optimizer(lr_fn, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    state = parallel.replicate(state, mesh)
    train_step = make_train_step(graphdef, tx, lr_fn=lr_fn, mesh=mesh, img_size=cfg.img_size,
                                 num_classes=cfg.num_classes,
                                 cls_weight=cfg.cls_weight, box_weight=cfg.box_weight, dfl_weight=cfg.dfl_weight,
                                 topk=cfg.topk)

    parallel.barrier("setup")  # model init compiles per process; Orbax's next sync is a collective
    mngr = checkpoint_manager(run_dir, cfg.keep_checkpoints)
    start_epoch, history = 0, []
    if resume is not None:
        state, meta = restore_checkpoint(mngr, state)
        start_epoch, history = meta["epoch"], meta.get("history", [])
        restored_step = int(parallel.to_host(state.step))
        log(f"resumed {run_dir} at epoch {start_epoch}, step {restored_step}")

    metrics_file = None
    if primary:
        metrics_path = run_dir / "metrics.jsonl"
        if resume is not None:  # drop the rows logged after the restored checkpoint (an interrupted epoch)
            _truncate_metrics(metrics_path, restored_step)
        metrics_file = metrics_path.open("a" if resume is not None else "w")

    def write_metrics(row: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    # ---- loop
    compiled_step = None
    t_start = time.perf_counter()
    end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        epoch_rows, pending = [], []
        t_interval, n_interval = time.perf_counter(), 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   dynamic_ncols=True, leave=True)
        for i, batch in enumerate(loader.epoch(epoch)):
            if epoch == start_epoch and i == 0 and primary:
                plots.plot_sample_batch(batch["images"], batch["boxes_cxcywh"], batch["mask"], batch["labels"],
                                        run_dir / "sample_batch.png", class_names=cfg.class_names)
            device_batch = parallel.global_batch({k: batch[k] for k in BATCH_KEYS}, mesh)
            if compiled_step is None:  # compile once, then every process starts stepping together
                compiled_step = train_step.lower(state, device_batch).compile()
                parallel.barrier("compiled")
            state, metrics = compiled_step(state, device_batch)
            pending.append(metrics)
            n_interval += cfg.batch_size
            if len(pending) == cfg.log_every or i == steps_per_epoch - 1:
                host = parallel.to_host(pending)  # the only host sync: every log_every steps
                bad = [r for r in host if not all(math.isfinite(float(r[k])) for k in LOSS_KEYS)]
                if bad:
                    if metrics_file is not None:
                        metrics_file.close()
                    step_now = int(parallel.to_host(state.step))
                    last = mngr.latest_step()
                    raise NonFiniteLossError(
                        f"non-finite loss at epoch {epoch + 1}, within steps {step_now - len(pending) + 1}.."
                        f"{step_now} ({ {k: float(bad[0][k]) for k in LOSS_KEYS} }). Training stopped; "
                        + (f"the last good checkpoint (step {last}) in {run_dir / 'checkpoints'} is intact."
                           if last is not None else "no checkpoint had been written yet."))
                dt = time.perf_counter() - t_interval
                row = _mean_metrics([{k: float(v) for k, v in r.items()} for r in host])
                row.update(epoch=epoch + 1, step=int(parallel.to_host(state.step)),
                           images_per_s=n_interval / dt)
                write_metrics(dict(kind="interval", **row))
                epoch_rows.extend(host)
                bar.set_postfix(loss=f"{row['total_loss']:.3g}", cls=f"{row['cls_loss']:.3g}",
                                box=f"{row['box_loss']:.3g}", dfl=f"{row['dfl_loss']:.3g}",
                                img_s=f"{row['images_per_s']:.0f}")
                bar.update(len(pending))
                pending, t_interval, n_interval = [], time.perf_counter(), 0
        bar.close()

        summary = _mean_metrics([{k: float(v) for k, v in r.items()} for r in epoch_rows])
        summary.update(epoch=epoch + 1, step=int(parallel.to_host(state.step)),
                       lr=float(lr_fn(epoch * steps_per_epoch)),
                       elapsed_s=time.perf_counter() - t_start)
        if primary and val_data is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            # On process 0's first device, from host copies of the replicated state.
            eval_states = jax.device_put(parallel.to_host((state.params, state.rest)), jax.local_devices()[0])
            res = evaluate_examples(eval_gd, eval_states, val_data.examples, num_classes=cfg.num_classes,
                                    img_size=cfg.img_size, batch_size=cfg.eval_batch_size,
                                    letterbox=cfg.letterbox, class_names=cfg.class_names, progress=progress)
            summary.update(mAP=res["mAP"], AP50=res["AP50"], AP75=res["AP75"])
        parallel.barrier(f"evaluated-{epoch}")  # process 0 may have evaluated alone; saving syncs next
        history.append(summary)
        write_metrics(dict(kind="epoch", **summary))
        log(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
            f"{k}={summary[k]:.4g}" for k in ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "lr")
            if k in summary) + (f", mAP={summary['mAP']:.4f}, AP50={summary['AP50']:.4f}" if "mAP" in summary else ""))
        save_checkpoint(mngr, state, {"epoch": epoch + 1, "history": history, "config": dataclasses.asdict(cfg)})
        if primary:
            plots.plot_loss_curves(history, run_dir / "loss_curves.png")
            if any("mAP" in h for h in history):
                plots.plot_map_curve(history, run_dir / "map_curve.png")
        parallel.barrier(f"epoch-{epoch}")

    if primary:
        metrics_file.close()
        plots.plot_iou_variants(run_dir / "iou_variants.png")
        nnx.update(model, *parallel.to_host((state.params, state.rest)))
        convert.save_safetensors(model, run_dir / "weights.safetensors",
                                 metadata={"config": json.dumps(dataclasses.asdict(cfg))})
    result = dict(run_dir=str(run_dir), history=history, data_summary=train_data.stats.summary(),
                  val_data_summary=val_data.stats.summary() if val_data is not None else None,
                  train_seconds=time.perf_counter() - t_start)
    log(f"training data: {train_data.stats.summary()}")
    if val_data is not None:
        log(f"validation data: {val_data.stats.summary()}")
    if history and "mAP" in history[-1]:
        log(f"final validation mAP@[.5:.95] {history[-1]['mAP']:.4f}, AP50 {history[-1]['AP50']:.4f}")
    log(f"done in {result['train_seconds']:.0f}s: weights in {run_dir / 'weights.safetensors'}")
    return result


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        cfg_path = args.resume / "config.json"
        if not cfg_path.exists():
            parser.error(f"--resume: {cfg_path} not found")
        saved = json.loads(cfg_path.read_text())
        if args.preset is not None and args.preset != saved.get("preset"):
            parser.error(f"--preset {args.preset} with --resume: the run was started with preset "
                         f"{saved.get('preset')!r}, and resuming continues its saved configuration "
                         "(override single options instead)")
        overrides = _overrides(args)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, **overrides,
                             "run_dir": str(args.resume)})
        if overrides:
            print(f"resume: overriding {sorted(overrides)}", file=sys.stderr)
    else:
        cfg = config_from_args(args)
    try:
        train(cfg, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreachable Hub, missing files (ConnectionError is an OSError)
        print(f"error: could not read the data or write the run: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
