"""Hugging Face datasets in the ``detection-datasets/coco`` schema: a ``Dataset`` /
``IterableDataset`` object, a Hub name (streamed, as the notebook does), a ``save_to_disk``
directory, or parquet file(s) (:func:`hf_examples`, :func:`open_hf_dataset`, :func:`hf_class_names`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from .cleaning import ExampleCleaner
from .records import SPLIT_ALIASES as _SPLIT_ALIASES
from .records import DataStats, Example, RecordSource, _image_path_hint, _limit, image_size, open_image
from PIL import Image


def _is_hf_dataset(obj: Any) -> bool:
    if "datasets" not in sys.modules:  # no datasets object can exist yet (and importing it costs ~1 s)
        return False
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
