"""What every reader produces: the cleaned :class:`Record` (indexed, no pixels), the decoded
:class:`Example`, the lazily decoded :class:`RecordSource`, the :class:`DataStats` counters, and
the image and box helpers the readers share (:func:`open_image`, :func:`image_size`,
:func:`boxes_to_xyxy_pixels`, :data:`IMAGE_EXTENSIONS`, :data:`BBOX_FORMATS`).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from .transforms import letterbox, resize_plain

BBOX_FORMATS: tuple[str, ...] = ("xywh", "xyxy", "cxcywh_norm")
"""Box conventions understood by the readers:

* ``"xywh"``: COCO, ``[x_min, y_min, width, height]`` in pixels (the notebook);
* ``"xyxy"``: ``[x_min, y_min, x_max, y_max]`` in pixels;
* ``"cxcywh_norm"``: ``[cx, cy, w, h]`` normalised by image width / height (YOLO).
"""

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File endings (case-insensitive) read as images: by the YOLO-folder reader and by ``predict`` for a directory."""

SPLIT_ALIASES = {"validation": ["val", "valid"], "val": ["validation", "valid"], "valid": ["validation", "val"]}
"""Other names a split may have in a folder layout or a ``DatasetDict``."""

# --------------------------------------------------------------------------- records


@dataclass
class Example:
    """One cleaned training example.

    Attributes:
      image: uint8 ``(H, W, 3)`` RGB pixels (``H == W == img_size`` if pre-resized).
      boxes_cxcywh: float32 ``(N, 4)`` boxes ``[cx, cy, w, h]`` normalised to
        ``[0, 1]`` by the image width / height; every box lies inside the image.
      labels: int32 ``(N,)`` class ids in ``0..num_classes-1``.
      source_id: where the example came from (file path or ``"name[index]"``), used
        in warnings and errors.
    """

    image: np.ndarray
    boxes_cxcywh: np.ndarray
    labels: np.ndarray
    source_id: str

    @property
    def num_boxes(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataStats:
    """Counters of what was done to the data, in two units that are never mixed:

    * **index** counters (:data:`INDEX_COUNTERS`): counted once per record when the readers
      index the data (``images_*``, ``boxes_seen`` ... ``iscrowd_skipped``);
    * **sample** counters (:data:`SAMPLE_COUNTERS`): counted per sample the input pipeline makes,
      summed over every batch of every pass and every worker process: ``samples_made``,
      ``sample_boxes`` (the boxes of those samples after augmentation, before padding), and
      what was dropped from them (``boxes_dropped_augmentation``, ``boxes_truncated_max_boxes``,
      ``samples_truncated_max_boxes``, ``images_replaced_unreadable``).

    :meth:`summary` prints the two groups apart, with the number of passes over the index the
    samples span, and each drop as a share of what that stage received: the augmentation, of
    ``sample_boxes + boxes_dropped_augmentation``; the padding, of ``sample_boxes``; the samples'
    counters, of ``samples_made``."""

    images_seen: int = 0
    images_kept: int = 0
    images_skipped_unreadable: int = 0
    images_skipped_empty: int = 0
    images_empty_kept: int = 0
    boxes_seen: int = 0
    boxes_kept: int = 0
    boxes_dropped_degenerate: int = 0
    boxes_clipped: int = 0
    boxes_dropped_outside: int = 0
    iscrowd_skipped: int = 0
    samples_made: int = 0
    sample_boxes: int = 0
    boxes_dropped_augmentation: int = 0
    boxes_truncated_max_boxes: int = 0
    samples_truncated_max_boxes: int = 0
    images_replaced_unreadable: int = 0

    def merge(self, other: "DataStats") -> "DataStats":
        """Add ``other``'s counters into this one (in place) and return ``self``."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: the index counters (once per image) and, if any sample was made, the sample
        counters (per sample, summed over passes), each non-zero one, plus the totals."""
        d = self.as_dict()
        always = ("images_seen", "images_kept", "boxes_kept")
        index = ", ".join(f"{k}={d[k]}" for k in INDEX_COUNTERS if d[k] or k in always)
        text = f"DataStats(index, once per image: {index}"
        if self.samples_made:
            passes = f" ({self.samples_made / self.images_kept:.2f} passes)" if self.images_kept else ""
            parts = [f"samples_made={self.samples_made}{passes}", f"sample_boxes={self.sample_boxes}"]
            augmented = self.sample_boxes + self.boxes_dropped_augmentation  # boxes the augmentation received
            for k in SAMPLE_COUNTERS[2:]:
                if d[k]:
                    base = {"boxes_dropped_augmentation": augmented, "boxes_truncated_max_boxes": self.sample_boxes}
                    parts.append(f"{k}={d[k]} ({d[k] / max(base.get(k, self.samples_made), 1):.1%})")
            text += "; pipeline, per sample over all passes: " + ", ".join(parts)
        return text + ")"


INDEX_COUNTERS: tuple[str, ...] = ("images_seen", "images_kept", "images_skipped_unreadable", "images_skipped_empty",
                                   "images_empty_kept", "boxes_seen", "boxes_kept", "boxes_dropped_degenerate",
                                   "boxes_clipped", "boxes_dropped_outside", "iscrowd_skipped")
"""Counted once per record, when the data is indexed."""

SAMPLE_COUNTERS: tuple[str, ...] = ("samples_made", "sample_boxes", "boxes_dropped_augmentation",
                                    "boxes_truncated_max_boxes", "samples_truncated_max_boxes",
                                    "images_replaced_unreadable")
"""Counted per sample the pipeline makes (carried in every batch, summed over the run)."""


@dataclass
class Record:
    """One cleaned example before decoding: what the index holds in memory (no pixels).

    Attributes:
      image: what :func:`open_image` reads (a file path, encoded bytes, a Hugging Face
        ``{"bytes", "path"}`` dict) or an object with a ``load() -> PIL.Image`` method (a row of
        a memory-mapped dataset, a rendered synthetic image).
      boxes_cxcywh: float32 ``(N, 4)`` cleaned boxes normalised by the image size.
      labels: int32 ``(N,)`` class ids.
      source_id: where the example came from, for warnings and errors.
      size: ``(width, height)`` of the original image in pixels.
    """

    image: Any
    boxes_cxcywh: np.ndarray
    labels: np.ndarray
    source_id: str
    size: tuple[int, int]

    @property
    def num_boxes(self) -> int:
        return int(self.labels.shape[0])


class UnreadableImageError(ValueError):
    """An image that passed the index (its header was readable, or not checked) but does not decode."""


class RecordSource:
    """A lazily decoded detection dataset: random access to :class:`Example` by index.

    ``records`` are cleaned at index time (boxes, labels, counts); ``source[i]`` decodes the
    image of record ``i`` and, if ``img_size`` is set, resizes it to ``img_size`` squared (plain
    resize, or letterbox with the boxes mapped onto the canvas). Decoded images are never kept.
    This is the random-access source of the Grain pipeline (``__len__`` / ``__getitem__``);
    it pickles to worker processes (a memory-mapped dataset by reference).

    Raises :class:`UnreadableImageError` naming the record for an image that does not decode.
    """

    def __init__(self, records: Sequence[Record], *, img_size: Optional[int] = None, letterbox: bool = False,
                 name: str = "dataset") -> None:
        self.records = list(records)
        self.img_size = img_size
        self.letterbox = letterbox
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def load_pil(self, index: int) -> Image.Image:
        """The original RGB image of record ``index`` (decoded now)."""
        rec = self.records[index]
        try:
            return rec.image.load() if hasattr(rec.image, "load") and not isinstance(rec.image, Image.Image) \
                else open_image(rec.image)
        except Exception as err:  # noqa: BLE001 -- any decoding failure means "unreadable"
            raise UnreadableImageError(f"{rec.source_id}: unreadable image ({type(err).__name__}: {err})") from None

    def __getitem__(self, index: int) -> Example:
        rec = self.records[int(index)]
        img = self.load_pil(int(index))
        boxes = rec.boxes_cxcywh
        if self.img_size is not None:
            if self.letterbox:
                img, boxes, _ = letterbox(img, boxes, self.img_size)
            else:
                img = resize_plain(img, self.img_size)
        return Example(image=np.array(img, dtype=np.uint8), boxes_cxcywh=np.asarray(boxes, np.float32).reshape(-1, 4),
                       labels=rec.labels, source_id=rec.source_id)

# --------------------------------------------------------------------------- helpers


def boxes_to_xyxy_pixels(boxes: np.ndarray, bbox_format: str, width: int, height: int) -> np.ndarray:
    """Convert ``(N, 4)`` boxes in ``bbox_format`` to float64 ``xyxy`` pixels."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if bbox_format == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
    if bbox_format == "xyxy":
        return b.copy()
    if bbox_format == "cxcywh_norm":
        cx, cy, w, h = b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")


def _degenerate_mask(boxes: np.ndarray, bbox_format: str) -> np.ndarray:
    """True where a box has non-positive width/height (or non-finite values) in its own convention."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    finite = np.isfinite(b).all(axis=1)
    if bbox_format == "xyxy":
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    else:
        w, h = b[:, 2], b[:, 3]
    with np.errstate(invalid="ignore"):
        return ~finite | ~(w > 0) | ~(h > 0)


def _fits_image(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per box: inside the image up to a small tolerance (1 px + 1% of the side)."""
    tx, ty = 1.0 + 0.01 * width, 1.0 + 0.01 * height
    return (
        (xyxy[:, 0] >= -tx) & (xyxy[:, 1] >= -ty) & (xyxy[:, 2] <= width + tx) & (xyxy[:, 3] <= height + ty)
    )


def open_image(obj: Any) -> Image.Image:
    """Decode ``obj`` (PIL image, array, bytes, path or HF ``{'bytes', 'path'}`` dict) to loaded RGB."""
    if isinstance(obj, Image.Image):
        img = obj
    elif isinstance(obj, np.ndarray):
        arr = obj
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {arr.dtype}")
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    elif isinstance(obj, (bytes, bytearray)):
        img = Image.open(io.BytesIO(obj))
    elif isinstance(obj, (str, os.PathLike)):
        img = Image.open(obj)
    elif isinstance(obj, dict):
        if obj.get("bytes"):
            img = Image.open(io.BytesIO(obj["bytes"]))
        elif obj.get("path"):
            img = Image.open(obj["path"])
        else:
            raise ValueError("image dict has neither bytes nor path")
    elif obj is None:
        raise ValueError("image is missing (None)")
    else:
        raise TypeError(f"cannot read an image from {type(obj).__name__}")
    img.load()  # force decoding now so corrupt data fails here
    return img.convert("RGB")


def image_size(obj: Any) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (nothing is decoded). Raises if the
    file is missing or is not an image."""
    if hasattr(obj, "load") and not isinstance(obj, Image.Image):
        return obj.size
    if isinstance(obj, Image.Image):
        return obj.size
    if isinstance(obj, np.ndarray):
        return int(obj.shape[1]), int(obj.shape[0])
    if isinstance(obj, dict):
        obj = obj.get("bytes") or obj.get("path")
        if obj is None:
            raise ValueError("image dict has neither bytes nor path")
    if isinstance(obj, (bytes, bytearray)):
        obj = io.BytesIO(obj)
    elif obj is None:
        raise ValueError("image is missing (None)")
    with Image.open(obj) as img:
        return img.size


def _image_path_hint(obj: Any) -> Optional[str]:
    if isinstance(obj, dict) and obj.get("path"):
        return str(obj["path"])
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    return None

def _limit(it: Iterator[Example], max_samples: Optional[int]) -> Iterator[Example]:
    if max_samples is None:
        return it
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    return itertools.islice(it, max_samples)

def collect_examples(
    examples: Iterable[Example], *, progress: bool = False, desc: str = "loading"
) -> list[Example]:
    """Materialise an example stream into a list (optionally with a tqdm bar)."""
    if progress:
        from tqdm.auto import tqdm

        examples = tqdm(examples, desc=desc, unit="img")
    return list(examples)
