"""PyTorch reference: the notebook's code, behaviour for behaviour.

This package re-implements "YOLOv11 from scratch", notebook 4 (model, IoU
variants, Task-Aligned assigner, composite loss, training loop). Module trees
and attribute names are the notebook's, so a ``state_dict`` saved from the
notebook's classes loads here with ``strict=True`` and the other way round.
With default arguments every function behaves exactly like the notebook,
quirks included. It is the yardstick for the JAX implementation's parity tests.

Deviations from the notebook (each a parameter whose default reproduces it):

* ``YOLOv11(num_classes, reg_max, base=64, depth=2)``: ``base`` is the width of
  the stem (the notebook's 64, giving channels 64/128/256/512/1024) and
  ``depth`` the number of bottlenecks in every C3k2 (the notebook's n=2).
  ``FPN``, ``PAN``, ``C2PSA`` and ``DetectionHead`` take matching channel/depth
  arguments, exactly as the notebook's constructors already do.
* ``YOLOv11Loss(..., img_size=640)``: the notebook hard-codes 640 when it
  converts normalised ``cxcywh`` targets to pixels. ``img_size`` (an int or an
  ``(h, w)`` pair) generalises that; at other sizes the notebook's boxes would
  be wrong.
* ``YOLOv11Loss(..., topk=13, alpha=1.0, beta=6.0, eps=1e-9)``: the assigner
  options, which the notebook fixes at ``TaskAlignedAssigner()``'s defaults.
* ``YOLOv11Loss.forward`` also stores the un-``.item()``-ed parts in
  ``self.last_parts`` (tensors) for tests; the returned values are unchanged.
* ``train_one_epoch(..., log_every=2, on_step=None, max_norm=10.0)``: printing
  interval and a per-step callback; defaults print as the notebook does.

Beyond the notebook, ``reference_torch.yolo11`` holds Ultralytics' YOLO11 detection family
(``YOLO11(scale, nc)``, scales n/s/m/l/x) written from its published architecture: its
``state_dict`` keys are exactly those of an Ultralytics ``DetectionModel``, and ``forward``
returns the same per-level triple as the notebook's ``YOLOv11``.
"""

from reference_torch.model import (
    C2PSA,
    C3k2,
    FPN,
    PAN,
    SPPF,
    Bottleneck,
    ConvBNSiLU,
    DetectionHead,
    DFLHead,
    YOLOv11,
    YOLOv11Backbone,
)
from reference_torch.yolo11 import YOLO11
from reference_torch.loss import TaskAlignedAssigner, YOLOv11Loss, compute_iou
from reference_torch.train import collate_fn, cosine_lr, train_one_epoch

__all__ = [
    "Bottleneck", "C2PSA", "C3k2", "ConvBNSiLU", "DFLHead", "DetectionHead", "FPN", "PAN",
    "SPPF", "YOLOv11", "YOLOv11Backbone", "YOLO11", "TaskAlignedAssigner", "YOLOv11Loss", "compute_iou",
    "collate_fn", "cosine_lr", "train_one_epoch",
]
