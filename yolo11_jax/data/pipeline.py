"""The input pipeline on Grain: fixed-shape uint8 batches from a random-access source.

Usage::

    pipe = TrainPipeline(data.examples, batch_size=16, img_size=128, max_boxes=8, seed=0)
    it = iter(pipe.dataset(total_steps))          # a grain DatasetIterator
    for step in range(total_steps):
        batch = next(it)   # images (b, S, S, 3) uint8, boxes_cxcywh (b, M, 4), labels, mask, ...

How a batch is made (``TrainPipeline.dataset``):

* every epoch is a permutation of the records (``grain.MapDataset.shuffle(seed)``, repeated:
  a new permutation per epoch); the last partial batch of an epoch is dropped;
* global batch ``k`` is positions ``k * B .. (k + 1) * B - 1`` of its epoch; process ``p`` of
  ``P`` (``grain.sharding.ShardByJaxProcess``) takes rows ``p * B / P .. (p + 1) * B / P - 1`` of
  each global batch and reads, decodes and augments only those records;
* each sample is a pure function of (seed, epoch, record) (:class:`MakeSample`), so the batches
  are identical for any number of worker processes (``workers``; 0: in this process, with
  threads) and across runs;
* images travel as uint8 and become float32 on the device, inside the jitted step;
* the sample's counters (boxes removed by augmentation or by ``max_boxes``, unreadable images
  replaced) travel in the batch, so the counts of the worker processes reach the trainer.

The pipeline's position is the ``grain.DatasetIterator``'s state, which ``train.py`` saves in
the Orbax checkpoint (``grain.checkpoint.CheckpointSave``): a resumed run continues with the
next batch, also in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from typing import Iterator, Optional, Sequence

import grain
import numpy as np
from PIL import Image

from .augment import Augment, augment_sample, cxcywh_norm_to_xyxy_px_np, resize_long_side
from .box_counts import trim_boxes, warn_max_boxes
from .records import SAMPLE_COUNTERS, DataStats, RecordSource, UnreadableImageError
from .transforms import letterbox as letterbox_image
from .transforms import resize_plain

_MAX_REPLACEMENT_TRIES = 16
_CACHE_SIZE = 64  # decoded images a sample maker keeps (mosaic tiles of the current batches)
COUNTER_KEYS = SAMPLE_COUNTERS
"""Per-sample counters carried in every batch (summed by :func:`add_counts`)."""


def _records(source):
    """The index of a source (``RecordSource.records``), or the examples themselves."""
    return source.records if isinstance(source, RecordSource) else source


def add_counts(stats: DataStats, batch: dict) -> None:
    """Add a batch's per-sample counters (:data:`COUNTER_KEYS`) to ``stats``."""
    for key in COUNTER_KEYS:
        if key in batch:
            setattr(stats, key, getattr(stats, key) + int(np.sum(batch[key])))


