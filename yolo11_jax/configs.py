"""The training configuration (every option of ``python -m yolo11_jax.train``) and the named
configurations that ``--config`` selects.

Each option is declared once, below, with its type, default, help and check
(:func:`yolo11_jax.config.option`); the command line, ``--help``, the README's option table,
the checks and ``--resume`` all derive from this class. A named configuration is a small dict
of overrides of these defaults, headed by the command that runs it and what it reaches.

Names: ``--config`` names a *training run* (data, network, schedule, evaluation), ``--model``
a *network* (``notebook``, ``small``, ``tiny``, ``yolo11n`` ...). The notebook's run is the
``notebook-coco`` config; its network is ``--model notebook``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from yolo11_jax.config import at_least, between, greater_than, multiple_of, option
from yolo11_jax.optim import SCHEDULES
from yolo11_jax.presets import PRESETS

DTYPES = ("float32", "bfloat16")
RECIPES = ("notebook", "ultralytics")
OPTIMIZERS = ("notebook", "auto", "AdamW", "SGD")
ASSIGNERS = ("dense", "chunked", "chunked-sparse")


def _model_help() -> str:
    return "network: " + ", ".join(f"{name} ({p.description})" for name, p in PRESETS.items())


@dataclasses.dataclass
class TrainConfig:
    """Everything needed to repeat a run (written to ``config.json``). Defaults: the ``cpu`` config."""

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
    max_boxes: int = option(8, "ground-truth boxes per image after padding (more are dropped with a warning)",
                            check=at_least(1))
    workers: int = option(0, "worker processes reading, decoding and augmenting batches (Grain); 0: in this "
                          "process, with threads", check=at_least(0))
    augment: Optional[str] = option(None, "training augmentation: none (the notebook's plain resize) or ultralytics "
                                    "(mosaic, random affine, HSV, flip, with Ultralytics' YOLO11 settings); the "
                                    "options below override single parts (default: the recipe's: none, ultralytics)",
                                    choices=("none", "ultralytics"))
    mosaic: Optional[float] = option(None, "probability of a 4-image mosaic (default: from --augment: 0, or 1.0)",
                                     check=between(0, 1))
    close_mosaic: Optional[int] = option(None, "no mosaic in the last N epochs (default: from --augment: 0, or 10)",
                                         check=at_least(0))
    degrees: Optional[float] = option(None, "random rotation, +- degrees (default: from --augment: 0)",
                                      check=at_least(0))
    translate: Optional[float] = option(None, "random translation, +- fraction of the image (default: from "
                                        "--augment: 0, or 0.1)", check=between(0, 1))
    scale: Optional[float] = option(None, "random scale gain, +- fraction (default: from --augment: 0, or 0.5)",
                                    check=between(0, 1))
    shear: Optional[float] = option(None, "random shear, +- degrees (default: from --augment: 0)", check=at_least(0))
    hsv_h: Optional[float] = option(None, "hue gain, +- fraction of the hue circle (default: from --augment: 0, "
                                    "or 0.015)", check=between(0, 1))
    hsv_s: Optional[float] = option(None, "saturation gain, +- fraction (default: from --augment: 0, or 0.7)",
                                    check=between(0, 1))
    hsv_v: Optional[float] = option(None, "value gain, +- fraction (default: from --augment: 0, or 0.4)",
                                    check=between(0, 1))
    fliplr: Optional[float] = option(None, "probability of a horizontal flip (default: from --augment: 0, or 0.5)",
                                     check=between(0, 1))
    init_weights: Optional[str] = option(None, "start from these weights (fine-tuning): an Ultralytics .pt "
                                         "checkpoint (yolo11n.pt, a best.pt) or a .safetensors file; with another "
                                         "number of classes, the class-output layers are re-initialised")
    # -- length, optimizer, loss
    epochs: int = option(6, "training length in epochs (--steps overrides it)", check=at_least(1))
    steps: Optional[int] = option(None, "training length in optimizer steps (default: --epochs x the batches "
                                  "of an epoch)", check=at_least(1))
    recipe: str = option("notebook", "training recipe: notebook (the notebook's loss and assigner, AdamW on every "
                         "parameter with a cosine schedule, no augmentation) or ultralytics (Ultralytics' YOLO11 "
                         "recipe: its loss and assigner, optimizer auto with three parameter groups, warmup, linear "
                         "decay, accumulation to a nominal batch of 64, EMA, mosaic/affine/HSV/flip); --loss, "
                         "--optimizer, --ema, --augment override single parts", choices=RECIPES)
    loss: Optional[str] = option(None, "loss and label assignment: notebook or ultralytics (default: the recipe's)",
                                 choices=RECIPES)
    optimizer: Optional[str] = option(None, "notebook (AdamW with --lr, --weight-decay on every parameter, "
                                      "--schedule), or Ultralytics' auto, AdamW, SGD (parameter groups, warmup, "
                                      "linear decay, accumulation; auto: AdamW at lr round(0.002 * 5 / (4 + classes), "
                                      "6) up to 10,000 iterations, else SGD 0.01) (default: the recipe's)",
                                      choices=OPTIMIZERS)
    ema: Optional[bool] = option(None, "keep an exponential moving average of the weights and BatchNorm statistics "
                                 "(Ultralytics' ModelEMA), which evaluation and the exported weights use (default: "
                                 "the recipe's: off, on)")
    lr: Optional[float] = option(None, "learning rate: the notebook optimizer's peak (default 1e-3), Ultralytics' "
                                 "lr0 for AdamW / SGD (default 0.01; auto picks its own)", check=greater_than(0))
    weight_decay: Optional[float] = option(None, "weight decay: the notebook's AdamW on every parameter (default "
                                           "0.05), Ultralytics' on the weights only, scaled by batch x accumulate / "
                                           "64 (default 5e-4)", check=at_least(0))
    momentum: Optional[float] = option(None, "Ultralytics' SGD momentum / AdamW beta1 (default 0.937; auto uses "
                                       "0.9)", check=between(0, 1))
    lrf: float = option(0.01, "Ultralytics: the final learning rate as a fraction of the first (linear decay)",
                        check=between(0, 1))
    warmup_epochs: float = option(3.0, "Ultralytics: warmup length in epochs (at least 100 iterations)",
                                  check=at_least(0))
    warmup_momentum: float = option(0.8, "Ultralytics: SGD momentum at the start of the warmup", check=between(0, 1))
    warmup_bias_lr: float = option(0.1, "Ultralytics: the biases' learning rate at the start of the warmup "
                                   "(auto: 0, as Ultralytics sets it)", check=at_least(0))
    nbs: int = option(64, "Ultralytics: nominal batch size; gradients are accumulated over round(nbs / batch) "
                      "steps", check=at_least(1))
    clip_norm: float = option(10.0, "global gradient-norm clipping (0 disables)", check=at_least(0))
    schedule: str = option("epoch-cosine", "notebook optimizer: epoch-cosine (the notebook's CosineAnnealingLR "
                           "stepped per epoch), step-cosine, constant", choices=SCHEDULES)
    warmup_steps: int = option(0, "notebook optimizer: linear learning-rate warmup steps", check=at_least(0))
    torch_compat: Optional[bool] = option(None, "reproduce the notebook's PyTorch optimizer step for step: torch's "
                                          "clipping, and the regression branch left untouched on a batch without "
                                          "boxes (default: on with the notebook's loss and optimizer; "
                                          "--no-torch-compat: the plain Optax chain)")
    cls_weight: float = option(0.5, "classification loss weight", check=at_least(0))
    box_weight: float = option(7.5, "CIoU loss weight", check=at_least(0))
    dfl_weight: float = option(1.5, "DFL loss weight", check=at_least(0))
    topk: Optional[int] = option(None, "TAL anchors per box (default: the loss's: 13 notebook, 10 ultralytics)",
                                 check=at_least(1))
    assigner: str = option("dense", "label assignment: dense (the plain spec, assign.py), chunked or "
                           "chunked-sparse (the same result by chunks, assign_chunked.py)", choices=ASSIGNERS)
    seed: int = option(0, "seed for initialisation and shuffling")
    dtype: str = option("float32", "compute dtype of the convolutions and attention: float32, or bfloat16 "
                        "(mixed precision: parameters, BatchNorm statistics, loss and assigner stay float32; "
                        "recommended on GPU)", choices=DTYPES)
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
    checkpoint_every: int = option(0, "also save a checkpoint every N steps, inside epochs (0: never by step)",
                                   check=at_least(0))
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


# Named configurations: overrides of TrainConfig's defaults (which are the cpu config's).
CONFIGS: dict[str, dict[str, Any]] = {
    # python -m yolo11_jax.train
    # The embedded shapes dataset (4 classes, 128 px), the small network, the notebook's recipe;
    # 750 steps, about 4 minutes on 2 CPU cores: val mAP@[.5:.95] 0.83, AP50 0.93 (README, Learning).
    "cpu": {},
    # python -m yolo11_jax.train --config cpu-ultralytics
    # The same data under Ultralytics' YOLO11 recipe (loss, optimizer auto, warmup, EMA,
    # mosaic/affine/HSV/flip) with yolo11n at 128 px, 14 epochs (1750 steps): val mAP@[.5:.95]
    # 0.872, AP50 0.975 in 9 minutes on 2 CPU cores (0.865 / 0.877 for seeds 0 / 1 with earlier
    # code), ahead of the notebook recipe's 0.864 / 0.860 in the same time (README, Learning). nbs 16 (Ultralytics'
    # nominal batch, 64 by default): no gradient accumulation, so a run this short makes 1750
    # optimizer steps instead of 526. max_boxes 32: a mosaic holds the boxes of four images.
    "cpu-ultralytics": dict(recipe="ultralytics", model="yolo11n", epochs=14, nbs=16, max_boxes=32,
                            eval_every_epochs=2),
    # python -m yolo11_jax.train --config notebook-coco
    # The notebook's own run: its network (110.2M parameters), 640 px, batch 4, 5 epochs on 32
    # images streamed from detection-datasets/coco (needs the Hugging Face Hub); no evaluation.
    "notebook-coco": dict(model="notebook", data="detection-datasets/coco", max_samples=32, val_split=None,
                          img_size=640, batch_size=4, epochs=5, max_boxes=100, num_classes=80, log_every=2,
                          eval_every_epochs=0),
    # python -m yolo11_jax.train --config smoke
    # Seconds: the tiny network on 64 shapes images at 64 px, 2 epochs of 8 steps, evaluated at the end.
    "smoke": dict(model="tiny", shapes_train_images=64, shapes_val_images=16, shapes_img_size=64, img_size=64,
                  batch_size=8, epochs=2, log_every=4, eval_batch_size=16),
}

DESCRIPTIONS = {
    "cpu": "embedded shapes data, small network, 128 px, 6 epochs, the notebook's recipe (~4 min on 2 CPU cores)",
    "cpu-ultralytics": "the same data, yolo11n, 14 epochs, Ultralytics' recipe with nominal batch 16 (~10 min on 2 CPU cores)",
    "notebook-coco": "the notebook's run: its network, 640 px, 32 COCO images streamed from the Hub",
    "smoke": "seconds: tiny network, 64 images at 64 px",
}

# Spellings of earlier versions: option and config names, and config.json keys.
DEPRECATED_CONFIG_NAMES = {"notebook": "notebook-coco"}
RENAMED_KEYS = {"preset": "config", "eval_every": "eval_every_epochs"}


AUGMENT_FIELDS = ("mosaic", "close_mosaic", "degrees", "translate", "scale", "shear", "hsv_h", "hsv_s", "hsv_v",
                  "fliplr")


def augmentation(cfg: TrainConfig):
    """The ``data.Augment`` a configuration asks for: ``--augment``'s settings, with every part
    given on its own (``--mosaic`` ...) overriding them."""
    from yolo11_jax.data import ULTRALYTICS, Augment

    name = cfg.augment or ("ultralytics" if cfg.recipe == "ultralytics" else "none")
    base = ULTRALYTICS if name == "ultralytics" else Augment()
    return dataclasses.replace(base, **{k: getattr(cfg, k) for k in AUGMENT_FIELDS if getattr(cfg, k) is not None})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The parts a configuration resolves to (``--recipe`` and the options that override it)."""

    loss: str
    optimizer: str
    ema: bool
    torch_compat: bool


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    """``--recipe``'s choices, with ``--loss``, ``--optimizer``, ``--ema``, ``--torch-compat`` on top.
    Raises ``ValueError`` for ``--torch-compat`` outside the notebook's loss and optimizer."""
    ultra = cfg.recipe == "ultralytics"
    loss = cfg.loss or ("ultralytics" if ultra else "notebook")
    optimizer = cfg.optimizer or ("auto" if ultra else "notebook")
    notebook_pair = loss == "notebook" and optimizer == "notebook"
    if cfg.torch_compat and not notebook_pair:
        raise ValueError("--torch-compat reproduces the notebook's loop: it needs --loss notebook and --optimizer "
                         f"notebook (got --loss {loss}, --optimizer {optimizer})")
    torch_compat = notebook_pair if cfg.torch_compat is None else cfg.torch_compat
    return Recipe(loss=loss, optimizer=optimizer, ema=ultra if cfg.ema is None else cfg.ema, torch_compat=torch_compat)


def named_config(name: str, **overrides) -> TrainConfig:
    """The named configuration ``name`` with ``overrides`` on top."""
    if name not in CONFIGS:
        hint = ""
        if name in DEPRECATED_CONFIG_NAMES:
            hint = f" (the notebook's run is --config {DEPRECATED_CONFIG_NAMES[name]}; its network is --model {name})"
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}{hint}")
    return TrainConfig(**{**CONFIGS[name], "config": name, **overrides})
