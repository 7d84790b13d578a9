"""Image resizing shared by the readers (pre-resize at load time) and the batch loader.

Two modes, both on PIL images with PIL's default resampling filter (exactly
``Image.resize((w, h))`` as in the notebook):

* plain resize to ``(img_size, img_size)`` (the notebook): normalised boxes are unchanged;
* letterbox: keep the aspect ratio, centre the resized image on an ``img_size``
  square of grey ``LETTERBOX_FILL`` (114, i.e. 114/255 after normalisation) and
  map the normalised boxes onto the padded canvas.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

LETTERBOX_FILL: int = 114
"""Grey level (uint8) of the letterbox padding."""


class LetterboxGeometry(NamedTuple):
    """How an original ``(W, H)`` image maps onto the ``img_size`` letterbox canvas.

    A point ``(x, y)`` in original pixels lands at
    ``(x * scale_x + pad_left, y * scale_y + pad_top)`` canvas pixels, where
    ``scale_x = new_w / W`` and ``scale_y = new_h / H`` (equal up to rounding).
    """

    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    new_w: int
    new_h: int


def resize_plain(img: Image.Image, img_size: int) -> Image.Image:
    """Resize to ``(img_size, img_size)`` ignoring the aspect ratio (the notebook's resize)."""
    if img.size == (img_size, img_size):
        return img
    return img.resize((img_size, img_size))


def letterbox_geometry(width: int, height: int, img_size: int) -> LetterboxGeometry:
    """Geometry of letterboxing a ``width x height`` image into an ``img_size`` square."""
    r = min(img_size / width, img_size / height)
    new_w = min(img_size, max(1, int(round(width * r))))
    new_h = min(img_size, max(1, int(round(height * r))))
    pad_left = (img_size - new_w) // 2
    pad_top = (img_size - new_h) // 2
    return LetterboxGeometry(new_w / width, new_h / height, pad_left, pad_top, new_w, new_h)


def letterbox_boxes(boxes_cxcywh: np.ndarray, geom: LetterboxGeometry, img_size: int) -> np.ndarray:
    """Map normalised ``(N, 4)`` cxcywh boxes of the original image onto the canvas.

    Returns float32 ``(N, 4)`` cxcywh normalised by ``img_size``.
    """
    b = np.asarray(boxes_cxcywh, np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] * geom.new_w + geom.pad_left) / img_size
    out[:, 1] = (b[:, 1] * geom.new_h + geom.pad_top) / img_size
    out[:, 2] = b[:, 2] * geom.new_w / img_size
    out[:, 3] = b[:, 3] * geom.new_h / img_size
    return out.astype(np.float32)


def letterbox(
    img: Image.Image, boxes_cxcywh: np.ndarray, img_size: int, fill: int = LETTERBOX_FILL
) -> tuple[Image.Image, np.ndarray, LetterboxGeometry]:
    """Letterbox an RGB image and its boxes.

    Args:
      img: RGB PIL image of any size ``(W, H)``.
      boxes_cxcywh: ``(N, 4)`` boxes, cxcywh normalised by ``W`` and ``H``.
      img_size: side of the square output, pixels.
      fill: grey level of the padding (0..255).

    Returns:
      ``(canvas, boxes_cxcywh, geometry)``: the ``img_size`` square RGB image, the
      float32 ``(N, 4)`` boxes normalised by ``img_size``, and the
      :class:`LetterboxGeometry` needed to map predictions back.
    """
    w, h = img.size
    geom = letterbox_geometry(w, h, img_size)
    boxes = letterbox_boxes(boxes_cxcywh, geom, img_size)
    if (geom.new_w, geom.new_h) == (img_size, img_size):
        return resize_plain(img, img_size), boxes, geom
    resized = img if (geom.new_w, geom.new_h) == (w, h) else img.resize((geom.new_w, geom.new_h))
    canvas = Image.new("RGB", (img_size, img_size), (fill, fill, fill))
    canvas.paste(resized, (geom.pad_left, geom.pad_top))
    return canvas, boxes, geom
