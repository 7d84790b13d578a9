"""The notebook's figures, drawn off-screen with matplotlib's Agg canvas.

Every figure is built on a plain :class:`matplotlib.figure.Figure` with a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` attached, never through
``pyplot``: importing or calling this module never selects a GUI backend, never
touches a display and leaves no global figure state behind (safe in training
loops and on headless machines).

Each ``*_figure`` function builds and returns a ``Figure`` (handy for tests and
notebooks); the matching ``plot_*`` function saves it as a PNG and returns the path.

* :func:`plot_loss_curves`: total / classification / box (CIoU) / DFL loss, 1 x 4 panels.
* :func:`plot_sample_batch`: images with their ground-truth boxes, one panel per image.
* :func:`plot_iou_variants`: IoU / GIoU / DIoU / CIoU vs horizontal offset of two boxes
  (values from :func:`iou_variant_curves`, computed with ``yolo11_jax.iou.bbox_iou``).
* :func:`plot_map_curve`: mAP (and AP50, ...) per epoch.

Command line::

    python -m yolo11_jax.plots iou --out iou_variants.png
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "LOSS_PANELS",
    "IOU_MODES",
    "loss_curves_figure",
    "plot_loss_curves",
    "sample_batch_figure",
    "plot_sample_batch",
    "iou_variant_curves",
    "iou_variants_figure",
    "plot_iou_variants",
    "map_curve_figure",
    "plot_map_curve",
    "main",
]

#: ``(history key, panel title)`` of the loss figure, left to right.
LOSS_PANELS: tuple[tuple[str, str], ...] = (
    ("total_loss", "Total Loss"),
    ("cls_loss", "Classification Loss"),
    ("box_loss", "Box (CIoU) Loss"),
    ("dfl_loss", "DFL Loss"),
)

#: IoU variants drawn by :func:`plot_iou_variants`, left to right.
IOU_MODES: tuple[str, ...] = ("iou", "giou", "diou", "ciou")

#: Reference box ``[x1, y1, x2, y2]`` of the IoU-variant figure (arbitrary units).
IOU_REF_BOX: tuple[float, float, float, float] = (2.0, 2.0, 5.0, 5.0)


# ----------------------------------------------------------------------------- helpers


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig: Figure, path: str | os.PathLike, dpi: float) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _scalar(v: Any) -> float:
    """A history value (Python / NumPy / JAX scalar, or None) as a float (None -> NaN)."""
    if v is None:
        return math.nan
    return float(np.asarray(v))


def _x_values(history: Sequence[Mapping[str, Any]], x_key: str) -> np.ndarray:
    """``history[i][x_key]`` for every entry when all have it, else ``1..n``."""
    if history and all(x_key in h and h[x_key] is not None for h in history):
        return np.array([_scalar(h[x_key]) for h in history], dtype=np.float64)
    return np.arange(1, len(history) + 1, dtype=np.float64)


# ----------------------------------------------------------------------------- loss curves


def loss_curves_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    x_key: str = "epoch",
    title: str = "Training Loss Curves",
) -> Figure:
    """The notebook's 4-panel loss figure (1 x 4, figsize ``(20, 4)`` inches).

    Args:
      history: one mapping per epoch (or per logging interval) holding the
        scalar losses ``'total_loss'``, ``'cls_loss'``, ``'box_loss'``,
        ``'dfl_loss'`` (loss units, as the training loop logs them) and
        ``x_key``. A loss missing from an entry is drawn as a gap (NaN).
      x_key: key of the x value; when any entry lacks it, x is ``1..len(history)``.
      title: figure suptitle.

    Returns:
      The figure; panel ``k`` plots ``LOSS_PANELS[k]`` with a ``'b-o'`` line.
    """
    history = list(history)
    xs = _x_values(history, x_key)
    fig = _new_figure((20, 4))
    axes = fig.subplots(1, len(LOSS_PANELS), squeeze=False)[0]
    for ax, (key, panel_title) in zip(axes, LOSS_PANELS):
        ys = np.array([_scalar(h.get(key)) for h in history], dtype=np.float64)
        ax.plot(xs, ys, "b-o", markersize=3)
        ax.set_title(panel_title)
        ax.set_xlabel("Epoch" if x_key == "epoch" else x_key)
        ax.set_ylabel("Loss")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    return fig


def plot_loss_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    x_key: str = "epoch",
    title: str = "Training Loss Curves",
    dpi: float = 100,
) -> str:
    """Save :func:`loss_curves_figure` as a PNG (``2000 x 400`` pixels at ``dpi=100``); returns ``path``."""
    return _save(loss_curves_figure(history, x_key=x_key, title=title), path, dpi)


# ----------------------------------------------------------------------------- sample batch


def _class_colour(c: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab20"](int(c) % 20)


def sample_batch_figure(
    images: Any,
    boxes_cxcywh: Any,
    mask: Any,
    labels: Any,
    *,
    class_names: Sequence[str] | None = None,
    max_images: int = 4,
    title: str = "Training Data",
) -> Figure:
    """Images with their ground-truth boxes: 1 x ``n`` panels, figsize ``(5 n, 5)`` inches.

    ``n = min(B, max_images)``; the first ``n`` images are drawn.

    Args:
      images: ``(B, H, W, 3)`` floats in ``[0, 1]`` (NHWC; values outside are
        clipped), or ``uint8`` in ``[0, 255]``; ``(B, H, W, 1)`` is drawn in grey.
      boxes_cxcywh: ``(B, M, 4)`` boxes ``[cx, cy, w, h]`` normalised to ``[0, 1]``
        by the image width / height.
      mask: ``(B, M)`` bool, True for real boxes (padding rows are ignored; a row
        may be all False).
      labels: ``(B, M)`` int class ids.
      class_names: optional names indexed by class id; ids without a name are
        shown as the number.
      max_images: the most panels drawn.
      title: figure suptitle.

    Pixel corners are ``x1 = (cx - w / 2) * W``, ``y1 = (cy - h / 2) * H`` with
    ``W, H`` from the image shape; this generalises the notebook, which
    hard-codes 640 for both. Each box is a rectangle in its class's colour
    (``tab20``, the notebook draws all white) labelled with the class name;
    panels are titled ``'Image i: k objects'`` with ``k`` the number of True
    mask entries, axes off.
    """
    images = np.asarray(images)
    boxes = np.asarray(boxes_cxcywh, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    b, h_img, w_img = images.shape[:3]
    if boxes.shape[:1] != (b,) or boxes.shape[-1] != 4 or mask.shape != boxes.shape[:2] or labels.shape != mask.shape:
        raise ValueError(
            f"inconsistent shapes: images {images.shape}, boxes {boxes.shape}, mask {mask.shape}, labels {labels.shape}"
        )
    n = min(b, int(max_images))
    if n < 1:
        raise ValueError(f"nothing to draw: batch size {b}, max_images {max_images}")

    fig = _new_figure((5 * n, 5))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        img = images[i]
        if img.dtype != np.uint8:
            img = np.clip(img.astype(np.float32), 0.0, 1.0)
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        else:
            ax.imshow(img)
        valid = np.flatnonzero(mask[i])
        for j in valid:
            cx, cy, bw, bh = boxes[i, j]
            x1, y1 = (cx - bw / 2) * w_img, (cy - bh / 2) * h_img
            cls = int(labels[i, j])
            colour = _class_colour(cls)
            ax.add_patch(
                Rectangle((x1, y1), bw * w_img, bh * h_img, linewidth=2, edgecolor=colour, facecolor="none")
            )
            name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
            ax.text(
                x1,
                y1,
                name,
                fontsize=7,
                color="white",
                va="bottom",
                ha="left",
                clip_on=True,
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"),
            )
        ax.set_title(f"Image {i}: {len(valid)} objects")
        ax.axis("off")
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    return fig


def plot_sample_batch(
    images: Any,
    boxes_cxcywh: Any,
    mask: Any,
    labels: Any,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    max_images: int = 4,
    title: str = "Training Data",
    dpi: float = 100,
) -> str:
    """Save :func:`sample_batch_figure` as a PNG (``500 n x 500`` pixels at ``dpi=100``); returns ``path``."""
    fig = sample_batch_figure(
        images, boxes_cxcywh, mask, labels, class_names=class_names, max_images=max_images, title=title
    )
    return _save(fig, path, dpi)


# ----------------------------------------------------------------------------- IoU variants


def iou_variant_curves(num: int = 50, max_offset: float = 6.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """IoU variants of a fixed box against the same box slid horizontally.

    The reference box is ``[2, 2, 5, 5]`` (xyxy, 3 x 3 units); the prediction is
    ``[2 + dx, 2, 5 + dx, 5]`` for ``dx`` in ``linspace(0, max_offset, num)``.
    One batched ``bbox_iou(ref (1, 4), preds (num, 4), mode)`` call per mode
    (float32, the default ``eps = 1e-7``).

    Returns:
      ``(offsets (num,), {mode: values (num,)})`` for ``mode`` in
      ``('iou', 'giou', 'diou', 'ciou')``, as float64 NumPy arrays.
    """
    import jax.numpy as jnp

    from yolo11_jax.iou import bbox_iou

    offsets = np.linspace(0.0, max_offset, num)
    ref = np.asarray([IOU_REF_BOX], dtype=np.float32)  # (1, 4)
    preds = np.tile(ref, (num, 1))  # (num, 4)
    preds[:, 0] += offsets
    preds[:, 2] += offsets
    ref_j, preds_j = jnp.asarray(ref), jnp.asarray(preds)
    curves = {mode: np.asarray(bbox_iou(ref_j, preds_j, mode), dtype=np.float64)[0] for mode in IOU_MODES}
    return offsets, curves


def iou_variants_figure(*, iou_fn: Any = None) -> Figure:
    """The notebook's IoU-variant figure: 1 x 4 panels, figsize ``(20, 5)`` inches.

    Args:
      iou_fn: optional replacement for :func:`iou_variant_curves` (a callable
        returning ``(offsets, {mode: values})``), e.g. precomputed curves.
    """
    offsets, curves = (iou_fn or iou_variant_curves)()
    fig = _new_figure((20, 5))
    axes = fig.subplots(1, len(IOU_MODES), squeeze=False)[0]
    for ax, mode in zip(axes, IOU_MODES):
        ax.plot(offsets, curves[mode], linewidth=2)
        ax.set_title(mode.upper())
        ax.set_xlabel("Horizontal offset")
        ax.set_ylabel(f"{mode} value")
        ax.axhline(y=0, color="gray", linestyle="--", alpha=0.5)
        ax.grid(True, alpha=0.3)
    fig.suptitle("IoU Variants: Response to Horizontal Box Translation", fontsize=14)
    fig.tight_layout()
    return fig


def plot_iou_variants(path: str | os.PathLike, *, iou_fn: Any = None, dpi: float = 100) -> str:
    """Save :func:`iou_variants_figure` as a PNG (``2000 x 500`` pixels at ``dpi=100``); returns ``path``."""
    return _save(iou_variants_figure(iou_fn=iou_fn), path, dpi)


# ----------------------------------------------------------------------------- mAP


def map_curve_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] = ("mAP", "AP50"),
    x_key: str = "epoch",
    title: str = "Validation mAP",
) -> Figure:
    """mAP per epoch: one line per key of ``keys`` present in ``history``; y in ``[0, 1]``.

    Args:
      history: one mapping per epoch, with ``x_key`` and some of ``keys``
        (fractions in ``[0, 1]``, e.g. COCO mAP@[.5:.95] and AP@.5). Entries
        lacking a key, or holding None for it (epochs without evaluation), are
        skipped for that line only.
      keys: the metrics to draw.
      x_key: x value key; entries without it are numbered by position (1-based).
      title: axes title.

    Raises:
      ValueError: when no entry holds any of ``keys``.
    """
    history = list(history)
    fig = _new_figure((8, 5))
    ax = fig.subplots()
    drawn = 0
    for key in keys:
        pts = [
            (_scalar(h[x_key]) if h.get(x_key) is not None else float(i + 1), _scalar(h[key]))
            for i, h in enumerate(history)
            if h.get(key) is not None
        ]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-o", markersize=3, label=key)
        drawn += 1
    if not drawn:
        raise ValueError(f"history holds none of the keys {tuple(keys)}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("Epoch" if x_key == "epoch" else x_key)
    ax.set_ylabel("mAP")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_map_curve(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] = ("mAP", "AP50"),
    x_key: str = "epoch",
    title: str = "Validation mAP",
    dpi: float = 100,
) -> str:
    """Save :func:`map_curve_figure` as a PNG (``800 x 500`` pixels at ``dpi=100``); returns ``path``."""
    return _save(map_curve_figure(history, keys=keys, x_key=x_key, title=title), path, dpi)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m yolo11_jax.plots iou --out iou_variants.png``."""
    parser = argparse.ArgumentParser(
        prog="python -m yolo11_jax.plots",
        description="Draw the yolo11-jax notebook figures that need no training run.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_iou = sub.add_parser(
        "iou",
        help="IoU / GIoU / DIoU / CIoU vs horizontal offset of two 3x3 boxes",
        description="Write the IoU-variant figure: a box [2, 2, 5, 5] against the same box "
        "slid right by 0..6 units, for IoU, GIoU, DIoU and CIoU (yolo11_jax.iou.bbox_iou).",
    )
    p_iou.add_argument("--out", default="iou_variants.png", help="output PNG path (default: %(default)s)")
    p_iou.add_argument("--dpi", type=float, default=100, help="resolution, dots per inch (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "iou":
        print(plot_iou_variants(args.out, dpi=args.dpi))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
