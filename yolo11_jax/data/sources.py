"""Dataset readers producing a common stream of cleaned :class:`Example` records.

Readers (all generators of :class:`Example`, updating a shared :class:`DataStats`):

* :func:`hf_examples` -- Hugging Face datasets in the ``detection-datasets/coco``
  schema (``image`` + ``objects.{bbox, category}``): a ``Dataset`` /
  ``IterableDataset`` object, a Hub name (streamed, as the notebook does), a
  ``save_to_disk`` directory, or parquet file(s).
* :func:`coco_json_examples` -- a COCO ``instances_*.json`` plus an image folder.
* :func:`yolo_txt_examples` -- the Ultralytics ``images/`` + ``labels/`` layout.

Every reader hands its raw records to one :class:`ExampleCleaner`, which applies the
same rules everywhere:

* an unreadable / corrupt image is skipped with a ``warnings.warn`` naming it;
* a box with ``w <= 0`` or ``h <= 0`` (or non-finite numbers) is dropped;
* a box partly outside the image is clipped to it (dropped if nothing remains);
* a class id ``< 0`` or ``>= num_classes`` raises ``ValueError`` naming the example;
* an image left with no boxes is skipped if ``skip_empty`` else kept (it then
  trains as pure background);
* boxes far outside the image under the chosen ``bbox_format`` trigger one warning
  per load that names the example and the convention(s) the boxes would fit;
* optionally the image is resized once to ``img_size`` (plain or letterbox) and
  stored as uint8, so the batch loader only has to normalise.

:func:`~yolo11_jax.data.build.load_examples` materialises a source into memory (eagerly, so every error
above happens before training starts) and returns ``(examples, stats)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import itertools
import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

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

_CLIP_EPS_PX = 1e-3  # a coordinate moved by more than this counts as clipped


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
    """Counters of what the readers (when indexing) and the input pipeline (per sample, summed
    over the batches, from every worker process) did to the data."""

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
    boxes_truncated_max_boxes: int = 0
    examples_truncated_max_boxes: int = 0
    boxes_dropped_augmentation: int = 0
    images_replaced_unreadable: int = 0

    def merge(self, other: "DataStats") -> "DataStats":
        """Add ``other``'s counters into this one (in place) and return ``self``."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One-line human-readable summary (non-zero counters only, plus the totals)."""
        always = ("images_seen", "images_kept", "boxes_kept")
        parts = [
            f"{k}={v}" for k, v in self.as_dict().items() if v or k in always
        ]
        return "DataStats(" + ", ".join(parts) + ")"


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


# --------------------------------------------------------------------------- cleaning


