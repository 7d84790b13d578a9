"""Box padding taken from the data: how many ground-truth boxes a sample can hold.

Every batch pads its boxes to one size ``M`` (``max_boxes``), so the jitted step compiles once.
The index (:class:`~yolo11_jax.data.records.RecordSource`) already holds every record's boxes,
so the largest count per image is known before training, with nothing decoded:

* **Default (``max_boxes="auto"``)**: ``M`` is the largest count a sample can hold, rounded up to
  one of :data:`PAD_SIZES` (so that datasets of similar density share compilations).
* **Under mosaic**, a sample holds the boxes of four records. The mosaic (Ultralytics' ``Mosaic``,
  :func:`~yolo11_jax.data.augment.mosaic4`) keeps every box of its four tiles that overlaps the
  ``2s x 2s`` canvas; the affine that follows (``RandomPerspective``,
  :func:`~yolo11_jax.data.augment.random_affine`) maps the canvas to ``s x s`` with a scale drawn
  in ``[1 - scale, 1 + scale]``, ``[0.5, 1.5]`` by default: at a scale near 0.5 the whole canvas
  fits, and only boxes under 2 pixels or under 10% of their scaled area are filtered
  (``box_candidates``). The tiles are drawn with replacement from the batch, so one record can
  fill all four. The bound that drops nothing, ever, is therefore ``4 x`` the largest count,
  which is what the default uses (:data:`MOSAIC_TILES`).
* **A cap** (:data:`MAX_BOXES_CAP`, 512) keeps memory bounded: past it the padding stops at the
  cap, and the boxes over it are dropped with one summary warning (:func:`max_boxes_warning`)
  that says how many images and boxes, and the option that keeps them (``--max-boxes N``).
* **An explicit ``max_boxes``** wins over all of this.

The cap: the dense assigners hold ``(B, M, A)`` arrays (``A`` = 8400 anchors at 640 px), so a
batch of 16 at ``M = 512`` needs about 275 MB per float32 array. ``benchmarks/max_boxes.py``
measures what ``M`` costs each assigner: every assigner computes the padding as if it were boxes
(8 real boxes padded to 512 cost 36-147x the unpadded call), so the cheap path for a large ``M``
is :func:`trim_boxes`, which cuts each batch's padding to the smallest of :data:`PAD_SIZES` that
holds its real boxes; :func:`cheap_assigner_for` picks the notebook loss's assigner by ``M``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np

PAD_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The sizes ``M`` is rounded up to (past the last one: the next multiple of it)."""

MAX_BOXES_CAP = 512
"""The largest default padding; an explicit ``max_boxes`` may exceed it."""

STREAM_MAX_BOXES = 100
"""``--max-boxes auto`` on a stream, which has no index to count from before training (the
notebook's COCO run pads to 100 too); boxes past it are dropped and counted in the data summary."""

MOSAIC_TILES = 4
"""Records per mosaic sample (Ultralytics' 2x2 mosaic)."""

LARGE_M = 64
"""Padding from which ``TrainPipeline(trim_boxes=True)`` pays for itself (see :func:`trim_boxes`):
the Ultralytics assigner at ``M = 64`` costs several times its ``M = 8`` time."""


@dataclasses.dataclass(frozen=True)
class BoxCounts:
    """Boxes per record of an index, counted once (nothing decoded).

    Attributes:
      per_image: int64 ``(N,)`` the box count of each record.
      source_ids: the records' names (for the largest ones in messages).
    """

    per_image: np.ndarray
    source_ids: tuple[str, ...]

    @property
    def images(self) -> int:
        return int(self.per_image.shape[0])

    @property
    def boxes(self) -> int:
        return int(self.per_image.sum())

    @property
    def max_per_image(self) -> int:
        return int(self.per_image.max()) if self.images else 0

    def over(self, max_boxes: int) -> tuple[int, int]:
        """``(images with more than max_boxes boxes, boxes past max_boxes in them)``: what a
        padding of ``max_boxes`` drops from single-image samples."""
        extra = np.maximum(self.per_image - max_boxes, 0)
        return int((extra > 0).sum()), int(extra.sum())

    def largest(self, k: int = 3) -> list[tuple[str, int]]:
        """The ``k`` records with the most boxes, ``(source_id, count)``, most first."""
        order = np.argsort(-self.per_image, kind="stable")[:k]
        return [(self.source_ids[i], int(self.per_image[i])) for i in order]


def box_counts(source) -> BoxCounts:
    """The box count of every record of ``source`` (a ``RecordSource``'s index, or a sequence of
    examples), read from the index without decoding."""
    records = getattr(source, "records", source)
    return BoxCounts(per_image=np.asarray([int(r.num_boxes) for r in records], np.int64).reshape(-1),
                     source_ids=tuple(str(r.source_id) for r in records))


