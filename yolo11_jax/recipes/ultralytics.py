"""Ultralytics' YOLO11 recipe: its loss and assigner (``loss_ultralytics``, ``assign_ultralytics``),
optimizer ``auto`` with three parameter groups, warmup, linear decay and accumulation to a
nominal batch (``optim_ultralytics``), the EMA of the weights (``ema``), mosaic / affine / HSV /
flip augmentation with Ultralytics' settings (``data.ULTRALYTICS``), and the loss scaled by the
global batch size, as Ultralytics backpropagates it.

Its loss assumes the class-logit prior of Ultralytics' heads (``class_bias_prior``, on by default
with this loss): the notebook's networks get it before training, and the log says so.
"""

from __future__ import annotations

import functools
import math

from yolo11_jax import recipes
from yolo11_jax.data import ULTRALYTICS
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
from yolo11_jax.optim_ultralytics import (DEFAULT_LR0, DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY, ULTRALYTICS_OPTIMIZERS,
                                          ultralytics_iterations, ultralytics_recipe)
from yolo11_jax.yolo11 import class_bias_init

TOPK = 10   # Ultralytics' TaskAlignedAssigner(topk=10)


def build_loss(cfg) -> recipes.LossFn:
    """Ultralytics' ``v8DetectionLoss`` with the configuration's gains and ``topk``."""
    return functools.partial(ultralytics_detection_loss, img_size=cfg.img_size, num_classes=cfg.num_classes,
                             box_weight=cfg.box_weight, cls_weight=cfg.cls_weight, dfl_weight=cfg.dfl_weight,
                             topk=cfg.topk)


def build_optimizer(cfg, params, length: recipes.RunLength) -> recipes.OptimizerSetup:
    """``optim_ultralytics.ultralytics_recipe`` for this run; the loss scaled by the global batch
    size, which Ultralytics' learning rates and clipping assume."""
    epochs = math.ceil(length.epochs)
    tx, schedule, info = ultralytics_recipe(
        params, optimizer=cfg.optimizer, num_classes=cfg.num_classes, batch_size=cfg.batch_size,
        steps_per_epoch=length.steps_per_epoch, epochs=epochs,
        iterations=ultralytics_iterations(int(length.num_images), cfg.batch_size, epochs, nbs=cfg.nbs),
        lr0=cfg.lr, lrf=cfg.lrf, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs, warmup_momentum=cfg.warmup_momentum, warmup_bias_lr=cfg.warmup_bias_lr,
        nbs=cfg.nbs, clip_norm=cfg.clip_norm, warmup_rule=cfg.warmup_rule)
    return recipes.OptimizerSetup(tx=tx, info=info, hyperparams_fn=schedule, loss_scale="batch")


def _optimizer_check(cfg) -> list[str]:
    out = []
    if cfg.torch_compat:
        out.append("--torch-compat reproduces the notebook's loop: it needs --loss notebook and --optimizer notebook "
                   f"(got --loss {cfg.loss}, --optimizer {cfg.optimizer})")
    if cfg.optimizer == "auto" and cfg.lr != DEFAULT_LR0:
        out.append(f"--lr {cfg.lr} is not used by --optimizer auto, which picks its own learning rate; "
                   "choose --optimizer AdamW or SGD to set it")
    return out


def class_bias_prior(model, num_classes: int) -> str:
    """Start the network's class logits at Ultralytics' prior bias ``log(5 / classes /
    (640 / stride)^2)`` per level (``model.init_class_bias(yolo11.class_bias_init)``; YOLO11
    networks already start there, ``Detect``). Returns the log line. Without it, the notebook's
    heads start with scores of 0.5 at every anchor, and Ultralytics' loss (divided by the sum of
    the target scores) with its small learning rate takes thousands of steps to move the biases
    down. ``num_classes`` must be the network's class count."""
    if model.num_classes != num_classes:
        raise ValueError(f"class_bias_prior: the network has {model.num_classes} classes, the run {num_classes}")
    model.init_class_bias(class_bias_init)
    return "class-logit biases set to Ultralytics' prior, log(5 / classes / (640 / stride)^2)"


LOSS = recipes.Loss(name="ultralytics", build=build_loss, assigners=("ultralytics",),
                    defaults=dict(topk=TOPK, assigner="ultralytics", class_bias_prior=True))
OPTIMIZER = recipes.Optimizer(
    names=ULTRALYTICS_OPTIMIZERS, build=build_optimizer, check=_optimizer_check,
    defaults=lambda values: dict(lr=DEFAULT_LR0, weight_decay=DEFAULT_WEIGHT_DECAY, momentum=DEFAULT_MOMENTUM,
                                 torch_compat=False),
    ignores=("schedule", "warmup_steps"))
RECIPE = recipes.register(recipes.Recipe(
    name="ultralytics", loss=LOSS, optimizer=OPTIMIZER, default_optimizer="auto", ema=True,
    augment_name="ultralytics", augment=ULTRALYTICS,
    description="Ultralytics' YOLO11 recipe: its loss and assigner, optimizer auto with three parameter groups, "
                "warmup, linear decay, accumulation to a nominal batch, EMA, mosaic/affine/HSV/flip"))
