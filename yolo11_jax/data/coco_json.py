"""COCO ``instances_*.json`` plus an image folder (:func:`coco_json_examples`,
:func:`coco_categories`): the ``categories`` names and ids as given (gaps in the ids, ids that do
not start at 0 or 1, names with spaces)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from .cleaning import ExampleCleaner
from .records import DataStats, Example, RecordSource


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


def file_names_found_under(annotation_json: Union[str, os.PathLike, dict], folder: Union[str, os.PathLike],
                           *, sample: int = 3) -> bool:
    """Whether the json's first ``sample`` images (``file_name``, which may hold a sub-folder such
    as labelme's ``JPEGImages/2011_000003.jpg``) are files under ``folder``: a way to recognise
    the json's own folder as the image folder. ``False`` for a json without images."""
    images = _read_json(annotation_json).get("images", [])[:sample]
    folder = Path(folder)
    return bool(images) and all(isinstance(i.get("file_name"), str) and (folder / i["file_name"]).is_file()
                                for i in images)


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