class MakeSample:
    """Record -> one fixed-shape sample, a pure function of ``(epoch, record)`` and the seed.

    Without augmentation: the record at ``img_size`` (plain resize, or letterbox), exactly
    the notebook's preprocessing. With augmentation: :func:`~yolo11_jax.data.augment.augment_sample`
    with ``rng = default_rng([seed, epoch, record])`` (mosaic off from epoch
    ``epochs - close_mosaic`` on). Boxes are padded to ``max_boxes`` with a mask; more are
    cut (and counted). An image that does not decode is replaced by the next readable record
    (counted, and named in a warning).
    """

    def __init__(self, source, *, img_size: int, max_boxes: int, letterbox: bool = False,
                 augment: Augment = Augment(), seed: int = 0, epochs: Optional[int] = None,
                 cache_images: bool = False) -> None:
        self.source, self.img_size, self.max_boxes, self.letterbox = source, img_size, max_boxes, letterbox
        self.augment, self.seed, self.epochs = augment, seed, epochs
        self.cache_images = cache_images
        self._cache: dict = {}
        self._decoded: dict = {}
        self._decoding: dict = {}  # record -> its lock: two threads never decode one record twice
        self._lock = threading.Lock()

    def _load_pil(self, index: int) -> tuple[Image.Image, int, int]:
        """``(image, index read, records skipped)``: record ``index``, or the first record after it
        that decodes (each one skipped is named in a warning)."""
        n = len(self.source)
        for tries in range(_MAX_REPLACEMENT_TRIES):
            j = (index + tries) % n
            try:
                if isinstance(self.source, RecordSource):
                    if not self.cache_images:
                        return self.source.load_pil(j), j, tries
                    with self._lock:  # one lock per record: other records still decode in parallel
                        record_lock = self._decoding.setdefault(j, threading.Lock())
                    with record_lock:  # decoded exactly once per process, kept for the run
                        pil = self._decoded.get(j)
                        if pil is None:
                            pil = self._decoded[j] = self.source.load_pil(j)
                    return pil, j, tries
                return Image.fromarray(self.source[j].image), j, tries
            except UnreadableImageError as err:
                warnings.warn(f"{err}; replaced by the next readable record", stacklevel=2)
        raise UnreadableImageError(f"{_MAX_REPLACEMENT_TRIES} records from {index} on do not decode")

    def _boxes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rec = _records(self.source)[index]
        return rec.boxes_cxcywh, rec.labels

    def _load_long_side(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(uint8 image with long side img_size, boxes_xyxy pixels, labels, records skipped)``,
        remembered for the next few calls (a batch's mosaics share their records' images)."""
        with self._lock:
            hit = self._cache.get(index)
        if hit is None:
            pil, j, skipped = self._load_pil(index)
            img = resize_long_side(np.asarray(pil.convert("RGB"), np.uint8), self.img_size)
            boxes, labels = self._boxes(j)
            hit = (img, cxcywh_norm_to_xyxy_px_np(boxes, img.shape[1], img.shape[0]), labels, skipped)
            with self._lock:
                self._cache[index] = hit
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
        return hit

    def __getstate__(self):  # the caches (and their lock) stay in each process
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_decoded", "_decoding", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _cache={}, _decoded={}, _decoding={}, _lock=threading.Lock())

    def __call__(self, element) -> dict[str, np.ndarray]:
        epoch, index = int(element[0]), int(element[1])
        partners = element[2] if len(element) > 2 else (index,)
        s, m = self.img_size, self.max_boxes
        replaced = removed = 0
        if self.augment.enabled:
            rng = np.random.default_rng([self.seed, epoch, index])
            use_mosaic = self.epochs is None or epoch < self.epochs - self.augment.close_mosaic

            def load(i):
                nonlocal replaced
                img, boxes, labels, skipped = self._load_long_side(i)
                replaced += skipped
                return img, boxes, labels

            img, boxes_xyxy, labels, removed = augment_sample(load, index, partners, s, self.augment, rng,
                                                              use_mosaic)
            boxes = np.stack([(boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2 / s, (boxes_xyxy[:, 1] + boxes_xyxy[:, 3]) / 2 / s,
                              (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) / s, (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]) / s],
                             1).astype(np.float32).reshape(-1, 4)
        else:
            pil, index, replaced = self._load_pil(index)
            boxes, labels = self._boxes(index)
            if pil.size != (s, s):
                if self.letterbox:
                    pil, boxes, _ = letterbox_image(pil, boxes, s)
                else:
                    pil = resize_plain(pil, s)
            img = np.asarray(pil, np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{_records(self.source)[index].source_id}: image of shape {img.shape}; "
                             "expected (H, W, 3) RGB")
        k = min(len(labels), m)
        out = {"images": img, "boxes_cxcywh": np.zeros((m, 4), np.float32), "labels": np.zeros((m,), np.int32),
               "mask": np.zeros((m,), bool), "example_index": np.int64(index),
               "boxes_dropped_augmentation": np.int32(removed),
               "samples_made": np.int32(1), "sample_boxes": np.int32(len(labels)),
               "boxes_truncated_max_boxes": np.int32(len(labels) - k),
               "samples_truncated_max_boxes": np.int32(len(labels) > m),
               "images_replaced_unreadable": np.int32(replaced)}
        out["boxes_cxcywh"][:k] = np.asarray(boxes, np.float32)[:k]
        out["labels"][:k] = np.asarray(labels)[:k]
        out["mask"][:k] = True
        return out


class _Position:
    """Local sample ``u`` of process ``p`` -> ``(epoch, record, partners)``: step ``u // b``, row
    ``u % b`` of this process's ``b = B / P`` rows of the global batch, in the epoch's
    permutation; ``partners`` are the records of those ``b`` rows (a mosaic's other tiles)."""

    CACHED_STEPS = 64  # steps whose rows are kept (the pipeline's threads work on a few at a time)

    def __init__(self, order: grain.MapDataset, num_records: int, batch_size: int, process_index: int,
                 process_count: int) -> None:
        self.order, self.n, self.batch_size = order, num_records, batch_size
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.steps_per_epoch = num_records // batch_size
        self._rows: dict[int, tuple[int, ...]] = {}

    def __getstate__(self):  # the rows cache stays in each process
        return {k: v for k, v in self.__dict__.items() if k != "_rows"}

    def __setstate__(self, state):
        self.__dict__.update(state, _rows={})

    def rows(self, step: int) -> tuple[int, ...]:
        """The records of this process's rows of ``step``: read from the permutation once per step,
        not once per sample (each read is a Grain ``index_shuffle``; a batch of 16 mosaic samples
        made 256 of them)."""
        rows = self._rows.get(step)
        if rows is None:
            epoch, k = divmod(step, self.steps_per_epoch)
            first = epoch * self.n + k * self.batch_size + self.offset
            rows = tuple(int(self.order[first + r]) for r in range(self.local))
            if len(self._rows) >= self.CACHED_STEPS:
                self._rows.clear()
            self._rows[step] = rows
        return rows

    def __call__(self, u: int) -> tuple[int, int, tuple[int, ...]]:
        step, row = divmod(int(u), self.local)
        rows = self.rows(step)
        return step // self.steps_per_epoch, rows[row], rows


def _worker_processes(ds: grain.IterDataset, workers: int, buffer: int = 2) -> grain.IterDataset:
    """``ds`` made by ``workers`` processes (Grain ``mp_prefetch``; 0: unchanged)."""
    if workers == 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags (defaults) when it starts workers
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))


