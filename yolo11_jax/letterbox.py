"""Ultralytics' predict-time geometry: the rectangular letterbox and the mapping of boxes back.

Written from the rules of Ultralytics 8.4.190 (``LetterBox`` with ``auto=True``, which its
predictor uses for a ``.pt`` model, and ``ops.scale_boxes``), without its code; the PyTorch /
OpenCV yardstick in ``reference_torch/ultralytics_predict.py`` implements the same rules
separately and ``tests/test_letterbox.py`` compares the two pixel for pixel.

The letterbox of an ``H x W`` image at ``img_size`` (stride 32):

* ``r = min(img_size / H, img_size / W)`` (``scaleup``: also above 1);
* the image is resized to ``new_w = max(round(W * r), 1)``, ``new_h = max(round(H * r), 1)``
  (Python's round, half to even) with OpenCV's ``INTER_LINEAR`` (no resize if the size is
  unchanged);
* ``auto``: the padding is ``(img_size - new) mod 32`` per axis (the smallest rectangle of
  multiples of 32 holding the image); otherwise ``img_size - new`` (a square);
* the padding is split as ``top = round(dh / 2 - 0.1)``, ``bottom = round(dh / 2 + 0.1)``
  (the same for left / right), filled with ``114``.

So ``bus.jpg`` (810 x 1080) goes in at 480 x 640 (width x height).

:func:`scale_boxes_to_original` undoes it from the two shapes alone, as ``scale_boxes`` does:
``gain = min(h_in / H, w_in / W)``, ``new_* = max(round(side * gain), 1)``, per-axis gains
``new_w / W`` and ``new_h / H``, offsets ``round((w_in - new_w) / 2 - 0.1)`` (and for y), then the
boxes are clipped to ``[0, W] x [0, H]``.

Images are RGB ``uint8 (H, W, 3)`` here; :func:`read_image_rgb` decodes files with OpenCV as
Ultralytics does (``cv2.imdecode`` with ``IMREAD_COLOR``, which applies the EXIF orientation),
then swaps BGR to RGB (resizing and padding act on each channel alike, so the order does not
matter to them).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

#: Ultralytics' padding value and network stride.
PAD_VALUE = 114
STRIDE = 32


class RectGeometry(NamedTuple):
    """Where an original ``orig_h x orig_w`` image sits in the network input ``input_h x input_w``:
    resized to ``new_h x new_w`` pixels, its top-left corner at ``(left, top)``."""

    orig_h: int
    orig_w: int
    input_h: int
    input_w: int
    new_h: int
    new_w: int
    top: int
    left: int

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_h, self.input_w


def rect_letterbox_geometry(orig_h: int, orig_w: int, img_size: int, *, auto: bool = True,
                            stride: int = STRIDE, scaleup: bool = True) -> RectGeometry:
    """The letterbox geometry of an ``orig_h x orig_w`` image at ``img_size`` (see the module
    docstring). ``auto=False`` pads to the ``img_size`` square."""
    if orig_h < 1 or orig_w < 1:
        raise ValueError(f"image size must be positive, got {orig_w}x{orig_h} (width x height)")
    r = min(img_size / orig_h, img_size / orig_w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(round(orig_w * r), 1), max(round(orig_h * r), 1)
    dw, dh = img_size - new_w, img_size - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)
    left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    return RectGeometry(orig_h, orig_w, new_h + top + bottom, new_w + left + right, new_h, new_w, top, left)


def rect_letterbox(image: np.ndarray, img_size: int, *, auto: bool = True, stride: int = STRIDE,
                   pad_value: int = PAD_VALUE) -> tuple[np.ndarray, RectGeometry]:
    """Letterbox one ``uint8 (H, W, 3)`` image: ``(canvas uint8 (input_h, input_w, 3), geometry)``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    g = rect_letterbox_geometry(image.shape[0], image.shape[1], img_size, auto=auto, stride=stride)
    if (g.new_h, g.new_w) != image.shape[:2]:
        image = cv2.resize(image, (g.new_w, g.new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((g.input_h, g.input_w, 3), pad_value, np.uint8)
    canvas[g.top:g.top + g.new_h, g.left:g.left + g.new_w] = image
    return canvas, g


def scale_boxes_to_original(boxes_xyxy: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int],
                            *, clip: bool = True) -> np.ndarray:
    """Map ``(N, 4)`` xyxy boxes from network-input pixels (``input_hw``) to original-image pixels
    (``orig_hw``) with ``scale_boxes``' rules (module docstring), then clip. Returns float64 ``(N, 4)``."""
    (in_h, in_w), (h, w) = (int(v) for v in input_hw), (int(v) for v in orig_hw)
    gain = min(in_h / h, in_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_x, pad_y = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4).copy()
    b[:, 0::2] = (b[:, 0::2] - pad_x) / (new_w / w)
    b[:, 1::2] = (b[:, 1::2] - pad_y) / (new_h / h)
    if clip:
        b[:, 0::2] = np.clip(b[:, 0::2], 0.0, float(w))
        b[:, 1::2] = np.clip(b[:, 1::2], 0.0, float(h))
    return b


def decode_image_rgb(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes with OpenCV (``IMREAD_COLOR``: 3 channels, EXIF orientation
    applied) to RGB ``uint8 (H, W, 3)``. Raises ``ValueError`` naming ``name`` if it does not decode."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise ValueError(f"{name}: OpenCV cannot decode this image")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_image_rgb(path: str | Path) -> np.ndarray:
    """An image file decoded as Ultralytics' predictor decodes it, as RGB ``uint8 (H, W, 3)``."""
    return decode_image_rgb(np.fromfile(str(path), np.uint8), str(path))