class ExampleCleaner:
    """The one cleaning step shared by all readers (see the module docstring).

    Args:
      bbox_format: convention of the raw boxes, one of :data:`BBOX_FORMATS`.
      num_classes: valid class ids are ``0..num_classes-1``; ``None``: only ``< 0``
        is rejected.
      skip_empty: drop images that have no boxes left (counted in
        ``stats.images_skipped_empty``); otherwise they are kept.
      img_size: if given, resize the image once to ``img_size x img_size`` pixels
        (stored as uint8); ``None`` keeps the original size.
      letterbox: with ``img_size``: letterbox (keep aspect ratio, grey padding,
        boxes adjusted) instead of the notebook's plain resize.
      stats: counters to update (a fresh :class:`DataStats` if ``None``).
      check_convention: warn once if boxes run well outside the image under
        ``bbox_format`` (naming the conventions they would fit).
    """

    def __init__(
        self,
        *,
        bbox_format: str = "xywh",
        num_classes: Optional[int] = None,
        skip_empty: bool = False,
        img_size: Optional[int] = None,
        letterbox: bool = False,
        stats: Optional[DataStats] = None,
        check_convention: bool = True,
    ) -> None:
        if bbox_format not in BBOX_FORMATS:
            raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.bbox_format = bbox_format
        self.num_classes = num_classes
        self.skip_empty = skip_empty
        self.img_size = img_size
        self.letterbox = letterbox
        self.stats = stats if stats is not None else DataStats()
        self.check_convention = check_convention
        self._warned_convention = False

    def check_labels(self, labels: np.ndarray, source_id: str) -> None:
        """Raise ``ValueError`` naming ``source_id`` if a class id is out of range."""
        if labels.size == 0:
            return
        hi = self.num_classes if self.num_classes is not None else np.iinfo(np.int64).max
        bad = labels[(labels < 0) | (labels >= hi)]
        if bad.size:
            rng = f"0..{self.num_classes - 1}" if self.num_classes is not None else ">= 0"
            raise ValueError(
                f"{source_id}: class id {int(bad[0])} is outside the valid range {rng}"
                f" ({bad.size} bad box(es); num_classes={self.num_classes})"
            )

    def _maybe_warn_convention(self, raw: np.ndarray, source_id: str, width: int, height: int) -> None:
        if self._warned_convention or not self.check_convention or raw.shape[0] == 0:
            return
        ok = ~_degenerate_mask(raw, self.bbox_format)
        xyxy = boxes_to_xyxy_pixels(raw[ok], self.bbox_format, width, height)
        outside = ~_fits_image(xyxy, width, height)
        if not outside.any():
            return
        alternatives = []
        for fmt in BBOX_FORMATS:
            if fmt == self.bbox_format:
                continue
            if _degenerate_mask(raw, fmt).any():
                continue
            if _fits_image(boxes_to_xyxy_pixels(raw, fmt, width, height), width, height).all():
                alternatives.append(fmt)
        example_box = [round(float(v), 3) for v in raw[ok][outside][0]]
        if alternatives:
            hint = "they fit " + " / ".join(f"bbox_format={a!r}" for a in alternatives) + " -- is that the convention?"
        else:
            hint = "no other convention fits either"
        warnings.warn(
            f"{source_id}: boxes exceed the {width}x{height} image under bbox_format={self.bbox_format!r}"
            f" (e.g. {example_box}); {hint} Out-of-image parts are clipped."
            f" (This warning is shown once per load.)",
            stacklevel=3,
        )
        self._warned_convention = True

    def warn_unreadable(self, source_id: str, err: BaseException) -> None:
        """Count and warn about an image that could not be read."""
        self.stats.images_skipped_unreadable += 1
        warnings.warn(f"skipping unreadable image {source_id}: {type(err).__name__}: {err}", stacklevel=3)

    def parse(self, boxes: Any, labels: Any, source_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4) float64, labels (N,) int64)`` of a raw record, with the shapes and
        the class ids checked (``ValueError`` naming ``source_id``)."""
        raw = np.asarray(boxes if boxes is not None else [], np.float64)
        if raw.size == 0:
            raw = raw.reshape(0, 4)
        if raw.ndim != 2 or raw.shape[1] != 4:
            raise ValueError(f"{source_id}: boxes must have shape (N, 4), got {raw.shape}")
        lab = np.asarray(labels if labels is not None else [])
        if lab.size == 0:
            lab = lab.reshape(0)
        if lab.ndim != 1 or lab.shape[0] != raw.shape[0]:
            raise ValueError(f"{source_id}: {raw.shape[0]} boxes but labels of shape {lab.shape}")
        if lab.size and not np.issubdtype(lab.dtype, np.integer):
            labf = lab.astype(np.float64)
            if not np.all(np.isfinite(labf)) or not np.all(labf == np.round(labf)):
                raise ValueError(f"{source_id}: class ids must be integers, got {lab.tolist()}")
        lab = lab.astype(np.int64)
        self.check_labels(lab, source_id)
        return raw, lab

    def record(self, image: Any, boxes: Any, labels: Any, source_id: str,
               size: Optional[tuple[int, int]] = None) -> Optional[Record]:
        """Clean one raw record without decoding its image.

        Args:
          image: what the record will decode later (see :class:`Record`).
          boxes: ``(N, 4)`` boxes in ``self.bbox_format`` (pixels or normalised).
          labels: ``(N,)`` integer class ids.
          source_id: name used in warnings and errors.
          size: ``(width, height)`` if known (a dataset's columns, a COCO json); else read
            from the image's header, which also finds files that are missing or not images.

        Returns:
          The cleaned :class:`Record`, or ``None`` if the image is unreadable or (with
          ``skip_empty``) has no boxes left.

        Raises:
          ValueError: a class id is out of range, or boxes and labels disagree.
        """
        st = self.stats
        raw, lab = self.parse(boxes, labels, source_id)
        st.images_seen += 1
        if size is None:
            try:
                size = image_size(image)
            except Exception as err:  # noqa: BLE001 -- any failure to read the header means "unreadable"
                self.warn_unreadable(source_id, err)
                return None
        width, height = int(size[0]), int(size[1])
        st.boxes_seen += raw.shape[0]
        self._maybe_warn_convention(raw, source_id, width, height)

        degenerate = _degenerate_mask(raw, self.bbox_format)
        st.boxes_dropped_degenerate += int(degenerate.sum())
        raw, lab = raw[~degenerate], lab[~degenerate]
        xyxy = boxes_to_xyxy_pixels(raw, self.bbox_format, width, height)
        clipped = np.clip(xyxy, 0.0, [width, height, width, height])
        empty = ((clipped[:, 2] - clipped[:, 0]) <= 0) | ((clipped[:, 3] - clipped[:, 1]) <= 0)
        moved = (np.abs(clipped - xyxy) > _CLIP_EPS_PX).any(axis=1)
        st.boxes_dropped_outside += int(empty.sum())
        st.boxes_clipped += int((moved & ~empty).sum())
        clipped, lab = clipped[~empty], lab[~empty]

        n = clipped.shape[0]
        if n == 0:
            if self.skip_empty:
                st.images_skipped_empty += 1
                return None
            st.images_empty_kept += 1
        boxes_cxcywh = np.empty((n, 4), np.float64)
        boxes_cxcywh[:, 0] = (clipped[:, 0] + clipped[:, 2]) / 2 / width
        boxes_cxcywh[:, 1] = (clipped[:, 1] + clipped[:, 3]) / 2 / height
        boxes_cxcywh[:, 2] = (clipped[:, 2] - clipped[:, 0]) / width
        boxes_cxcywh[:, 3] = (clipped[:, 3] - clipped[:, 1]) / height
        st.images_kept += 1
        st.boxes_kept += n
        return Record(image=image, boxes_cxcywh=boxes_cxcywh.astype(np.float32).reshape(n, 4),
                      labels=lab.astype(np.int32), source_id=source_id, size=(width, height))

    def __call__(self, image: Any, boxes: Any, labels: Any, source_id: str) -> Optional[Example]:
        """Clean one raw record and decode it now (the streaming path): :meth:`record`, then the
        image decoded (an unreadable one is skipped with a warning) and resized to ``img_size``."""
        self.parse(boxes, labels, source_id)  # a bad class id stops the load even on a broken image
        try:
            pil = open_image(image)
        except Exception as err:  # noqa: BLE001 -- any decoding failure means "unreadable"
            self.stats.images_seen += 1
            self.warn_unreadable(source_id, err)
            return None
        rec = self.record(pil, boxes, labels, source_id, size=pil.size)
        if rec is None:
            return None
        return RecordSource([rec], img_size=self.img_size, letterbox=self.letterbox)[0]


def _limit(it: Iterator[Example], max_samples: Optional[int]) -> Iterator[Example]:
    if max_samples is None:
        return it
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    return itertools.islice(it, max_samples)


# --------------------------------------------------------------------------- Hugging Face


def _is_hf_dataset(obj: Any) -> bool:
    import datasets

    return isinstance(obj, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict))


def _expand_parquet(spec: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[str]:
    """Parquet file(s), glob(s) or a directory of parquet files -> sorted absolute paths."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[str] = []
    for item in items:
        s = os.path.expanduser(str(item))
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(s, "**", "*.parquet"), recursive=True))
        elif any(c in s for c in "*?["):
            found = sorted(glob.glob(s, recursive=True))
        else:
            found = [s] if os.path.isfile(s) else []
        if not found:
            raise ValueError(f"no parquet files found for {str(item)!r}")
        files.extend(os.path.abspath(f) for f in found)
    return files