def _process_shard(batch_size: int, shard: Optional[tuple[int, int]]) -> tuple[int, int]:
    """``(process index, process count)``: ``shard``, or ``grain.sharding.ShardByJaxProcess``'s;
    the global batch must split evenly over the processes."""
    if shard is None:
        opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
        shard = (opts.shard_index, opts.shard_count)
    if batch_size % shard[1]:
        raise ValueError(f"batch size {batch_size} is not divisible by the {shard[1]} processes")
    return shard


def default_threads(cpu_count: Optional[int] = None) -> int:
    """Threads that make samples in this process (``workers=0``), by core count: 2 up to 4 cores,
    then half the cores, at most 8. On 2 cores one thread was not faster end to end than two
    (``benchmarks/input_pipeline.py --against-step``): the lever there is the decoded-image
    cache, which cuts the pipeline's CPU time per batch 2.4-4.4x (``cache_images``)."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(2, min(8, cores // 2))


CACHE_BUDGET_BYTES = 1 << 30
"""Decoded images are kept (``cache_images=None``) when the whole index fits in this many bytes."""


def decoded_bytes(source) -> int:
    """The bytes of every decoded image of ``source`` (``width x height x 3``, from the index)."""
    return sum(int(r.size[0]) * int(r.size[1]) * 3 for r in getattr(source, "records", []))


def _read_options(workers: int, threads: Optional[int] = None) -> grain.ReadOptions:
    # In this process: threads (PIL releases the GIL while decoding and resizing); in a worker: 1.
    n = (threads if threads is not None else default_threads()) if workers == 0 else 1
    return grain.ReadOptions(num_threads=n, prefetch_buffer_size=8)


class TrainPipeline:
    """Shuffled, sharded, augmented training batches of a random-access source.

    Args:
      source: a :class:`~yolo11_jax.data.records.RecordSource` (or any sequence of
        :class:`~yolo11_jax.data.records.Example`).
      batch_size: the global batch ``B``; each process gets ``B / P`` rows of it.
      img_size, max_boxes, letterbox, augment, seed: see :class:`MakeSample`.
      epochs: the run's length in epochs (for ``close_mosaic``).
      workers: worker processes (``grain`` ``mp_prefetch``); 0: in this process.
      shard: ``(process_index, process_count)``; default ``grain.sharding.ShardByJaxProcess``.
      trim_boxes: cut each batch's box padding to the smallest pad size that holds its real
        boxes (:func:`~yolo11_jax.data.box_counts.trim_boxes`): the step then costs what the
        batch holds, with one compilation per pad size met. One process only (the processes of a
        global batch must agree on its shape).
      threads: sample-making threads in this process when ``workers == 0`` (default
        :func:`default_threads`: by core count).
      cache_images: keep each decoded image for the run (per process); ``None``: when the index's
        decoded images fit in :data:`CACHE_BUDGET_BYTES` (:func:`decoded_bytes`).
    """

    def __init__(self, source, *, batch_size: int, img_size: int, max_boxes: int = 100, seed: int = 0,
                 letterbox: bool = False, augment: Augment = Augment(), epochs: Optional[int] = None,
                 workers: int = 0, shard: Optional[tuple[int, int]] = None, trim_boxes: bool = False,
                 threads: Optional[int] = None, cache_images: Optional[bool] = None) -> None:
        if batch_size < 1 or img_size < 1 or max_boxes < 1:
            raise ValueError(f"batch_size, img_size and max_boxes must be >= 1, got {batch_size}, {img_size}, {max_boxes}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if len(source) == 0:
            raise ValueError("no training examples")
        if len(source) < batch_size:
            raise ValueError(f"{len(source)} training examples < batch size {batch_size}: an epoch would have no "
                             "full batch; lower --batch-size")
        shard = _process_shard(batch_size, shard)
        if trim_boxes and shard[1] > 1:
            raise ValueError(f"trim_boxes needs one process; this run has {shard[1]} (pass an explicit max_boxes)")
        self.source, self.batch_size, self.workers, self.shard = source, batch_size, workers, shard
        self.trim_boxes, self.threads = trim_boxes, threads
        if cache_images is None:
            cache_images = isinstance(source, RecordSource) and decoded_bytes(source) <= CACHE_BUDGET_BYTES
        self.cache_images = cache_images
        self.make_sample = MakeSample(source, img_size=img_size, max_boxes=max_boxes, letterbox=letterbox,
                                      augment=augment, seed=seed, epochs=epochs, cache_images=cache_images)
        self.order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
        self.position = _Position(self.order, len(source), batch_size, *shard)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial one is dropped)."""
        return len(self.source) // self.batch_size

    def dataset(self, total_steps: int, start_step: int = 0) -> grain.IterDataset:
        """The batches of steps ``start_step .. total_steps - 1`` (iterate with ``iter``)."""
        local = self.batch_size // self.shard[1]
        ds = grain.MapDataset.range(start_step * local, total_steps * local).map(self.position).map(self.make_sample)
        ds = ds.batch(local, drop_remainder=True)
        if self.trim_boxes:
            ds = ds.map(trim_boxes)
        ds = ds.to_iter_dataset(_read_options(self.workers, self.threads))
        return _worker_processes(ds, self.workers)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``, made directly (for inspection and tests)."""
        local = self.batch_size // self.shard[1]
        samples = [self.make_sample(self.position(step * local + r)) for r in range(local)]
        batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
        return trim_boxes(batch) if self.trim_boxes else batch


class _EvalSample:
    def __init__(self, source, img_size: int, max_boxes: int, letterbox: bool) -> None:
        self.n = len(source)
        self.make = MakeSample(source, img_size=img_size, max_boxes=max_boxes, letterbox=letterbox)

    def __call__(self, position: int) -> dict[str, np.ndarray]:
        out = self.make((0, int(position) % self.n))
        out["example_valid"] = np.bool_(position < self.n)
        return out


def eval_batches(source, *, batch_size: int, img_size: int, letterbox: bool = False,
                 max_boxes: Optional[int] = None, workers: int = 0) -> tuple[Iterator[dict], int]:
    """Every example once, in order, in batches of ``batch_size`` (the last one filled up with
    examples from the start, flagged ``example_valid=False``): ``(batches, number of batches)``.
    ``max_boxes`` defaults to the largest box count of the source (every ground-truth box counts)."""
    n = len(source)
    if n == 0:
        raise ValueError("evaluate: no examples to evaluate")
    if max_boxes is None:
        max_boxes = max(1, max(rec.num_boxes for rec in _records(source)))
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)
    ds = grain.MapDataset.range(num_batches * batch_size).map(_EvalSample(source, img_size, max_boxes, letterbox))
    ds = ds.batch(batch_size, drop_remainder=True).to_iter_dataset(_read_options(workers))
    return iter(_worker_processes(ds, workers)), num_batches


# ----------------------------------------------------------------------------- streamed sources

class StreamSource:
    """A dataset that is only iterable (a Hub name streamed without ``max_samples``): each epoch
    re-streams it (shuffled with a buffer, seeded by seed and epoch), cleaning and decoding each
    row as it arrives; nothing is kept. ``num_rows`` is the stream's size if the Hub says it
    (before images without boxes are skipped), else ``None``.

    Class ids are checked as the rows arrive (a bad one stops training then, naming the row),
    and the cleaning counts accumulate in ``stats`` over the epochs.
    """

    def __init__(self, ds, *, name: str, num_rows: Optional[int], stats: DataStats, shuffle_buffer: int = 1000,
                 **example_kw) -> None:
        self.ds, self.name, self.num_rows, self.stats = ds, name, num_rows, stats
        self.shuffle_buffer, self.example_kw = shuffle_buffer, example_kw

    def __len__(self) -> int:
        if self.num_rows is None:
            raise TypeError(f"{self.name}: a streamed dataset of unknown size")
        return self.num_rows

    def examples(self, epoch: int, seed: int) -> Iterator:
        from .hf import hf_examples

        stream = self.ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer) if self.shuffle_buffer else self.ds
        stream.set_epoch(epoch)
        return hf_examples(stream, stats=self.stats, source_name=self.name, **self.example_kw)


class _StreamIterator(grain.DatasetIterator):
    """Batches of a :class:`StreamSource`; its state is ``(epoch, rows consumed in it)`` and
    restoring it re-streams the epoch and skips the rows already used."""

    def __init__(self, pipe: "StreamPipeline") -> None:
        super().__init__()
        self.pipe = pipe
        self.epoch, self.position = 0, 0
        self._rows = None

    def _open(self) -> None:
        self._rows = self.pipe.source.examples(self.epoch, self.pipe.seed)
        for _ in range(self.position):  # resume: skip what was used
            next(self._rows)

    def _next_row(self):
        while True:
            if self._rows is None:
                self._open()
            ex = next(self._rows, None)
            if ex is not None:
                return ex
            if self.position == 0:
                raise ValueError(f"{self.pipe.source.name}: the stream has no usable examples")
            self.epoch, self.position, self._rows = self.epoch + 1, 0, None

    def __next__(self) -> dict[str, np.ndarray]:
        p, count = self.pipe.shard
        local = self.pipe.batch_size // count
        samples = []
        while len(samples) < local:
            # Global batch row r of this process: rows p*local .. (p+1)*local - 1 of each batch.
            row = self.position % self.pipe.batch_size
            ex = self._next_row()
            position, epoch = self.position, self.epoch
            self.position += 1
            if p * local <= row < (p + 1) * local:
                samples.append(self.pipe.make_sample((epoch, position), example=ex))
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def set_state(self, state: dict) -> None:
        self.epoch, self.position, self._rows = int(state["epoch"]), int(state["position"]), None


class _StreamDataset(grain.IterDataset):
    def __init__(self, pipe: "StreamPipeline", state: Optional[dict] = None) -> None:
        super().__init__()
        self.pipe, self.state = pipe, state

    def __iter__(self) -> _StreamIterator:
        it = _StreamIterator(self.pipe)
        if self.state is not None:
            it.set_state(self.state)
        return it


class _Only:
    """A "source" whose every index is one example (what :class:`_StreamSample` hands over)."""

    def __init__(self, example, position: int) -> None:
        self.example, self.n = example, position + 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        return self.example


class _StreamSample(MakeSample):
    """:class:`MakeSample` on an example handed over by the stream, drawn from
    ``default_rng([seed, epoch, position in the epoch])`` (no random access: per-image
    augmentation only, no mosaic)."""

    def __call__(self, element, example=None):
        epoch, position = int(element[0]), int(element[1])
        self.source, self._cache = _Only(example, position), {}
        return super().__call__((epoch, position))


class StreamPipeline:
    """:class:`TrainPipeline`'s counterpart for a :class:`StreamSource`: the same batches' layout,
    per-image augmentation (mosaic needs random access, so it is off), each process keeping its
    rows of every global batch, and an iterator state (epoch, rows consumed) for checkpoints.
    ``steps_per_epoch`` is estimated from the stream's size, when known."""

    def __init__(self, source: StreamSource, *, batch_size: int, img_size: int, max_boxes: int = 100, seed: int = 0,
                 letterbox: bool = False, augment: Augment = Augment(), epochs: Optional[int] = None,
                 workers: int = 0, shard: Optional[tuple[int, int]] = None) -> None:
        shard = _process_shard(batch_size, shard)
        self.source, self.batch_size, self.seed, self.shard = source, batch_size, seed, shard
        self.make_sample = _StreamSample([], img_size=img_size, max_boxes=max_boxes, letterbox=letterbox,
                                         augment=dataclasses.replace(augment, mosaic=0.0), seed=seed, epochs=epochs)

    @property
    def steps_per_epoch(self) -> Optional[int]:
        return None if self.source.num_rows is None else max(1, self.source.num_rows // self.batch_size)

    def dataset(self, total_steps: int, start_step: int = 0) -> grain.IterDataset:
        """The batches from ``start_step`` on (a fresh stream skips ``start_step`` batches)."""
        if not start_step:
            return _StreamDataset(self)
        it = _StreamIterator(self)
        for _ in range(start_step):
            next(it)
        return _StreamDataset(self, it.get_state())
