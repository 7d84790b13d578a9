"""Ultralytics' YOLO11 training loop in plain PyTorch, as a yardstick for ``yolo11_jax``'s recipe.

Own code, written from the rules of ``ultralytics==8.3.253`` (``engine/trainer.py``,
``utils/torch_utils.py``), without Ultralytics' code:

* parameter groups as Ultralytics' ``build_optimizer`` builds them: for every module, its own
  parameters; ``"bias"`` in the full name -> bias group (no decay), else a module whose class
  name in ``torch.nn`` contains "Norm" -> norm-weight group (no decay), else weight group (decay);
  the optimizer holds them in 8.3's order: bias (group 0, the one the warmup bias lr applies to),
  weight, norm weight;
* ``optimizer='auto'``: AdamW at ``round(0.002 * 5 / (4 + nc), 6)`` when Ultralytics'
  ``iterations <= 10,000``, else SGD 0.01, momentum 0.9 in both, ``warmup_bias_lr = 0``;
  AdamW is ``torch.optim.AdamW(betas=(momentum, 0.999))``, SGD ``torch.optim.SGD(momentum,
  nesterov=True)``, the weight group with ``weight_decay * batch * accumulate / nbs``;
* ``LambdaLR`` with the linear factor ``max(1 - e / epochs, 0) * (1 - lrf) + lrf`` stepped at
  the start of every epoch;
* warmup over ``nw = max(round(warmup_epochs * nb), 100)`` iterations (``warmup_rule="8.4"``:
  8.4.190's ``round(min(warmup_epochs, epochs - 1) * nb)``, none when that is 0): at each iteration
  ``ni <= nw`` the accumulate ramp ``max(1, round(interp(ni, [0, nw], [1, nbs / batch])))``, each
  group's lr ``interp(ni, [0, nw], [warmup_bias_lr if bias group else 0, initial_lr * lf(epoch)])``
  and, for groups with a ``momentum`` (SGD), ``interp(ni, [0, nw], [warmup_momentum, momentum])``;
* iteration body: ``(batch_size * loss).backward()`` (gradients accumulate in ``.grad``, never
  divided), and when ``ni - last_opt_step >= accumulate``: ``clip_grad_norm_(10)``,
  ``optimizer.step()``, ``zero_grad()``, ``ema.update(model)``;
* ``ModelEMA``: a deep copy, ``updates += 1`` then ``d = 0.9999 * (1 - exp(-updates / 2000))``
  and ``v = d * v + (1 - d) * model`` for every floating state-dict entry.

Left out (they do not change the maths of a float32 CPU run): AMP and the GradScaler, DDP,
callbacks, validation, checkpoints, close_mosaic, NaN recovery.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

NBS = 64
NORM_TYPES = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{'weight': [...], 'bn': [...], 'bias': [...]}`` of ``(full name, parameter)`` pairs, by
    Ultralytics' rule (frozen parameters included, as Ultralytics does)."""
    groups = {"weight": [], "bn": [], "bias": []}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if "bias" in full:
                groups["bias"].append((full, param))
            elif isinstance(module, NORM_TYPES) or "logit_scale" in full:
                groups["bn"].append((full, param))
            else:
                groups["weight"].append((full, param))
    return groups


