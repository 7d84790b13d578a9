"""Real labelled data, pinned in tests/real_files.py (DATASETS): DeepForest 2.1.0's two aerial
photos (400 x 400 px) with their hand-drawn boxes, 61 trees in OSBS_029 and 37 dead or alive
trees in SOAP_061. Written here as the YOLO folder a user would make of them (the CSV's pixel
boxes -> normalised ``cls cx cy w h``, ``classes.txt``), then:

* the default padding (from the data) drops no box, with and without mosaic, where the old
  default of 8 dropped 82 of 98;
* the official yolo11n (real_files CHECKPOINTS) meets class names that are not COCO's: evaluate
  stops with both sets listed; ``--class-map`` pairs them by hand and scores only those classes.
"""

import csv
import shutil
import sys
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
