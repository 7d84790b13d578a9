"""Real labelled data, pinned in tests/real_files.py (DATASETS).

DeepForest 2.1.0's two aerial photos (400 x 400 px) with their hand-drawn boxes, 61 trees in
OSBS_029 and 37 dead or alive trees in SOAP_061. Written here as the YOLO folder a user would
make of them (the CSV's pixel boxes -> normalised ``cls cx cy w h``, ``classes.txt``), then:

* the default padding (from the data) drops no box, with and without mosaic, where the old
  default of 8 dropped 82 of 98;
* the official yolo11n (real_files CHECKPOINTS) meets class names that are not COCO's: evaluate
  stops with both sets listed; ``--class-map`` pairs them by hand and scores only those classes.

labelme 6.3.1's COCO json of three PASCAL VOC 2011 photos, read as it is: 21 categories with
ids 0..20 (``_background_``, VOC names such as ``potted plant`` and ``tv/monitor``), 12 boxes of
6 of them. Its class names overlap COCO's:

* the reader keeps the ids and names as given and drops nothing;
* the official yolo11n maps person, bus, bottle, car and chair by name; ``sofa`` (with a box)
  is not COCO's, so evaluate stops until ``--class-map 'sofa=couch'``; the 15 classes without a
  box need no counterpart and are named as unscored; the mAP equals pycocotools' on the json
  remapped by hand to COCO ids;
* training on it a few steps drops no box at the default settings.
"""

import csv
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_files import real_file  # noqa: E402

from yolo11_jax.data import (ULTRALYTICS, Augment, DataStats, TrainPipeline, add_counts, box_counts,  # noqa: E402
                             build_dataset, resolve_max_boxes, warn_max_boxes)

NAMES = ["Tree", "Dead", "Alive"]
IMAGES = {"OSBS_029": ("deepforest_osbs029_png", "deepforest_osbs029_csv"),
          "SOAP_061": ("deepforest_soap061_png", "deepforest_soap061_csv")}
BOXES = {"OSBS_029": 61, "SOAP_061": 37}