def pad_size(n: int) -> int:
    """The smallest of :data:`PAD_SIZES` that holds ``n`` boxes (at least the first one)."""
    if n < 0:
        raise ValueError(f"a box count must be >= 0, got {n}")
    for size in PAD_SIZES:
        if n <= size:
            return size
    top = PAD_SIZES[-1]
    return -(-n // top) * top


@dataclasses.dataclass(frozen=True)
class MaxBoxes:
    """The padding chosen for a run and why.

    Attributes:
      max_boxes: ``M``, the boxes per sample after padding.
      needed: the boxes a sample can hold (the largest count, times 4 under mosaic): no box is
        dropped when ``max_boxes >= needed``.
      source: ``"explicit"`` (given), ``"data"`` (from the data, rounded up) or ``"cap"`` (from
        the data, stopped at the cap).
      images_over, boxes_over: records with more than ``max_boxes`` boxes, and the boxes past it
        (from the index; under mosaic, a sample can also exceed ``max_boxes`` with records that
        do not, and the pipeline counts those samples as they are made).
    """

    max_boxes: int
    needed: int
    source: str
    images_over: int
    boxes_over: int

    def describe(self) -> str:
        """One line for the training log."""
        how = {"explicit": "as given", "data": "from the data", "cap": f"from the data, capped at {MAX_BOXES_CAP}"}
        return f"max_boxes={self.max_boxes} ({how[self.source]}; a sample can hold {self.needed} boxes)"


def resolve_max_boxes(counts: BoxCounts, *, requested: Union[int, str, None] = "auto", mosaic: bool = False,
                      cap: int = MAX_BOXES_CAP) -> MaxBoxes:
    """Choose the padding ``M`` of a run (see the module docstring).

    Args:
      counts: :func:`box_counts` of the training index.
      requested: an explicit ``max_boxes`` (an int >= 1, which wins), or ``"auto"`` / ``None``.
      mosaic: whether samples are mosaics of :data:`MOSAIC_TILES` records.
      cap: the largest padding chosen by default.

    Returns:
      :class:`MaxBoxes`.
    """
    needed = counts.max_per_image * (MOSAIC_TILES if mosaic else 1)
    if requested not in (None, "auto"):
        m = int(requested)
        if m < 1:
            raise ValueError(f"max_boxes must be >= 1 or 'auto', got {requested!r}")
        source = "explicit"
    else:
        if cap < 1:
            raise ValueError(f"the max_boxes cap must be >= 1, got {cap}")
        m, source = pad_size(max(needed, 1)), "data"
        if m > cap:
            m, source = cap, "cap"
    images_over, boxes_over = counts.over(m)
    return MaxBoxes(max_boxes=m, needed=needed, source=source, images_over=images_over, boxes_over=boxes_over)


def max_boxes_warning(choice: MaxBoxes, counts: BoxCounts, option: str = "--max-boxes") -> Optional[str]:
    """The one summary warning of a padding that drops boxes, or ``None`` if it drops none.

    It gives the images and boxes dropped (counted once, from the index), the largest records,
    and the option that keeps every box."""
    if choice.max_boxes >= choice.needed:
        return None
    largest = ", ".join(f"{sid} ({n})" for sid, n in counts.largest(3))
    keep = pad_size(choice.needed)
    if choice.images_over:
        what = (f"{choice.images_over} of {counts.images} images have more than max_boxes={choice.max_boxes} "
                f"boxes: {choice.boxes_over} of their boxes ({choice.boxes_over / max(counts.boxes, 1):.1%} of "
                f"{counts.boxes}) are dropped from every sample made of them")
    else:
        what = (f"no image has more than max_boxes={choice.max_boxes} boxes, but a mosaic of 4 images can hold "
                f"up to {choice.needed}: the boxes past {choice.max_boxes} in such a sample are dropped (counted "
                "per sample in the data summary)")
    return f"{what}; the most: {largest}. {option} {keep} keeps every box."


def warn_max_boxes(source, max_boxes: int, *, mosaic: bool = False, option: str = "--max-boxes") -> tuple[int, int]:
    """Issue :func:`max_boxes_warning` (one warning, or none) for an explicit ``max_boxes``.
    Returns ``(images over, boxes over)``, counted once from the index."""
    import warnings

    counts = box_counts(source)
    choice = resolve_max_boxes(counts, requested=max_boxes, mosaic=mosaic)
    message = max_boxes_warning(choice, counts, option)
    if message:
        warnings.warn(message, stacklevel=2)
    return choice.images_over, choice.boxes_over


def cheap_assigner_for(max_boxes: int, img_size: int) -> str:
    """The cheapest assigner of the notebook's loss for a padding ``M``, from
    ``benchmarks/max_boxes.py`` on 2 cores (8 real boxes per image; figures in the module's
    report): ``"spec"`` (dense ``(B, M, A)``) below 32 boxes, where the paths cost about the
    same; from 32 on, ``"chunked"`` at up to 256 px and
    ``"chunked-sparse"`` above. The Ultralytics recipe's assigner has no chunked path: there,
    :func:`trim_boxes` (``TrainPipeline(trim_boxes=True)``) is the lever."""
    if max_boxes < 32:
        return "spec"
    return "chunked" if img_size <= 256 else "chunked-sparse"


def batch_box_bucket(mask: np.ndarray, sizes: Sequence[int] = PAD_SIZES) -> int:
    """The smallest pad size that holds every real box of a batch (``mask (B, M)`` bool, real
    boxes packed at the front), at most ``M``."""
    mask = np.asarray(mask)
    m = int(mask.shape[-1])
    n = int(mask.sum(axis=-1).max()) if mask.size else 0
    return min(next((size for size in sizes if n <= size), m), m)


BOX_KEYS: tuple[str, ...] = ("boxes_cxcywh", "labels", "mask")
"""The batch entries whose second axis is the box padding."""


def trim_boxes(batch: dict) -> dict:
    """``batch`` with its box entries (:data:`BOX_KEYS`) cut to :func:`batch_box_bucket` of its
    mask: the same boxes, a padding that follows the batch's own boxes, so the step's assigner
    costs what the batch holds (one compilation per pad size met). Drops no real box."""
    m = batch_box_bucket(batch["mask"])
    if m == batch["mask"].shape[-1]:
        return batch
    return {k: (v[:, :m] if k in BOX_KEYS else v) for k, v in batch.items()}
