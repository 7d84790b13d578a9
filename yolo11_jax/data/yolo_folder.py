"""Ultralytics YOLO folders: ``images/<split>/`` + ``labels/<split>/*.txt``, class names from
``data.yaml`` / ``dataset.yaml`` or ``classes.txt`` (:func:`yolo_txt_examples`, :func:`yolo_dirs`,
:func:`yolo_class_names`, :func:`read_yolo_label_file`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .cleaning import ExampleCleaner
from .records import IMAGE_EXTENSIONS, DataStats, Example, RecordSource
from .records import SPLIT_ALIASES as _SPLIT_ALIASES


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