def _yolo_folder(root: Path) -> Path:
    """The two photos as an Ultralytics YOLO folder, labels converted from the CSVs."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    for stem, (png, table) in IMAGES.items():
        shutil.copy(real_file(png), root / "images" / f"{stem}.png")
        lines = []
        with open(real_file(table), newline="") as f:
            for row in csv.DictReader(f):
                x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
                lines.append(f"{NAMES.index(row['label'])} {(x0 + x1) / 800:.6f} {(y0 + y1) / 800:.6f} "
                             f"{(x1 - x0) / 400:.6f} {(y1 - y0) / 400:.6f}")
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _yolo_folder(tmp_path_factory.mktemp("deepforest") / "data")


def test_index_and_old_default(folder):
    data = build_dataset(str(folder), img_size=128)
    assert data.class_names == NAMES
    counts = box_counts(data.examples)
    assert sorted(counts.per_image.tolist()) == sorted(BOXES.values())
    assert data.stats.boxes_kept == 98 and data.stats.boxes_dropped_outside == 0
    with pytest.warns(UserWarning) as rec:  # the old default: 82 of 98 boxes cut, in one warning
        assert warn_max_boxes(data.examples, 8) == (2, 82)
    assert len(rec) == 1 and "--max-boxes 64 keeps every box" in str(rec[0].message)


@pytest.mark.parametrize("mosaic", [False, True])
def test_default_padding_trains_without_dropping(folder, mosaic):
    data = build_dataset(str(folder), img_size=128)
    choice = resolve_max_boxes(box_counts(data.examples), mosaic=mosaic)
    assert (choice.max_boxes, choice.needed) == ((256, 244) if mosaic else (64, 61))
    stats = DataStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_max_boxes(data.examples, choice.max_boxes, mosaic=mosaic) == (0, 0)
        pipe = TrainPipeline(data.examples, batch_size=2, img_size=128, max_boxes=choice.max_boxes, seed=0,
                             augment=ULTRALYTICS if mosaic else Augment())
        for batch in pipe.dataset(3):
            add_counts(stats, batch)
            assert batch["boxes_cxcywh"].shape == (2, choice.max_boxes, 4)
    assert stats.samples_made == 6 and stats.boxes_truncated_max_boxes == 0
    if not mosaic:
        assert stats.sample_boxes == 3 * 98
    print(stats.summary())


@pytest.mark.slow
def test_official_checkpoint_meets_other_class_names(folder, tmp_path, capsys):
    from yolo11_jax import evaluate

    weights = real_file("yolo11n_official")
    base = ["--weights", str(weights), "--data", str(folder), "--split", "train", "--batch-size", "2"]
    assert evaluate.main(base) == 2
    err = capsys.readouterr().err
    assert "['Tree', 'Dead', 'Alive'] not found" in err and "'potted plant'" in err
    out_json = tmp_path / "r.json"
    assert evaluate.main(base + ["--class-map", "Tree=potted plant,Dead=broccoli,Alive=umbrella",
                                 "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "mapped as given (--class-map)" in captured.err
    rows = [ln.split() for ln in captured.out.splitlines()[3:6]]
    assert [r[0] for r in rows] == ["potted", "broccoli", "umbrella"]
    import json

    result = json.loads(out_json.read_text())
    assert result["num_gt"] == 98 and [r["num_gt"] for r in result["per_class"]] == [61, 28, 9]


# --------------------------------------------------------------------------- labelme's VOC 2011 json

LABELME = "labelme_voc2011_coco"
# The json's category ids of the classes with boxes -> the official yolo11n's (COCO) class ids,
# written out by hand: person, bus, bottle, car, chair, and sofa as COCO's couch.
VOC_TO_COCO = {15: 0, 6: 5, 5: 39, 7: 2, 9: 56, 18: 57}
LABELME_BOXES = {"person": 6, "bus": 2, "bottle": 1, "car": 1, "chair": 1, "sofa": 1}


def _labelme():
    """``(annotations.json, its folder, the parsed json)``. The images are ``JPEGImages/...``
    relative to the json's folder, which the COCO reader recognises as the image folder
    (``guess_coco_image_dir``), so the commands need no ``--image-dir``."""
    folder = real_file(LABELME)
    path = folder / "annotations.json"
    return path, folder, json.loads(path.read_text())


def test_labelme_coco_json_read_as_given():
    from yolo11_jax.class_names import class_box_counts
    from yolo11_jax.data import build_dataset, coco_categories
    from yolo11_jax.data.coco_json import file_names_found_under

    path, folder, coco = _labelme()
    id_to_label, names = coco_categories(path)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    assert [c["id"] for c in cats] == list(range(21)) and id_to_label == {i: i for i in range(21)}
    assert names == [c["name"] for c in cats] and names[0] == "_background_"
    assert {"potted plant", "tv/monitor", "diningtable", "motorbike", "aeroplane", "sofa"} <= set(names)
    assert file_names_found_under(path, folder) and not file_names_found_under(path, folder / "JPEGImages")
    from yolo11_jax.data.build import guess_coco_image_dir
    assert guess_coco_image_dir(path) == folder.resolve()

    data = build_dataset(str(path), image_dir=str(folder), split="train", img_size=None)
    assert data.class_names == names and len(data.examples) == 3
    st = data.stats
    assert (st.images_seen, st.images_kept, st.boxes_seen, st.boxes_kept) == (3, 3, 12, 12)
    assert st.boxes_dropped_degenerate == st.boxes_dropped_outside == st.iscrowd_skipped == 0
    assert st.images_skipped_unreadable == st.images_skipped_empty == st.boxes_clipped == 0
    counts = class_box_counts(data.examples, len(names))
    assert {names[k]: int(c) for k, c in enumerate(counts) if c} == LABELME_BOXES and (counts == 0).sum() == 15
    # every box as the json gives it: label = category id, pixels back from the normalised boxes
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    by_image = {im["id"]: [a for a in coco["annotations"] if a["image_id"] == im["id"]] for im in coco["images"]}
    for rec, im in zip(data.examples.records, coco["images"]):
        w, h = sizes[im["file_name"]]
        cx, cy, bw, bh = np.asarray(rec.boxes_cxcywh, np.float64).T
        xywh = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], -1)
        np.testing.assert_allclose(xywh, [a["bbox"] for a in by_image[im["id"]]], atol=1e-3)  # px
        assert rec.labels.tolist() == [a["category_id"] for a in by_image[im["id"]]]


def _pycocotools_map_remapped_by_hand(tmp_path, coco, folder, weights, batch_size):
    """mAP@[.5:.95] and AP50 of the official yolo11n on the json remapped by hand to COCO ids,
    scored by pycocotools from files, the standard way. The detections are the model's, run as
    ``evaluate`` runs an Ultralytics .pt (``rect`` at its image size, conf 0.001; images decoded
    with OpenCV, in the json's order and batch size, so the same batches are compiled)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from yolo11_jax import inference
    from yolo11_jax.letterbox import decode_image_rgb

    loaded = inference.load_model(weights=weights)
    opts = inference.resolve_inference_options(loaded, {}, conf_threshold=0.001)
    detector = inference.Detector(loaded.model, conf_threshold=opts.conf_threshold, iou_threshold=opts.iou_threshold,
                                  max_det=opts.max_det, class_offset=opts.nms_class_offset, batch_size=batch_size)
    files = [str(folder / im["file_name"]) for im in coco["images"]]
    dets = inference.detect_rgb_images(detector, [decode_image_rgb(np.fromfile(f, np.uint8), f) for f in files], opts)
    results = [{"image_id": im["id"], "category_id": int(c) + 1, "score": float(sc),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
               for im, d in zip(coco["images"], dets)
               for (x0, y0, x1, y1), sc, c in zip(d["boxes_xyxy"], d["scores"], d["classes"])]
    gt = {"images": [{k: im[k] for k in ("id", "width", "height", "file_name")} for im in coco["images"]],
          "annotations": [{"id": a["id"] + 1, "image_id": a["image_id"], "bbox": a["bbox"],
                           "category_id": VOC_TO_COCO[a["category_id"]] + 1,
                           "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0}
                          for a in coco["annotations"]],
          "categories": [{"id": j + 1, "name": n} for j, n in enumerate(loaded.class_names)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(results))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dets.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.slow
def test_official_checkpoint_on_labelme_voc_classes(tmp_path, capsys):
    from yolo11_jax import evaluate

    path, folder, coco = _labelme()
    weights = real_file("yolo11n_official")
    base = ["--weights", str(weights), "--data", str(path), "--split", "train",
            "--batch-size", "4"]
    # sofa has a box and COCO has no 'sofa': stop, listing both sets (the empty classes are not blamed)
    assert evaluate.main(base) == 2
    err = capsys.readouterr().err
    assert "['sofa'] not found" in err and "'tv/monitor'" in err and "'couch'" in err
    assert "data classes with boxes (6): ['bottle', 'bus', 'car', 'chair', 'person', 'sofa']" in err

    out_json = tmp_path / "r.json"
    assert evaluate.main(base + ["--class-map", "sofa=couch", "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert ("6 data classes with boxes mapped as given (--class-map) onto the model's 80, only those scored: "
            "bottle->bottle (39), bus->bus (5), car->car (2), chair->chair (56), person->person (0), "
            "sofa->couch (57); 15 of the data's 21 classes have no box in this data and are left unscored: "
            "_background_, aeroplane, bicycle, bird, boat, cat, cow, diningtable, dog, horse, motorbike, "
            "potted plant, sheep, train, tv/monitor") in captured.err
    result = json.loads(out_json.read_text())
    assert [r["name"] for r in result["per_class"]] == ["bottle", "bus", "car", "chair", "person", "couch"]
    assert [r["num_gt"] for r in result["per_class"]] == [1, 2, 1, 1, 6, 1] and result["num_gt"] == 12
    assert result["classes_scored"] == [39, 5, 2, 56, 0, 57] and len(result["classes_unscored"]) == 15
    table = [ln.split()[0] for ln in captured.out.splitlines()[3:9]]
    assert table == ["bottle", "bus", "car", "chair", "person", "couch"]

    # The same detections scored by pycocotools on the json remapped by hand. Tolerance 1e-6: the
    # same pycocotools; only the ground truth's float rounding differs (evaluate reads it back
    # from normalised boxes: ~1e-5 px, which moves no IoU across a threshold here).
    ref_map, ref_ap50 = _pycocotools_map_remapped_by_hand(tmp_path, coco, folder, weights, batch_size=4)
    print(f"labelme VOC 2011, official yolo11n, sofa=couch: mAP@[.5:.95] {result['mAP']:.6f} "
          f"(pycocotools by hand {ref_map:.6f}, difference {abs(result['mAP'] - ref_map):.1e}), "
          f"AP50 {result['AP50']:.6f} ({ref_ap50:.6f})")
    assert 0 < ref_map < 1
    assert result["mAP"] == pytest.approx(ref_map, abs=1e-6) and result["AP50"] == pytest.approx(ref_ap50, abs=1e-6)


@pytest.mark.slow  # a training run
def test_labelme_voc_trains_without_dropping_a_box(tmp_path):
    from tests.helpers import XLA_CACHE_DIR
    from yolo11_jax.train import build_parser, config_from_args, finish, loop, setup

    path, folder, _ = _labelme()
    argv = ["--config", "smoke", "--data", str(path), "--val-split", "none",
            "--img-size", "320", "--batch-size", "3", "--steps", "2", "--log-every", "1", "--step-timing-steps", "0",
            "--checkpoint-every-epochs", "0", "--eval-every-epochs", "0", "--compile-cache-dir", XLA_CACHE_DIR,
            "--run-dir", str(tmp_path / "run")]
    cfg = config_from_args(build_parser("smoke").parse_args(argv))
    assert cfg.max_boxes == "auto" and cfg.val_split is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = setup(cfg, progress=False)
        t_start = time.perf_counter()
        loop(run, end_step=2, t_start=t_start)
        result = finish(run, end_step=2, t_start=t_start)
    assert run.cfg.num_classes == 21 and run.cfg.class_names[18] == "sofa"
    stats = run.train_data.stats
    assert (stats.images_kept, stats.boxes_seen, stats.boxes_kept) == (3, 12, 12)
    assert stats.samples_made == 6 and stats.boxes_truncated_max_boxes == stats.samples_truncated_max_boxes == 0
    assert stats.sample_boxes == 2 * 12 and stats.boxes_dropped_augmentation == 0  # two passes, every box
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_boxes"] == 8 and saved["resolved"]["max_boxes"]["boxes_over"] == 0  # 6 boxes at most -> 8
    assert all(np.isfinite(v) for row in result["history"] for k, v in row.items() if k.endswith("loss"))
    print(stats.summary())


@pytest.mark.slow  # two short fine-tunes of the official yolo11n
def test_keep_class_rows_measured_on_labelme_voc(tmp_path):
    """Fine-tuning the official COCO yolo11n onto labelme's 21 VOC classes (15 names shared with
    COCO) for a few steps, with and without ``--keep-class-rows``, scored on the same 3 photos
    (there is no held-out split: this measures what the kept rows save, not generalisation).
    Without the option the class branch is re-initialised (Ultralytics' behaviour) and scores
    ~0 after these steps; with it, the branch keeps the checkpoint's 80-wide hidden layers and
    the shared rows, and scores near the unchanged model's 0.634 (figures in docs/keep_class_rows.md)."""
    from tests.helpers import XLA_CACHE_DIR
    from yolo11_jax.train import build_parser, config_from_args, finish, loop, setup

    path, _, _ = _labelme()
    weights = real_file("yolo11n_official")
    steps, scores = 6, {}
    for keep in (True, False):
        argv = ["--recipe", "ultralytics", "--model", "yolo11n", "--init-weights", str(weights), "--data", str(path),
                "--val-data", str(path), "--img-size", "320", "--batch-size", "3", "--epochs", str(steps),
                "--log-every", "3", "--step-timing-steps", "0", "--checkpoint-every-epochs", "0",
                "--eval-every-epochs", str(steps), "--compile-cache-dir", XLA_CACHE_DIR,
                "--keep-class-rows" if keep else "--no-keep-class-rows", "--run-dir", str(tmp_path / f"run{keep}")]
        cfg = config_from_args(build_parser().parse_args(argv))
        run = setup(cfg, progress=False)
        t_start = time.perf_counter()
        loop(run, end_step=steps, t_start=t_start)
        result = finish(run, end_step=steps, t_start=t_start)
        assert run.train_data.stats.boxes_truncated_max_boxes == 0
        assert result["evals"] and result["evals"][-1]["step"] == steps, "evaluated at the end"
        scores[keep] = result["evals"][-1]["mAP"]
    print(f"labelme VOC 2011, official yolo11n fine-tuned {steps} steps: mAP@[.5:.95] {scores[True]:.4f} with "
          f"--keep-class-rows, {scores[False]:.4f} without")
    assert scores[True] > scores[False] + 0.3, scores
