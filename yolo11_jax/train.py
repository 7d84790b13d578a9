"""Train YOLOv11: ``python -m yolo11_jax.train``.

Reads top to bottom: the command line; :func:`setup` (data, model, the recipe's loss and
optimizer, one jitted train step, checkpoints), which returns a :class:`Run`; :func:`loop` over
steps (logging every ``--log-every`` steps, evaluation and checkpoints every N epochs or steps);
:func:`finish` (export and summary). :func:`train` calls the three.

Named configurations (``--config``; every other option overrides it; see ``train_config.py``,
and the README for the time each takes and the accuracy it reaches):

* ``cpu`` (default): the embedded shapes dataset (4 classes, 128 px), the ``small``
  network (notebook architecture at base width 16), batch 16, 6 epochs, the notebook's recipe.
* ``cpu-ultralytics``: the same data under Ultralytics' recipe with ``yolo11n``.
* ``notebook-coco``: the notebook's run: its network (110.2M), 640 px, batch 4, 5 epochs,
  32 images streamed from ``detection-datasets/coco`` (needs the Hub).
* ``smoke``: a seconds-long run of the tiny network, for tests and trying options.

``--config`` names a training run, ``--model`` a network (``--model notebook`` is the
notebook's network), ``--recipe`` a training recipe (``yolo11_jax/recipes/``: loss, optimizer
and schedule, EMA, augmentation). ``--help`` after ``--config NAME`` shows that config's values.
The old spellings ``--preset``, ``--eval-every``, ``--checkpoint-every`` and ``--assigner dense``
still work, with a deprecation message.

Data parallelism: the step runs on a ``jax.sharding.Mesh`` over all devices (``--devices``
takes fewer), the global ``--batch-size`` split over them; BatchNorm statistics and the loss
are global, so results do not depend on the device count (see ``yolo11_jax.parallel``).
Several processes (hosts): give each ``--coordinator-address HOST:PORT --num-processes N
--process-id I`` (or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``)
and the same ``--run-dir``; each prepares its rows of every batch, process 0 writes the logs,
plots and exports, and all take part in the Orbax checkpoints.

Outputs in the run directory: ``config.json`` (every option that ran, and what the run resolved
from them), ``metrics.jsonl`` (interval, epoch and eval rows), ``checkpoints/`` (Orbax),
``weights.safetensors`` (the reference's key names), ``loss_curves.png``, ``sample_batch.png``,
``iou_variants.png`` and, with evaluation, ``map_curve.png``.

Throughput: the loop logs its end-to-end images per second (``images_per_s`` per interval;
``end_to_end_images_per_s`` for the run so far on each epoch row, evaluation and checkpoints
excluded) and, after compiling, times ``--step-timing-steps`` steps of the same compiled step on
one batch already in memory, each alone (``step_only_images_per_s`` from their median, on the first interval row with
``compile_s`` and ``time_to_first_step_s``); their ratio (``input_efficiency``) is what the input
path costs the step, which ``data_wait_fraction`` (the time blocked on the pipeline) cannot show
when the pipeline's threads share the step's cores. The run's figures are in ``train()``'s
summary (``throughput``) and its last log lines.
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
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import grain
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax import (class_names as CN, compile_cache, convert, host_memory, inference, options as C, parallel, plots,
                        recipes, step_cache)
from yolo11_jax.data import TrainPipeline, add_counts, build_dataset
from yolo11_jax.data.box_counts import (LARGE_M, STREAM_MAX_BOXES, box_counts, max_boxes_warning,
                                        resolve_max_boxes)
from yolo11_jax.data.pipeline import COUNTER_KEYS, StreamPipeline, StreamSource, default_threads
from yolo11_jax.ema import eval_variables
from yolo11_jax.model import count_parameters
from yolo11_jax.presets import build_model
from yolo11_jax.yolo11 import DEFAULT_VARIANT, Variant
from yolo11_jax.recipes.ultralytics import class_bias_prior
from yolo11_jax.step import TrainState, init_train_state, make_train_step, split_model
from yolo11_jax.train_config import (CONFIGS, DEPRECATED_CONFIG_NAMES, DESCRIPTIONS, DTYPES, RENAMED_KEYS,
                                     TrainConfig, named_config)

BATCH_KEYS = ("images", "boxes_cxcywh", "labels", "mask")
LOSS_KEYS = ("total_loss", "cls_loss", "box_loss", "dfl_loss")


class NonFiniteLossError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- command line

def build_parser(config: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``--help`` shows the values of the named configuration ``config``
    (default: cpu)."""
    name = config if config in CONFIGS else "cpu"
    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, metavar="NAME",
                    help="named training configuration: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
                         + " (default: cpu; with --resume the run's saved configuration is the start instead)")
    ap.add_argument("--resume", type=Path, help="continue the run in this directory from its last checkpoint")
    C.add_arguments(ap, TrainConfig, default_label=f"{name} config",
                    shown_defaults=dataclasses.asdict(named_config(name)))
    ap.add_argument("--preset", default=None, metavar="NAME", help="deprecated spelling of --config")
    ap.add_argument("--eval-every", type=int, default=None, metavar="N",
                    help="deprecated spelling of --eval-every-epochs")
    ap.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="deprecated spelling of --checkpoint-every-steps")
    return ap


