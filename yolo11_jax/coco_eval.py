"""COCO-style box mAP through pycocotools, with everything built in memory.

Ground truth and detections are accumulated per image on the host (NumPy),
then converted to COCO dictionaries: a ``COCO()`` object whose ``dataset`` is
filled and indexed with ``createIndex()`` for the ground truth, and
``coco_gt.loadRes(list_of_dicts)`` for the detections. No mAP is computed by
hand; the per-class numbers are read from ``COCOeval.eval['precision']`` the
same way ``COCOeval.summarize`` averages them.

Conventions:

* Image ids are ``1..N`` in the order images are added; category ids are
  ``class_index + 1`` (pycocotools treats id 0 as "unmatched" for annotations,
  so annotation ids also start at 1).
* Boxes are evaluated in the coordinates they are given in (the network input,
  e.g. a letterboxed 640x640 image); ground truth area = ``w * h`` in those
  pixels (so COCO's small/medium/large split refers to them); ``iscrowd = 0``.
* ``maxDets`` is COCO's ``[1, 10, max_dets]`` with ``max_dets=100`` by default
  (the standard COCO protocol, also used by Ultralytics' pycocotools check).
* A class without ground truth gets AP ``nan`` and, as in pycocotools, is left
  out of the mean. With ground truth but no detection at all, mAP is 0.0
  (pycocotools cannot load an empty result list, so this case is handled here).
  With no ground truth at all, every AP is ``nan``.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _per_image_hw(img_hw, batch: int) -> np.ndarray:
    """``img_hw`` as an int, ``(h, w)`` or ``(B, 2)`` -> ``(B, 2)`` float64 array of (h, w) pixels."""
    hw = np.asarray(img_hw, np.float64)
    if hw.ndim == 0:
        hw = np.array([hw, hw])
    if hw.ndim == 1:
        hw = np.broadcast_to(hw, (batch, 2))
    if hw.shape != (batch, 2):
        raise ValueError(f"img_hw must be an int, (h, w) or (B, 2); got shape {hw.shape} for B={batch}")
    return hw


class CocoEvaluator:
    """Accumulates ground truth and detections batch by batch, then runs pycocotools.

    Args:
      num_classes: number of classes ``C``; labels are ``0..C-1``.
      class_names: optional ``C`` names for the per-class table (default ``"class_i"``).
      max_dets: detections per image considered by COCOeval (its ``maxDets[2]``).
      verbose: let pycocotools print its progress and summary.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        *,
        max_dets: int = 100,
        verbose: bool = False,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.max_dets = int(max_dets)
        self.verbose = verbose
        self.reset()

    def reset(self) -> None:
        """Forgets every image added so far."""
        self._images: list[dict] = []  # {"h", "w", "gt_xywh" (G,4), "gt_cls" (G,), "det_xywh" (D,4), "det_scores", "det_cls"}

    @property
    def num_images(self) -> int:
        return len(self._images)

    def add_batch(
        self,
        gt_boxes_cxcywh_norm,
        gt_labels,
        gt_mask,
        det_boxes_xyxy,
        det_scores,
        det_classes,
        det_valid,
        img_hw,
    ) -> None:
        """Adds one batch of images (arrays may be NumPy or JAX; copied to host).

        Args:
          gt_boxes_cxcywh_norm: ``(B, M, 4)`` ground truth ``(cx, cy, w, h)``
            normalised by the image width/height (values in [0, 1]).
          gt_labels: ``(B, M)`` int class indices.
          gt_mask: ``(B, M)`` bool, True for real (non-padding) boxes.
          det_boxes_xyxy: ``(B, D, 4)`` detections ``(x1, y1, x2, y2)`` in pixels.
          det_scores: ``(B, D)`` confidences.
          det_classes: ``(B, D)`` int class indices.
          det_valid: ``(B, D)`` bool, True for real detections.
          img_hw: image size in pixels the boxes refer to: an int (square),
            ``(h, w)`` for the whole batch, or ``(B, 2)`` per image.
        """
        gt_boxes = np.asarray(gt_boxes_cxcywh_norm, np.float64)
        gt_labels = np.asarray(gt_labels).astype(np.int64)
        gt_mask = np.asarray(gt_mask).astype(bool)
        det_boxes = np.asarray(det_boxes_xyxy, np.float64)
        det_scores = np.asarray(det_scores, np.float64)
        det_classes = np.asarray(det_classes).astype(np.int64)
        det_valid = np.asarray(det_valid).astype(bool)
        batch = gt_boxes.shape[0]
        hw = _per_image_hw(img_hw, batch)

        for b in range(batch):
            h, w = hw[b]
            g = gt_boxes[b][gt_mask[b]]
            gt_w, gt_h = g[:, 2] * w, g[:, 3] * h
            gt_xywh = np.stack([g[:, 0] * w - gt_w / 2, g[:, 1] * h - gt_h / 2, gt_w, gt_h], axis=-1)
            gt_cls = gt_labels[b][gt_mask[b]]

            d = det_boxes[b][det_valid[b]]
            det_xywh = np.stack([d[:, 0], d[:, 1], d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]], axis=-1)
            for name, cls in (("gt_labels", gt_cls), ("det_classes", det_classes[b][det_valid[b]])):
                if cls.size and (cls.min() < 0 or cls.max() >= self.num_classes):
                    raise ValueError(f"{name} outside [0, {self.num_classes}): {np.unique(cls)}")
            self._images.append(
                {
                    "h": float(h),
                    "w": float(w),
                    "gt_xywh": gt_xywh.reshape(-1, 4),
                    "gt_cls": gt_cls,
                    "det_xywh": det_xywh.reshape(-1, 4),
                    "det_scores": det_scores[b][det_valid[b]],
                    "det_cls": det_classes[b][det_valid[b]],
                }
            )

    # ------------------------------------------------------------------ COCO conversion

    def coco_ground_truth(self) -> COCO:
        """The accumulated ground truth as an indexed in-memory ``COCO`` object."""
        images, annotations = [], []
        for image_id, rec in enumerate(self._images, start=1):
            images.append({"id": image_id, "height": rec["h"], "width": rec["w"]})
            for (x, y, bw, bh), c in zip(rec["gt_xywh"].tolist(), rec["gt_cls"].tolist()):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": c + 1,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        with self._quiet():
            coco_gt.createIndex()
        return coco_gt

    def detection_results(self) -> list[dict]:
        """The accumulated detections in COCO result format (``bbox`` = ``[x, y, w, h]`` pixels)."""
        results = []
        for image_id, rec in enumerate(self._images, start=1):
            for (x, y, bw, bh), s, c in zip(rec["det_xywh"].tolist(), rec["det_scores"].tolist(), rec["det_cls"].tolist()):
                results.append({"image_id": image_id, "category_id": c + 1, "bbox": [x, y, bw, bh], "score": s})
        return results

    def _quiet(self):
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    # ------------------------------------------------------------------ evaluation

    def compute(self) -> dict:
        """Runs COCOeval (bbox) on everything added so far.

        Returns:
          dict with ``mAP`` (AP@[.5:.95]), ``AP50``, ``AP75`` (floats; ``nan``
          when there is no ground truth), ``stats`` (COCOeval's 12 summary
          numbers, -1 mapped to ``nan``; ``None`` when pycocotools was not run),
          ``per_class`` (list of dicts ``{"class_id", "name", "num_gt",
          "num_det", "AP", "AP50"}``; ``nan`` AP for classes without ground
          truth), ``num_images``, ``num_gt``, ``num_det``.
        """
        num_gt_per_class = np.zeros(self.num_classes, np.int64)
        num_det_per_class = np.zeros(self.num_classes, np.int64)
        for rec in self._images:
            num_gt_per_class += np.bincount(rec["gt_cls"], minlength=self.num_classes)
            num_det_per_class += np.bincount(rec["det_cls"], minlength=self.num_classes)
        has_gt = num_gt_per_class > 0
        nan = float("nan")

        ap = np.full(self.num_classes, nan)
        ap50 = np.full(self.num_classes, nan)
        stats = None
        if not has_gt.any():
            summary = {"mAP": nan, "AP50": nan, "AP75": nan}
        elif num_det_per_class.sum() == 0:
            # pycocotools' loadRes fails on an empty result list; every class with GT has AP 0.
            ap[has_gt] = 0.0
            ap50[has_gt] = 0.0
            summary = {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        else:
            coco_gt = self.coco_ground_truth()
            with self._quiet():
                coco_dt = coco_gt.loadRes(self.detection_results())
                coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
                coco_eval.params.imgIds = list(range(1, len(self._images) + 1))
                coco_eval.params.maxDets = [1, 10, self.max_dets]
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            stats = [nan if s == -1 else float(s) for s in coco_eval.stats]
            summary = {"mAP": stats[0], "AP50": stats[1], "AP75": stats[2]}
            # precision: (T iouThrs, R recThrs, K cats, A areaRngs, M maxDets); area "all" = 0, last maxDets
            precision = coco_eval.eval["precision"]
            cat_ids = coco_eval.params.catIds
            for k, cat_id in enumerate(cat_ids):
                p = precision[:, :, k, 0, -1]
                if (p > -1).any():
                    ap[cat_id - 1] = float(np.mean(p[p > -1]))
                p50 = precision[0, :, k, 0, -1]  # iouThrs[0] == 0.5
                if (p50 > -1).any():
                    ap50[cat_id - 1] = float(np.mean(p50[p50 > -1]))

        per_class = [
            {
                "class_id": c,
                "name": self.class_names[c],
                "num_gt": int(num_gt_per_class[c]),
                "num_det": int(num_det_per_class[c]),
                "AP": float(ap[c]),
                "AP50": float(ap50[c]),
            }
            for c in range(self.num_classes)
        ]
        return {
            **summary,
            "stats": stats,
            "per_class": per_class,
            "num_images": len(self._images),
            "num_gt": int(num_gt_per_class.sum()),
            "num_det": int(num_det_per_class.sum()),
        }

    @staticmethod
    def format_table(results: dict, *, skip_empty: bool = False) -> str:
        """See :func:`format_table`."""
        return format_table(results, skip_empty=skip_empty)


def _fmt(x: float) -> str:
    return "     -" if math.isnan(x) else f"{x:6.3f}"


def format_table(results: dict, *, skip_empty: bool = False) -> str:
    """A per-class AP table (plus an ``all`` row) from :meth:`CocoEvaluator.compute`'s result.

    Classes without ground truth show ``-`` for AP; ``skip_empty`` drops the
    classes with neither ground truth nor detections.
    """
    rows = [r for r in results["per_class"] if not (skip_empty and r["num_gt"] == 0 and r["num_det"] == 0)]
    name_w = max([len("class"), len("all")] + [len(r["name"]) for r in rows])
    header = f"{'class':<{name_w}}  {'gt':>7}  {'dets':>8}  {'AP50':>6}  {'AP':>6}"
    lines = [header, "-" * len(header)]
    lines.append(
        f"{'all':<{name_w}}  {results['num_gt']:>7d}  {results['num_det']:>8d}  "
        f"{_fmt(results['AP50'])}  {_fmt(results['mAP'])}"
    )
    for r in rows:
        lines.append(f"{r['name']:<{name_w}}  {r['num_gt']:>7d}  {r['num_det']:>8d}  {_fmt(r['AP50'])}  {_fmt(r['AP'])}")
    return "\n".join(lines)


def select_classes(results: dict, class_ids: Sequence[int]) -> dict:
    """:meth:`CocoEvaluator.compute`'s result restricted to the model classes ``class_ids`` (the
    classes a dataset's labels were mapped onto, in the data's order): ``per_class`` lists only
    those, and ``num_gt`` / ``num_det`` count only theirs. The mAP, AP50 and AP75 are unchanged:
    pycocotools already averages over the classes that have ground truth, which are among these.

    Raises:
      ValueError: a class outside ``class_ids`` has ground truth (its AP would be in the mAP).
    """
    chosen = [int(c) for c in class_ids]
    by_id = {r["class_id"]: r for r in results["per_class"]}
    stray = [r["name"] for r in results["per_class"] if r["num_gt"] and r["class_id"] not in set(chosen)]
    if stray:
        raise ValueError(f"classes {stray} have ground truth but are not among the selected classes {chosen}")
    rows = [by_id[c] for c in chosen]
    return {**results, "per_class": rows, "num_gt": sum(r["num_gt"] for r in rows),
            "num_det": sum(r["num_det"] for r in rows), "classes_scored": chosen}