def _looks_like_parquet(spec: Any) -> bool:
    if isinstance(spec, (list, tuple)):
        return bool(spec) and all(_looks_like_parquet(s) for s in spec)
    return isinstance(spec, (str, os.PathLike)) and str(spec).endswith(".parquet")


def _is_save_to_disk_dir(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


_SPLIT_ALIASES = {"validation": ["val", "valid"], "val": ["validation", "valid"], "valid": ["validation", "val"]}


def _pick_split(dd: Any, split: str, name: str) -> Any:
    if split in dd:
        return dd[split]
    for alt in _SPLIT_ALIASES.get(split, []):
        if alt in dd:
            return dd[alt]
    raise ValueError(f"{name}: no split {split!r}; available splits: {sorted(dd.keys())}")


def open_hf_dataset(
    ds_or_name: Any, *, split: str = "train", streaming: Optional[bool] = None
) -> tuple[Any, str]:
    """Resolve a Hugging Face source to a ``Dataset`` / ``IterableDataset``.

    Args:
      ds_or_name: a ``Dataset`` / ``IterableDataset`` (used as is), a ``DatasetDict``
        (``split`` picked), a ``save_to_disk`` directory (``load_from_disk``), parquet
        file(s) / glob(s) / a directory of parquet files
        (``load_dataset('parquet', data_files=...)``, whose single split is used), or
        a Hub name such as ``'detection-datasets/coco'``
        (``load_dataset(name, split=split, streaming=True)``).
      split: split to use for Hub names, ``DatasetDict`` objects and save_to_disk dicts.
      streaming: stream instead of downloading. Default: ``True`` for Hub names
        (the notebook), ``False`` for parquet.

    Returns:
      ``(dataset, name)`` where ``name`` labels the examples' ``source_id``.
    """
    import datasets

    if isinstance(ds_or_name, (datasets.Dataset, datasets.IterableDataset)):
        return ds_or_name, "dataset"
    if isinstance(ds_or_name, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return _pick_split(ds_or_name, split, "dataset"), f"dataset/{split}"
    if _looks_like_parquet(ds_or_name) or (
        isinstance(ds_or_name, (str, os.PathLike))
        and os.path.isdir(ds_or_name)
        and not _is_save_to_disk_dir(ds_or_name)
        and glob.glob(os.path.join(str(ds_or_name), "**", "*.parquet"), recursive=True)
    ):
        files = _expand_parquet(ds_or_name)
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=bool(streaming))
        name = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])}/*.parquet"
        return ds, name
    if not isinstance(ds_or_name, (str, os.PathLike)):
        raise TypeError(f"cannot open a Hugging Face dataset from {type(ds_or_name).__name__}")
    name = str(ds_or_name)
    if os.path.isdir(name):
        if not _is_save_to_disk_dir(name):
            raise ValueError(f"{name!r} is a directory but not a datasets save_to_disk directory")
        ds = datasets.load_from_disk(name)
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            return _pick_split(ds, split, name), f"{name}/{split}"
        return ds, name
    if os.path.exists(name):
        raise ValueError(f"{name!r} is a file but neither parquet nor a save_to_disk directory")
    # A Hub dataset name (e.g. 'detection-datasets/coco'): stream it as the notebook does.
    streaming = True if streaming is None else streaming
    last = None
    for candidate in (split, *_SPLIT_ALIASES.get(split, [])):  # the coco repo calls its validation split 'val'
        try:
            with hub_errors(name):
                return datasets.load_dataset(name, split=candidate, streaming=streaming), f"{name}/{candidate}"
        except ValueError as err:
            if "split" not in str(err).lower():
                raise
            last = err
    raise ValueError(f"{name}: no split {split!r} ({last})") from None


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub (or ``HF_ENDPOINT``) could not be reached for a dataset."""


@contextlib.contextmanager
def hub_errors(name: str):
    """Turn the ways ``datasets`` reports an unreachable Hub (``ConnectionError`` when loading or
    while streaming, ``httpx`` / ``huggingface_hub`` network errors) into one
    :class:`HubUnreachableError` that says what to do, without the library's traceback."""
    try:
        yield
    except HubUnreachableError:
        raise
    except (ConnectionError, TimeoutError) as err:
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub ({endpoint}) for {name!r}: {err}. Check the network connection "
            "(HF_ENDPOINT, proxy settings), or train from a local copy: a save_to_disk folder or parquet files "
            "as --data") from None


def hf_class_names(ds: Any, *, objects_key: Optional[str] = "objects", category_key: str = "category") -> Optional[list[str]]:
    """Class names from a ``ClassLabel`` category feature, or ``None`` if unavailable."""
    import datasets

    feats = getattr(ds, "features", None)
    if feats is None:
        return None
    try:
        f = feats[objects_key] if objects_key else feats
        if isinstance(f, (datasets.List, datasets.LargeList)):  # list of dicts
            f = f.feature
        f = f[category_key]
        while isinstance(f, (datasets.List, datasets.LargeList)):
            f = f.feature
        if isinstance(f, datasets.ClassLabel):
            return list(f.names)
    except (KeyError, TypeError, AttributeError):
        return None
    return None


def _objects_fields(objs: Any, bbox_key: str, category_key: str, source_id: str) -> tuple[list, list, list]:
    """(bboxes, categories, iscrowd flags) from a dict of lists or a list of dicts."""
    if objs is None:
        return [], [], []
    if isinstance(objs, dict):
        if bbox_key not in objs or category_key not in objs:
            raise ValueError(f"{source_id}: objects have keys {sorted(objs)}; expected {bbox_key!r} and {category_key!r}")
        bboxes, cats = list(objs[bbox_key] or []), list(objs[category_key] or [])
        crowd = list(objs.get("iscrowd") or [0] * len(bboxes))
        return bboxes, cats, crowd
    if isinstance(objs, (list, tuple)):
        bboxes = [o[bbox_key] for o in objs]
        cats = [o[category_key] for o in objs]
        crowd = [o.get("iscrowd", 0) or 0 for o in objs]
        return bboxes, cats, crowd
    raise ValueError(f"{source_id}: cannot read objects of type {type(objs).__name__}")


def hf_examples(
    ds_or_name: Any,
    *,
    split: str = "train",
    streaming: Optional[bool] = None,
    bbox_format: str = "xywh",
    max_samples: Optional[int] = None,
    num_classes: Optional[int] = None,
    skip_empty: bool = True,
    img_size: Optional[int] = None,
    letterbox: bool = False,
    stats: Optional[DataStats] = None,
    image_key: str = "image",
    objects_key: Optional[str] = "objects",
    bbox_key: str = "bbox",
    category_key: str = "category",
    source_name: Optional[str] = None,
) -> Iterator[Example]:
    """Cleaned examples of a Hugging Face detection dataset.

    A ``Dataset`` (random access: a ``save_to_disk`` folder, parquet files, an object) gives a
    :class:`RecordSource`: the rows are indexed now (boxes cleaned, class ids checked, nothing
    decoded) and each image is decoded when ``source[i]`` is read. An ``IterableDataset`` (a
    streamed Hub name) gives an iterator that cleans and decodes each row as it arrives.

    The expected schema is ``detection-datasets/coco``: ``image`` (an ``Image``
    feature) and ``objects`` = ``{"bbox": [[...4 numbers...], ...], "category": [int, ...]}``
    (a list of ``{"bbox", "category"}`` dicts is accepted too). ``objects_key=None``
    reads ``bbox_key`` / ``category_key`` from the row itself. Objects with a truthy
    ``iscrowd`` field are skipped (``stats.iscrowd_skipped``).

    Args:
      ds_or_name: see :func:`open_hf_dataset`.
      split, streaming: see :func:`open_hf_dataset`.
      bbox_format: convention of ``objects.bbox`` (:data:`BBOX_FORMATS`); the
        default ``'xywh'`` is COCO pixels, as in the notebook.
      max_samples: stop after this many *kept* examples.
      num_classes, skip_empty, img_size, letterbox: see :class:`ExampleCleaner`.
        ``skip_empty`` defaults to ``True`` here (the notebook skips images without boxes).
      stats: counters to update.
      source_name: label used in ``source_id`` (default: the Hub name / path, or
        ``"dataset"`` for dataset objects).

    Returns:
      A :class:`RecordSource` or an iterator of :class:`Example`, with
      ``source_id = "<name>[<row index>]"`` (plus the image path when the row has one).
    """
    import datasets

    ds, name = open_hf_dataset(ds_or_name, split=split, streaming=streaming)
    name = source_name or name
    feats = getattr(ds, "features", None)
    # Decode images ourselves so one corrupt image is skipped instead of ending the iteration.
    if feats is not None and isinstance(feats.get(image_key), datasets.Image) and feats[image_key].decode:
        ds = ds.cast_column(image_key, datasets.Image(decode=False))
    cleaner = ExampleCleaner(
        bbox_format=bbox_format,
        num_classes=num_classes,
        skip_empty=skip_empty,
        img_size=img_size,
        letterbox=letterbox,
        stats=stats,
    )

    def fields(i: int, row: dict) -> tuple[Any, list, list, str]:
        missing = [k for k in (image_key, objects_key) if k and k not in row]
        if missing:  # a schema mismatch, not an image without boxes
            raise ValueError(f"{name}[{i}]: no column {missing[0]!r}; the rows have {sorted(row)} "
                             f"(expected {image_key!r} and {objects_key or (bbox_key, category_key)!r}, "
                             "the schema of detection-datasets/coco)")
        image = row.get(image_key)
        path = _image_path_hint(image)
        sid = f"{name}[{i}]" + (f" ({path})" if path else "")
        objs = row.get(objects_key) if objects_key else row
        bboxes, cats, crowd = _objects_fields(objs, bbox_key, category_key, sid)
        keep = [not bool(c) for c in crowd]
        cleaner.stats.iscrowd_skipped += len(keep) - sum(keep)
        return image, [b for b, k in zip(bboxes, keep) if k], [c for c, k in zip(cats, keep) if k], sid

    if isinstance(ds, datasets.Dataset):
        # Random access: index the rows (boxes and labels only; the image's header is read only
        # when the rows have no width / height columns), decode each image when it is used.
        sized = "width" in ds.column_names and "height" in ds.column_names
        meta = ds.select_columns([c for c in ds.column_names if c != image_key]) if sized else ds
        records = []
        for i, row in enumerate(meta):
            if max_samples is not None and len(records) >= max_samples:
                break
            if sized:
                row = dict(row, **{image_key: None})
            image, bboxes, cats, sid = fields(i, row)
            ref = DatasetRowImage(ds, i, image_key)
            if sized:
                rec = cleaner.record(ref, bboxes, cats, sid, size=(int(row["width"]), int(row["height"])))
            else:
                rec = cleaner.record(image, bboxes, cats, sid)
                if rec is not None:
                    rec.image = ref  # the row, not a copy of its bytes
            if rec is not None:
                records.append(rec)
        return RecordSource(records, img_size=img_size, letterbox=letterbox, name=name)

    def gen() -> Iterator[Example]:  # streaming: clean and decode each row as it arrives
        rows = iter(ds)
        i = 0
        while True:
            with hub_errors(name):
                row = next(rows, None)
            if row is None:
                return
            image, bboxes, cats, sid = fields(i, row)
            i += 1
            ex = cleaner(image, bboxes, cats, sid)
            if ex is not None:
                yield ex

    return _limit(gen(), max_samples)


class DatasetRowImage:
    """The image of row ``index`` of a Hugging Face ``Dataset`` (read from Arrow, decoded on
    :meth:`load`); pickles by the dataset's own rules (memory-mapped files by reference)."""

    def __init__(self, ds: Any, index: int, image_key: str = "image") -> None:
        self.ds, self.index, self.image_key = ds, index, image_key

    def load(self) -> Image.Image:
        return open_image(self.ds[self.index][self.image_key])

    @property
    def size(self) -> tuple[int, int]:
        return image_size(self.ds[self.index][self.image_key])


# --------------------------------------------------------------------------- COCO json


def coco_categories(
    annotation_json: Union[str, os.PathLike, dict], *, keep_raw_category_ids: bool = False
) -> tuple[dict[int, int], list[str]]:
    """Category mapping of a COCO annotation file.

    Returns:
      ``(id_to_label, class_names)``: with ``keep_raw_category_ids=False`` the COCO ids
      sorted ascending map to ``0..K-1`` and ``class_names[k]`` is the name of label
      ``k``; with ``True`` ids map to themselves and ``class_names`` has length
      ``max_id + 1`` (unused ids named ``"unused_<id>"``).
    """
    coco = _read_json(annotation_json)
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in coco.get("categories", [])}
    if not cats:  # no category table: use the ids that occur
        cats = {int(a["category_id"]): str(a["category_id"]) for a in coco.get("annotations", [])}
    ids = sorted(cats)
    if keep_raw_category_ids:
        top = ids[-1] + 1 if ids else 0
        return {i: i for i in ids}, [cats.get(i, f"unused_{i}") for i in range(top)]
    return {cid: k for k, cid in enumerate(ids)}, [cats[i] for i in ids]


def _read_json(annotation_json: Union[str, os.PathLike, dict]) -> dict:
    if isinstance(annotation_json, dict):
        return annotation_json
    with open(annotation_json, "r", encoding="utf-8") as f:
        return json.load(f)


def coco_json_examples(
    annotation_json: Union[str, os.PathLike, dict],
    image_dir: Union[str, os.PathLike],
    *,
    num_classes: Optional[int] = None,
    keep_raw_category_ids: bool = False,
    skip_empty: bool = False,
    img_size: Optional[int] = None,
    letterbox: bool = False,
    max_samples: Optional[int] = None,
    stats: Optional[DataStats] = None,
) -> Iterator[Example]:
    """Cleaned examples of a COCO ``instances_*.json`` and its image folder, as a
    :class:`RecordSource` (annotations indexed now, images decoded when read).

    Images are visited in the order of the json's ``images`` list and read from
    ``image_dir / file_name``. Annotation ``bbox`` is COCO ``xywh`` pixels;
    ``iscrowd`` annotations are skipped and counted (``stats.iscrowd_skipped``).
    Category ids map to contiguous labels ``0..K-1`` by sorted id (see
    :func:`coco_categories`) unless ``keep_raw_category_ids``.

    Args:
      num_classes, skip_empty, img_size, letterbox: see :class:`ExampleCleaner`;
        images without annotations are kept by default (they train as background).
      max_samples: stop after this many kept examples.

    Returns:
      :class:`RecordSource` of :class:`Example` with ``source_id`` = the image file path.

    Raises:
      ValueError: an annotation names a category id missing from ``categories``,
        or a label is outside ``0..num_classes-1``.
    """
    coco = _read_json(annotation_json)
    id_to_label, _ = coco_categories(coco, keep_raw_category_ids=keep_raw_category_ids)
    cleaner = ExampleCleaner(
        bbox_format="xywh",
        num_classes=num_classes,
        skip_empty=skip_empty,
        img_size=img_size,
        letterbox=letterbox,
        stats=stats,
    )
    anns_by_image: dict[Any, list[dict]] = defaultdict(list)
    for a in coco.get("annotations", []):
        anns_by_image[a["image_id"]].append(a)
    image_dir = Path(image_dir)

    records = []
    for info in coco.get("images", []):
        if max_samples is not None and len(records) >= max_samples:
            break
        path = image_dir / info["file_name"]
        sid = str(path)
        bboxes, labels = [], []
        for a in anns_by_image.get(info["id"], []):
            if a.get("iscrowd", 0):
                cleaner.stats.iscrowd_skipped += 1
                continue
            cid = int(a["category_id"])
            if cid not in id_to_label:
                raise ValueError(
                    f"{sid}: annotation {a.get('id')} has category_id {cid}, which is not in the"
                    f" json's categories {sorted(id_to_label)}"
                )
            bboxes.append(a["bbox"])
            labels.append(id_to_label[cid])
        # The json's size, if it gives one and the file exists (else its header is read).
        size = (int(info["width"]), int(info["height"])) if info.get("width") and info.get("height") \
            and path.is_file() else None
        rec = cleaner.record(path, bboxes, labels, sid, size=size)
        if rec is not None:
            records.append(rec)
    return RecordSource(records, img_size=img_size, letterbox=letterbox, name=str(annotation_json))


# --------------------------------------------------------------------------- YOLO txt


_SPLIT_FOLDERS = ("train", "training", "val", "valid", "validation", "test", "testing")


def yolo_dirs(root: Union[str, os.PathLike], split: str = "train") -> tuple[Path, Path]:
    """``(images_dir, labels_dir)`` of an Ultralytics layout.

    Looks for ``root/images/<split>`` (or an alias: ``val`` / ``valid`` / ``validation``)
    with ``root/labels/<same>``, then, for ``split='train'`` only, for ``root/images`` +
    ``root/labels`` without split folders. Errors, rather than reading all of ``images/``
    (which would mix the splits): split folders without ``split``, and another split of a
    layout without split folders. A missing labels folder is an error too (every image
    would be read as having no boxes).
    """
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise ValueError(f"{str(root)!r} has no images/ folder (Ultralytics YOLO layout expected: "
                         "images/<split>/*.jpg and labels/<split>/*.txt)")
    for name in (split, *_SPLIT_ALIASES.get(split, [])):
        if (images / name).is_dir():
            img_dir, lab_dir = images / name, root / "labels" / name
            break
    else:
        splits = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_FOLDERS)
        if splits:
            raise ValueError(f"{str(root)!r}: no images/{split}/ folder; the split folders are {splits}")
        if split != "train":
            raise ValueError(f"{str(root)!r} has no split folders (images/ holds the images directly), so it is "
                             f"read as the one split 'train', not as {split!r}: give the validation data its "
                             "own folder (--val-data) or disable evaluation (--val-split none)")
        img_dir, lab_dir = images, root / "labels"
    if not lab_dir.is_dir():
        raise ValueError(f"{str(root)!r}: images in {str(img_dir)!r} but no labels folder {str(lab_dir)!r}")
    return img_dir, lab_dir


def read_yolo_label_file(path: Union[str, os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Parse one YOLO label file.

    Each non-empty line is ``cls cx cy w h`` (normalised) or a segment
    ``cls x1 y1 x2 y2 ...`` (normalised polygon, converted to its bounding box).

    Returns:
      ``(boxes_cxcywh (N, 4) float64, labels (N,) int64)``; both empty if the file is
      missing or empty.

    Raises:
      ValueError: naming ``path:line`` for a malformed line.
    """
    boxes: list[list[float]] = []
    labels: list[int] = []
    if not os.path.isfile(path):
        return np.zeros((0, 4)), np.zeros((0,), np.int64)
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(p) for p in parts]
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: malformed YOLO label line {line.strip()!r}") from err
            cls = vals[0]
            coords = vals[1:]
            if cls != math.floor(cls) or not (len(coords) == 4 or (len(coords) >= 6 and len(coords) % 2 == 0)):
                raise ValueError(
                    f"{path}:{lineno}: expected 'cls cx cy w h' (or 'cls x1 y1 x2 y2 ...'), got {line.strip()!r}"
                )
            if len(coords) == 4:
                boxes.append(coords)
            else:
                xs, ys = np.array(coords[0::2]), np.array(coords[1::2])
                x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
                boxes.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
            labels.append(int(cls))
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64)


def yolo_txt_examples(
    root: Union[str, os.PathLike],
    split: str = "train",
    *,
    num_classes: Optional[int] = None,
    skip_empty: bool = False,
    img_size: Optional[int] = None,
    letterbox: bool = False,
    max_samples: Optional[int] = None,
    stats: Optional[DataStats] = None,
) -> Iterator[Example]:
    """Cleaned examples of an Ultralytics YOLO folder, as a :class:`RecordSource` (label files
    read and image headers checked now, images decoded when read).

    Images are the files with :data:`IMAGE_EXTENSIONS` under the images folder
    (recursively, sorted by path); the label of ``images/<split>/a/b.jpg`` is
    ``labels/<split>/a/b.txt`` (lines ``cls cx cy w h``, normalised). A missing label
    file means an image with no boxes.

    Args:
      num_classes, skip_empty, img_size, letterbox: see :class:`ExampleCleaner`.
      max_samples: stop after this many kept examples.

    Returns:
      :class:`RecordSource` of :class:`Example` with ``source_id`` = the image file path.
    """
    img_dir, lab_dir = yolo_dirs(root, split)
    files = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    cleaner = ExampleCleaner(
        bbox_format="cxcywh_norm",
        num_classes=num_classes,
        skip_empty=skip_empty,
        img_size=img_size,
        letterbox=letterbox,
        stats=stats,
    )

    records = []
    for path in files:
        if max_samples is not None and len(records) >= max_samples:
            break
        label_path = (lab_dir / path.relative_to(img_dir)).with_suffix(".txt")
        boxes, labels = read_yolo_label_file(label_path)
        rec = cleaner.record(path, boxes, labels, str(path))
        if rec is not None:
            records.append(rec)
    return RecordSource(records, img_size=img_size, letterbox=letterbox, name=str(root))


def yolo_class_names(root: Union[str, os.PathLike]) -> Optional[list[str]]:
    """Class names from ``root/data.yaml`` (``names:``, needs PyYAML) or ``root/classes.txt``."""
    root = Path(root)
    for yml in (root / "data.yaml", root / "dataset.yaml"):
        if yml.is_file():
            try:
                import yaml  # optional dependency
            except ImportError:
                break
            with open(yml, "r", encoding="utf-8") as f:
                names = (yaml.safe_load(f) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    txt = root / "classes.txt"
    if txt.is_file():
        return [ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return None


# --------------------------------------------------------------------------- eager loading


def collect_examples(
    examples: Iterable[Example], *, progress: bool = False, desc: str = "loading"
) -> list[Example]:
    """Materialise an example stream into a list (optionally with a tqdm bar)."""
    if progress:
        from tqdm.auto import tqdm

        examples = tqdm(examples, desc=desc, unit="img")
    return list(examples)