def _config_name(argv) -> str | None:
    """The ``--config`` (or ``--preset``) of a command line, read before the full parser is built."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    return known.config or DEPRECATED_CONFIG_NAMES.get(known.preset, known.preset)


def _deprecated(args: argparse.Namespace, warn=C.warn_stderr) -> None:
    """Map the deprecated spellings onto the current options, with a message each."""
    if args.preset is not None:
        name = DEPRECATED_CONFIG_NAMES.get(args.preset, args.preset)
        warn(f"--preset is deprecated: use --config {name}"
             + (f" (the notebook's run; --model {args.preset} is its network)" if name != args.preset else ""))
        if args.config is not None and args.config != name:
            raise ValueError(f"--preset {args.preset} and --config {args.config} disagree")
        args.config = name
    for old, new in (("eval_every", "eval_every_epochs"), ("checkpoint_every", "checkpoint_every_steps")):
        if getattr(args, old) is not None:
            warn(f"{C.flag(old)} is deprecated: use {C.flag(new)}")
            if getattr(args, new) is None:
                setattr(args, new, getattr(args, old))


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
    values.pop(convert.VARIANT_METADATA_KEY, None)  # the network's variant (read back by _build_model)
    saved = C.from_dict(TrainConfig, values, renamed=RENAMED_KEYS, warn=warn)
    if args.config is not None and args.config != saved.config:
        raise ValueError(f"--config {args.config} with --resume: the run was started with config {saved.config!r}, "
                         "and resuming continues its saved configuration (override single options instead)")
    overrides = _overrides(args)
    if overrides:
        warn(f"resume: overriding {sorted(overrides)}")
    return dataclasses.replace(saved, **overrides, run_dir=str(run_dir))


def check_config(cfg: TrainConfig) -> None:
    """Every option's check (see ``train_config.TrainConfig``) and every combination the recipe's
    parts refuse (``recipes.problems``); one ``ValueError`` listing all problems."""
    problems = C.validate(cfg)
    if not problems:
        problems = recipes.problems(cfg)
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


def read_weights_file(path: Path) -> tuple[dict, str, Optional[list]]:
    """``(state dict, what it is, its class names or None)`` of an Ultralytics ``.pt`` (read
    without running code from it) or a ``.safetensors`` file (names from its metadata,
    ``inference.weights_config``). Raises ``ValueError`` / ``FileNotFoundError`` naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"--init-weights {path} not found")
    if path.suffix == ".pt":
        from yolo11_jax.ultralytics_pt import read_ultralytics

        state_dict, info = read_ultralytics(path)
        return state_dict, (f"{info['preset']} with {info['num_classes']} classes, Ultralytics "
                            f"{info.get('ultralytics_version') or '?'} ({info.get('weights_key')})"), \
            info.get("class_names")
    if path.suffix == ".safetensors":
        names = inference.weights_config(path).get("class_names")
        return convert.load_safetensors(path), "a .safetensors file", list(names) if names else None
    raise ValueError(f"--init-weights {path}: expected an Ultralytics .pt or a .safetensors file")


def load_initial_weights(model, path: Path, *, data_names=None, keep_class_rows: bool = False) -> list[str]:
    """Load ``path`` into ``model`` for fine-tuning (``convert.load_pretrained``); returns the log
    lines: what was loaded and what was re-initialised and, when the class layers were
    re-initialised and both the file's and the data's class names are known, the names they
    share (``keep_class_rows``: those classes keep the file's rows, ``class_names.keep_class_rows``)."""
    state_dict, what, ckpt_names = read_weights_file(path)
    try:
        report = convert.load_pretrained(model, state_dict)
    except ValueError as e:
        raise ValueError(f"--init-weights {path} ({what}) does not fit --model: {e}") from None
    lines = [f"init weights: {path} ({what}): {report.summary()}"]
    reinitialised = any(k.startswith(model.class_output_prefixes()) for k in report.reinitialized)
    if reinitialised and ckpt_names and data_names:
        if keep_class_rows:
            lines.append(CN.keep_class_rows(model, state_dict, ckpt_names, data_names).summary(data_names))
        else:
            shared = [data_names[i] for i, _ in CN.shared_class_pairs(data_names, ckpt_names)]
            lines.append(f"class rows: {len(shared)} of the data's class names are the checkpoint's"
                         + (f" ({', '.join(shared)}); --keep-class-rows keeps their rows" if shared else ""))
    elif keep_class_rows:
        lines.append("--keep-class-rows: nothing to keep ("
                     + ("the class layers were loaded as they are)" if not reinitialised
                        else "the class names of the checkpoint or of the data are unknown)"))
    return lines


def _due(done: int, every_steps: int, every_epochs: int, steps_per_epoch: int, total: int) -> bool:
    """Whether something scheduled every N steps / every N epochs falls after step ``done``;
    always after the last step."""
    if done == total:
        return True
    if every_steps and done % every_steps == 0:
        return True
    return bool(every_epochs) and done % (every_epochs * steps_per_epoch) == 0


