"""Train YOLOv11: ``python -m yolo11_jax.train``.

Reads top to bottom: configuration, data, model, optimizer, one jitted train step, then a
loop over steps (logging every ``--log-every`` steps, evaluation and checkpoints every N
epochs or steps), final export.

Named configurations (``--config``; every other option overrides it; see ``configs.py``):

* ``cpu`` (default): the embedded shapes dataset (4 classes, 128 px), the ``small``
  network (notebook architecture at base width 16), batch 16, 6 epochs. About 9 minutes on
  a 2-core CPU; see the README for the figures it reaches.
* ``notebook-coco``: the notebook's run: its network (110.2M), 640 px, batch 4, 5 epochs,
  32 images streamed from ``detection-datasets/coco`` (needs the Hub).
* ``smoke``: a seconds-long run of the tiny network, for tests and trying options.

``--config`` names a training run, ``--model`` a network (``--model notebook`` is the
notebook's network). The old spellings ``--preset`` and ``--eval-every`` still work, with a
deprecation message.

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
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import grain
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax import config as C
from yolo11_jax import convert, inference, parallel, plots
from yolo11_jax.anchors import STRIDES, feature_sizes
from yolo11_jax.assign_chunked import chunked_assigner
from yolo11_jax.assign import task_aligned_assign
from yolo11_jax.configs import (CONFIGS, DEPRECATED_CONFIG_NAMES, DESCRIPTIONS, RENAMED_KEYS, TrainConfig, augmentation,
                                named_config, resolve_recipe)
from yolo11_jax.data import TrainPipeline, add_counts, build_dataset, warn_max_boxes
from yolo11_jax.data.pipeline import StreamPipeline, StreamSource
from yolo11_jax.model import count_parameters
from yolo11_jax.ema import eval_variables
from yolo11_jax.optim import make_optimizer, make_schedule, ultralytics_iterations, ultralytics_recipe
from yolo11_jax.presets import build_model
from yolo11_jax.yolo11 import class_bias_init
from yolo11_jax.step import TrainState, init_train_state, make_train_step, split_model

BATCH_KEYS = ("images", "boxes_cxcywh", "labels", "mask")
LOSS_KEYS = ("total_loss", "cls_loss", "box_loss", "dfl_loss")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, metavar="NAME",
                    help="named training configuration: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
                         + " (default: cpu; with --resume the run's saved configuration is the start instead)")
    ap.add_argument("--resume", type=Path, help="continue the run in this directory from its last checkpoint")
    C.add_arguments(ap, TrainConfig, default_label="cpu config")
    ap.add_argument("--preset", default=None, metavar="NAME", help="deprecated spelling of --config")
    ap.add_argument("--eval-every", type=int, default=None, metavar="N",
                    help="deprecated spelling of --eval-every-epochs")
    return ap


def _deprecated(args: argparse.Namespace, warn=C.warn_stderr) -> None:
    """Map the deprecated spellings onto the current options, with a message each."""
    if args.preset is not None:
        name = DEPRECATED_CONFIG_NAMES.get(args.preset, args.preset)
        warn(f"--preset is deprecated: use --config {name}"
             + (f" (the notebook's run; --model {args.preset} is its network)" if name != args.preset else ""))
        if args.config is not None and args.config != name:
            raise ValueError(f"--preset {args.preset} and --config {args.config} disagree")
        args.config = name
    if args.eval_every is not None:
        warn("--eval-every is deprecated: use --eval-every-epochs")
        if args.eval_every_epochs is None:
            args.eval_every_epochs = args.eval_every


def _overrides(args: argparse.Namespace) -> dict:
    """The configuration fields given on the command line (``--val-split none``: no evaluation)."""
    values = C.given(args, TrainConfig)
    if isinstance(values.get("val_split"), str) and values["val_split"].lower() in ("", "none"):
        values["val_split"] = None
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration a command line asks for (without ``--resume``)."""
    return named_config(args.config or "cpu", **_overrides(args))


