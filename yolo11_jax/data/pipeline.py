"""Fixed-shape NumPy batches with deterministic shuffling and background prefetch.

Usage::

    loader = BatchLoader(examples, batch_size=16, img_size=640, max_boxes=100, seed=0)
    for epoch in range(start_epoch, num_epochs):
        for batch in loader.epoch(epoch):          # deterministic in (seed, epoch)
            state = train_step(state, batch["images"], batch["boxes_cxcywh"],
                               batch["labels"], batch["mask"])

``loader.epoch(e, start_batch=k)`` resumes in the middle of epoch ``e`` with
exactly the batches an uninterrupted run would have seen. ``len(loader)`` is
the number of batches per epoch.
"""

from __future__ import annotations

import collections
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from .sources import DataStats, Example
from .transforms import letterbox as letterbox_image
from .transforms import resize_plain

_MAX_TRUNCATION_WARNINGS = 20


class BatchLoader:
    """Iterate over fixed-shape batches of in-memory :class:`Example` records.

    Each batch is a ``dict`` of NumPy arrays (``B = batch_size``, ``M = max_boxes``,
    ``S = img_size``):

    * ``images``: float32 ``(B, S, S, 3)``, RGB in ``[0, 1]`` (uint8 / 255);
    * ``boxes_cxcywh``: float32 ``(B, M, 4)``, ``[cx, cy, w, h]`` normalised by ``S``;
      padding rows are all zero;
    * ``labels``: int32 ``(B, M)``, class ids, padding 0;
    * ``mask``: bool ``(B, M)``, True for real boxes (an image without boxes has an
      all-False row);
    * ``example_index``: int64 ``(B,)``, index of each row's example in ``examples``;
    * ``example_valid``: bool ``(B,)``, False for the wrap-around filler rows of a
      padded last batch (``drop_last=False``) -- evaluation should ignore those rows.

    Args:
      examples: the dataset, e.g. from :func:`~yolo11_jax.data.load_examples`.
      batch_size: examples per batch ``B``.
      img_size: output side ``S`` in pixels. Images already ``S x S`` are only
        normalised (pre-resize at load time with ``load_examples(img_size=S)``);
        others are resized in the worker threads.
      max_boxes: ``M``. Examples with more boxes keep their first ``M`` (a warning
        names each such example once -- up to 20, then a summary -- and
        ``stats.boxes_truncated_max_boxes`` counts the dropped boxes).
      shuffle: permute the examples each epoch with
        ``np.random.default_rng([seed, epoch]).permutation(n)``; else keep the order.
      seed: shuffling seed.
      drop_last: drop the last partial batch. If False, the last batch is filled
        up with examples wrapped around from the start of the epoch's order
        (flagged ``example_valid=False``), so every example appears each epoch.
      letterbox: resize keeping the aspect ratio with grey (114) padding instead of
        the notebook's plain resize. Use the same setting as any pre-resize.
      num_workers: threads preparing batches (PIL and NumPy release the GIL);
        0 prepares them synchronously in the consumer's thread.
      prefetch: batches prepared ahead of the consumer (bounded queue); with worker
        threads at least ``max(1, num_workers)``, so that every worker has a batch.
      stats: :class:`DataStats` to add this loader's truncation counts to (``self.stats``;
        a fresh one by default). Counts add up: two loaders sharing one ``stats`` (say,
        over the same examples) count the same truncations twice.
      rows: prepare only these rows of every batch (a ``slice`` of ``range(batch_size)``),
        e.g. ``parallel.process_rows(batch_size)`` for this process's share of a global batch
        in multi-process training. The order and the batches are those of the whole loader;
        only the preparation (decoding, resizing) is restricted. Default: all rows.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_size: int,
        img_size: int = 640,
        max_boxes: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        letterbox: bool = False,
        num_workers: int = 2,
        prefetch: int = 2,
        stats: Optional[DataStats] = None,
        rows: Optional[slice] = None,
    ) -> None:
        if batch_size < 1 or img_size < 1 or max_boxes < 1:
            raise ValueError(f"batch_size, img_size and max_boxes must be >= 1, got {batch_size}, {img_size}, {max_boxes}")
        if num_workers < 0 or prefetch < 0:
            raise ValueError(f"num_workers and prefetch must be >= 0, got {num_workers}, {prefetch}")
        if len(examples) == 0:
            raise ValueError("BatchLoader: no examples")
        if drop_last and len(examples) < batch_size:
            raise ValueError(
                f"BatchLoader: {len(examples)} examples < batch_size {batch_size} with drop_last=True"
                " gives no batches; lower batch_size or pass drop_last=False"
            )
        self.examples = examples
        self.batch_size = batch_size
        self.img_size = img_size
        self.max_boxes = max_boxes
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.letterbox = letterbox
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.stats = stats if stats is not None else DataStats()
        self.rows = slice(*(slice(None) if rows is None else rows).indices(batch_size))
        if self.rows.step != 1 or self.rows.stop <= self.rows.start:
            raise ValueError(f"rows must be a non-empty contiguous slice of range({batch_size}), got {rows}")
        self._check_box_counts()

    def _check_box_counts(self) -> None:
        """Warn (once per example) and count examples with more than ``max_boxes`` boxes."""
        n_warned = 0
        n_over = 0
        n_dropped = 0
        for ex in self.examples:
            n = ex.num_boxes
            if n <= self.max_boxes:
                continue
            n_over += 1
            n_dropped += n - self.max_boxes
            if n_warned < _MAX_TRUNCATION_WARNINGS:
                n_warned += 1
                warnings.warn(
                    f"{ex.source_id}: {n} boxes > max_boxes={self.max_boxes}; keeping the first"
                    f" {self.max_boxes}, dropping {n - self.max_boxes}",
                    stacklevel=3,
                )
        if n_over > n_warned:
            warnings.warn(
                f"{n_over - n_warned} more examples have more than max_boxes={self.max_boxes} boxes"
                f" (truncated; {n_dropped} boxes dropped in total)",
                stacklevel=3,
            )
        self.stats.examples_truncated_max_boxes += n_over
        self.stats.boxes_truncated_max_boxes += n_dropped

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_indices(self, epoch: int) -> np.ndarray:
        """Example indices of every batch of ``epoch``: int64 ``(len(self), batch_size)``."""
        n = len(self.examples)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        total = len(self) * self.batch_size
        order = order[:total] if self.drop_last else np.resize(order, total)  # np.resize wraps around
        return order.astype(np.int64).reshape(len(self), self.batch_size)

    def _prepare(self, ex: Example) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 (S, S, 3) image, float32 (N, 4) boxes normalised by S)`` of one example."""
        s = self.img_size
        img = ex.image
        if img.shape[:2] == (s, s):
            return img, ex.boxes_cxcywh
        pil = Image.fromarray(img)
        if self.letterbox:
            pil, boxes, _ = letterbox_image(pil, ex.boxes_cxcywh, s)
        else:
            pil, boxes = resize_plain(pil, s), ex.boxes_cxcywh
        return np.asarray(pil), boxes

    def make_batch(self, indices: Sequence[int], num_valid: Optional[int] = None) -> dict[str, np.ndarray]:
        """Assemble the batch of the given example indices (see the class docstring).

        ``num_valid``: rows from this position on are marked ``example_valid=False``.
        """
        b, m, s = len(indices), self.max_boxes, self.img_size
        images = np.empty((b, s, s, 3), np.float32)
        boxes = np.zeros((b, m, 4), np.float32)
        labels = np.zeros((b, m), np.int32)
        mask = np.zeros((b, m), bool)
        for row, i in enumerate(indices):
            ex = self.examples[int(i)]
            if ex.image.ndim != 3 or ex.image.shape[2] != 3:
                raise ValueError(f"{ex.source_id}: image of shape {ex.image.shape}; expected (H, W, 3) RGB")
            img_u8, bx = self._prepare(ex)
            np.divide(img_u8, np.float32(255.0), out=images[row], dtype=np.float32)
            k = min(ex.num_boxes, m)
            boxes[row, :k] = bx[:k]
            labels[row, :k] = ex.labels[:k]
            mask[row, :k] = True
        valid = np.ones((b,), bool)
        if num_valid is not None:
            valid[num_valid:] = False
        return {
            "images": images,
            "boxes_cxcywh": boxes,
            "labels": labels,
            "mask": mask,
            "example_index": np.asarray(indices, np.int64),
            "example_valid": valid,
        }

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield the batches of ``epoch`` (deterministic given ``seed`` and ``epoch``).

        Args:
          epoch: epoch number; selects the permutation.
          start_batch: skip the first batches (without preparing them), to resume;
            ``0 <= start_batch <= len(self)``.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)} (batches per epoch), got {start_batch}")
        all_idx = self.batch_indices(epoch)
        n = len(self.examples)
        jobs = []
        for j in range(start_batch, len(all_idx)):
            first = j * self.batch_size
            num_valid = max(0, min(self.batch_size, n - first))
            local_valid = min(max(num_valid - self.rows.start, 0), self.rows.stop - self.rows.start)
            jobs.append((all_idx[j][self.rows], None if num_valid == self.batch_size else local_valid))
        return self._run(jobs)

    def _run(self, jobs: list) -> Iterator[dict[str, np.ndarray]]:
        if self.num_workers == 0:
            for idx, nv in jobs:
                yield self.make_batch(idx, nv)
            return
        depth = max(1, self.prefetch, self.num_workers)
        with ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="batch-loader") as pool:
            pending: collections.deque = collections.deque()
            it = iter(jobs)
            try:
                for idx, nv in it:
                    pending.append(pool.submit(self.make_batch, idx, nv))
                    if len(pending) >= depth:
                        break
                while pending:
                    batch = pending.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.make_batch, *nxt))
                    yield batch
            finally:  # consumer stopped early (break / exception): drop queued work
                for fut in pending:
                    fut.cancel()