class MetricsWriter:
    """``metrics.jsonl``, one JSON row per line, written by process 0 only (a no-op elsewhere)."""

    def __init__(self, path: Path | None, *, keep_until_step: int | None = None):
        self.file = None
        if path is None:
            return
        if keep_until_step is not None:  # resume: drop the rows logged after the restored checkpoint
            _truncate_metrics(path, keep_until_step)
        self.file = path.open("a" if keep_until_step is not None else "w")

    def write(self, kind: str, row: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(dict(kind=kind, **row)) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


class Meter:
    """Images and seconds of the loop's stepping, excluding what happens between intervals
    (evaluation, checkpoints, plots): ``start()`` after those, ``take()`` at each host read."""

    def __init__(self):
        self.images = self.total_images = 0
        self.wait = self.total_seconds = 0.0
        self.t = time.perf_counter()

    def start(self) -> None:
        self.images, self.wait, self.t = 0, 0.0, time.perf_counter()

    def take(self) -> dict:
        elapsed = max(time.perf_counter() - self.t, 1e-9)
        self.total_images += self.images
        self.total_seconds += elapsed
        row = dict(images_per_s=self.images / elapsed, data_wait_fraction=self.wait / elapsed)
        self.start()
        return row

    def throughput(self, step_only_images_per_s: float | None) -> dict:
        """The run's end-to-end images per second so far and, against the step-only figure, the
        input efficiency."""
        if not self.total_seconds or not self.total_images:
            return {}
        out = dict(end_to_end_images_per_s=self.total_images / self.total_seconds)
        if step_only_images_per_s:
            out["input_efficiency"] = out["end_to_end_images_per_s"] / step_only_images_per_s
        return out


@dataclasses.dataclass
class Run:
    """What :func:`setup` builds and :func:`loop` advances. ``cfg`` is the configuration with
    everything the data decides filled in (class count and names, ``--max-boxes auto``, the run
    directory); it is never changed."""

    cfg: TrainConfig
    run_dir: Path
    primary: bool
    log: Callable[[str], None]
    progress: bool
    mesh: Any
    train_data: Any
    val_data: Any
    pipeline: Any
    data_iterator: Any
    steps_per_epoch: int
    total_steps: int
    model: nnx.Module
    eval_graphdef: Any
    state: TrainState
    train_step: Callable
    lr_fn: Optional[Callable]
    mngr: ocp.CheckpointManager
    metrics: MetricsWriter
    start_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    evals: list = dataclasses.field(default_factory=list)
    epoch_rows: list = dataclasses.field(default_factory=list)   # host metrics of the current epoch
    timing: dict = dataclasses.field(default_factory=dict)       # compile, first step, step-only throughput
    unwritten: dict = dataclasses.field(default_factory=dict)    # timing fields for the next interval row
    compile_cache_dir: Optional[str] = None                      # the persistent compilation cache in use
    data_resolved: dict = dataclasses.field(default_factory=dict)  # what the pipeline's "auto" options became
    train_graphdef: Any = None                                   # the network's graph in train mode (the step's)
    step_material: dict = dataclasses.field(default_factory=dict)  # what the step was built from (trace cache key)
    trace_cache: str = "off"                                     # the trace cache's outcome (step_cache)


# ----------------------------------------------------------------------------- setup

def _prepare_run_dir(cfg: TrainConfig, resume: Path | None, primary: bool) -> Path:
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / _run_name()
    if resume is None and _has_checkpoints(run_dir):
        # (Checkpoints are written after every process has passed the setup barrier, so all
        # processes see the same answer here.)
        raise ValueError(f"{run_dir} already holds a run with checkpoints: continue it with --resume {run_dir}, "
                         "or choose another --run-dir")
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_data(cfg: TrainConfig, progress: bool, log) -> tuple[TrainConfig, Any, Any]:
    """``(cfg with the data's class count and names, train data, validation data or None)``."""
    train_data = build_dataset(cfg.data, split=cfg.split, num_classes=cfg.num_classes, img_size=cfg.img_size,
                               letterbox=cfg.letterbox, max_samples=cfg.max_samples, bbox_format=cfg.bbox_format,
                               image_dir=cfg.image_dir, shapes_num_images=cfg.shapes_train_images,
                               shapes_img_size=cfg.shapes_img_size, shapes_seed=cfg.seed, progress=progress,
                               stream=True)
    streamed = isinstance(train_data.examples, StreamSource)
    cfg = dataclasses.replace(cfg, num_classes=cfg.num_classes or train_data.num_classes,
                              class_names=cfg.class_names or train_data.class_names)
    log(f"train data: {'a stream' if streamed else len(train_data.examples)} images from {cfg.data!r} ({cfg.split}); "
        f"{train_data.stats.summary()}")
    val_data = None
    if bool(cfg.val_split) and bool(cfg.eval_every_epochs or cfg.eval_every_steps):
        val_spec = cfg.val_data or cfg.data
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
    return cfg, train_data, val_data


def _make_pipeline(cfg: TrainConfig, train_data, log=lambda s: None, warn=C.warn_stderr
                   ) -> tuple[TrainConfig, Any, int, int, dict]:
    """``(cfg with --max-boxes resolved, pipeline, steps per epoch, total steps, what the
    pipeline's auto options resolved to)``. ``--max-boxes`` from the index's box counts
    (``data.box_counts``), logged, with one summary warning when a padding drops boxes."""
    streamed = isinstance(train_data.examples, StreamSource)
    augment = recipes.augmentation(cfg)
    resolved = {}
    if streamed:
        if cfg.max_boxes == "auto":
            cfg = dataclasses.replace(cfg, max_boxes=STREAM_MAX_BOXES)
            log(f"max_boxes {STREAM_MAX_BOXES}: {cfg.data!r} is streamed, so its box counts are unknown before "
                "training; boxes past it are dropped and counted in the data summary (--max-boxes N changes it)")
            resolved["max_boxes"] = dict(max_boxes=STREAM_MAX_BOXES, source="stream default")
    else:
        counts = box_counts(train_data.examples)
        choice = resolve_max_boxes(counts, requested=cfg.max_boxes, mosaic=augment.mosaic > 0)
        cfg = dataclasses.replace(cfg, max_boxes=choice.max_boxes)
        log(choice.describe())
        message = max_boxes_warning(choice, counts)
        if message:
            warn(message)
        resolved["max_boxes"] = dict(max_boxes=choice.max_boxes, needed=choice.needed, source=choice.source,
                                     images_over=choice.images_over, boxes_over=choice.boxes_over)
    kwargs = dict(batch_size=cfg.batch_size, img_size=cfg.img_size, max_boxes=cfg.max_boxes, seed=cfg.seed,
                  letterbox=cfg.letterbox, augment=augment, epochs=cfg.epochs if cfg.steps is None else None,
                  workers=cfg.workers, shard=(jax.process_index(), jax.process_count()))
    if streamed:
        pipeline = StreamPipeline(train_data.examples, **kwargs)
    else:
        trim = cfg.trim_boxes == "on" or (cfg.trim_boxes == "auto" and cfg.max_boxes >= LARGE_M
                                          and jax.process_count() == 1)
        threads = cfg.data_threads or default_threads()
        cache = None if cfg.cache_images == "auto" else cfg.cache_images == "on"
        pipeline = TrainPipeline(train_data.examples, trim_boxes=trim, threads=threads, cache_images=cache, **kwargs)
        resolved.update(trim_boxes=bool(pipeline.trim_boxes), data_threads=int(threads),
                        cache_images=bool(pipeline.cache_images))
        log(f"input: {threads} threads" + (f", {cfg.workers} workers" if cfg.workers else "")
            + f", decoded-image cache {'on' if pipeline.cache_images else 'off'}"
            + f", box padding trimmed per batch {'on' if pipeline.trim_boxes else 'off'}")
    steps_per_epoch = pipeline.steps_per_epoch
    if steps_per_epoch is None:  # a stream of unknown size: --steps sets the length, one nominal epoch
        if cfg.steps is None:
            raise ValueError(f"{cfg.data!r} is streamed and its size is unknown: give --steps (or --max-samples "
                             "to read a subset into memory)")
        steps_per_epoch = cfg.steps
    return cfg, pipeline, steps_per_epoch, cfg.steps or cfg.epochs * steps_per_epoch, resolved


def _saved_variant(run_dir: Path) -> Variant:
    """The YOLO11 variant a run recorded in its ``config.json`` (the default when none)."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    try:
        return Variant.from_json(saved.get(convert.VARIANT_METADATA_KEY))
    except ValueError as e:
        raise ValueError(f"{path}: {convert.VARIANT_METADATA_KEY}: {e}") from None


def _build_model(cfg: TrainConfig, resume: Path | None, log) -> nnx.Module:
    """The network: with ``--init-weights`` (not resuming) the one the file describes
    (``convert.build_for_init_weights``: a YOLO11 with the file's variant; with
    ``--keep-class-rows`` onto another class list, its class branch as wide as the file's), its
    weights loaded;
    resuming, the variant the run recorded; else ``--model`` as built from scratch."""
    kwargs = dict(num_classes=cfg.num_classes, dtype=DTYPES[cfg.dtype], conv_impl=cfg.conv_impl,
                  rngs=nnx.Rngs(cfg.seed))
    if cfg.init_weights and resume is None:
        model, note = convert.build_for_init_weights(cfg.model, cfg.init_weights, keep_class_rows=cfg.keep_class_rows,
                                                     class_names=cfg.class_names, **kwargs)
        for line in (note.splitlines() if note else []):
            log(line)
        for line in load_initial_weights(model, Path(cfg.init_weights), data_names=cfg.class_names,
                                         keep_class_rows=cfg.keep_class_rows):
            log(line)
        if cfg.class_bias_prior:
            log("class-logit biases: from --init-weights (no prior set)")
        return model
    variant = _saved_variant(resume) if resume is not None else DEFAULT_VARIANT
    if variant != DEFAULT_VARIANT:
        log(f"resume: the architecture the run recorded: {variant.name}")
    model = build_model(cfg.model, variant=variant, **kwargs)
    if cfg.class_bias_prior:
        log(class_bias_prior(model, cfg.num_classes))
    return model


def _build_step(cfg: TrainConfig, params, length: recipes.RunLength, mesh, graphdef, log):
    """The recipe's loss and optimizer, and the jitted step: ``(train_step, optimizer setup)``."""
    loss_fn = recipes.get_loss(cfg.loss).build(cfg)
    opt = recipes.get_optimizer(cfg.optimizer).build(cfg, params, length)
    train_step = make_train_step(graphdef, opt.tx, loss=loss_fn, lr_fn=opt.lr_fn, hyperparams_fn=opt.hyperparams_fn,
                                 torch_compat=opt.torch_compat, loss_scale=opt.loss_scale, mesh=mesh)
    log(f"recipe: {cfg.recipe} (loss {cfg.loss}, assigner {cfg.assigner}, optimizer {cfg.optimizer}, "
        f"EMA {'on' if cfg.ema else 'off'}, augmentation {cfg.augment}"
        f"{' (on)' if recipes.augmentation(cfg).enabled else ' (off)'}); "
        + ", ".join(f"{k}={v}" for k, v in opt.info.items() if not isinstance(v, dict)))
    return train_step, opt


def _write_config(run: Run, opt: recipes.OptimizerSetup) -> None:
    """``config.json``: every option that runs, and what the run resolved from them."""
    resolved = dict(steps_per_epoch=run.steps_per_epoch, total_steps=run.total_steps,
                    augment=dataclasses.asdict(recipes.augmentation(run.cfg)), optimizer_info=dict(opt.info),
                    loss_scale=opt.loss_scale, devices=int(run.mesh.devices.size),
                    platform=run.mesh.devices.flat[0].platform, processes=jax.process_count(),
                    compile_cache_dir=run.compile_cache_dir, **run.data_resolved)
    variant = convert.variant_metadata(run.model)  # a YOLO11's architecture variant (resume and loaders read it)
    (run.run_dir / "config.json").write_text(
        json.dumps({**dataclasses.asdict(run.cfg), **variant, "resolved": resolved}, indent=1, default=str))


def _restore(run: Run, resume: Path) -> None:
    """Continue from the last checkpoint in ``run.mngr``: state, history, pipeline position."""
    run.state, meta, restored_data = restore_checkpoint(run.mngr, run.state, data_iterator=run.data_iterator)
    run.history, run.evals = meta.get("history", []), meta.get("evals", [])
    run.epoch_rows = list(meta.get("epoch_rows", []))
    run.start_step = int(parallel.to_host(run.state.step))
    if not restored_data:  # no pipeline state that fits: the position is a function of the step
        run.log("the checkpoint holds no input-pipeline position that fits this pipeline (another --workers?); "
                "the batches continue from the step, which gives the same data")
        run.data_iterator = iter(run.pipeline.dataset(run.total_steps, start_step=run.start_step))
    for key in COUNTER_KEYS:  # the pipeline's counts up to the checkpoint
        setattr(run.train_data.stats, key, int(meta.get("data_stats", {}).get(key, 0)))
    run.log(f"resumed {resume} at step {run.start_step} (epoch {run.start_step / run.steps_per_epoch:.2f})")


def setup(cfg: TrainConfig, *, resume: Path | None = None, progress: bool = True) -> Run:
    """Everything before the first step: checks, devices, data, model, the recipe's loss and
    optimizer, the jitted step, checkpoints (restored with ``resume``), ``config.json``."""
    check_config(cfg)
    host_malloc = host_memory.configure(cfg.host_malloc)  # before JAX's backend starts (host_memory's docstring)
    cache_dir = compile_cache.enable(compile_cache.default_cache_dir() if cfg.compile_cache_dir == "default"
                                     else cfg.compile_cache_dir)
    parallel.initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    primary = parallel.is_primary()  # only process 0 logs and writes files (Orbax: all take part)
    mesh = parallel.make_mesh(cfg.devices)
    parallel.check_batch_size(cfg.batch_size, mesh)
    run_dir = _prepare_run_dir(cfg, resume, primary)
    progress = progress and primary
    log = tqdm.write if progress else (lambda s: None)
    cfg, train_data, val_data = _load_data(dataclasses.replace(cfg, run_dir=str(run_dir)), progress, log)
    cfg, pipeline, steps_per_epoch, total_steps, data_resolved = _make_pipeline(
        cfg, train_data, log, warn=C.warn_stderr if primary else (lambda s: None))

    model = _build_model(cfg, resume, log)
    eval_graphdef = inference.eval_graphdef(model)
    model.train()
    graphdef, params, rest = split_model(model)
    log(f"model: {cfg.model}, {count_parameters(model):,} parameters, {cfg.num_classes} classes, "
        f"{cfg.img_size}px, {cfg.dtype}, conv {model.conv_impl}"
        + (" (auto)" if cfg.conv_impl == "auto" else "") + f"; {total_steps} steps ({steps_per_epoch} per epoch); "
        f"batch {cfg.batch_size} over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "") + f"; host memory {host_malloc}")
    streamed = isinstance(train_data.examples, StreamSource)
    num_images = total_steps * cfg.batch_size / math.ceil(total_steps / steps_per_epoch) if streamed \
        else len(train_data.examples)
    length = recipes.RunLength(steps_per_epoch=steps_per_epoch, total_steps=total_steps, num_images=int(num_images))
    train_step, opt = _build_step(cfg, params, length, mesh, graphdef, log)
    state = parallel.replicate(init_train_state(params, rest, opt.tx, ema=cfg.ema), mesh)

    parallel.barrier("setup")  # model init compiles per process; Orbax's next sync is a collective
    run = Run(cfg=cfg, run_dir=run_dir, primary=primary, log=log, progress=progress, mesh=mesh,
              train_data=train_data, val_data=val_data, pipeline=pipeline,
              data_iterator=iter(pipeline.dataset(total_steps)), steps_per_epoch=steps_per_epoch,
              total_steps=total_steps, model=model, eval_graphdef=eval_graphdef, state=state, train_step=train_step,
              lr_fn=opt.lr_fn, mngr=checkpoint_manager(run_dir, cfg.keep_checkpoints), metrics=MetricsWriter(None))
    run.compile_cache_dir, run.data_resolved = cache_dir, dict(data_resolved, host_malloc=host_malloc)
    run.train_graphdef = graphdef
    run.step_material = dict(config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_STEP},
                             length=dataclasses.asdict(length))
    if resume is not None:
        _restore(run, resume)
    if primary:
        _write_config(run, opt)
        run.metrics = MetricsWriter(run_dir / "metrics.jsonl",
                                    keep_until_step=run.start_step if resume is not None else None)
    return run


# ----------------------------------------------------------------------------- the loop

# Options that do not change the traced train step (left out of the trace cache's key; any other
# option, changed, traces the step again).
NOT_IN_STEP = ("config", "run_dir", "compile_cache_dir", "trace_cache", "host_malloc", "step_timing_steps",
               "log_every", "eval_every_epochs", "eval_every_steps", "eval_batch_size", "checkpoint_every_epochs",
               "checkpoint_every_steps", "keep_checkpoints", "val_data", "val_split", "val_image_dir",
               "val_max_samples", "shapes_val_images", "coordinator_address", "process_id")


def _compile_step(run: Run, device_batch) -> Callable:
    """The compiled step: through the trace cache (``step_cache``) when it can serve this run,
    else traced, lowered and compiled here. Sets ``run.trace_cache`` to what happened."""
    cfg = run.cfg
    if cfg.trace_cache == "off":
        why = "--trace-cache off"
    elif run.compile_cache_dir is None:
        why = "the compilation cache is off"
    else:
        why = step_cache.eligible(devices=int(run.mesh.devices.size), processes=jax.process_count(),
                                  builders={"loss": recipes.get_loss(cfg.loss).build,
                                            "optimizer": recipes.get_optimizer(cfg.optimizer).build})
    if why is not None:
        run.trace_cache = f"off ({why})"
        return run.train_step.lower(run.state, device_batch).compile()
    key = step_cache.cache_key(run.train_graphdef, run.state, device_batch, run.step_material)
    compiled = step_cache.compile_step(run.train_step, run.state, device_batch, key=key, log=run.log,
                                       folder=Path(run.compile_cache_dir) / step_cache.SUBDIR)
    run.trace_cache = compiled.outcome
    return compiled


def _compile(run: Run, device_batch) -> Callable:
    """Compile the step (then every process starts stepping together) and time it: compile
    seconds (tracing included, unless the trace cache had the step) and, with
    ``--step-timing-steps N``, N steps on this batch on a copy of the state (the step-only
    throughput)."""
    t = time.perf_counter()
    compiled = _compile_step(run, device_batch)
    parallel.barrier("compiled")
    run.timing["compile_s"] = time.perf_counter() - t
    n = run.cfg.step_timing_steps
    if n and jax.process_count() > 1:
        run.log("--step-timing-steps: not measured with several processes (the step-only throughput is a "
                "single-process figure)")
        n = 0
    if n:
        scratch = jax.tree.map(jnp.copy, run.state)   # the step donates its state: time on a copy
        scratch, metrics = compiled(scratch, device_batch)  # (one untimed call: first-run costs)
        jax.block_until_ready(metrics)
        seconds = []
        for _ in range(n):  # each step timed alone; the median, so that one step slowed by another
            t = time.perf_counter()  # process (or the pipeline filling its buffer) does not set the figure
            scratch, metrics = compiled(scratch, device_batch)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - t)
        run.timing["step_only_images_per_s"] = run.cfg.batch_size / float(np.median(seconds))
        del scratch
    return compiled


def _flush(run: Run, pending: list, meter: Meter, done: int, epoch: int, bar) -> None:
    """Read the pending metrics (the only host sync of the loop), stop on a non-finite loss,
    log an interval row."""
    host = [{k: float(v) for k, v in r.items()} for r in parallel.to_host(pending)]
    bad = [r for r in host if not all(math.isfinite(r[k]) for k in LOSS_KEYS if k in r)]
    if bad:
        run.metrics.close()
        last = run.mngr.latest_step()
        raise NonFiniteLossError(
            f"non-finite loss within steps {done - len(pending) + 1}..{done} (epoch {epoch}; "
            f"{ {k: bad[0][k] for k in LOSS_KEYS if k in bad[0]} }). Training stopped; "
            + (f"the last good checkpoint (step {last}) in {run.run_dir / 'checkpoints'} is intact."
               if last is not None else "no checkpoint had been written yet."))
    row = _mean_metrics(host)
    row.update(epoch=epoch, step=done, **meter.take(), **run.unwritten)
    run.unwritten = {}
    if run.timing.get("step_only_images_per_s") and row["images_per_s"] > 0:  # (0: only the first step, untimed)
        row["input_efficiency"] = row["images_per_s"] / run.timing["step_only_images_per_s"]
    run.metrics.write("interval", row)
    run.epoch_rows.extend(host)
    bar.set_postfix(epoch=epoch, **{k.replace("_loss", ""): f"{row[k]:.3g}" for k in LOSS_KEYS if k in row},
                    img_s=f"{row['images_per_s']:.0f}")
    bar.update(len(pending))
    pending.clear()


def _evaluate(run: Run, done: int) -> dict:
    """COCO mAP on the validation data, on process 0's first device, from host copies of the
    replicated state (the EMA when there is one)."""
    eval_states = jax.device_put(parallel.to_host(eval_variables(run.state)), jax.local_devices()[0])
    res = inference.evaluate_examples(run.eval_graphdef, eval_states, run.val_data.examples,
                                      num_classes=run.cfg.num_classes, img_size=run.cfg.img_size,
                                      batch_size=run.cfg.eval_batch_size, letterbox=run.cfg.letterbox,
                                      class_names=run.cfg.class_names, progress=run.progress)
    return dict(step=done, epoch=done / run.steps_per_epoch, mAP=res["mAP"], AP50=res["AP50"], AP75=res["AP75"])


def _after_step(run: Run, done: int, epoch: int, epoch_end: bool, evaluate: bool, t_start: float,
                throughput: dict) -> None:
    """The epoch's summary row (with the run's ``throughput`` so far), evaluation and plots, when
    due after step ``done``."""
    summary = None
    if epoch_end:
        summary = _mean_metrics(run.epoch_rows)
        summary.update(epoch=epoch, step=done, elapsed_s=time.perf_counter() - t_start, **throughput)
        if run.lr_fn is not None:
            summary["lr"] = float(run.lr_fn(done - 1))
        run.epoch_rows = []
    if evaluate:
        if run.primary:
            result = _evaluate(run, done)
            run.evals.append(result)
            run.metrics.write("eval", result)
            run.log(f"step {done} (epoch {done / run.steps_per_epoch:.2f}): mAP={result['mAP']:.4f}, "
                    f"AP50={result['AP50']:.4f}")
            if summary is not None:
                summary.update(mAP=result["mAP"], AP50=result["AP50"], AP75=result["AP75"])
        parallel.barrier(f"evaluated-{done}")  # process 0 may have evaluated alone; saving syncs next
    if summary is not None:
        run.history.append(summary)
        run.metrics.write("epoch", summary)
        run.log(f"epoch {epoch}: " + ", ".join(
            f"{k}={summary[k]:.4g}" for k in (*LOSS_KEYS, "num_pos", "lr", "lr_weight") if k in summary))
        if run.primary:
            plots.plot_loss_curves(run.history, run.run_dir / "loss_curves.png")
            if run.evals:
                plots.plot_map_curve(run.evals, run.run_dir / "map_curve.png")


def _save(run: Run, done: int) -> None:
    save_checkpoint(run.mngr, run.state, {"step": done, "epoch": done / run.steps_per_epoch, "history": run.history,
                                          "evals": run.evals, "epoch_rows": run.epoch_rows,
                                          "data_stats": run.train_data.stats.as_dict(),
                                          "config": dataclasses.asdict(run.cfg)}, run.data_iterator)
    parallel.barrier(f"saved-{done}")


def loop(run: Run, *, end_step: int, t_start: float) -> None:
    """Steps ``run.start_step`` .. ``end_step``: one batch each, host reads every ``--log-every``
    steps, then the epoch summary, evaluation and checkpoint when due."""
    cfg, pending, meter = run.cfg, [], Meter()
    compiled_steps = {}  # batch shapes -> compiled step (one per pad size with --trim-boxes)
    bar = tqdm(total=run.total_steps, initial=run.start_step, desc="train", unit="step", disable=not run.progress,
               dynamic_ncols=True)
    for step in range(run.start_step, end_step):
        t_wait = time.perf_counter()
        batch = next(run.data_iterator)
        meter.wait += time.perf_counter() - t_wait
        add_counts(run.train_data.stats, batch)
        device_batch = parallel.global_batch({k: batch[k] for k in BATCH_KEYS}, run.mesh)
        shapes = tuple((k, tuple(v.shape)) for k, v in sorted(device_batch.items()))
        compiled = compiled_steps.get(shapes)
        if compiled is None:  # the first batch: compile and time the step; a new pad size: compile
            t_pause = time.perf_counter()
            compiled = compiled_steps[shapes] = (_compile_step(run, device_batch) if compiled_steps
                                                 else _compile(run, device_batch))
            if len(compiled_steps) > 1:
                meter.t += time.perf_counter() - t_pause  # (compiling is not stepping time)
                run.log(f"step {step + 1}: compiled the step for batches padded to {device_batch['mask'].shape[1]} "
                        f"boxes ({len(compiled_steps)} batch shapes so far)")
        run.state, metrics = compiled(run.state, device_batch)
        pending.append(metrics)
        if step == run.start_step:  # the time to the first step, then the throughput from the second
            jax.block_until_ready(metrics)
            run.timing["time_to_first_step_s"] = time.perf_counter() - t_start
            run.unwritten = dict(run.timing, trace_cache=run.trace_cache)  # (on the interval row of the first step)
            run.log("first step after " + ", ".join(f"{k} {v:.3g}" for k, v in run.timing.items())
                    + f"; traced step: {run.trace_cache}")
            if run.primary:  # (after the first step: the picture is not needed to start training)
                plots.plot_sample_batch(batch["images"], batch["boxes_cxcywh"], batch["mask"], batch["labels"],
                                        run.run_dir / "sample_batch.png", class_names=cfg.class_names)
            meter.start()
        else:
            meter.images += cfg.batch_size
        done, epoch = step + 1, step // run.steps_per_epoch + 1   # the epoch this step belongs to, from 1
        epoch_end = done % run.steps_per_epoch == 0 or done == run.total_steps
        save = done == end_step or _due(done, cfg.checkpoint_every_steps, cfg.checkpoint_every_epochs,
                                        run.steps_per_epoch, run.total_steps)
        evaluate = run.val_data is not None and _due(done, cfg.eval_every_steps, cfg.eval_every_epochs,
                                                     run.steps_per_epoch, run.total_steps)
        if len(pending) == cfg.log_every or epoch_end or save:
            _flush(run, pending, meter, done, epoch, bar)
        if epoch_end or save or evaluate:
            _after_step(run, done, epoch, epoch_end, evaluate, t_start,
                        meter.throughput(run.timing.get("step_only_images_per_s")))
            if save:
                _save(run, done)
            meter.start()  # evaluation, plots and checkpoints are not stepping time
    bar.close()
    run.timing.update(meter.throughput(run.timing.get("step_only_images_per_s")))


def finish(run: Run, *, end_step: int, t_start: float) -> dict:
    """Export (when the run is complete) and the summary, returned and logged (its ``throughput``:
    compile and first-step seconds, step-only and end-to-end images per second, their ratio)."""
    finished = end_step == run.total_steps
    timing = dict(run.timing)
    run.metrics.close()
    if run.primary and finished:
        plots.plot_iou_variants(run.run_dir / "iou_variants.png")
        nnx.update(run.model, *parallel.to_host(eval_variables(run.state)))  # the EMA when there is one
        convert.save_safetensors(run.model, run.run_dir / "weights.safetensors",
                                 metadata={"config": json.dumps(dataclasses.asdict(run.cfg)),
                                           **convert.variant_metadata(run.model)})
    result = dict(run_dir=str(run.run_dir), history=run.history, evals=run.evals,
                  data_summary=run.train_data.stats.summary(),
                  val_data_summary=run.val_data.stats.summary() if run.val_data is not None else None,
                  train_seconds=time.perf_counter() - t_start, steps=end_step, throughput=timing)
    run.log(f"training data: {run.train_data.stats.summary()}")
    if run.val_data is not None:
        run.log(f"validation data: {run.val_data.stats.summary()}")
    run.log("throughput: " + ", ".join(f"{k} {v:.3g}" for k, v in timing.items() if v is not None))
    if run.evals:
        run.log(f"final validation mAP@[.5:.95] {run.evals[-1]['mAP']:.4f}, AP50 {run.evals[-1]['AP50']:.4f}")
    if finished:
        run.log(f"done in {result['train_seconds']:.0f}s: weights in {run.run_dir / 'weights.safetensors'}")
    else:
        run.log(f"stopped after step {end_step} of {run.total_steps}: continue with --resume {run.run_dir}")
    return result


def train(cfg: TrainConfig, *, resume: Path | None = None, progress: bool = True,
          stop_after_steps: int | None = None) -> dict:
    """Run training; returns a summary dict. Raises ``NonFiniteLossError`` if the loss diverges.

    ``stop_after_steps`` ends this call after that many steps (a checkpoint written), as an
    interruption would; ``resume=run_dir`` continues it.
    """
    t_start = time.perf_counter()
    run = setup(cfg, resume=resume, progress=progress)
    end_step = run.total_steps if stop_after_steps is None else min(run.total_steps,
                                                                    run.start_step + stop_after_steps)
    try:
        loop(run, end_step=end_step, t_start=t_start)
    except BaseException:
        run.metrics.close()
        raise
    return finish(run, end_step=end_step, t_start=t_start)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_config_name(argv))
    args = parser.parse_args(argv)
    try:
        _deprecated(args)
        cfg = resumed_config(args.resume, args) if args.resume is not None else config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        train(cfg, resume=args.resume)
    except (NonFiniteLossError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreachable Hub, missing files (ConnectionError is an OSError)
        print(f"error: could not read the data or write the run: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
