"""Ultralytics' predict geometry (``yolo11_jax.letterbox``) against the PyTorch/OpenCV yardstick
(``reference_torch.ultralytics_predict``): letterboxed pixels identical, boxes mapped back to
within 1e-3 px, on tall, wide, tiny, odd and larger-than-640 images."""

import numpy as np
import pytest
import torch

from reference_torch import ultralytics_predict as ref
from yolo11_jax.letterbox import (
    decode_image_rgb,
    rect_letterbox,
    rect_letterbox_geometry,
    scale_boxes_to_original,
)

# (height, width): tall, wide, tiny, thin, odd, square, larger than 640, bus.jpg's and zidane.jpg's
SIZES = [(1080, 810), (50, 120), (1, 1), (3, 7), (1, 500), (700, 2), (333, 517), (640, 640), (480, 640),
         (1500, 2000), (2001, 999), (720, 1280), (31, 33), (641, 639)]
IMG_SIZES = [640, 320]
BOX_TOL_PX = 1e-3


def _image(h, w, seed=0):
    return np.random.default_rng(seed + 7 * h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("img_size", IMG_SIZES)
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_rect_letterbox_pixels_equal_the_yardstick(hw, img_size):
    img = _image(*hw)
    got, g = rect_letterbox(img, img_size)
    want = ref.letterbox(img, img_size)
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert got.shape[:2] == g.input_hw and g.input_h % 32 == 0 and g.input_w % 32 == 0
    assert max(g.input_hw) == img_size  # the long side goes to the image size (scaleup)
    square, _ = rect_letterbox(img, img_size, auto=False)
    np.testing.assert_array_equal(square, ref.letterbox(img, img_size, auto=False))
    assert square.shape[:2] == (img_size, img_size)


def test_known_input_shapes():
    """bus.jpg (810 x 1080) goes in at 480 x 640 (width x height), as Ultralytics runs it."""
    assert rect_letterbox_geometry(1080, 810, 640).input_hw == (640, 480)
    assert rect_letterbox_geometry(720, 1280, 640).input_hw == (384, 640)  # zidane.jpg
    g = rect_letterbox_geometry(1, 500, 640)  # a 1-pixel-high strip keeps one row
    assert (g.new_h, g.new_w, g.input_hw) == (1, 640, (32, 640))
    # odd padding: 27 rows split as 13 above and 14 below (round(13.4), round(13.6))
    g = rect_letterbox_geometry(101, 640, 640)
    assert (g.new_h, g.input_h, g.top) == (101, 128, 13)


@pytest.mark.parametrize("img_size", IMG_SIZES)
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_boxes_mapped_back_like_the_yardstick(hw, img_size):
    g = rect_letterbox_geometry(*hw, img_size)
    rng = np.random.default_rng(hw[0] * 31 + hw[1])
    xy = rng.uniform(-20, [g.input_w + 20, g.input_h + 20], (64, 2))
    wh = rng.uniform(0, [g.input_w / 2, g.input_h / 2], (64, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)  # network-input pixels, some outside
    got = scale_boxes_to_original(boxes, g.input_hw, hw)
    want = ref.scale_boxes(g.input_hw, torch.from_numpy(boxes), hw).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=BOX_TOL_PX)
    assert (got >= 0).all() and (got[:, 0::2] <= hw[1]).all() and (got[:, 1::2] <= hw[0]).all()


@pytest.mark.parametrize("hw", [(1080, 810), (333, 517), (720, 1280), (2001, 999)])
def test_boxes_round_trip_through_the_letterbox(hw):
    """A box of the original image, drawn onto the letterbox canvas and mapped back, is itself."""
    g = rect_letterbox_geometry(*hw, 640)
    rng = np.random.default_rng(1)
    x1y1 = rng.uniform(0, [hw[1] / 2, hw[0] / 2], (16, 2))
    orig = np.concatenate([x1y1, x1y1 + rng.uniform(1, [hw[1] / 2, hw[0] / 2], (16, 2))], 1)
    gain = np.array([g.new_w / g.orig_w, g.new_h / g.orig_h] * 2)
    canvas = orig * gain + np.array([g.left, g.top] * 2)
    np.testing.assert_allclose(scale_boxes_to_original(canvas, g.input_hw, hw), orig, atol=1e-9)


def test_decode_matches_opencv_and_names_bad_data(tmp_path):
    import cv2

    img = _image(37, 53)
    ok, png = cv2.imencode(".png", img[..., ::-1])
    assert ok
    np.testing.assert_array_equal(decode_image_rgb(png.tobytes()), img)
    with pytest.raises(ValueError, match="photo.jpg"):
        decode_image_rgb(b"not an image", "photo.jpg")
    with pytest.raises(ValueError, match="uint8"):
        rect_letterbox(img.astype(np.float32), 640)
