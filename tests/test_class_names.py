"""Class names that must agree (yolo11_jax/class_names.py): matching, the COCO json reader's
categories, evaluation mapped by name (library and command), and keeping class rows when
fine-tuning."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from yolo11_jax import convert, evaluate
from yolo11_jax.class_names import (BY_NAME, BY_POSITION, EXPLICIT, IDENTICAL, ClassNameMismatch, class_box_counts,
                                    class_rows_state_dict, keep_class_rows, match_class_names, parse_class_map,
                                    remap_labels, remap_source)
from yolo11_jax.coco_eval import CocoEvaluator, select_classes
from yolo11_jax.data import build_dataset, coco_categories
from yolo11_jax.presets import build_model

MODEL_NAMES = ["person", "bicycle", "car", "dog", "traffic_light"]
# A subset of the model's names, in another order, with other ids: gaps, not starting at 0 or 1,
# a name with a space where the model writes an underscore.
CATEGORIES = [{"id": 12, "name": "car"}, {"id": 3, "name": "person"}, {"id": 7, "name": "traffic light"}]
BY_HAND = {3: 0, 7: 4, 12: 2}  # json category id -> model class, written out


def test_match_kinds():
    assert match_class_names(MODEL_NAMES, MODEL_NAMES).kind == IDENTICAL
    m = match_class_names(MODEL_NAMES, ["traffic-light", "Car"])
    assert (m.kind, m.data_to_model) == (BY_NAME, (4, 2))
    assert "mapped by name" in m.describe() and "Car->car (2)" in m.describe()
    with pytest.raises(ClassNameMismatch) as err:
        match_class_names(MODEL_NAMES, ["car", "zebra"])
    msg = str(err.value)
    assert "['zebra'] not found" in msg and str(MODEL_NAMES) in msg and "['car', 'zebra']" in msg
    assert "--class-map position" in msg
    pos = match_class_names(MODEL_NAMES, ["car", "zebra"], class_map="position")
    assert (pos.kind, pos.data_to_model) == (BY_POSITION, (0, 1))
    ex = match_class_names(MODEL_NAMES, ["car", "zebra"], class_map=parse_class_map("zebra=dog"))
    assert (ex.kind, ex.data_to_model) == (EXPLICIT, (2, 3))
    with pytest.raises(ClassNameMismatch, match="cannot be paired by position"):
        match_class_names(MODEL_NAMES[:1], ["car", "zebra"], class_map="position")
    with pytest.raises(ClassNameMismatch, match="twice"):
        match_class_names(MODEL_NAMES, ["car", "Car"])
    with pytest.raises(ValueError, match="expected 'position'"):
        parse_class_map("car")
    assert match_class_names(None, ["a", "b"]).data_to_model == (0, 1)


def test_classes_without_boxes_need_no_counterpart():
    """A data class with no box needs no model counterpart: unscored, and named with a count; a
    class with boxes that the model lacks still stops the match, listing both sets."""
    data = ["_background_", "car", "zebra", "person", "dog"]
    m = match_class_names(MODEL_NAMES, data, data_box_counts=[0, 3, 0, 2, 0])
    assert (m.kind, m.data_to_model, m.unscored) == (BY_NAME, (-1, 2, -1, 0, 3), (0, 2, 4))
    assert m.scored_classes == [2, 0] and not m.is_identity and m.unscored_names == ["_background_", "zebra", "dog"]
    line = m.describe()
    assert "2 data classes with boxes mapped by name onto the model's 5, only those scored: car->car (2), " \
           "person->person (0); 3 of the data's 5 classes have no box in this data and are left unscored: " \
           "_background_, zebra, dog" in line
    np.testing.assert_array_equal(remap_labels(np.array([1, 3, 3]), m), [2, 0, 0])
    with pytest.raises(ValueError, match=r"\['zebra'\], which were left unscored"):
        remap_labels(np.array([1, 2]), m)
    # zebra with boxes: the error lists both sets, and which data classes have boxes
    with pytest.raises(ClassNameMismatch) as err:
        match_class_names(MODEL_NAMES, data, data_box_counts=[0, 3, 1, 2, 0])
    msg = str(err.value)
    assert "['zebra'] not found" in msg and str(data) in msg and str(MODEL_NAMES) in msg
    assert "data classes with boxes (3): ['car', 'zebra', 'person']" in msg
    # no counts: every class counts as used (as before)
    with pytest.raises(ClassNameMismatch, match=r"\['_background_', 'zebra'\] not found"):
        match_class_names(MODEL_NAMES, data)
    with pytest.raises(ValueError, match="3 counts for 5 data classes"):
        match_class_names(MODEL_NAMES, data, data_box_counts=[1, 2, 3])


def test_classes_without_boxes_with_explicit_pairs():
    data = ["car", "zebra", "auto", "unicorn"]
    ex = match_class_names(MODEL_NAMES, data, class_map=parse_class_map("zebra=dog, auto=car"),
                           data_box_counts=[4, 2, 0, 0])
    # auto -> car as well, but auto has no box: unscored, so no clash with car
    assert (ex.kind, ex.data_to_model, ex.unscored, ex.scored_classes) == (EXPLICIT, (2, 3, 2, -1), (2, 3), [2, 3])
    assert "mapped as given (--class-map)" in ex.describe() and "left unscored: auto, unicorn" in ex.describe()
    # a pair given by hand must name a model class, boxes or not
    with pytest.raises(ClassNameMismatch, match=r"\['unicorn=horse'\] not found"):
        match_class_names(MODEL_NAMES, data, class_map=parse_class_map("unicorn=horse"), data_box_counts=[4, 0, 0, 0])
    with pytest.raises(ClassNameMismatch, match="two data classes map onto one model class"):
        match_class_names(MODEL_NAMES, data, class_map=parse_class_map("zebra=dog,auto=car"),
                          data_box_counts=[4, 2, 1, 0])
    # the same names in the same order, or paired by position: counts change nothing
    assert match_class_names(MODEL_NAMES, MODEL_NAMES, data_box_counts=[0, 0, 1, 0, 0]).unscored == ()
    assert match_class_names(MODEL_NAMES, data, class_map="position", data_box_counts=[4, 0, 0, 0]).unscored == ()


def _coco_folder(tmp_path, categories, n_images=4, size=64):
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images, anns = [], []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(img_dir / f"im{i}.png")
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": size, "height": size})
        for k in range(3):
            cat = categories[(i + k) % len(categories)]["id"]
            x, y = 4 + 18 * k, 6 + 10 * (i % 3)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": [x, y, 16, 20],
                         "iscrowd": 0, "area": 320})
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path, img_dir, anns


def test_coco_json_categories_as_given(tmp_path):
    path, img_dir, anns = _coco_folder(tmp_path, CATEGORIES)
    id_to_label, names = coco_categories(path)
    assert names == ["person", "traffic light", "car"] and id_to_label == {3: 0, 7: 1, 12: 2}
    data = build_dataset(str(path), image_dir=img_dir, split="val", img_size=None)
    assert data.class_names == names and data.stats.boxes_kept == len(anns)
    labels = np.concatenate([r.labels for r in data.examples.records])
    expected = [id_to_label[a["category_id"]] for a in anns]
    np.testing.assert_array_equal(labels, expected)


def _detections_from(gt_labels_model, gt_boxes, rng):
    """Detections in model class ids: each box jittered, plus a wrong-class duplicate."""
    boxes, scores, classes = [], [], []
    for (cx, cy, w, h), c in zip(gt_boxes, gt_labels_model):
        j = rng.normal(0, 0.01, 4)
        b = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * 64 + j * 64
        boxes += [b, b + 1.0]
        scores += [rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.5)]
        classes += [c, (c + 1) % len(MODEL_NAMES)]
    return np.array(boxes), np.array(scores), np.array(classes)


def test_evaluation_mapped_by_name_equals_remapping_by_hand(tmp_path):
    path, img_dir, anns = _coco_folder(tmp_path, CATEGORIES)
    data = build_dataset(str(path), image_dir=img_dir, split="val", img_size=None)
    match = match_class_names(MODEL_NAMES, data.class_names)
    assert match.kind == BY_NAME and match.data_to_model == (0, 4, 2)
    mapped = remap_source(data.examples, match)
    rng = np.random.default_rng(1)
    by_name, by_hand = CocoEvaluator(5, MODEL_NAMES), CocoEvaluator(5, MODEL_NAMES)
    anns_by_image = {}
    for a in anns:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    for k, rec in enumerate(mapped.records):
        gt = rec.boxes_cxcywh
        det_b, det_s, det_c = _detections_from(rec.labels, gt, rng)
        args = (det_b[None], det_s[None], det_c[None], np.ones((1, len(det_s)), bool), 64)
        by_name.add_batch(gt[None], rec.labels[None], np.ones((1, len(gt)), bool), *args)
        hand_labels = np.array([BY_HAND[a["category_id"]] for a in anns_by_image[100 + k]])
        by_hand.add_batch(gt[None], hand_labels[None], np.ones((1, len(gt)), bool), *args)
    r_name = select_classes(by_name.compute(), match.scored_classes)
    r_hand = by_hand.compute()
    assert 0 < r_name["mAP"] < 1 and r_name["mAP"] == r_hand["mAP"] and r_name["AP50"] == r_hand["AP50"]
    assert [r["name"] for r in r_name["per_class"]] == ["person", "traffic_light", "car"]
    assert r_name["num_gt"] == len(anns) and r_name["num_det"] < r_hand["num_det"]  # only the mapped classes
    with pytest.raises(ValueError, match="have ground truth but are not among"):
        select_classes(r_hand, [0])


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    model = build_model("tiny", num_classes=5, rngs=nnx.Rngs(0))
    convert.save_safetensors(model, str(path), metadata={"model": "tiny", "num_classes": "5",
                                                         "class_names": json.dumps(MODEL_NAMES)})
    return path


def test_evaluate_command_maps_by_name(tmp_path, tiny_weights, capsys):
    path, img_dir, anns = _coco_folder(tmp_path, CATEGORIES, n_images=2)
    base = ["--weights", str(tiny_weights), "--img-size", "64", "--image-dir", str(img_dir), "--batch-size", "2"]
    assert evaluate.main(base + ["--data", str(path), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr()
    assert "3 data classes mapped by name onto the model's 5" in out.err
    table_names = [ln.split()[0] for ln in out.out.splitlines()[3:] if ln.strip() and not ln.startswith("mAP")]
    assert table_names == ["person", "traffic_light", "car"]
    # The same data written with the model's own ids, by hand: the same mAP.
    by_hand = json.loads(path.read_text())
    by_hand["categories"] = [{"id": j, "name": n} for j, n in enumerate(MODEL_NAMES)]
    for a in by_hand["annotations"]:
        a["category_id"] = BY_HAND[a["category_id"]]
    hand_path = tmp_path / "hand.json"
    hand_path.write_text(json.dumps(by_hand))
    assert evaluate.main(base + ["--data", str(hand_path), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["mAP"] == b["mAP"] and a["AP50"] == b["AP50"]


def test_box_counts_per_class(tmp_path):
    path, img_dir, anns = _coco_folder(tmp_path, CATEGORIES + [{"id": 30, "name": "zebra"}])
    data = build_dataset(str(path), image_dir=img_dir, split="val", img_size=None)
    counts = class_box_counts(data.examples, len(data.class_names))
    want = [sum(a["category_id"] == cid for a in anns) for cid in (3, 7, 12, 30)]
    assert counts.tolist() == want and sum(want) == len(anns)
    assert class_box_counts(list(data.examples), 4).tolist() == want
    assert class_box_counts(iter(data.examples), 4) is None  # a stream: not counted up front
    with pytest.raises(ValueError, match="outside 0..2"):
        class_box_counts(data.examples, 3)


def test_evaluate_command_leaves_classes_without_boxes_unscored(tmp_path, tiny_weights, capsys):
    """Categories that no box uses (one the model lacks, one it has) need no counterpart: the same
    mAP as the json remapped by hand, the table lists the classes with boxes, the log and the
    json name the others."""
    categories = [{"id": 0, "name": "_background_"}, {"id": 5, "name": "dog"}] + CATEGORIES
    path, img_dir, anns = _coco_folder(tmp_path, categories, n_images=4)
    coco = json.loads(path.read_text())  # no box of _background_ (id 0) or dog (id 5)
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] not in (0, 5)]
    path.write_text(json.dumps(coco))
    base = ["--weights", str(tiny_weights), "--img-size", "64", "--image-dir", str(img_dir), "--batch-size", "2"]
    assert evaluate.main(base + ["--data", str(path), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr()
    assert "3 data classes with boxes mapped by name" in out.err
    assert "2 of the data's 5 classes have no box in this data and are left unscored: _background_, dog" in out.err
    table_names = [ln.split()[0] for ln in out.out.splitlines()[3:] if ln.strip() and not ln.startswith("mAP")]
    assert table_names == ["person", "traffic_light", "car"]
    by_hand = dict(coco, categories=[{"id": j, "name": n} for j, n in enumerate(MODEL_NAMES)])
    by_hand["annotations"] = [dict(a, category_id=BY_HAND[a["category_id"]]) for a in coco["annotations"]]
    (tmp_path / "hand.json").write_text(json.dumps(by_hand))
    assert evaluate.main(base + ["--data", str(tmp_path / "hand.json"), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["mAP"] == b["mAP"] and a["AP50"] == b["AP50"] and a["num_gt"] == b["num_gt"] == len(coco["annotations"])
    assert a["classes_unscored"] == ["_background_", "dog"] and a["classes_scored"] == [0, 4, 2]


def test_evaluate_command_names_not_the_models(tmp_path, tiny_weights, capsys):
    path, img_dir, _ = _coco_folder(tmp_path, [{"id": 1, "name": "zebra"}, {"id": 2, "name": "car"}], n_images=2)
    base = ["--weights", str(tiny_weights), "--img-size", "64", "--image-dir", str(img_dir), "--data", str(path)]
    assert evaluate.main(base) == 2
    err = capsys.readouterr().err
    assert "['zebra'] not found" in err and "['zebra', 'car']" in err and str(MODEL_NAMES) in err
    assert evaluate.main(base + ["--class-map", "position"]) == 0
    assert "paired by position" in capsys.readouterr().err


def test_class_rows_kept_for_shared_names():
    rng = np.random.default_rng(0)
    ckpt = {"h.0.weight": rng.normal(size=(4, 8, 1, 1)), "h.0.bias": rng.normal(size=4),
            "h.1.weight": rng.normal(size=(4, 6, 1, 1)), "h.1.bias": rng.normal(size=4)}
    target = {"h.0.weight": np.zeros((3, 8, 1, 1)), "h.0.bias": np.zeros(3),
              "h.1.weight": np.zeros((3, 5, 1, 1)), "h.1.bias": np.zeros(3)}
    out, written, skipped = class_rows_state_dict(target, ckpt, ["h.0.", "h.1."], [(0, 2), (2, 1)])
    assert written == ["h.0."] and "takes 6 inputs in the checkpoint, 5 here" in skipped[0]
    np.testing.assert_array_equal(out["h.0.weight"][0], ckpt["h.0.weight"][2])
    np.testing.assert_array_equal(out["h.0.weight"][2], ckpt["h.0.weight"][1])
    assert not out["h.0.weight"][1].any() and out["h.0.bias"].tolist() == [ckpt["h.0.bias"][2], 0, ckpt["h.0.bias"][1]]


@pytest.mark.parametrize("preset", ["tiny", "yolo11n"])
def test_keep_class_rows_on_a_model(preset):
    old = build_model(preset, num_classes=5, rngs=nnx.Rngs(1))
    sd = convert.to_state_dict(old)
    new = build_model(preset, num_classes=3, rngs=nnx.Rngs(2))
    report = convert.load_pretrained(new, sd)
    assert report.reinitialized
    kept = keep_class_rows(new, sd, MODEL_NAMES, ["dog", "zebra", "person"])
    assert kept.pairs == ((0, 3), (2, 0)) and "2 shared classes (dog, person)" in kept.summary(["dog", "zebra", "person"])
    after = convert.to_state_dict(new)
    for p in new.class_output_prefixes():
        if p in kept.layers:
            np.testing.assert_array_equal(after[p + "weight"][0], sd[p + "weight"][3])
            np.testing.assert_array_equal(after[p + "bias"][2], sd[p + "bias"][0])
    # yolo11n's class branch is max(64, min(nc, 100)) wide: 64 at 3 and at 5 classes, so its rows are kept
    assert len(kept.layers) == len(new.class_output_prefixes()) and not kept.skipped


def test_keep_class_rows_when_the_branch_width_changes():
    """yolo11n's class branch is max(64, min(classes, 100)) wide: 80 at COCO's 80 classes, 64 at 3,
    so its class layers take other inputs and no row can be kept (the summary says why)."""
    old = build_model("yolo11n", num_classes=80, rngs=nnx.Rngs(1))
    sd = convert.to_state_dict(old)
    new = build_model("yolo11n", num_classes=3, rngs=nnx.Rngs(2))
    convert.load_pretrained(new, sd)
    before = convert.to_state_dict(new)
    coco_like = [f"c{i}" for i in range(78)] + ["car", "person"]
    kept = keep_class_rows(new, sd, coco_like, ["person", "zebra", "car"])
    assert kept.pairs == ((0, 79), (2, 78)) and kept.layers == () and len(kept.skipped) == 3
    assert "no class layer could keep them" in kept.summary(["person", "zebra", "car"])
    after = convert.to_state_dict(new)
    assert all(np.array_equal(after[k], before[k]) for k in before)
