"""The one cleaning step shared by all readers (:class:`ExampleCleaner`).

Rules, the same for every format:

* an unreadable / corrupt image is skipped with a ``warnings.warn`` naming it;
* a box with ``w <= 0`` or ``h <= 0`` (or non-finite numbers) is dropped;
* a box partly outside the image is clipped to it (dropped if nothing remains);
* a class id ``< 0`` or ``>= num_classes`` raises ``ValueError`` naming the example;
* an image left with no boxes is skipped if ``skip_empty`` else kept (it then
  trains as pure background);
* boxes far outside the image under the chosen ``bbox_format`` trigger one warning
  per load that names the example and the convention(s) the boxes would fit.

Every count goes to :class:`~yolo11_jax.data.records.DataStats` (once per record indexed).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from .records import (BBOX_FORMATS, DataStats, Example, Record, RecordSource, _degenerate_mask, _fits_image,
                      boxes_to_xyxy_pixels, image_size, open_image)

_CLIP_EPS_PX = 1e-3  # a coordinate moved by more than this counts as clipped


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
