"""The training configuration (every option of ``python -m yolo11_jax.train``) and the named
configurations that ``--config`` selects.

Each option is declared once, below, with its type, default, help and check
(:func:`yolo11_jax.options.option`); the command line, ``--help``, the README's option table,
the checks and ``--resume`` all derive from this class. A named configuration is a small dict
of overrides of these defaults, headed by the command that runs it and what it reaches.

The options a recipe decides (``--loss``, ``--optimizer``, ``--lr``, ``--augment``, ``--topk`` ...;
``recipes.DECIDED_FIELDS``) are filled when a configuration is built, from ``--recipe`` and the
parts it selects (``recipes.resolve``): a ``TrainConfig`` always holds the values that run, and
``--help`` shows them for the chosen ``--config``. A configuration is frozen: derive a new one
with ``dataclasses.replace``.

Names: ``--config`` names a *training run* (data, network, schedule, evaluation), ``--model``
a *network* (``notebook``, ``small``, ``tiny``, ``yolo11n`` ...). The notebook's run is the
``notebook-coco`` config; its network is ``--model notebook``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from yolo11_jax import host_memory, recipes
from yolo11_jax.kernels import CONV_IMPLS
from yolo11_jax.options import at_least, between, greater_than, multiple_of, option, warn_stderr
from yolo11_jax.optim_notebook import SCHEDULES
from yolo11_jax.presets import PRESETS
from yolo11_jax.recipes import FROM_RECIPE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _registered(table_name: str):
    """A check that the value is a registered name in ``recipes.<table_name>`` (looked up when
    checked, so that recipes registered later count)."""
    def check(value):
        table = getattr(recipes, table_name)
        return None if value in table else f"must be one of {', '.join(table)}, got {value!r}"
    return check




def _model_help() -> str:
    return "network: " + ", ".join(f"{name} ({p.description})" for name, p in PRESETS.items())


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything needed to repeat a run (written to ``config.json``). Defaults: the library's, which
    are the ``cpu`` config's except ``conv_impl`` (``lax`` here, ``cpu_taps`` there);
    the options a recipe decides are filled from ``recipe`` on construction (:func:`recipes.resolve`)."""

    config: str = option("cpu", "the named configuration this run started from", cli=False)
    # -- data
    model: str = option("small", _model_help(), choices=tuple(PRESETS))
    data: str = option("shapes", "training data: 'shapes' (embedded), a Hub name (e.g. detection-datasets/coco, "
                       "streamed), a save_to_disk folder, parquet files, a COCO instances_*.json, or a YOLO "
                       "images/labels folder")
    split: str = option("train", "split of --data to train on")
    val_data: Optional[str] = option(None, "validation data spec (default: --data)")
    val_split: Optional[str] = option("validation", "validation split; 'none' disables evaluation")
    image_dir: Optional[str] = option(None, "image folder for a COCO .json --data file (default: guessed from the "
                                      "json's location)")
    val_image_dir: Optional[str] = option(None, "image folder for a COCO .json --val-data file (default: guessed "
                                          "from its location; --image-dir when the validation split comes from "
                                          "--data)")
    bbox_format: Optional[str] = option(None, "bbox convention of Hugging Face data: xywh (COCO pixels, the "
                                        "notebook's), xyxy, cxcywh_norm",
                                        choices=("xywh", "xyxy", "cxcywh_norm"))
    num_classes: Optional[int] = option(None, "number of classes (default: from the data)", check=at_least(1))
    class_names: Optional[list] = option(None, "class names (from the data)", cli=False)
    max_samples: Optional[int] = option(None, "use at most this many training images", check=at_least(1))
    val_max_samples: Optional[int] = option(None, "evaluate at most this many images", check=at_least(1))
    shapes_train_images: int = option(2000, "embedded dataset: training images", check=at_least(1))
    shapes_val_images: int = option(200, "embedded dataset: validation images", check=at_least(0))
    shapes_img_size: int = option(128, "embedded dataset: rendered image size", check=at_least(1))
    img_size: int = option(128, "network input size in pixels (multiple of 32); images are resized to it",
                           check=(at_least(32), multiple_of(32)))
    letterbox: bool = option(False, "resize keeping the aspect ratio with grey padding (default: plain resize, "
                             "as the notebook)")
    batch_size: int = option(16, "images per step; the last partial batch of an epoch is dropped",
                             check=at_least(1))
    max_boxes: int = option("auto", "ground-truth boxes per image after padding; auto: the most boxes a sample can "
                            "hold (the most of one training image, x 4 with mosaics), rounded up to 8, 16, 32 ... and "
                            "capped at 512 (data/box_counts.py), resolved from the data's index before the first "
                            "step; a number: exactly that (more are dropped, with one summary warning)",
                            check=at_least(1), special=("auto",))
    trim_boxes: str = option("auto", "cut each batch's box padding to the smallest pad size that holds its real "
                             "boxes, so the assigner costs what the batch holds (one compilation per size met); "
                             "auto: on when max_boxes >= 64 in a single process", choices=("auto", "on", "off"))
    data_threads: int = option(0, "threads making samples in this process when --workers 0 (0: by core count, "
                               "data.pipeline.default_threads)", check=at_least(0))
    cache_images: str = option("auto", "keep each decoded training image in memory for the run; auto: when the "
                               "whole index fits 1 GiB decoded", choices=("auto", "on", "off"))
    workers: int = option(0, "worker processes reading, decoding and augmenting batches (Grain); 0: in this "
                          "process, with threads", check=at_least(0))
    augment: str = option(FROM_RECIPE, "training augmentation preset: none (the notebook's plain resize) or "
                          "ultralytics (mosaic, random affine, HSV, flip, with Ultralytics' YOLO11 settings); the "
                          "options below override single parts", check=_registered("AUGMENTS"))
    mosaic: float = option(FROM_RECIPE, "probability of a 4-image mosaic", check=between(0, 1))
    close_mosaic: int = option(FROM_RECIPE, "no mosaic in the last N epochs", check=at_least(0))
    degrees: float = option(FROM_RECIPE, "random rotation, +- degrees", check=at_least(0))
    translate: float = option(FROM_RECIPE, "random translation, +- fraction of the image", check=between(0, 1))
    scale: float = option(FROM_RECIPE, "random scale gain, +- fraction", check=between(0, 1))
    shear: float = option(FROM_RECIPE, "random shear, +- degrees", check=at_least(0))
    hsv_h: float = option(FROM_RECIPE, "hue gain, +- fraction of the hue circle", check=between(0, 1))
    hsv_s: float = option(FROM_RECIPE, "saturation gain, +- fraction", check=between(0, 1))
    hsv_v: float = option(FROM_RECIPE, "value gain, +- fraction", check=between(0, 1))
    fliplr: float = option(FROM_RECIPE, "probability of a horizontal flip", check=between(0, 1))
    init_weights: Optional[str] = option(None, "start from these weights (fine-tuning): an Ultralytics .pt "
                                         "checkpoint (yolo11n.pt, a best.pt) or a .safetensors file; with another "
                                         "number of classes, the class-output layers are re-initialised")
    keep_class_rows: bool = option(False, "with --init-weights onto another class list: keep the checkpoint's "
                                   "class-layer rows of the classes whose names the data shares (class_names.py); "
                                   "where the class branch's width follows the class count (yolo11n: 80 wide at 80 "
                                   "classes, 64 below 65), the branch keeps the checkpoint's width so its hidden "
                                   "layers load too (unlike Ultralytics, which re-initialises them; "
                                   "docs/keep_class_rows.md)")
    # -- length, optimizer, loss
    epochs: int = option(6, "training length in epochs (--steps overrides it)", check=at_least(1))
    steps: Optional[int] = option(None, "training length in optimizer steps (default: --epochs x the batches "
                                  "of an epoch)", check=at_least(1))
    recipe: str = option("notebook", "training recipe (yolo11_jax/recipes/): notebook (the notebook's loss and "
                         "assigner, AdamW on every parameter with a cosine schedule, no augmentation) or ultralytics "
                         "(Ultralytics' YOLO11 recipe: its loss and assigner, optimizer auto with three parameter "
                         "groups, warmup, linear decay, accumulation to a nominal batch, EMA, mosaic/affine/HSV/flip); "
                         "it sets the options marked 'recipe' below, which override single parts",
                         check=_registered("RECIPES"))
    loss: str = option(FROM_RECIPE, "recipe: loss and label assignment, notebook or ultralytics",
                       check=_registered("LOSSES"))
    optimizer: str = option(FROM_RECIPE, "recipe: notebook (AdamW with --lr, --weight-decay, beta1 --momentum on "
                            "every parameter, --schedule), or Ultralytics' auto, AdamW, SGD (parameter groups, warmup, "
                            "linear decay, accumulation; auto: AdamW at lr round(0.002 * 5 / (4 + classes), 6) up to "
                            "10,000 iterations, else SGD 0.01)", check=_registered("OPTIMIZERS"))
    ema: bool = option(FROM_RECIPE, "recipe: keep an exponential moving average of the weights and BatchNorm "
                       "statistics (Ultralytics' ModelEMA), which evaluation and the exported weights use")
    lr: float = option(FROM_RECIPE, "recipe: learning rate: the notebook optimizer's peak, Ultralytics' lr0 for "
                       "AdamW / SGD (auto picks its own; another value is an error)", check=greater_than(0))
    weight_decay: float = option(FROM_RECIPE, "recipe: weight decay: the notebook's AdamW on every parameter, "
                                 "Ultralytics' on the weights only, scaled by batch x accumulate / nbs",
                                 check=at_least(0))
    momentum: float = option(FROM_RECIPE, "recipe: the notebook AdamW's beta1; Ultralytics' SGD momentum / AdamW "
                             "beta1 (auto builds with 0.9 and warms SGD's momentum up to this)", check=between(0, 1))
    lrf: float = option(0.01, "Ultralytics: the final learning rate as a fraction of the first (linear decay)",
                        check=between(0, 1))
    warmup_epochs: float = option(3.0, "Ultralytics: warmup length in epochs (at least 100 iterations under "
                                  "--warmup-rule 8.3)", check=at_least(0))
    warmup_rule: str = option("8.3", "Ultralytics: the warmup length rule: 8.3 (8.3.253: max(round(warmup_epochs x "
                              "batches per epoch), 100) iterations) or 8.4 (8.4.190: round(min(warmup_epochs, "
                              "epochs - 1) x batches per epoch), no floor; shorter on small datasets)",
                              choices=("8.3", "8.4"))
    warmup_momentum: float = option(0.8, "Ultralytics: SGD momentum at the start of the warmup", check=between(0, 1))
    warmup_bias_lr: float = option(0.1, "Ultralytics: the biases' learning rate at the start of the warmup "
                                   "(auto: 0, as Ultralytics sets it)", check=at_least(0))
    nbs: int = option(64, "Ultralytics: nominal batch size; gradients are accumulated over round(nbs / batch) "
                      "steps", check=at_least(1))
    clip_norm: float = option(10.0, "global gradient-norm clipping (0 disables)", check=at_least(0))
    schedule: str = option("epoch-cosine", "notebook optimizer: epoch-cosine (the notebook's CosineAnnealingLR "
                           "stepped per epoch), step-cosine, constant", choices=SCHEDULES)
    warmup_steps: int = option(0, "notebook optimizer: linear learning-rate warmup steps", check=at_least(0))
    torch_compat: bool = option(FROM_RECIPE, "recipe: reproduce the notebook's PyTorch optimizer step for step: "
                                "torch's clipping, and the regression branch left untouched on a batch without boxes "
                                "(on with the notebook's loss and optimizer; --no-torch-compat: the plain Optax "
                                "chain)")
    cls_weight: float = option(0.5, "classification loss weight", check=at_least(0))
    box_weight: float = option(7.5, "CIoU loss weight", check=at_least(0))
    dfl_weight: float = option(1.5, "DFL loss weight", check=at_least(0))
    topk: int = option(FROM_RECIPE, "recipe (from --loss): TAL anchors per box", check=at_least(1))
    assigner: str = option(FROM_RECIPE, "recipe (from --loss): label assignment; the notebook's loss: spec (the "
                           "plain dense spec, assign.py), chunked or chunked-sparse (the same result by chunks of "
                           "anchors, assign_chunked.py); Ultralytics' loss: ultralytics (its own TAL, "
                           "assign_ultralytics.py)")
    class_bias_prior: bool = option(FROM_RECIPE, "recipe (from --loss): start the class logits at Ultralytics' "
                                    "prior bias log(5 / classes / (640 / stride)^2) (YOLO11 networks have it from "
                                    "their init; the notebook's get it set; not with --init-weights)")
    seed: int = option(0, "seed for initialisation and shuffling")
    dtype: str = option("float32", "compute dtype of the convolutions and attention: float32, or bfloat16 "
                        "(mixed precision: parameters, BatchNorm statistics, loss and assigner stay float32; "
                        "recommended on GPU)", choices=tuple(DTYPES))
    conv_impl: str = option("lax", "convolution kernels (yolo11_jax/kernels.py): lax (XLA's; every JAX "
                            "transformation works), the faster CPU kernels " + ", ".join(
                                k for k in CONV_IMPLS if k != "lax") + ", or auto (on a CPU cpu_depthwise for "
                            "YOLO11 networks and cpu_taps for the notebook's, elsewhere lax; the log names the "
                            "choice)", choices=tuple(CONV_IMPLS) + ("auto",))
    compile_cache_dir: str = option("default", "directory of JAX's persistent compilation cache, so that a second "
                                    "run of a configuration compiles nothing; default: $YOLO11_JAX_COMPILE_CACHE, else "
                                    "$XDG_CACHE_HOME/yolo11_jax/xla, else ~/.cache/yolo11_jax/xla (config.json's "
                                    "resolved values name the folder used); '' switches it off", metavar="DIR")
    host_malloc: str = option("auto", host_memory.OPTION_HELP, choices=host_memory.POLICIES)
    trace_cache: str = option("auto", "keep the traced train step next to the compilation cache (in its steps/ "
                              "folder), so that a second run of the same configuration skips tracing it in Python "
                              "(yolo11_jax/step_cache.py): auto (on with the compilation cache, one device and the "
                              "built-in losses and optimizers) or off (needed when code outside the package changes "
                              "how the step traces)", choices=("auto", "off"))
    step_timing_steps: int = option(5, "time this many train steps on one batch already in memory after "
                                    "compiling, each alone (step-only throughput from their median, against which the loop's end-to-end throughput "
                                    "shows the input path's cost; 0: off)", check=at_least(0))
    # -- logging, evaluation, checkpoints
    log_every: int = option(20, "steps between host reads of the metrics (log lines, progress bar, NaN check)",
                            check=at_least(1))
    eval_every_epochs: int = option(2, "evaluate COCO mAP on the validation split every N epochs (0: never by "
                                    "epoch); the last step always evaluates when evaluation is on",
                                    check=at_least(0))
    eval_every_steps: int = option(0, "also evaluate every N steps (0: never by step)", check=at_least(0))
    eval_batch_size: int = option(32, "batch size for evaluation", check=at_least(1))
    checkpoint_every_epochs: int = option(1, "save a checkpoint every N epochs (0: never by epoch); the last step "
                                          "is always saved", check=at_least(0))
    checkpoint_every_steps: int = option(0, "also save a checkpoint every N steps, inside epochs (0: never by "
                                         "step)", check=at_least(0))
    keep_checkpoints: int = option(3, "checkpoints kept (the newest)", check=at_least(1))
    run_dir: Optional[str] = option(None, "output directory (default: runs/<time>; give the same one to every "
                                    "process)")
    # -- devices and processes
    devices: Optional[int] = option(None, "use the first N devices for data parallelism (default: all; the batch "
                                    "size must be divisible by N)", check=at_least(1))
    coordinator_address: Optional[str] = option(None, "multi-process: HOST:PORT of process 0's coordinator (env "
                                                "JAX_COORDINATOR_ADDRESS)")
    num_processes: Optional[int] = option(None, "multi-process: number of processes (env JAX_NUM_PROCESSES)",
                                          check=at_least(1))
    process_id: Optional[int] = option(None, "multi-process: this process's index, 0 .. N-1 (env JAX_PROCESS_ID)",
                                       check=at_least(0))

    def __post_init__(self):
        if self.assigner == "dense":  # the spelling of earlier versions
            warn_stderr("--assigner dense is deprecated: use --assigner spec (the plain dense spec, assign.py)")
            object.__setattr__(self, "assigner", "spec")
        values = recipes.resolve({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for key in recipes.DECIDED_FIELDS:
            object.__setattr__(self, key, values[key])


# Named configurations: overrides of TrainConfig's defaults. The CPU configurations take
# conv_impl "auto" (kernels.resolve_conv_impl; the library default is "lax"): on a CPU the
# notebook's networks get cpu_taps, the YOLO11 ones cpu_depthwise (about 10% faster than
# cpu_taps for yolo11n at 128 px, and a much shorter first compile; benchmarks/RESULTS.md),
# so `--model yolo11n` under the default config gets YOLO11's kernels; on a GPU, lax. max_boxes is "auto" (from the data) unless the data is
# streamed, where no index gives it.
CONFIGS: dict[str, dict[str, Any]] = {
    # python -m yolo11_jax.train
    # The embedded shapes dataset (4 classes, 128 px), the small network, the notebook's recipe;
    # 750 steps, about 4 minutes on 2 CPU cores: val mAP@[.5:.95] 0.83, AP50 0.93 (README, Learning).
    "cpu": dict(conv_impl="auto"),
    # python -m yolo11_jax.train --config cpu-ultralytics
    # The same data under Ultralytics' YOLO11 recipe (loss, optimizer auto, warmup, EMA,
    # mosaic/affine/HSV/flip) with yolo11n at 128 px, 14 epochs (1750 steps): val mAP@[.5:.95]
    # 0.872, AP50 0.975 in 9 minutes on 2 CPU cores (0.865 / 0.877 for seeds 0 / 1 with earlier
    # code), ahead of the notebook recipe's 0.864 / 0.860 in the same time (README, Learning). nbs 16 (Ultralytics'
    # nominal batch, 64 by default): no gradient accumulation, so a run this short makes 1750
    # optimizer steps instead of 526. max_boxes auto: a mosaic holds the boxes of four images.
    "cpu-ultralytics": dict(recipe="ultralytics", model="yolo11n", epochs=14, nbs=16, eval_every_epochs=2,
                            conv_impl="auto"),
    # python -m yolo11_jax.train --config notebook-coco
    # The notebook's own run: its network (110.2M parameters), 640 px, batch 4, 5 epochs on 32
    # images streamed from detection-datasets/coco (needs the Hugging Face Hub); no evaluation.
    # max_boxes 100: a stream has no index to take it from.
    "notebook-coco": dict(model="notebook", data="detection-datasets/coco", max_samples=32, val_split=None,
                          img_size=640, batch_size=4, epochs=5, max_boxes=100, num_classes=80, log_every=2,
                          eval_every_epochs=0),
    # python -m yolo11_jax.train --config smoke
    # Seconds: the tiny network on 64 shapes images at 64 px, 2 epochs of 8 steps, evaluated at the end.
    "smoke": dict(model="tiny", shapes_train_images=64, shapes_val_images=16, shapes_img_size=64, img_size=64,
                  batch_size=8, epochs=2, log_every=4, eval_batch_size=16, conv_impl="auto"),
}

DESCRIPTIONS = {
    "cpu": "embedded shapes data, small network, 128 px, 6 epochs, the notebook's recipe (~4 min on 2 CPU cores)",
    "cpu-ultralytics": "the same data, yolo11n, 14 epochs, Ultralytics' recipe with nominal batch 16 (~10 min on 2 CPU cores)",
    "notebook-coco": "the notebook's run: its network, 640 px, 32 COCO images streamed from the Hub",
    "smoke": "seconds: tiny network, 64 images at 64 px",
}

# Spellings of earlier versions: option and config names, and config.json keys.
DEPRECATED_CONFIG_NAMES = {"notebook": "notebook-coco"}
RENAMED_KEYS = {"preset": "config", "eval_every": "eval_every_epochs", "checkpoint_every": "checkpoint_every_steps"}


def named_config(name: str, **overrides) -> TrainConfig:
    """The named configuration ``name`` with ``overrides`` on top (then the recipe's choices for
    the options neither sets)."""
    if name not in CONFIGS:
        hint = ""
        if name in DEPRECATED_CONFIG_NAMES:
            hint = f" (the notebook's run is --config {DEPRECATED_CONFIG_NAMES[name]}; its network is --model {name})"
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}{hint}")
    return TrainConfig(**{**CONFIGS[name], "config": name, **overrides})