def auto_optimizer(num_classes: int, iterations: int) -> tuple[str, float, float]:
    """``optimizer='auto'``: ``(name, lr, momentum)``."""
    lr_fit = round(0.002 * 5 / (4 + num_classes), 6)
    return ("SGD", 0.01, 0.9) if iterations > 10000 else ("AdamW", lr_fit, 0.9)


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float) -> torch.optim.Optimizer:
    """The optimizer with Ultralytics 8.3's group order: bias, weight (decay), norm weight. Each
    group carries a ``name`` entry ('bias', 'weight', 'bn') for the tests."""
    g = param_groups(model)
    params = {k: [p for _, p in v] for k, v in g.items()}
    if name == "AdamW":
        opt = torch.optim.AdamW(params["bias"], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        opt = torch.optim.SGD(params["bias"], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    opt.param_groups[0]["name"] = "bias"
    opt.add_param_group({"params": params["weight"], "weight_decay": decay, "name": "weight"})
    opt.add_param_group({"params": params["bn"], "weight_decay": 0.0, "name": "bn"})
    return opt


class ModelEMA:
    """Ultralytics' ``ModelEMA``: ``update(model)`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v *= d
                v += (1 - d) * msd[k].detach()


def train(model: nn.Module, loss_fn: Callable, loader: Sequence, *, optimizer: str = "auto", num_classes: int,
          batch_size: int, epochs: int, iterations: int | None = None, lr0: float = 0.01, lrf: float = 0.01,
          momentum: float = 0.937, weight_decay: float = 5e-4, warmup_epochs: float = 3.0,
          warmup_momentum: float = 0.8, warmup_bias_lr: float = 0.1, nbs: int = NBS, clip_norm: float = 10.0,
          max_iterations: int | None = None, on_iteration: Callable | None = None, warmup_rule: str = "8.3") -> dict:
    """Ultralytics' training loop over ``loader`` (the same batches every epoch).

    Args:
      model: in train mode during the loop.
      loss_fn: ``loss_fn(predictions, gt_boxes_list, gt_labels_list) -> (total, parts)`` with the
        per-image total (``UltralyticsDetectionLoss``); the loop backpropagates
        ``batch_size * total``, as Ultralytics' ``loss.sum()``.
      loader: the batches of one epoch, each ``(images (B,3,H,W) uint8 or float in [0,1],
        boxes list, labels list)``; uint8 images are converted with ``float() / 255``.
      optimizer: 'auto' (needs ``iterations``), 'AdamW' or 'SGD'.
      max_iterations: stop after this many iterations (``None``: all epochs).
      on_iteration: called after every iteration with a record dict: ``ni``, ``epoch``, the loss
        parts (floats), ``lr`` (``{group name: lr}`` used by this iteration), ``momentum``
        (``{group: momentum}`` for SGD), ``accumulate``, ``stepped`` and, on a step, ``grad_norm``
        (the norm of the summed gradient before clipping).

    Returns ``{'optimizer', 'ema', 'records', 'info'}``.
    """
    nb = len(loader)
    if optimizer == "auto":
        if iterations is None:
            raise ValueError("optimizer='auto' needs iterations")
        name, lr, built_momentum = auto_optimizer(num_classes, iterations)
        warmup_bias_lr = 0.0
    else:
        name, lr, built_momentum = optimizer, lr0, momentum
    accumulate = max(round(nbs / batch_size), 1)
    decay = weight_decay * batch_size * accumulate / nbs
    opt = build_optimizer(model, name, lr, built_momentum, decay)
    lf = lambda x: max(1 - x / epochs, 0) * (1.0 - lrf) + lrf  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    scheduler.last_epoch = -1  # start_epoch 0
    ema = ModelEMA(model)
    if warmup_rule == "8.4":  # 8.4.190: the last epoch is past the warmup; no 100-iteration floor
        nw = round(min(warmup_epochs, max(epochs - 1, 0)) * nb) if warmup_epochs > 0 else 0
        nw = nw if nw > 0 else -1
    elif warmup_rule == "8.3":
        nw = max(round(warmup_epochs * nb), 100) if warmup_epochs > 0 else -1
    else:
        raise ValueError(f"warmup_rule {warmup_rule!r}: '8.3' or '8.4'")
    last_opt_step = -1
    records = []
    opt.zero_grad()
    for epoch in range(epochs):
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended
            warnings.simplefilter("ignore")
            scheduler.step()
        model.train()
        for i, (images, boxes, labels) in enumerate(loader):
            ni = i + nb * epoch
            if max_iterations is not None and ni >= max_iterations:
                return {"optimizer": opt, "ema": ema, "records": records, "info": dict(name=name, lr=lr, nw=nw)}
            if ni <= nw:
                xi = [0, nw]
                accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
                for j, group in enumerate(opt.param_groups):
                    group["lr"] = np.interp(ni, xi, [warmup_bias_lr if j == 0 else 0.0,
                                                     group["initial_lr"] * lf(epoch)])
                    if "momentum" in group:
                        group["momentum"] = np.interp(ni, xi, [warmup_momentum, momentum])
            images = images.float() / 255 if images.dtype == torch.uint8 else images
            total, parts = loss_fn(model(images), boxes, labels)
            (total * batch_size).backward()
            stepped = ni - last_opt_step >= accumulate
            record = {"ni": ni, "epoch": epoch, "accumulate": accumulate, "stepped": stepped,
                      "lr": {g["name"]: float(g["lr"]) for g in opt.param_groups},
                      "momentum": {g["name"]: float(g["momentum"]) for g in opt.param_groups if "momentum" in g},
                      **{k: (float(v) if torch.is_tensor(v) else v) for k, v in parts.items()}}
            if stepped:
                record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip_norm))
                opt.step()
                opt.zero_grad()
                ema.update(model)
                last_opt_step = ni
            records.append(record)
            if on_iteration is not None:
                on_iteration(record)
    return {"optimizer": opt, "ema": ema, "records": records, "info": dict(name=name, lr=lr, nw=nw)}