def resumed_config(run_dir: Path, args: argparse.Namespace, warn=C.warn_stderr) -> TrainConfig:
    """The saved configuration of ``run_dir`` with the command line's overrides on top."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"--resume: {cfg_path} not found")
    values = json.loads(cfg_path.read_text())
    values.pop("resolved", None)  # what the run derived from its settings (written for the record)
    saved = C.from_dict(TrainConfig, values, renamed=RENAMED_KEYS, warn=warn)
    if args.config is not None and args.config != saved.config:
        raise ValueError(f"--config {args.config} with --resume: the run was started with config {saved.config!r}, "
                         "and resuming continues its saved configuration (override single options instead)")
    overrides = _overrides(args)
    if overrides:
        warn(f"resume: overriding {sorted(overrides)}")
    return dataclasses.replace(saved, **overrides, run_dir=str(run_dir))


def check_config(cfg: TrainConfig) -> None:
    """Every option's check (see ``configs.TrainConfig``); one ``ValueError`` listing all problems."""
    problems = C.validate(cfg)
    try:
        resolve_recipe(cfg)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_manager(run_dir: Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(run_dir.absolute() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save_checkpoint(mngr: ocp.CheckpointManager, state: TrainState, meta: dict, data_iterator=None) -> None:
    """The train state, ``meta`` (JSON) and, if given, the input pipeline's iterator state
    (Grain's Orbax handler: one file per process) in one Orbax checkpoint at the state's step."""
    step = int(parallel.to_host(state.step))
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()


def restore_checkpoint(mngr: ocp.CheckpointManager, like: TrainState, step: int | None = None, data_iterator=None):
    """``(state, meta, restored_data)``: ``data_iterator`` (a Grain iterator) is set to the saved
    position when the checkpoint holds one that fits it (``restored_data`` True); a position saved
    by a differently built pipeline (another worker count) does not fit, and is left alone."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    restored = False
    if data_iterator is not None and "data" in (mngr.item_metadata(step) or {}):
        try:
            mngr.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
            restored = True
        except (KeyError, ValueError, TypeError):
            restored = False
    return out.state, out.meta, restored


# ----------------------------------------------------------------------------- helpers

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


def read_weights_file(path: Path) -> tuple[dict, str]:
    """``(state dict, what it is)`` of an Ultralytics ``.pt`` (read without running code from it)
    or a ``.safetensors`` file. Raises ``ValueError`` / ``FileNotFoundError`` naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"--init-weights {path} not found")
    if path.suffix == ".pt":
        from yolo11_jax.ultralytics_pt import read_ultralytics

        state_dict, info = read_ultralytics(path)
        return state_dict, (f"{info['preset']} with {info['num_classes']} classes, Ultralytics "
                            f"{info.get('ultralytics_version') or '?'} ({info.get('weights_key')})")
    if path.suffix == ".safetensors":
        return convert.load_safetensors(path), "a .safetensors file"
    raise ValueError(f"--init-weights {path}: expected an Ultralytics .pt or a .safetensors file")


def load_initial_weights(model, path: Path) -> str:
    """Load ``path`` into ``model`` for fine-tuning (``convert.load_pretrained``); returns the log
    line saying what was loaded and what was re-initialised."""
    state_dict, what = read_weights_file(path)
    try:
        report = convert.load_pretrained(model, state_dict)
    except ValueError as e:
        raise ValueError(f"--init-weights {path} ({what}) does not fit --model: {e}") from None
    return f"init weights: {path} ({what}): {report.summary()}"


def _assigner(cfg: TrainConfig):
    if cfg.assigner == "dense":
        return task_aligned_assign
    return chunked_assigner(feature_sizes((cfg.img_size, cfg.img_size)),
                            method="sparse" if cfg.assigner == "chunked-sparse" else "dense")


def _due(done: int, every_steps: int, every_epochs: int, steps_per_epoch: int, total: int) -> bool:
    """Whether something scheduled every N steps / every N epochs falls after step ``done``;
    always after the last step."""
    if done == total:
        return True
    if every_steps and done % every_steps == 0:
        return True
    return bool(every_epochs) and done % (every_epochs * steps_per_epoch) == 0


# ----------------------------------------------------------------------------- the run

def train(cfg: TrainConfig, *, resume: Path | None = None, progress: bool = True,
          stop_after_steps: int | None = None) -> dict:
    """Run training; returns a summary dict. Raises ``NonFiniteLossError`` if the loss diverges.

    ``stop_after_steps`` ends this call after that many steps (a checkpoint written), as an
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
                               shapes_img_size=cfg.shapes_img_size, shapes_seed=cfg.seed, progress=progress,
                               stream=True)
    streamed = isinstance(train_data.examples, StreamSource)
    cfg.num_classes = cfg.num_classes or train_data.num_classes
    cfg.class_names = cfg.class_names or train_data.class_names
    log(f"train data: {'a stream' if streamed else len(train_data.examples)} images from {cfg.data!r} ({cfg.split}); "
        f"{train_data.stats.summary()}")
    val_data = None
    val_spec = cfg.val_data or cfg.data
    evaluation = bool(cfg.val_split) and bool(cfg.eval_every_epochs or cfg.eval_every_steps)
    if evaluation:
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
    augment = augmentation(cfg)
    if not augment.enabled and not streamed:  # (with augmentation, mosaics decide how many boxes an image has)
        warn_max_boxes(train_data.examples, cfg.max_boxes)
    pipeline = (StreamPipeline if streamed else TrainPipeline)(
        train_data.examples, batch_size=cfg.batch_size, img_size=cfg.img_size, max_boxes=cfg.max_boxes, seed=cfg.seed,
        letterbox=cfg.letterbox, augment=augment, epochs=cfg.epochs if cfg.steps is None else None,
        workers=cfg.workers, shard=(jax.process_index(), jax.process_count()))
    steps_per_epoch = pipeline.steps_per_epoch
    if steps_per_epoch is None:  # a stream of unknown size: --steps sets the length, one nominal epoch
        if cfg.steps is None:
            raise ValueError(f"{cfg.data!r} is streamed and its size is unknown: give --steps (or --max-samples "
                             "to read a subset into memory)")
        steps_per_epoch = cfg.steps
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    data_iterator = iter(pipeline.dataset(total_steps))

    # ---- model, optimizer, step
    model = build_model(cfg.model, num_classes=cfg.num_classes, dtype=DTYPES[cfg.dtype], rngs=nnx.Rngs(cfg.seed))
    if cfg.init_weights and resume is None:
        log(load_initial_weights(model, Path(cfg.init_weights)))
    elif resolve_recipe(cfg).loss == "ultralytics" and hasattr(model, "head"):
        # The notebook's networks start with class logits near 0 (scores 0.5 at every anchor);
        # Ultralytics' loss divides by the sum of the target scores, and its small learning rate
        # would take thousands of steps to move the biases down. Its own networks start with
        # Detect.bias_init's prior (yolo11.py); give the notebook's heads the same one.
        for level, head in enumerate(model.head.heads):
            head.cls_pred.bias[...] = jnp.full_like(head.cls_pred.bias[...],
                                                     class_bias_init(cfg.num_classes, STRIDES[level]))
        log("class-logit biases set to Ultralytics' prior, log(5 / classes / (640 / stride)^2)")
    eval_gd = inference.eval_graphdef(model)
    model.train()
    graphdef, params, rest = split_model(model)
    log(f"model: {cfg.model}, {count_parameters(model):,} parameters, {cfg.num_classes} classes, "
        f"{cfg.img_size}px, {cfg.dtype}; {total_steps} steps ({steps_per_epoch} per epoch); "
        f"batch {cfg.batch_size} over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))
    recipe = resolve_recipe(cfg)
    lr_fn, step_kwargs = None, {}
    epochs = math.ceil(total_steps / steps_per_epoch)
    if recipe.optimizer == "notebook":
        lr_fn = make_schedule(cfg.lr or 1e-3, schedule=cfg.schedule, epochs=total_steps / steps_per_epoch,
                              steps_per_epoch=steps_per_epoch, warmup_steps=cfg.warmup_steps)
        tx = make_optimizer(lr_fn, weight_decay=0.05 if cfg.weight_decay is None else cfg.weight_decay,
                            clip_norm=cfg.clip_norm, torch_compat=recipe.torch_compat)
        step_kwargs = dict(lr_fn=lr_fn, torch_compat=recipe.torch_compat)
        optimizer_info = {"optimizer": "notebook AdamW", "lr": cfg.lr or 1e-3}
    else:
        num_images = total_steps * cfg.batch_size / epochs if streamed else len(train_data.examples)
        tx, schedule, optimizer_info = ultralytics_recipe(
            params, optimizer=recipe.optimizer, num_classes=cfg.num_classes, batch_size=cfg.batch_size,
            steps_per_epoch=steps_per_epoch, epochs=epochs,
            iterations=ultralytics_iterations(int(num_images), cfg.batch_size, epochs, nbs=cfg.nbs), lr0=cfg.lr,
            lrf=cfg.lrf, momentum=cfg.momentum, weight_decay=5e-4 if cfg.weight_decay is None else cfg.weight_decay,
            warmup_epochs=cfg.warmup_epochs, warmup_momentum=cfg.warmup_momentum, warmup_bias_lr=cfg.warmup_bias_lr,
            nbs=cfg.nbs, clip_norm=cfg.clip_norm)
        # Ultralytics backpropagates batch_size x the loss; its learning rates and clipping assume it.
        step_kwargs = dict(hyperparams_fn=schedule, loss_scale="batch")
    log(f"recipe: {cfg.recipe} (loss {recipe.loss}, optimizer {recipe.optimizer}, EMA {'on' if recipe.ema else 'off'}, "
        f"augmentation {'on' if augment.enabled else 'off'}); " + ", ".join(f"{k}={v}" for k, v in optimizer_info.items()
                                                                            if not isinstance(v, dict)))
    if primary:
        (run_dir / "config.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), "resolved": {**dataclasses.asdict(recipe), "augment": dataclasses.asdict(augment),
                                                      "optimizer_info": optimizer_info}}, indent=1, default=str))
    state = parallel.replicate(init_train_state(params, rest, tx, ema=recipe.ema), mesh)
    loss_kwargs = dict(cls_weight=cfg.cls_weight, box_weight=cfg.box_weight, dfl_weight=cfg.dfl_weight)
    if cfg.topk is not None:
        loss_kwargs["topk"] = cfg.topk
    if recipe.loss == "notebook":
        loss_kwargs["assigner"] = _assigner(cfg)
    train_step = make_train_step(graphdef, tx, mesh=mesh, recipe=recipe.loss, img_size=cfg.img_size,
                                 num_classes=cfg.num_classes, **step_kwargs, **loss_kwargs)

    parallel.barrier("setup")  # model init compiles per process; Orbax's next sync is a collective
    mngr = checkpoint_manager(run_dir, cfg.keep_checkpoints)
    start_step, history, evals, meta = 0, [], [], {}
    if resume is not None:
        state, meta, restored_data = restore_checkpoint(mngr, state, data_iterator=data_iterator)
        history, evals = meta.get("history", []), meta.get("evals", [])
        start_step = int(parallel.to_host(state.step))
        if not restored_data:  # no pipeline state that fits: the position is a function of the step
            log("the checkpoint holds no input-pipeline position that fits this pipeline (another --workers?); "
                "the batches continue from the step, which gives the same data")
            data_iterator = iter(pipeline.dataset(total_steps, start_step=start_step))
        from yolo11_jax.data.pipeline import COUNTER_KEYS
        for key in COUNTER_KEYS:  # the pipeline's counts up to the checkpoint
            setattr(train_data.stats, key, int(meta.get("data_stats", {}).get(key, 0)))
        log(f"resumed {run_dir} at step {start_step} (epoch {start_step / steps_per_epoch:.2f})")

    metrics_file = None
    if primary:
        metrics_path = run_dir / "metrics.jsonl"
        if resume is not None:  # drop the rows logged after the restored checkpoint
            _truncate_metrics(metrics_path, start_step)
        metrics_file = metrics_path.open("a" if resume is not None else "w")

    def write_metrics(row: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    def evaluate(done: int) -> dict:
        # On process 0's first device, from host copies of the replicated state.
        # (the EMA when there is one)
        eval_states = jax.device_put(parallel.to_host(eval_variables(state)), jax.local_devices()[0])
        res = inference.evaluate_examples(eval_gd, eval_states, val_data.examples, num_classes=cfg.num_classes,
                                          img_size=cfg.img_size, batch_size=cfg.eval_batch_size,
                                          letterbox=cfg.letterbox, class_names=cfg.class_names, progress=progress)
        return dict(step=done, epoch=done / steps_per_epoch, mAP=res["mAP"], AP50=res["AP50"], AP75=res["AP75"])

    # ---- loop
    end_step = total_steps if stop_after_steps is None else min(total_steps, start_step + stop_after_steps)
    compiled_step = None
    t_start = time.perf_counter()
    pending = []                       # device metrics of the steps not yet read
    epoch_rows = list(meta.get("epoch_rows", [])) if resume is not None else []  # host metrics, this epoch
    t_interval, n_interval, wait_interval = time.perf_counter(), 0, 0.0
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)

    def flush(done: int, epoch: int) -> None:
        """Read the pending metrics (the only host sync of the loop), stop on a non-finite loss,
        log an interval row."""
        nonlocal pending, t_interval, n_interval, wait_interval
        if not pending:
            return
        host = [{k: float(v) for k, v in r.items()} for r in parallel.to_host(pending)]
        bad = [r for r in host if not all(math.isfinite(r[k]) for k in LOSS_KEYS)]
        if bad:
            if metrics_file is not None:
                metrics_file.close()
            last = mngr.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss within steps {done - len(pending) + 1}..{done} (epoch {epoch}; "
                f"{ {k: bad[0][k] for k in LOSS_KEYS} }). Training stopped; "
                + (f"the last good checkpoint (step {last}) in {run_dir / 'checkpoints'} is intact."
                   if last is not None else "no checkpoint had been written yet."))
        row = _mean_metrics(host)
        elapsed = time.perf_counter() - t_interval
        row.update(epoch=epoch, step=done, images_per_s=n_interval / elapsed, data_wait_fraction=wait_interval / elapsed)
        write_metrics(dict(kind="interval", **row))
        epoch_rows.extend(host)
        bar.set_postfix(epoch=epoch, loss=f"{row['total_loss']:.3g}", cls=f"{row['cls_loss']:.3g}",
                        box=f"{row['box_loss']:.3g}", dfl=f"{row['dfl_loss']:.3g}", img_s=f"{row['images_per_s']:.0f}")
        bar.update(len(pending))
        pending, t_interval, n_interval, wait_interval = [], time.perf_counter(), 0, 0.0

    for step in range(start_step, end_step):
        t_wait = time.perf_counter()
        batch = next(data_iterator)
        wait_interval += time.perf_counter() - t_wait
        add_counts(train_data.stats, batch)
        if step == start_step and primary:
            plots.plot_sample_batch(batch["images"], batch["boxes_cxcywh"], batch["mask"], batch["labels"],
                                    run_dir / "sample_batch.png", class_names=cfg.class_names)
        device_batch = parallel.global_batch({k: batch[k] for k in BATCH_KEYS}, mesh)
        if compiled_step is None:  # compile once, then every process starts stepping together
            compiled_step = train_step.lower(state, device_batch).compile()
            parallel.barrier("compiled")
        state, metrics = compiled_step(state, device_batch)
        pending.append(metrics)
        n_interval += cfg.batch_size
        done = step + 1
        epoch = step // steps_per_epoch + 1                # the epoch this step belongs to, from 1
        epoch_end = done % steps_per_epoch == 0 or done == total_steps
        save = done == end_step or _due(done, cfg.checkpoint_every, cfg.checkpoint_every_epochs, steps_per_epoch,
                                        total_steps)
        if len(pending) == cfg.log_every or epoch_end or save:
            flush(done, epoch)

        summary = None
        if epoch_end:
            summary = _mean_metrics(epoch_rows)
            summary.update(epoch=epoch, step=done, elapsed_s=time.perf_counter() - t_start)
            if lr_fn is not None:
                summary["lr"] = float(lr_fn(done - 1))
            epoch_rows = []
        if evaluation and _due(done, cfg.eval_every_steps, cfg.eval_every_epochs, steps_per_epoch, total_steps):
            if primary:
                result = evaluate(done)
                evals.append(result)
                write_metrics(dict(kind="eval", **result))
                log(f"step {done} (epoch {done / steps_per_epoch:.2f}): mAP={result['mAP']:.4f}, "
                    f"AP50={result['AP50']:.4f}")
                if summary is not None:
                    summary.update(mAP=result["mAP"], AP50=result["AP50"], AP75=result["AP75"])
            parallel.barrier(f"evaluated-{done}")  # process 0 may have evaluated alone; saving syncs next
        if summary is not None:
            history.append(summary)
            write_metrics(dict(kind="epoch", **summary))
            log(f"epoch {epoch}: " + ", ".join(
                f"{k}={summary[k]:.4g}" for k in ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "lr",
                                                  "lr_weight") if k in summary))
            if primary:
                plots.plot_loss_curves(history, run_dir / "loss_curves.png")
                if evals:
                    plots.plot_map_curve(evals, run_dir / "map_curve.png")
        if save:
            save_checkpoint(mngr, state, {"step": done, "epoch": done / steps_per_epoch, "history": history,
                                          "evals": evals, "epoch_rows": epoch_rows, "data_stats":
                                          train_data.stats.as_dict(), "config": dataclasses.asdict(cfg)},
                            data_iterator)
            parallel.barrier(f"saved-{done}")
    bar.close()

    finished = end_step == total_steps
    if primary:
        metrics_file.close()
        if finished:
            plots.plot_iou_variants(run_dir / "iou_variants.png")
            nnx.update(model, *parallel.to_host(eval_variables(state)))  # the EMA when there is one
            convert.save_safetensors(model, run_dir / "weights.safetensors",
                                     metadata={"config": json.dumps(dataclasses.asdict(cfg))})
    result = dict(run_dir=str(run_dir), history=history, evals=evals, data_summary=train_data.stats.summary(),
                  val_data_summary=val_data.stats.summary() if val_data is not None else None,
                  train_seconds=time.perf_counter() - t_start, steps=end_step)
    log(f"training data: {train_data.stats.summary()}")
    if val_data is not None:
        log(f"validation data: {val_data.stats.summary()}")
    if evals:
        log(f"final validation mAP@[.5:.95] {evals[-1]['mAP']:.4f}, AP50 {evals[-1]['AP50']:.4f}")
    if finished:
        log(f"done in {result['train_seconds']:.0f}s: weights in {run_dir / 'weights.safetensors'}")
    else:
        log(f"stopped after step {end_step} of {total_steps}: continue with --resume {run_dir}")
    return result


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _deprecated(args)
        cfg = resumed_config(args.resume, args) if args.resume is not None else config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
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
