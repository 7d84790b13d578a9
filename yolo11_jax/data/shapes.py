"""Embedded synthetic detection dataset ("shapes"), generated offline.

The dataset follows the ``detection-datasets/coco`` schema used by the notebook, so
every reader and the training loop can be exercised without network access:

* ``image``: a :class:`datasets.Image` feature (JPEG bytes, RGB, ``img_size`` square);
* ``image_id`` (int64), ``width`` / ``height`` (int32, pixels);
* ``objects``: ``{"bbox": [[x, y, w, h], ...], "category": [int, ...]}`` where the
  boxes are COCO-style ``xywh`` in **pixels** (top-left corner, width, height) and
  ``category`` is a :class:`datasets.ClassLabel` over :data:`SHAPES_CLASS_NAMES`.

Each image has 1 to 4 objects of four classes that differ only in geometry
(circle, square, triangle, cross). The fill colour is random per instance (with a
minimum contrast to the background), so the class must be recognised from the
shape, not the colour. Object sizes are 15% to 50% of the image side (the longer
side of the box), objects overlap little (pairwise IoU below 0.15), and the
backgrounds are noisy single colours or noisy linear gradients.

Generation is deterministic: image ``i`` of split ``s`` is drawn from
``np.random.default_rng([seed, crc32(s), i])``, so the same arguments give
byte-identical datasets and different splits (e.g. ``"train"`` and ``"validation"``)
are independent draws.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import zlib
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SHAPES_CLASS_NAMES: list[str] = ["circle", "square", "triangle", "cross"]
"""Class names of the shapes dataset; class id ``k`` is ``SHAPES_CLASS_NAMES[k]``."""


@functools.lru_cache(maxsize=None)
def shapes_features() -> "datasets.Features":
    """Features of :func:`make_shapes_dataset` (the ``detection-datasets/coco`` layout), also
    available as ``SHAPES_FEATURES``. Built on first use: importing ``datasets`` starts pyarrow,
    whose threads take a glibc arena, and the command-line tools make their host-memory settings
    (``yolo11_jax.host_memory``) before any such thread exists."""
    import datasets

    return datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=SHAPES_CLASS_NAMES)),
            },
        }
    )


def __getattr__(name: str):
    if name == "SHAPES_FEATURES":
        return shapes_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_NUM_IMAGES: dict[str, int] = {"train": 2000, "validation": 200, "val": 200, "test": 200}
"""Images per split when ``num_images`` is not given (other split names: 200)."""

_MIN_SIZE_FRAC, _MAX_SIZE_FRAC = 0.15, 0.50
_MAX_IOU = 0.15
_MIN_CONTRAST = 90.0  # Euclidean RGB distance between object fill and background


def _split_hash(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A noisy solid colour or noisy linear gradient, float32 (size, size, 3) in 0..255."""
    c0 = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        bg = np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    else:
        c1 = rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * math.pi)
        coords = np.arange(size, dtype=np.float32) / max(size - 1, 1)
        t = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        bg = (c0[None, None, :] + t[..., None] * (c1 - c0)[None, None, :]).astype(np.float32)
    noise_std = np.float32(rng.uniform(2.0, 14.0))
    # luminance noise (shared by the three channels): cheap and looks like sensor noise
    return bg + noise_std * rng.standard_normal((size, size, 1), dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, ref: np.ndarray) -> tuple[int, int, int]:
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - ref) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, 3)
    else:  # fall back to the colour opposite the reference
        colour = 255.0 - ref
        if np.linalg.norm(colour - ref) < _MIN_CONTRAST:
            colour = np.where(ref > 127, 0.0, 255.0)
    return tuple(int(v) for v in np.clip(colour, 0, 255))


class _NoDrawing:
    """Stands in for ``ImageDraw`` when only the boxes are wanted."""

    def ellipse(self, *args, **kwargs):
        pass

    rectangle = polygon = ellipse


_NO_DRAWING = _NoDrawing()


def _draw_object(
    draw: Optional[ImageDraw.ImageDraw], rng: np.random.Generator, cls: int, x0: int, y0: int, side: int, colour
) -> list[float]:
    """Draw one object of class ``cls`` inside the square ``[x0, x0+side) x [y0, y0+side)``
    (``draw=None``: only its box, with the same random draws).

    Returns its tight box as COCO ``[x, y, w, h]`` in pixels.
    """
    if draw is None:
        draw = _NO_DRAWING
    x1, y1 = x0 + side, y0 + side
    name = SHAPES_CLASS_NAMES[cls]
    if name == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
        return [float(x0), float(y0), float(side), float(side)]
    if name == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        return [float(x0), float(y0), float(side), float(side)]
    if name == "cross":
        t = max(2, int(round(side * rng.uniform(0.25, 0.4))))
        a = x0 + (side - t) // 2
        b = y0 + (side - t) // 2
        draw.rectangle([x0, b, x1 - 1, b + t - 1], fill=colour)
        draw.rectangle([a, y0, a + t - 1, y1 - 1], fill=colour)
        return [float(x0), float(y0), float(side), float(side)]
    if name == "triangle":
        # Equilateral triangle, random rotation, scaled so its box's longer side is `side`.
        phi = rng.uniform(0, 2 * math.pi)
        ang = phi + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
        vx, vy = np.cos(ang), np.sin(ang)
        ext = max(vx.max() - vx.min(), vy.max() - vy.min())
        vx = (vx - vx.min()) * side / ext
        vy = (vy - vy.min()) * side / ext
        # centre the (possibly non-square) box inside the square cell
        vx += x0 + (side - (vx.max() - vx.min())) / 2
        vy += y0 + (side - (vy.max() - vy.min())) / 2
        # PIL polygon vertices are pixel centres: shift by -0.5 so the filled area
        # spans the continuous extent [min, max] of the vertices.
        draw.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in zip(vx, vy)], fill=colour)
        return [float(vx.min()), float(vy.min()), float(vx.max() - vx.min()), float(vy.max() - vy.min())]
    raise AssertionError(name)


