"""The notebook's recipe ("YOLOv11 from scratch, part 4"): its loss and Task-Aligned assigner
(``loss.py``, ``assign.py``), AdamW on every parameter with global-norm clipping at 10 and a cosine
schedule stepped per epoch (``optim_notebook``), no EMA, no augmentation (a plain resize).

``torch_compat`` (on by default when the notebook's loss and optimizer run together) keeps a run
step for step equal to the notebook's PyTorch loop (see ``optim_notebook``).
"""

from __future__ import annotations

import functools

from yolo11_jax import recipes
from yolo11_jax.anchors import feature_sizes
from yolo11_jax.assign import task_aligned_assign
from yolo11_jax.assign_chunked import chunked_assigner
from yolo11_jax.data import Augment
from yolo11_jax.loss import NOTEBOOK_TOPK, notebook_detection_loss
from yolo11_jax.optim_notebook import make_optimizer, make_schedule

# --assigner: the label assignment of the notebook's loss, all giving the same result
#   spec: the plain dense Task-Aligned assigner, one screen (assign.py);
#   chunked / chunked-sparse: the same by chunks of anchors (assign_chunked.py, method "dense" / "sparse").
ASSIGNERS = {
    "spec": lambda img_size: task_aligned_assign,
    "chunked": lambda img_size: chunked_assigner(feature_sizes((img_size, img_size)), method="dense"),
    "chunked-sparse": lambda img_size: chunked_assigner(feature_sizes((img_size, img_size)), method="sparse"),
}



def register_assigner(name: str, make) -> None:
    """Adds ``--assigner NAME`` to the notebook's loss, from a fork's own module: ``make(img_size)``
    returns a function with the signature of ``assign.task_aligned_assign``."""
    if name in ASSIGNERS:
        raise ValueError(f"assigner {name!r} is already registered")
    ASSIGNERS[name] = make


LR = 1e-3              # the notebook's AdamW
WEIGHT_DECAY = 0.05
BETA1 = 0.9


def build_loss(cfg) -> recipes.LossFn:
    """The notebook's loss with the configuration's weights, ``topk`` and assigner."""
    return functools.partial(notebook_detection_loss, img_size=cfg.img_size, num_classes=cfg.num_classes,
                             cls_weight=cfg.cls_weight, box_weight=cfg.box_weight, dfl_weight=cfg.dfl_weight,
                             topk=cfg.topk, assigner=ASSIGNERS[cfg.assigner](cfg.img_size))


def build_optimizer(cfg, params, length: recipes.RunLength) -> recipes.OptimizerSetup:
    """AdamW (``--lr``, ``--weight-decay``, beta1 ``--momentum``) with ``--schedule`` and
    ``--warmup-steps``, clipped at ``--clip-norm``; ``torch_compat`` as configured."""
    del params
    lr_fn = make_schedule(cfg.lr, schedule=cfg.schedule, epochs=length.epochs,
                          steps_per_epoch=length.steps_per_epoch, warmup_steps=cfg.warmup_steps)
    tx = make_optimizer(lr_fn, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, b1=cfg.momentum,
                        torch_compat=cfg.torch_compat)
    info = {"optimizer": "notebook AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay, "b1": cfg.momentum,
            "schedule": cfg.schedule, "torch_compat": cfg.torch_compat}
    return recipes.OptimizerSetup(tx=tx, info=info, lr_fn=lr_fn, torch_compat=cfg.torch_compat)


def _optimizer_defaults(values) -> dict:
    # torch_compat reproduces the notebook's loop, which needs its loss too.
    return dict(lr=LR, weight_decay=WEIGHT_DECAY, momentum=BETA1, torch_compat=values["loss"] == "notebook")


def _optimizer_check(cfg) -> list[str]:
    if cfg.torch_compat and cfg.loss != "notebook":
        return ["--torch-compat reproduces the notebook's loop: it needs --loss notebook and --optimizer notebook "
                f"(got --loss {cfg.loss}, --optimizer {cfg.optimizer})"]
    return []


LOSS = recipes.Loss(name="notebook", build=build_loss, assigners=ASSIGNERS.keys(),  # live: register_assigner
                    defaults=dict(topk=NOTEBOOK_TOPK, assigner="spec", class_bias_prior=False))
OPTIMIZER = recipes.Optimizer(names=("notebook",), build=build_optimizer, defaults=_optimizer_defaults,
                              ignores=("lrf", "warmup_epochs", "warmup_rule", "warmup_momentum", "warmup_bias_lr", "nbs"),
                              check=_optimizer_check)
RECIPE = recipes.register(recipes.Recipe(
    name="notebook", loss=LOSS, optimizer=OPTIMIZER, default_optimizer="notebook", ema=False,
    augment_name="none", augment=Augment(),
    description="the notebook's loss and assigner, AdamW on every parameter with a cosine schedule, no EMA, "
                "no augmentation"))
