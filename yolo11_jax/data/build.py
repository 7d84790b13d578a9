"""One-call dataset loading: resolve a spec string, read, clean and materialise.

Spec strings understood by :func:`load_examples` / :func:`build_dataset`:

* ``"shapes"`` (default): the embedded synthetic dataset (:mod:`.shapes`), generated
  in memory. (Write ``"./shapes"`` for a local folder of that name.)
* a Hub name such as ``"detection-datasets/coco"`` (contains ``/``, is not an
  existing path, has no ``.json`` / ``.parquet`` suffix): streamed with
  ``datasets.load_dataset(name, split=split, streaming=True)``, as the notebook does;
* a directory:

  - written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (holds
    ``dataset_info.json``, ``state.json`` or ``dataset_dict.json``);
  - an Ultralytics YOLO layout (holds ``images/`` and ``labels/``);
  - a folder of ``.parquet`` files;

* a COCO ``instances_*.json`` file (images from ``image_dir``, or a guessed sibling
  folder, see :func:`guess_coco_image_dir`);
* ``.parquet`` file(s) or a glob such as ``"data/train-*.parquet"``.

A ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict`` object is accepted
in place of a string. Anything else raises ``ValueError`` naming the spec.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from .shapes import SHAPES_CLASS_NAMES, shapes_source
from .coco_json import coco_categories, coco_json_examples
from .hf import _is_hf_dataset, _is_save_to_disk_dir, hf_class_names, hf_examples, open_hf_dataset
from .records import IMAGE_EXTENSIONS, DataStats, Example, RecordSource, collect_examples
from .cleaning import ExampleCleaner
from .yolo_folder import yolo_class_names, yolo_txt_examples

SourceSpec = Union[str, os.PathLike, Any]


def resolve_spec(spec: SourceSpec) -> str:
    """Classify a data spec.

    Returns:
      One of ``"shapes"``, ``"hf_object"``, ``"hub"``, ``"hf_disk"``, ``"yolo"``,
      ``"parquet"``, ``"coco_json"``.

    Raises:
      ValueError: naming the spec if it matches none of the forms in the module docstring.
    """
    if _is_hf_dataset(spec):
        return "hf_object"
    if isinstance(spec, (list, tuple)) and spec and all(str(s).endswith(".parquet") for s in spec):
        return "parquet"
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"unsupported data spec {spec!r} (type {type(spec).__name__})")
    s = os.path.expanduser(str(spec))
    if s == "shapes":
        return "shapes"
    if os.path.isdir(s):
        p = Path(s)
        if _is_save_to_disk_dir(p):
            return "hf_disk"
        if (p / "images").is_dir() and (p / "labels").is_dir():
            return "yolo"
        if glob.glob(os.path.join(s, "**", "*.parquet"), recursive=True):
            return "parquet"
        raise ValueError(
            f"data spec {str(spec)!r} is a directory, but neither a datasets save_to_disk directory"
            " (dataset_info.json / state.json / dataset_dict.json), nor a YOLO layout (images/ + labels/),"
            " nor a folder of .parquet files"
        )
    if os.path.isfile(s):
        if s.lower().endswith(".json"):
            return "coco_json"
        if s.lower().endswith(".parquet"):
            return "parquet"
        raise ValueError(f"data spec {str(spec)!r} is a file but not a COCO .json or a .parquet file")
    if s.endswith(".parquet") and any(c in s for c in "*?["):
        if glob.glob(s, recursive=True):
            return "parquet"
        raise ValueError(f"data spec {str(spec)!r}: the glob matches no parquet files")
    looks_local = s.startswith(("/", "./", "../", "~")) or s.lower().endswith((".json", ".parquet"))
    if "/" in s and not looks_local and len(s.split("/")) == 2 and all(s.split("/")):
        return "hub"
    if looks_local:
        raise ValueError(f"data spec {str(spec)!r} does not exist")
    raise ValueError(
        f"unsupported data spec {str(spec)!r}: expected 'shapes', a Hub name like 'detection-datasets/coco',"
        " a save_to_disk / YOLO / parquet directory, a COCO .json file or .parquet file(s)"
    )


def guess_coco_image_dir(annotation_json: Union[str, os.PathLike]) -> Path:
    """Guess the image folder of a COCO annotation file.

    For ``<root>/annotations/instances_val2017.json`` tries ``<root>/val2017``,
    ``<root>/images/val2017``, ``<root>/images``, then the same names next to the json
    and the json's own folder if its ``file_name`` entries are found under it (they may hold
    a sub-folder, as labelme's ``JPEGImages/x.jpg``) or if it holds images.

    Raises:
      ValueError: no candidate exists (pass ``image_dir`` explicitly).
    """
    p = Path(annotation_json).resolve()
    stem = p.stem
    split_name = stem.split("_", 1)[1] if "_" in stem else stem  # instances_val2017 -> val2017
    candidates = []
    for base in (p.parent.parent, p.parent):
        candidates += [base / split_name, base / "images" / split_name, base / "images"]
    for c in candidates:
        if c.is_dir():
            return c
    from .coco_json import file_names_found_under
    if file_names_found_under(p, p.parent):  # file_name holds a sub-folder, e.g. labelme's 'JPEGImages/x.jpg'
        return p.parent
    if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.parent.iterdir()):
        return p.parent
    raise ValueError(
        f"cannot guess the image folder of {str(annotation_json)!r} (tried {[str(c) for c in candidates]});"
        " pass image_dir="
    )


@dataclass(frozen=True)
class ReadOptions:
    """How a data source is read, cleaned and resized (the options of :func:`build_dataset`).

    Attributes:
      split: split to read (``"train"``, ``"validation"``, ...).
      num_classes: valid class ids are ``0..num_classes-1``; default: the number of class
        names the source declares (shapes: 4, ClassLabel, COCO categories, YOLO
        ``data.yaml``), else only negative ids are rejected.
      img_size: resize every image once to ``img_size x img_size`` pixels and store uint8
        (the input pipeline then only pads); ``None`` keeps original sizes.
      letterbox: pre-resize with letterbox instead of the plain resize.
      skip_empty: drop images with no boxes. Default: ``True`` for Hugging Face sources (the
        notebook), ``False`` for COCO json and YOLO folders.
      max_samples: keep at most this many examples (after cleaning).
      bbox_format: convention of Hugging Face ``objects.bbox`` (default ``"xywh"``).
      image_dir: image folder for a COCO json (default: guessed).
      streaming: for Hub names / parquet (default: stream Hub names only).
      keep_raw_category_ids: COCO json: keep the raw category ids as labels.
      shapes_num_images, shapes_img_size, shapes_seed: the ``"shapes"`` split's size, image
        side and seed (:func:`~yolo11_jax.data.shapes.shapes_source`, rendered lazily).
      stream: a streamed source (a Hub name) without ``max_samples`` stays a stream
        (:class:`~yolo11_jax.data.pipeline.StreamSource`, re-read every epoch) instead of being
        read once into memory.
    """

    split: str = "train"
    num_classes: Optional[int] = None
    img_size: Optional[int] = 640
    letterbox: bool = False
    skip_empty: Optional[bool] = None
    max_samples: Optional[int] = None
    bbox_format: Optional[str] = None
    image_dir: Optional[Union[str, os.PathLike]] = None
    streaming: Optional[bool] = None
    keep_raw_category_ids: bool = False
    shapes_num_images: Optional[int] = None
    shapes_img_size: int = 128
    shapes_seed: int = 0
    stream: bool = False


def _open(spec: SourceSpec, o: ReadOptions, stats: DataStats) -> tuple[Iterator[Example], Optional[list[str]], Optional[int]]:
    """``(example iterator, class names or None, effective num_classes or None)``."""
    kind = resolve_spec(spec)
    common = dict(num_classes=o.num_classes, img_size=o.img_size, letterbox=o.letterbox, max_samples=o.max_samples,
                  stats=stats)
    if kind in ("coco_json", "yolo") and o.bbox_format not in (None, {"coco_json": "xywh", "yolo": "cxcywh_norm"}[kind]):
        raise ValueError(f"bbox_format={o.bbox_format!r} does not apply to {kind} data ({str(spec)!r})")

    if kind == "shapes":
        names = list(SHAPES_CLASS_NAMES)
        common["num_classes"] = o.num_classes if o.num_classes is not None else len(names)
        cleaner = ExampleCleaner(bbox_format="xywh", num_classes=common["num_classes"], skip_empty=bool(o.skip_empty),
                                 stats=stats)
        it = shapes_source(o.split, o.shapes_num_images, o.shapes_img_size, o.shapes_seed, cleaner=cleaner,
                           resize_to=o.img_size, letterbox=o.letterbox, max_samples=o.max_samples)
        return it, names, common["num_classes"]
    if kind in ("hf_object", "hub", "hf_disk", "parquet"):
        ds, name = open_hf_dataset(spec, split=o.split, streaming=o.streaming)
        names = hf_class_names(ds)
        if common["num_classes"] is None and names is not None:
            common["num_classes"] = len(names)
        import datasets

        if o.stream and o.max_samples is None and isinstance(ds, datasets.IterableDataset):
            from .pipeline import StreamSource

            if common["num_classes"] is None:
                raise ValueError(f"{name}: a streamed dataset without class names needs --num-classes")
            info = getattr(ds, "info", None)
            split_info = (getattr(info, "splits", None) or {}).get(name.rsplit("/", 1)[-1]) if info else None
            rows = getattr(split_info, "num_examples", None) or None
            return StreamSource(ds, name=name, num_rows=rows, stats=stats, bbox_format=o.bbox_format or "xywh",
                                num_classes=common["num_classes"], skip_empty=True if o.skip_empty is None else
                                o.skip_empty, img_size=o.img_size, letterbox=o.letterbox), names, \
                common["num_classes"]
        it = hf_examples(ds, split=o.split, bbox_format=o.bbox_format or "xywh",
                         skip_empty=True if o.skip_empty is None else o.skip_empty, source_name=name, **common)
        return it, names, common["num_classes"]
    if kind == "coco_json":
        _, names = coco_categories(spec, keep_raw_category_ids=o.keep_raw_category_ids)
        if common["num_classes"] is None:
            common["num_classes"] = len(names)
        img_dir = o.image_dir if o.image_dir is not None else guess_coco_image_dir(spec)
        it = coco_json_examples(spec, img_dir, keep_raw_category_ids=o.keep_raw_category_ids,
                                skip_empty=bool(o.skip_empty), **common)
        return it, names, common["num_classes"]
    if kind == "yolo":
        names = yolo_class_names(spec)
        if common["num_classes"] is None and names is not None:
            common["num_classes"] = len(names)
        it = yolo_txt_examples(spec, o.split, skip_empty=bool(o.skip_empty), **common)
        return it, names, common["num_classes"]
    raise AssertionError(kind)


def load_examples(source: SourceSpec = "shapes", *, img_size: Optional[int] = None, stats: Optional[DataStats] = None,
                  progress: bool = False, **options) -> tuple[list[Example], DataStats]:
    """Read, clean and materialise a data source into memory: ``(examples, stats)``.

    Loading is eager, so bad data (a class id out of range, ...) raises here, before any
    training step. ``options`` are :class:`ReadOptions` fields; unlike :func:`build_dataset`,
    ``img_size`` defaults to ``None`` (original sizes).
    """
    data = build_dataset(source, img_size=img_size, stats=stats, progress=progress, **options)
    return data.examples, data.stats


@dataclass
class DetectionData:
    """A loaded split.

    Attributes:
      examples: the cleaned examples, random access: a :class:`~yolo11_jax.data.records.RecordSource`
        (indexed; each image decoded when ``examples[i]`` is read) or, for a streamed source,
        the list of examples buffered from the stream.
      stats: what cleaning did (``stats.summary()``).
      class_names: names of labels ``0..K-1`` if the source declares them, else ``None``.
      num_classes: the class count used for validation (or ``max label + 1`` if the
        source declares none and none was given).
      spec: the source spec as given; split: the split read.
    """

    examples: Sequence[Example]
    stats: DataStats
    class_names: Optional[list[str]]
    num_classes: int
    spec: str
    split: str


def build_dataset(spec: SourceSpec = "shapes", *, stats: Optional[DataStats] = None, progress: bool = False,
                  **options) -> DetectionData:
    """Resolve ``spec`` and index it: every record's boxes cleaned and class ids checked now
    (bad data raises before training), images decoded when read, resized to ``img_size`` (640
    by default; ``None`` keeps original sizes). A streamed Hub name is read and buffered.

    Args:
      spec: a spec string or ``datasets`` object (see the module docstring).
      stats: counters to update (a fresh :class:`DataStats` if ``None``).
      progress: show a tqdm progress bar.
      **options: :class:`ReadOptions` fields (``split``, ``num_classes``, ``img_size``, ...).
        Feed ``result.examples`` to :class:`~yolo11_jax.data.TrainPipeline` with the same
        ``img_size`` / ``letterbox``.

    Returns:
      :class:`DetectionData` (examples, stats, class names, num_classes).

    Raises:
      ValueError: the spec is not understood (the message names it), a class id is
        out of range, a split is missing, an unknown option, ...
    """
    try:
        o = ReadOptions(**options)
    except TypeError as e:
        raise ValueError(f"build_dataset: {e}") from None
    stats = stats if stats is not None else DataStats()
    it, names, n_cls = _open(spec, o, stats)
    from .pipeline import StreamSource

    if isinstance(it, StreamSource):
        return DetectionData(examples=it, stats=stats, class_names=names, num_classes=n_cls,
                             spec=str(spec), split=o.split)
    if isinstance(it, RecordSource):
        examples, labels = it, (rec.labels for rec in it.records)
    else:  # a stream (a Hub name): buffered in memory, decoded, as the notebook does
        examples = collect_examples(it, progress=progress, desc=f"loading {o.split}")
        labels = (ex.labels for ex in examples)
    if n_cls is None:
        n_cls = max((int(lab.max()) + 1 for lab in labels if lab.size), default=1)
    spec_name = spec if isinstance(spec, str) else type(spec).__name__ if _is_hf_dataset(spec) else str(spec)
    return DetectionData(examples=examples, stats=stats, class_names=names, num_classes=n_cls, spec=spec_name,
                         split=o.split)