def render_shapes_image(rng: np.random.Generator, img_size: int = 128, *,
                        pixels: bool = True) -> tuple[Optional[Image.Image], list[list[float]], list[int]]:
    """Draw one synthetic image.

    Returns:
      ``(image, bboxes_xywh, categories)``: an RGB PIL image of ``img_size`` pixels,
      COCO ``[x, y, w, h]`` pixel boxes (1 to 4, all inside the image) and their class ids.
      ``pixels=False``: no image (``None``) and no drawing, the same boxes and classes (every
      random draw is made as when drawing; about half the time).
    """
    bg = _background(rng, img_size)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB") if pixels else None
    draw = ImageDraw.Draw(img) if pixels else None
    n_target = int(rng.integers(1, 5))
    boxes: list[np.ndarray] = []
    bboxes: list[list[float]] = []
    cats: list[int] = []
    lo = max(3, int(round(_MIN_SIZE_FRAC * img_size)))
    hi = max(lo, int(round(_MAX_SIZE_FRAC * img_size)))
    for _ in range(n_target):
        for _attempt in range(30):
            side = int(rng.integers(lo, hi + 1))
            x0 = int(rng.integers(0, img_size - side + 1))
            y0 = int(rng.integers(0, img_size - side + 1))
            cell = np.array([x0, y0, side, side], np.float64)
            if all(_iou_xywh(cell, b) < _MAX_IOU for b in boxes):
                break
        else:
            continue  # no room left: fewer objects in this image
        cls = int(rng.integers(0, len(SHAPES_CLASS_NAMES)))
        ref = bg[y0 + side // 2, x0 + side // 2]
        colour = _contrasting_colour(rng, ref)
        bboxes.append(_draw_object(draw, rng, cls, x0, y0, side, colour))
        boxes.append(cell)
        cats.append(cls)
    return img, bboxes, cats


def _jpeg_bytes(img: Image.Image) -> bytes:
    # JPEG (like COCO) at high quality without chroma subsampling: ~10x faster to
    # encode than PNG for these noisy images, and colour edges stay sharp.
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def make_shapes_dataset(
    split: str = "train",
    num_images: Optional[int] = None,
    img_size: int = 128,
    seed: int = 0,
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """Generate the synthetic shapes dataset as a Hugging Face :class:`datasets.Dataset`.

    Args:
      split: split name; it changes the random stream (``"train"`` and ``"validation"``
        never share images). Also selects the default size (:data:`DEFAULT_NUM_IMAGES`).
      num_images: number of images (default: 2000 for ``"train"``, 200 otherwise).
      img_size: square image side in pixels.
      seed: base seed; same ``(split, num_images, img_size, seed)`` => identical data.
      cache_dir: if given, the dataset is stored there with ``save_to_disk`` on first
        use and re-read with ``load_from_disk`` afterwards. ``None`` (default): nothing
        is written to disk.

    Returns:
      A ``Dataset`` with features :data:`SHAPES_FEATURES` (``image``, ``image_id``,
      ``width``, ``height``, ``objects.bbox`` as ``[x, y, w, h]`` pixels,
      ``objects.category`` class ids in ``0..len(SHAPES_CLASS_NAMES)-1``).
    """
    import datasets

    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES.get(split, 200)
    if num_images < 0 or img_size < 8:
        raise ValueError(f"make_shapes_dataset: need num_images >= 0 and img_size >= 8, got {num_images}, {img_size}")
    cache_path = None
    if cache_dir is not None:
        cache_path = os.path.join(cache_dir, f"shapes_{split}_n{num_images}_s{img_size}_seed{seed}")
        if os.path.exists(os.path.join(cache_path, "dataset_info.json")):
            return datasets.load_from_disk(cache_path)

    split_key = _split_hash(split)
    columns: dict[str, list] = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for i in range(num_images):
        rng = np.random.default_rng([seed, split_key, i])
        img, bboxes, cats = render_shapes_image(rng, img_size)
        columns["image_id"].append(i)
        columns["image"].append({"bytes": _jpeg_bytes(img), "path": None})
        columns["width"].append(img_size)
        columns["height"].append(img_size)
        columns["objects"].append({"bbox": bboxes, "category": cats})
    ds = datasets.Dataset.from_dict(columns, features=shapes_features(), split=datasets.NamedSplit(split))
    if cache_path is not None:
        ds.save_to_disk(cache_path)
    return ds


class ShapesImage:
    """Image ``index`` of a shapes split, rendered when :meth:`load` is called (deterministic:
    the same pixels as :func:`make_shapes_dataset`, JPEG round trip included). Nothing is stored."""

    def __init__(self, split: str, index: int, img_size: int, seed: int) -> None:
        self.split, self.index, self.img_size, self.seed = split, index, img_size, seed

    def render(self, *, pixels: bool = True) -> tuple[Optional[Image.Image], list[list[float]], list[int]]:
        return render_shapes_image(np.random.default_rng([self.seed, _split_hash(self.split), self.index]),
                                   self.img_size, pixels=pixels)

    def load(self) -> Image.Image:
        img = Image.open(io.BytesIO(_jpeg_bytes(self.render()[0])))
        img.load()
        return img.convert("RGB")

    @property
    def size(self) -> tuple[int, int]:
        return self.img_size, self.img_size


SHAPES_CACHE_ENV = "YOLO11_JAX_SHAPES_CACHE"


def index_cache_dir() -> Optional[str]:
    """Where :func:`shapes_source` keeps the boxes of each split it has computed:
    ``$YOLO11_JAX_SHAPES_CACHE`` if set (``""``: nowhere, every run computes them), else
    ``$XDG_CACHE_HOME/yolo11_jax/shapes``, else ``~/.cache/yolo11_jax/shapes``."""
    from yolo11_jax.compile_cache import user_cache_dir

    if SHAPES_CACHE_ENV in os.environ:
        return os.environ[SHAPES_CACHE_ENV] or None
    return user_cache_dir("shapes")


@functools.lru_cache(maxsize=1)
def _render_digest() -> str:
    """What the boxes depend on besides the split's parameters: this module's source and numpy's
    version (its random streams)."""
    import hashlib
    return hashlib.sha256(open(__file__, "rb").read() + np.__version__.encode()).hexdigest()[:16]


def shapes_boxes(split: str, num_images: int, img_size: int, seed: int, *,
                 cache_dir: Optional[str] = None) -> list[tuple[list[list[float]], list[int]]]:
    """``(bboxes_xywh, categories)`` of images ``0 .. num_images - 1`` of a shapes split, as
    :func:`render_shapes_image` gives them (without drawing). Kept in ``cache_dir`` (a JSON file
    per split, seed, size and count; ``None``: not kept), so a later run reads them instead of
    making every random draw again (about 0.5 ms per image). A file that does not read back is
    computed again and replaced."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{split}-{seed}-{img_size}px-{num_images}-{_render_digest()}.json")
        try:
            with open(path) as f:
                boxes = [(b, c) for b, c in json.load(f)]
            if len(boxes) == num_images:
                return boxes
        except (OSError, ValueError, TypeError):
            pass  # absent or damaged: computed again below
    boxes = [ShapesImage(split, i, img_size, seed).render(pixels=False)[1:] for i in range(num_images)]
    if path is not None:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(boxes, f)  # floats round-trip exactly through JSON
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache folder: the boxes are computed again next time
    return boxes


def shapes_source(split: str = "train", num_images: Optional[int] = None, img_size: int = 128, seed: int = 0, *,
                  cleaner, resize_to: Optional[int] = None, letterbox: bool = False, max_samples: Optional[int] = None,
                  cache_dir: Optional[str] = "default"):
    """The shapes split as a lazily rendered :class:`~yolo11_jax.data.records.RecordSource`: the
    boxes and labels of every image are known now (:func:`shapes_boxes`: the random draws of a
    render, without drawing, kept in ``cache_dir``, by default :func:`index_cache_dir`), the
    pixels are rendered whenever an image is read, so memory does not grow with ``num_images``.
    ``cleaner`` (an :class:`~yolo11_jax.data.cleaning.ExampleCleaner` for ``xywh`` boxes)
    checks the class ids and counts; ``source_id`` is ``shapes/<split>[i]``."""
    from .records import RecordSource

    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES.get(split, 200)
    if num_images < 0 or img_size < 8:
        raise ValueError(f"shapes: need num_images >= 0 and img_size >= 8, got {num_images}, {img_size}")
    if cache_dir == "default":
        cache_dir = index_cache_dir()
    if max_samples is not None and max_samples < num_images:
        # A few images: compute only what is needed (records may be dropped by the cleaner).
        boxes = None
    else:
        boxes = shapes_boxes(split, num_images, img_size, seed, cache_dir=cache_dir)
    records = []
    for i in range(num_images):
        if max_samples is not None and len(records) >= max_samples:
            break
        ref = ShapesImage(split, i, img_size, seed)
        bboxes, cats = boxes[i] if boxes is not None else ref.render(pixels=False)[1:]
        rec = cleaner.record(ref, bboxes, cats, f"shapes/{split}[{i}]", size=(img_size, img_size))
        if rec is not None:
            records.append(rec)
    return RecordSource(records, img_size=resize_to, letterbox=letterbox, name=f"shapes/{split}")
