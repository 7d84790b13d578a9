"""Tests of yolo11_jax.coco_eval against pycocotools run the standard, file-based way."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo11_jax.coco_eval import CocoEvaluator, format_table

NUM_CLASSES = 4
NAMES = ["person", "bicycle", "car", "unused"]  # class 3 never has ground truth


def make_dataset(seed, num_images=12, max_gt=6, max_det=15, img_hw=(96, 128), jitter=0.0, num_fp=3):
    """Random GT (normalised cxcywh, padded) and detections (pixel xyxy, padded).

    Detections are the GT boxes moved by ``jitter * size`` plus ``num_fp`` random
    false positives per image, with random scores; class 3 never appears in GT.
    ``img_hw`` may be (h, w) or (N, 2). Returns a dict of (N, ...) arrays.
    """
    rng = np.random.default_rng(seed)
    hw = np.broadcast_to(np.asarray(img_hw, np.float64), (num_images, 2))
    gt = np.zeros((num_images, max_gt, 4), np.float32)
    gt_labels = np.zeros((num_images, max_gt), np.int32)
    gt_mask = np.zeros((num_images, max_gt), bool)
    det = np.zeros((num_images, max_det, 4), np.float32)
    det_scores = np.zeros((num_images, max_det), np.float32)
    det_classes = np.zeros((num_images, max_det), np.int32)
    det_valid = np.zeros((num_images, max_det), bool)
    for i in range(num_images):
        h, w = hw[i]
        n = rng.integers(1, max_gt + 1)
        wh = rng.uniform(0.05, 0.5, size=(n, 2))
        cxcy = rng.uniform(wh / 2, 1 - wh / 2)
        gt[i, :n] = np.concatenate([cxcy, wh], -1)
        gt_labels[i, :n] = rng.integers(0, 3, size=n)
        gt_mask[i, :n] = True
        # matching detections
        px = gt[i, :n].astype(np.float64) * [w, h, w, h]
        xyxy = np.concatenate([px[:, :2] - px[:, 2:] / 2, px[:, :2] + px[:, 2:] / 2], -1)
        xyxy = xyxy + rng.normal(0, jitter, size=xyxy.shape) * np.tile(px[:, 2:], 2)
        k = min(n + num_fp, max_det)
        fp = rng.uniform(0, 1, size=(k - n, 4)) * [w, h, w, h]
        fp = np.concatenate([np.minimum(fp[:, :2], fp[:, 2:]), np.maximum(fp[:, :2], fp[:, 2:])], -1)
        det[i, :k] = np.concatenate([xyxy, fp], 0)
        det_scores[i, :k] = rng.uniform(0.01, 1, size=k)
        det_classes[i, :k] = np.concatenate([gt_labels[i, :n], rng.integers(0, NUM_CLASSES, size=k - n)])
        det_valid[i, :k] = True
    return dict(
        gt_boxes_cxcywh_norm=gt,
        gt_labels=gt_labels,
        gt_mask=gt_mask,
        det_boxes_xyxy=det,
        det_scores=det_scores,
        det_classes=det_classes,
        det_valid=det_valid,
        img_hw=np.asarray(img_hw),
    )


def add_in_batches(ev, data, batch=4):
    n = data["gt_mask"].shape[0]
    for s in range(0, n, batch):
        chunk = {k: (v[s : s + batch] if k != "img_hw" or v.ndim == 2 else v) for k, v in data.items()}
        ev.add_batch(**chunk)


def reference_eval(tmp_path, data, cat_ids=None):
    """pycocotools through JSON files, conversion written independently of the library."""
    n = data["gt_mask"].shape[0]
    hw = np.broadcast_to(np.asarray(data["img_hw"], np.float64), (n, 2))
    images, anns, dets = [], [], []
    for i in range(n):
        h, w = (float(v) for v in hw[i])
        images.append({"id": 100 + i, "height": h, "width": w})
        for box, label, ok in zip(data["gt_boxes_cxcywh_norm"][i], data["gt_labels"][i], data["gt_mask"][i]):
            if ok:
                cx, cy, bw, bh = (float(v) for v in box)
                bw, bh = bw * w, bh * h
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": 100 + i,
                        "category_id": int(label) + 10,
                        "bbox": [cx * w - bw / 2, cy * h - bh / 2, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
        for box, score, label, ok in zip(
            data["det_boxes_xyxy"][i], data["det_scores"][i], data["det_classes"][i], data["det_valid"][i]
        ):
            if ok:
                x1, y1, x2, y2 = (float(v) for v in box)
                dets.append(
                    {"image_id": 100 + i, "category_id": int(label) + 10, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
                )
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    cats = [{"id": c + 10, "name": NAMES[c]} for c in range(NUM_CLASSES)]
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    dt_file.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(dt_file))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            e.params.catIds = [c + 10 for c in cat_ids]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.where(e.stats == -1, np.nan, e.stats)  # -1 = "no GT in this area range" -> nan, as the library


def empty_batch(num_images, max_gt=6, max_det=15):
    return dict(
        gt_boxes_cxcywh_norm=np.zeros((num_images, max_gt, 4), np.float32),
        gt_labels=np.zeros((num_images, max_gt), np.int32),
        gt_mask=np.zeros((num_images, max_gt), bool),
        det_boxes_xyxy=np.zeros((num_images, max_det, 4), np.float32),
        det_scores=np.zeros((num_images, max_det), np.float32),
        det_classes=np.zeros((num_images, max_det), np.int32),
        det_valid=np.zeros((num_images, max_det), bool),
        img_hw=(96, 128),
    )


# ----------------------------------------------------------------------------- tests


def test_ground_truth_as_detections_gives_map_one():
    data = make_dataset(0, jitter=0.0, num_fp=0)
    data["det_scores"][data["det_valid"]] = 1.0
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    ev.add_batch(**empty_batch(2))  # images with neither GT nor detections
    res = ev.compute()
    assert res["mAP"] == 1.0 and res["AP50"] == 1.0 and res["AP75"] == 1.0
    assert res["num_images"] == 14 and res["num_gt"] == int(data["gt_mask"].sum()) == res["num_det"]
    for r in res["per_class"][:3]:
        assert r["num_gt"] > 0 and r["AP"] == 1.0 and r["AP50"] == 1.0
    # class 3 has no GT: nan, and not averaged in as 0 (mAP would then be 0.75)
    assert res["per_class"][3]["num_gt"] == 0 and math.isnan(res["per_class"][3]["AP"])


def test_jittered_detections_match_file_based_pycocotools(tmp_path):
    data = make_dataset(1, jitter=0.08, num_fp=3)
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    res = ev.compute()
    ref = reference_eval(tmp_path, data)
    assert 0.05 < res["mAP"] < 0.95
    assert res["AP50"] > res["AP75"]
    np.testing.assert_allclose(res["stats"], ref, rtol=0, atol=1e-12)
    assert (res["mAP"], res["AP50"], res["AP75"]) == pytest.approx(tuple(ref[:3]), abs=1e-12)
    # per-class AP equals pycocotools restricted to that category
    per_class = res["per_class"]
    for c in range(3):
        ref_c = reference_eval(tmp_path, data, cat_ids=[c])
        assert per_class[c]["AP"] == pytest.approx(ref_c[0], abs=1e-12)
        assert per_class[c]["AP50"] == pytest.approx(ref_c[1], abs=1e-12)
    assert per_class[3]["num_det"] > 0 and math.isnan(per_class[3]["AP"])  # FPs of a class without GT
    # the overall mAP is the mean over the classes with GT
    assert res["mAP"] == pytest.approx(np.mean([per_class[c]["AP"] for c in range(3)]), abs=1e-12)
    # results don't depend on how the images were batched
    ev1 = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev1, data, batch=5)
    np.testing.assert_array_equal(ev1.compute()["stats"], res["stats"])  # nan == nan here


def test_per_image_sizes_match_reference(tmp_path):
    sizes = np.array([[96, 128], [64, 64], [128, 96], [80, 160]] * 2, np.float64)
    data = make_dataset(2, num_images=8, img_hw=sizes, jitter=0.05)
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    res = ev.compute()
    np.testing.assert_allclose(res["stats"], reference_eval(tmp_path, data), rtol=0, atol=1e-12)
    # using one wrong size for every image changes the answer (the per-image sizes are used)
    data_wrong = {**data, "img_hw": np.array([96, 128])}
    ev2 = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev2, data_wrong)
    assert ev2.compute()["mAP"] != res["mAP"]


def test_images_without_gt_and_detections(tmp_path):
    data = make_dataset(3, jitter=0.05)
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    base = ev.compute()
    ev.add_batch(**empty_batch(3))
    res = ev.compute()
    assert res["num_images"] == base["num_images"] + 3
    np.testing.assert_array_equal(res["stats"], base["stats"])
    # an image with detections but no GT adds false positives
    extra = empty_batch(1)
    extra["det_valid"][0, :5] = True
    extra["det_scores"][0, :5] = 0.99
    extra["det_boxes_xyxy"][0, :5] = [10, 10, 50, 50]
    extra["det_classes"][0, :5] = [0, 1, 2, 0, 1]
    ev.add_batch(**extra)
    res2 = ev.compute()
    assert res2["mAP"] < res["mAP"]


def test_no_detections_at_all():
    data = make_dataset(4)
    data["det_valid"][:] = False
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    res = ev.compute()
    assert res["mAP"] == 0.0 and res["AP50"] == 0.0 and res["AP75"] == 0.0 and res["num_det"] == 0
    assert [r["AP"] for r in res["per_class"][:3]] == [0.0, 0.0, 0.0]
    assert math.isnan(res["per_class"][3]["AP"])
    # no GT either: nothing to measure
    ev2 = CocoEvaluator(NUM_CLASSES)
    ev2.add_batch(**empty_batch(2))
    res2 = ev2.compute()
    assert math.isnan(res2["mAP"]) and res2["num_images"] == 2


def test_quiet_unless_verbose(capsys):
    data = make_dataset(5, num_images=4, jitter=0.05)
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    ev.compute()
    assert capsys.readouterr().out == ""
    ev.verbose = True
    ev.compute()
    assert "Average Precision" in capsys.readouterr().out


def test_per_class_table():
    data = make_dataset(6, jitter=0.05)
    ev = CocoEvaluator(NUM_CLASSES, NAMES)
    add_in_batches(ev, data)
    res = ev.compute()
    table = format_table(res)
    print(table)
    lines = table.splitlines()
    assert len(lines) == 2 + 1 + NUM_CLASSES
    assert lines[2].split()[:3] == ["all", str(res["num_gt"]), str(res["num_det"])]
    assert f"{res['mAP']:.3f}" in lines[2] and f"{res['AP50']:.3f}" in lines[2]
    for line, r in zip(lines[3:], res["per_class"]):
        fields = line.split()
        assert fields[0] == r["name"] and int(fields[1]) == r["num_gt"]
        if r["num_gt"]:
            assert float(fields[-1]) == pytest.approx(r["AP"], abs=5e-4)
        else:
            assert fields[-2:] == ["-", "-"]
    assert CocoEvaluator.format_table(res) == table
    # skip_empty drops a class without GT or detections
    res["per_class"][3]["num_det"] = 0
    assert len(format_table(res, skip_empty=True).splitlines()) == len(lines) - 1


def test_rejects_out_of_range_labels():
    data = make_dataset(7, num_images=2)
    data["det_classes"][0, 0] = NUM_CLASSES
    with pytest.raises(ValueError):
        CocoEvaluator(NUM_CLASSES).add_batch(**data)
