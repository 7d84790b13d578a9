"""Tests of yolo11_jax.data: synthetic dataset, readers, cleaning and the batch loader."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets

from yolo11_jax import data as D
from yolo11_jax.data.pipeline import MakeSample
from yolo11_jax.data import (
    SHAPES_CLASS_NAMES,
    DataStats,
    TrainPipeline,
    add_counts,
    eval_batches,
    warn_max_boxes,
    Example,
    build_dataset,
    coco_json_examples,
    hf_examples,
    load_examples,
    make_shapes_dataset,
    resolve_spec,
    yolo_txt_examples,
)

S = 64  # shapes image side used in most tests (small = fast)


# ----------------------------------------------------------------------------- helpers


def stack_examples(examples, *, img_size, max_boxes, letterbox=False):
    """One batch of the given examples, in order, without augmentation (the pipeline's sample
    maker, as ``eval_batches`` uses it)."""
    make = MakeSample(examples, img_size=img_size, max_boxes=max_boxes, letterbox=letterbox)
    samples = [make((0, i)) for i in range(len(examples))]
    return {k: np.stack([smp[k] for smp in samples]) for k in samples[0]}


def _png(arr_or_img) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _solid(w: int, h: int, colour=(10, 200, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


HF_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "objects": {
            "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            "category": datasets.List(datasets.Value("int64")),
        },
    }
)


def _hf_dataset(rows) -> datasets.Dataset:
    """rows: list of (image: PIL image or raw bytes, bboxes, categories)."""
    images, objects = [], []
    for img, bboxes, cats in rows:
        images.append({"bytes": img if isinstance(img, bytes) else _png(img), "path": None})
        objects.append({"bbox": [list(map(float, b)) for b in bboxes], "category": list(cats)})
    return datasets.Dataset.from_dict({"image": images, "objects": objects}, features=HF_FEATURES)


def _expected_from_coco(bbox_xywh, w, h):
    x, y, bw, bh = bbox_xywh
    return [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]


def _ex(img: np.ndarray, boxes, labels, sid="ex") -> Example:
    return Example(
        image=img,
        boxes_cxcywh=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32),
        source_id=sid,
    )


@pytest.fixture(scope="module")
def shapes_train() -> datasets.Dataset:
    return make_shapes_dataset("train", num_images=40, img_size=S, seed=0)


# ----------------------------------------------------------------------------- shapes dataset


def test_shapes_deterministic(shapes_train):
    again = make_shapes_dataset("train", num_images=40, img_size=S, seed=0)
    raw_a = shapes_train.cast_column("image", datasets.Image(decode=False))
    raw_b = again.cast_column("image", datasets.Image(decode=False))
    assert [r["image"]["bytes"] for r in raw_a] == [r["image"]["bytes"] for r in raw_b]
    assert shapes_train["objects"] == again["objects"]
    other_seed = make_shapes_dataset("train", num_images=40, img_size=S, seed=1)
    assert shapes_train["objects"] != other_seed["objects"]


def test_shapes_boxes_without_pixels_equal_a_full_render():
    """The index of the shapes data takes its boxes from ``render_shapes_image(pixels=False)``,
    which skips the drawing and must make every random draw that drawing makes."""
    from yolo11_jax.data import render_shapes_image

    classes_seen = set()
    for size in (64, 128, 640):
        for i in range(150 if size < 640 else 20):
            full = render_shapes_image(np.random.default_rng([3, size, i]), size)
            boxes_only = render_shapes_image(np.random.default_rng([3, size, i]), size, pixels=False)
            assert boxes_only[0] is None and full[0].size == (size, size)
            assert boxes_only[1:] == full[1:], (size, i)
            classes_seen.update(full[2])
    assert classes_seen == set(range(len(SHAPES_CLASS_NAMES)))   # every drawing path was compared


def test_shapes_box_index_is_kept_and_read_back_exactly(tmp_path, monkeypatch):
    """``shapes_boxes`` writes the boxes of a split once and reads them back: the same values as
    computing them, no render on the second call, a damaged file computed again and replaced."""
    from yolo11_jax.data import shapes as SH

    computed = SH.shapes_boxes("train", 30, S, 7, cache_dir=None)
    assert computed == [SH.render_shapes_image(np.random.default_rng([7, SH._split_hash("train"), i]), S)[1:]
                        for i in range(30)]
    assert SH.shapes_boxes("train", 30, S, 7, cache_dir=str(tmp_path)) == computed   # written
    files = list(tmp_path.glob("train-7-64px-30-*.json"))
    assert len(files) == 1

    def no_render(self, **kwargs):
        raise AssertionError("rendered although the index is kept")
    with monkeypatch.context() as m:
        m.setattr(SH.ShapesImage, "render", no_render)
        assert SH.shapes_boxes("train", 30, S, 7, cache_dir=str(tmp_path)) == computed   # read back
    files[0].write_text("[[1, 2")   # damaged
    assert SH.shapes_boxes("train", 30, S, 7, cache_dir=str(tmp_path)) == computed
    assert json.loads(files[0].read_text()) == [list(map(list, b)) for b in computed]   # replaced
    # Another count, seed or size is another file; the records of the source are the same either way.
    SH.shapes_boxes("train", 31, S, 7, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 2
    def cleaner():
        return D.ExampleCleaner(bbox_format="xywh", num_classes=len(SHAPES_CLASS_NAMES))
    kept = SH.shapes_source("train", 30, S, 7, cleaner=cleaner(), cache_dir=str(tmp_path))
    fresh = SH.shapes_source("train", 30, S, 7, cleaner=cleaner(), cache_dir=None)
    assert [(r.boxes_cxcywh.tolist(), r.labels.tolist()) for r in kept.records] == \
        [(r.boxes_cxcywh.tolist(), r.labels.tolist()) for r in fresh.records]


def test_shapes_schema_and_boxes(shapes_train):
    assert len(SHAPES_CLASS_NAMES) >= 3
    feats = shapes_train.features
    assert isinstance(feats["image"], datasets.Image)
    assert set(feats["objects"]) >= {"bbox", "category"}
    assert D.hf_class_names(shapes_train) == SHAPES_CLASS_NAMES
    assert len(shapes_train) == 40
    n_objects = []
    for row in shapes_train:
        img = row["image"]
        assert isinstance(img, Image.Image) and img.size == (S, S) and img.convert("RGB").mode == "RGB"
        bboxes = np.asarray(row["objects"]["bbox"], np.float64)
        cats = row["objects"]["category"]
        assert bboxes.shape == (len(cats), 4)
        n_objects.append(len(cats))
        assert all(0 <= c < len(SHAPES_CLASS_NAMES) for c in cats)
        x, y, w, h = bboxes.T
        assert np.all(x >= 0) and np.all(y >= 0)
        assert np.all(x + w <= S + 1e-6) and np.all(y + h <= S + 1e-6)
        longer = np.maximum(w, h)
        assert np.all(longer >= 0.15 * S - 1) and np.all(longer <= 0.5 * S + 1)
    assert min(n_objects) >= 1 and max(n_objects) <= 4
    assert len(set(n_objects)) >= 3  # varied object counts
    all_cats = {c for row in shapes_train for c in row["objects"]["category"]}
    assert all_cats == set(range(len(SHAPES_CLASS_NAMES)))


def test_shapes_geometry_distinguishes_classes():
    """Squares fill their box corners, circles and crosses leave them background."""
    ds = make_shapes_dataset("train", num_images=80, img_size=96, seed=3)
    corner_filled = {"square": [], "circle": [], "cross": []}

    def overlaps(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    for row in ds:
        img = np.asarray(row["image"], np.float64)
        bboxes, cats = row["objects"]["bbox"], row["objects"]["category"]
        for k, (box, cat) in enumerate(zip(bboxes, cats)):
            name = SHAPES_CLASS_NAMES[cat]
            if name not in corner_filled or any(overlaps(box, o) for j, o in enumerate(bboxes) if j != k):
                continue  # only unoccluded objects
            x, y, w, h = box
            cx, cy = int(x + w / 2), int(y + h / 2)
            fill = img[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
            px, py = int(x + 0.08 * w), int(y + 0.08 * h)
            corner = img[py : py + 2, px : px + 2]
            dist = np.linalg.norm(corner.reshape(-1, 3).mean(0) - fill)
            corner_filled[name].append(dist < 40)
    for name, vals in corner_filled.items():
        assert len(vals) >= 5, name
    assert np.mean(corner_filled["square"]) > 0.9
    assert np.mean(corner_filled["circle"]) < 0.1
    assert np.mean(corner_filled["cross"]) < 0.1


def test_shapes_train_and_val_differ(shapes_train):
    val = make_shapes_dataset("validation", num_images=40, img_size=S, seed=0)
    a = np.stack([np.asarray(r["image"]) for r in shapes_train])
    b = np.stack([np.asarray(r["image"]) for r in val])
    # no validation image equals any training image
    assert not any(np.array_equal(a[i], b[j]) for i in range(len(a)) for j in range(len(b)))
    assert val["objects"] != shapes_train["objects"]


def test_shapes_cache_dir(tmp_path):
    ds = make_shapes_dataset("train", num_images=5, img_size=S, cache_dir=str(tmp_path))
    assert any(tmp_path.iterdir())
    again = make_shapes_dataset("train", num_images=5, img_size=S, cache_dir=str(tmp_path))
    assert again.cache_files  # loaded from disk, not regenerated in memory
    assert again["objects"] == ds["objects"]


# ----------------------------------------------------------------------------- HF reader


def _check_matches_source(examples, ds):
    """Examples equal the decoded source rows with notebook-converted boxes."""
    assert len(examples) == len(ds)
    for ex, row in zip(examples, ds):
        img = row["image"].convert("RGB")
        np.testing.assert_array_equal(ex.image, np.asarray(img))
        w, h = img.size
        expected = [_expected_from_coco(b, w, h) for b in row["objects"]["bbox"]]
        np.testing.assert_allclose(ex.boxes_cxcywh, np.asarray(expected, np.float32).reshape(-1, 4), atol=1e-6)
        np.testing.assert_array_equal(ex.labels, row["objects"]["category"])
        assert ex.image.dtype == np.uint8 and ex.boxes_cxcywh.dtype == np.float32 and ex.labels.dtype == np.int32


def test_hf_dataset_object(shapes_train):
    stats = DataStats()
    exs = list(hf_examples(shapes_train, num_classes=4, stats=stats))
    _check_matches_source(exs, shapes_train)
    assert exs[3].source_id == "dataset[3]"
    assert stats.images_seen == stats.images_kept == 40
    assert stats.boxes_kept == sum(len(r["objects"]["category"]) for r in shapes_train)
    # IterableDataset path gives the same examples
    it_exs = list(hf_examples(shapes_train.to_iterable_dataset(), num_classes=4))
    assert len(it_exs) == 40
    np.testing.assert_array_equal(it_exs[7].image, exs[7].image)
    np.testing.assert_array_equal(it_exs[7].boxes_cxcywh, exs[7].boxes_cxcywh)
    # max_samples
    assert len(list(hf_examples(shapes_train, max_samples=5))) == 5


def test_hf_save_to_disk_dir_and_dict(tmp_path, shapes_train):
    path = tmp_path / "single"
    shapes_train.save_to_disk(str(path))
    assert resolve_spec(str(path)) == "hf_disk"
    data = build_dataset(str(path), img_size=None)
    _check_matches_source(data.examples, shapes_train)
    assert data.class_names == SHAPES_CLASS_NAMES and data.num_classes == 4

    val = make_shapes_dataset("validation", num_images=6, img_size=S)
    dd_path = tmp_path / "dict"
    datasets.DatasetDict({"train": shapes_train, "validation": val}).save_to_disk(str(dd_path))
    assert resolve_spec(str(dd_path)) == "hf_disk"
    exs, _ = load_examples(str(dd_path), split="validation")
    _check_matches_source(exs, val)
    with pytest.raises(ValueError, match=r"no split 'test'.*train.*validation"):
        load_examples(str(dd_path), split="test")


def test_hf_parquet(tmp_path, shapes_train):
    shapes_train.select(range(20)).to_parquet(str(tmp_path / "part-0.parquet"))
    shapes_train.select(range(20, 40)).to_parquet(str(tmp_path / "part-1.parquet"))
    single = build_dataset(str(tmp_path / "part-0.parquet"), img_size=None)
    _check_matches_source(single.examples, shapes_train.select(range(20)))
    assert single.class_names == SHAPES_CLASS_NAMES
    both, _ = load_examples(str(tmp_path / "part-*.parquet"))
    _check_matches_source(both, shapes_train)
    folder, _ = load_examples(str(tmp_path))  # directory of parquet files
    assert len(folder) == 40


def test_hub_name_streams_like_the_notebook(monkeypatch, shapes_train):
    """A Hub name goes to load_dataset(name, split=..., streaming=True) (no network in tests)."""
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return shapes_train.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert resolve_spec("detection-datasets/coco") == "hub"
    data = build_dataset("detection-datasets/coco", split="train", num_classes=80, max_samples=3, img_size=32)
    assert calls == [("detection-datasets/coco", (), {"split": "train", "streaming": True})]
    assert len(data.examples) == 3
    assert data.examples[0].image.shape == (32, 32, 3)
    assert data.examples[0].source_id == "detection-datasets/coco/train[0]"


# ----------------------------------------------------------------------------- COCO json reader


def _write_coco(root: Path, with_bad_category=False) -> Path:
    (root / "annotations").mkdir(parents=True)
    img_dir = root / "val2017"
    img_dir.mkdir()
    _solid(60, 40).save(img_dir / "a.png")
    _solid(50, 50, (200, 0, 0)).save(img_dir / "b.jpg")
    _solid(30, 20).save(img_dir / "empty.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
            {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50},
            {"id": 3, "file_name": "empty.png", "width": 30, "height": 20},
        ],
        "categories": [{"id": 11, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "fish"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 11, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [25, 20, 10, 30], "iscrowd": 0},
        ],
    }
    if with_bad_category:
        coco["annotations"].append({"id": 5, "image_id": 3, "category_id": 99, "bbox": [1, 1, 2, 2]})
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_json_reader(tmp_path):
    path = _write_coco(tmp_path)
    stats = DataStats()
    exs = list(coco_json_examples(path, tmp_path / "val2017", stats=stats))
    assert [Path(e.source_id).name for e in exs] == ["a.png", "b.jpg", "empty.png"]
    # sorted ids 3, 7, 11 -> labels 0, 1, 2
    np.testing.assert_array_equal(exs[0].labels, [2, 0])
    np.testing.assert_allclose(exs[0].boxes_cxcywh[0], _expected_from_coco([10, 5, 20, 10], 60, 40), atol=1e-6)
    np.testing.assert_allclose(exs[0].boxes_cxcywh[1], [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(exs[1].labels, [1])  # the iscrowd box is skipped
    np.testing.assert_allclose(exs[1].boxes_cxcywh[0], _expected_from_coco([25, 20, 10, 30], 50, 50), atol=1e-6)
    assert exs[2].num_boxes == 0  # kept: trains as background by default
    assert exs[1].image.shape == (50, 50, 3) and exs[1].image[0, 0, 0] > 150  # red, read with PIL
    assert stats.iscrowd_skipped == 1 and stats.images_empty_kept == 1 and stats.boxes_kept == 3

    raw = list(coco_json_examples(path, tmp_path / "val2017", keep_raw_category_ids=True))
    np.testing.assert_array_equal(raw[0].labels, [11, 3])

    # build_dataset guesses <root>/val2017 from annotations/instances_val2017.json
    data = build_dataset(str(path), img_size=32)
    assert data.class_names == ["dog", "fish", "cat"] and data.num_classes == 3
    assert len(data.examples) == 3 and data.examples[0].image.shape == (32, 32, 3)
    assert len(build_dataset(str(path), img_size=None, skip_empty=True).examples) == 2


def test_coco_unknown_category_raises(tmp_path):
    path = _write_coco(tmp_path, with_bad_category=True)
    with pytest.raises(ValueError, match=r"empty\.png.*category_id 99"):
        load_examples(str(path))


# ----------------------------------------------------------------------------- YOLO reader


def _write_yolo(root: Path, split: str | None = "train") -> tuple[Path, Path]:
    img_dir = root / "images" / split if split else root / "images"
    lab_dir = root / "labels" / split if split else root / "labels"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    _solid(80, 40).save(img_dir / "a.png")
    _solid(40, 40).save(img_dir / "b.jpg")
    _solid(20, 30).save(img_dir / "c.png")  # no label file
    (lab_dir / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.1 0.2 0.1 0.2\n")
    (lab_dir / "b.txt").write_text("\n2 0.5 0.5 1.0 1.0\n")
    return img_dir, lab_dir


@pytest.mark.parametrize("split_folder", [True, False])
def test_yolo_reader(tmp_path, split_folder):
    img_dir, _ = _write_yolo(tmp_path, "train" if split_folder else None)
    assert resolve_spec(str(tmp_path)) == "yolo"
    stats = DataStats()
    exs = list(yolo_txt_examples(tmp_path, "train", num_classes=3, stats=stats))
    assert [Path(e.source_id).name for e in exs] == ["a.png", "b.jpg", "c.png"]
    assert exs[0].image.shape == (40, 80, 3)
    np.testing.assert_allclose(exs[0].boxes_cxcywh, [[0.5, 0.5, 0.25, 0.5], [0.1, 0.2, 0.1, 0.2]], atol=1e-6)
    np.testing.assert_array_equal(exs[0].labels, [1, 0])
    np.testing.assert_array_equal(exs[1].labels, [2])
    assert exs[2].num_boxes == 0 and exs[2].boxes_cxcywh.shape == (0, 4)
    assert stats.images_kept == 3 and stats.boxes_kept == 3 and stats.images_empty_kept == 1
    data = build_dataset(str(tmp_path), split="train", num_classes=3, img_size=16)
    assert len(data.examples) == 3 and data.examples[0].image.shape == (16, 16, 3)


def test_yolo_malformed_line_raises(tmp_path):
    _, lab_dir = _write_yolo(tmp_path)
    (lab_dir / "a.txt").write_text("1 0.5 0.5 0.25\n")
    with pytest.raises(ValueError, match=r"a\.txt:1"):
        load_examples(str(tmp_path))


# ----------------------------------------------------------------------------- bad inputs


def test_corrupt_image_skipped_and_named(tmp_path):
    _write_yolo(tmp_path)
    bad = tmp_path / "images" / "train" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    stats = DataStats()
    with pytest.warns(UserWarning, match=r"unreadable image .*broken\.jpg"):
        exs = list(yolo_txt_examples(tmp_path, "train", stats=stats))
    assert "broken.jpg" not in [Path(e.source_id).name for e in exs]
    assert len(exs) == 3
    assert stats.images_skipped_unreadable == 1 and stats.images_seen == 4

    # same for a Hugging Face dataset: the corrupt row is skipped, iteration continues
    ds = _hf_dataset([(_solid(20, 20), [[1, 1, 5, 5]], [0]), (b"garbage", [[1, 1, 5, 5]], [0]), (_solid(20, 20), [[2, 2, 5, 5]], [0])])
    stats = DataStats()
    with pytest.warns(UserWarning, match=r"unreadable image dataset\[1\]"):
        exs = list(hf_examples(ds, stats=stats))
    assert [e.source_id for e in exs] == ["dataset[0]", "dataset[2]"]
    assert stats.images_skipped_unreadable == 1


def test_degenerate_boxes_dropped():
    ds = _hf_dataset([(_solid(64, 64), [[10, 10, 0, 5], [10, 10, 5, -1], [1, 2, 5, 6], [float("nan"), 1, 2, 2]], [0, 1, 2, 3])])
    stats = DataStats()
    (ex,) = list(hf_examples(ds, stats=stats))
    np.testing.assert_array_equal(ex.labels, [2])
    np.testing.assert_allclose(ex.boxes_cxcywh[0], _expected_from_coco([1, 2, 5, 6], 64, 64), atol=1e-6)
    assert stats.boxes_dropped_degenerate == 3 and stats.boxes_kept == 1


def test_partly_outside_box_clipped():
    ds = _hf_dataset([(_solid(64, 32), [[-10, 20, 30, 20], [5, 5, 10, 10], [100, 100, 10, 10]], [0, 1, 2])])
    stats = DataStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the convention check may comment on the outside box
        (ex,) = list(hf_examples(ds, stats=stats))
    # [-10, 20, 30, 20] xywh -> xyxy [-10, 20, 20, 40] -> clipped [0, 20, 20, 32]
    np.testing.assert_allclose(ex.boxes_cxcywh[0], [10 / 64, 26 / 32, 20 / 64, 12 / 32], atol=1e-6)
    np.testing.assert_allclose(ex.boxes_cxcywh[1], _expected_from_coco([5, 5, 10, 10], 64, 32), atol=1e-6)
    np.testing.assert_array_equal(ex.labels, [0, 1])  # the fully outside box is dropped
    assert stats.boxes_clipped == 1 and stats.boxes_dropped_outside == 1 and stats.boxes_kept == 2
    assert np.all(ex.boxes_cxcywh[:, :2] - ex.boxes_cxcywh[:, 2:] / 2 >= 0)
    assert np.all(ex.boxes_cxcywh[:, :2] + ex.boxes_cxcywh[:, 2:] / 2 <= 1 + 1e-6)


def test_class_id_out_of_range_raises_naming_example(tmp_path, shapes_train):
    # shapes has ids 0..3; declaring 2 classes must fail at load time, naming the example
    with pytest.raises(ValueError, match=r"dataset\[\d+\]: class id [23] .*num_classes=2"):
        load_examples(shapes_train, num_classes=2)
    ds = _hf_dataset([(_solid(10, 10), [[1, 1, 2, 2]], [0]), (_solid(10, 10), [[1, 1, 2, 2]], [-1])])
    with pytest.raises(ValueError, match=r"dataset\[1\]: class id -1"):
        load_examples(ds, num_classes=5)
    _, lab_dir = _write_yolo(tmp_path)
    (lab_dir / "b.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"b\.jpg: class id 7"):
        load_examples(str(tmp_path), num_classes=3)


def test_image_without_boxes_kept_or_skipped():
    ds = _hf_dataset([(_solid(32, 32), [[1, 1, 8, 8]], [1]), (_solid(32, 32), [], []), (_solid(32, 32), [[1, 1, 0, 8]], [0])])
    stats = DataStats()
    kept = list(hf_examples(ds, skip_empty=False, stats=stats))
    assert len(kept) == 3 and [e.num_boxes for e in kept] == [1, 0, 0]
    assert stats.images_empty_kept == 2 and stats.images_skipped_empty == 0
    stats = DataStats()
    skipped = list(hf_examples(ds, stats=stats))  # notebook default: skip
    assert [e.source_id for e in skipped] == ["dataset[0]"]
    assert stats.images_skipped_empty == 2

    batch = stack_examples(kept, img_size=32, max_boxes=4)
    assert batch["mask"][0].tolist() == [True, False, False, False]
    assert not batch["mask"][1].any() and not batch["mask"][2].any()
    assert np.all(batch["boxes_cxcywh"][1] == 0) and np.all(batch["labels"][1] == 0)


def test_more_boxes_than_max_boxes_one_summary_warning():
    img = np.zeros((16, 16, 3), np.uint8)
    boxes = [[0.1 * (i + 1), 0.5, 0.05, 0.05] for i in range(5)]
    exs = [_ex(img, boxes, [0, 1, 2, 3, 4], sid="crowded.png"), _ex(img, boxes[:2], [0, 1])]
    many = exs + [_ex(img, boxes, [0, 1, 2, 3, 4], sid=f"c{i}.png") for i in range(24)]
    with pytest.warns(UserWarning) as rec:
        assert warn_max_boxes(many, 3) == (25, 50)
    assert len(rec) == 1  # one summary, not one per image
    msg = str(rec[0].message)
    assert "25 of 26 images have more than max_boxes=3 boxes: 50 of their boxes" in msg
    assert "of 127)" in msg and "--max-boxes 8 keeps every box" in msg and "crowded.png (5)" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_max_boxes(many, 5) == (0, 0)  # enough: no warning
        stats = DataStats()  # making batches does not warn again; it counts per sample
        for batch in TrainPipeline(exs, batch_size=2, img_size=16, max_boxes=3, seed=0).dataset(3):
            add_counts(stats, batch)
    # Per sample, over 3 passes of the 2 images: the units agree.
    assert stats.samples_made == 6 and stats.sample_boxes == 3 * 7
    assert stats.boxes_truncated_max_boxes == 3 * 2 and stats.samples_truncated_max_boxes == 3
    assert "boxes_truncated_max_boxes=6 (28.6%)" in stats.summary()
    batch = stack_examples(exs, img_size=16, max_boxes=3)
    np.testing.assert_array_equal(batch["labels"][0], [0, 1, 2])
    np.testing.assert_allclose(batch["boxes_cxcywh"][0], np.asarray(boxes[:3], np.float32))
    assert batch["mask"][0].all() and batch["mask"][1].tolist() == [True, True, False]


def test_bbox_convention_warning():
    # boxes written as xyxy pixels but read as COCO xywh run past the 100x100 image
    rows = [(_solid(100, 100), [[50, 50, 90, 95]], [0]), (_solid(100, 100), [[60, 10, 95, 80]], [0])]
    ds = _hf_dataset(rows)
    with pytest.warns(UserWarning) as rec:
        exs = list(hf_examples(ds, bbox_format="xywh"))
    conv = [str(w.message) for w in rec if "exceed" in str(w.message)]
    assert len(conv) == 1  # once per load, not once per example
    assert "dataset[0]" in conv[0] and "bbox_format='xywh'" in conv[0] and "fit bbox_format='xyxy'" in conv[0]
    assert len(exs) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right convention loads silently
        exs = list(hf_examples(ds, bbox_format="xyxy"))
    np.testing.assert_allclose(exs[0].boxes_cxcywh[0], [0.7, 0.725, 0.4, 0.45], atol=1e-6)
    # normalised boxes read as pixels are tiny but inside: no warning; pixels read as normalised: warning
    with pytest.warns(UserWarning, match=r"bbox_format='cxcywh_norm'.*fit bbox_format='xywh'"):
        list(hf_examples(_hf_dataset([(_solid(100, 100), [[10, 10, 20, 20]], [0])]), bbox_format="cxcywh_norm"))
    # a genuinely overflowing COCO box ([60, 10, 50, 20] would be degenerate as xyxy): no false hint
    with pytest.warns(UserWarning, match=r"dataset\[0\].*no other convention fits"):
        list(hf_examples(_hf_dataset([(_solid(100, 100), [[60, 10, 50, 20]], [0])])))


def test_spec_resolution_errors(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.json.*does not exist"):
        build_dataset(str(tmp_path / "missing.json"))
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match=r"junk.*neither"):
        build_dataset(str(tmp_path / "junk"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        build_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"'fancy-dataset'"):
        build_dataset("fancy-dataset")
    assert resolve_spec("shapes") == "shapes"
    assert resolve_spec("detection-datasets/coco") == "hub"


def test_stats_summary():
    st = DataStats(images_seen=3, images_kept=2, images_skipped_unreadable=1, boxes_kept=5)
    s = st.summary()
    assert "images_skipped_unreadable=1" in s and "boxes_kept=5" in s and "boxes_clipped" not in s
    st.merge(DataStats(images_seen=1))
    assert st.images_seen == 4


# ----------------------------------------------------------------------------- batch loader


@pytest.fixture(scope="module")
def shape_examples(shapes_train):
    exs, _ = load_examples(shapes_train, img_size=S)
    return exs


def _epoch_indices(pipe, epoch, steps=None):
    steps = pipe.steps_per_epoch if steps is None else steps
    return np.concatenate([pipe.batch(epoch * pipe.steps_per_epoch + k)["example_index"] for k in range(steps)])


def test_batches_fixed_shapes_and_dtypes(shape_examples):
    pipe = TrainPipeline(shape_examples, batch_size=8, img_size=S, max_boxes=6, seed=0)
    assert pipe.steps_per_epoch == 5
    batches = list(pipe.dataset(5))
    assert len(batches) == 5
    counts = set()
    for batch in batches:
        assert batch["images"].shape == (8, S, S, 3) and batch["images"].dtype == np.uint8  # uint8 on the host
        assert batch["boxes_cxcywh"].shape == (8, 6, 4) and batch["boxes_cxcywh"].dtype == np.float32
        assert batch["labels"].shape == (8, 6) and batch["labels"].dtype == np.int32
        assert batch["mask"].shape == (8, 6) and batch["mask"].dtype == np.bool_
        counts.update(batch["mask"].sum(1).tolist())
        for row, i in enumerate(batch["example_index"]):
            ex = shape_examples[i]
            np.testing.assert_array_equal(batch["images"][row], ex.image)
            k = ex.num_boxes
            np.testing.assert_array_equal(batch["boxes_cxcywh"][row, :k], ex.boxes_cxcywh)
            np.testing.assert_array_equal(batch["labels"][row, :k], ex.labels)
            assert batch["mask"][row, :k].all() and not batch["mask"][row, k:].any()
            assert np.all(batch["boxes_cxcywh"][row, k:] == 0) and np.all(batch["labels"][row, k:] == 0)
    assert len(counts) >= 3  # batches really had different box counts


def test_deterministic_order(shape_examples):
    """Every epoch is a permutation (a new one per epoch, a function of the seed), its last
    partial batch dropped; the iterator gives the same batches as making them one by one."""
    def pipe(seed):
        return TrainPipeline(shape_examples, batch_size=8, img_size=S, seed=seed)

    a = _epoch_indices(pipe(0), 3)
    assert sorted(a.tolist()) == list(range(40))
    np.testing.assert_array_equal(a, _epoch_indices(pipe(0), 3))
    assert not np.array_equal(a, _epoch_indices(pipe(0), 4))
    assert not np.array_equal(a, _epoch_indices(pipe(1), 3))
    p = pipe(0)
    via_iterator = np.concatenate([b["example_index"] for b in p.dataset(4 * 5)])
    np.testing.assert_array_equal(via_iterator, np.concatenate([_epoch_indices(p, e) for e in range(4)]))
    # the dataset from a later step sees exactly the remaining batches, with identical contents
    full = list(p.dataset(20))
    resumed = list(p.dataset(20, start_step=17))
    assert len(resumed) == 3
    for b1, b2 in zip(full[17:], resumed):
        for key in b1:
            np.testing.assert_array_equal(b1[key], b2[key])


def test_last_partial_batch_dropped_and_evaluation_sees_every_example(shape_examples):
    exs = [shape_examples[i] for i in range(10)]
    pipe = TrainPipeline(exs, batch_size=4, img_size=S, seed=5)
    assert pipe.steps_per_epoch == 2
    seen = _epoch_indices(pipe, 0)
    assert len(seen) == 8 and len(set(seen.tolist())) == 8
    batches, n = eval_batches(exs, batch_size=4, img_size=S)
    batches = list(batches)
    assert n == len(batches) == 3
    last = batches[-1]
    np.testing.assert_array_equal(last["example_index"], [8, 9, 0, 1])
    assert last["example_valid"].tolist() == [True, True, False, False]
    assert all(b["example_valid"].all() for b in batches[:2])
    assert last["images"].shape == (4, S, S, 3)
    with pytest.raises(ValueError, match="batch size 16"):
        TrainPipeline(exs, batch_size=16, img_size=S)


def test_letterbox_geometry():
    # 200x100 image, red box at xyxy pixels [50, 25, 150, 75]; letterbox to 100:
    # scale 0.5 -> 100x50 image, 25 px grey bars top and bottom -> box [25, 37.5, 75, 62.5]
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[25:75, 50:150] = (255, 0, 0)
    ex = _ex(arr, [[0.5, 0.5, 0.5, 0.5]], [1], sid="wide.png")
    batch = stack_examples([ex], img_size=100, max_boxes=2, letterbox=True)
    np.testing.assert_allclose(batch["boxes_cxcywh"][0, 0], [0.5, 0.5, 0.5, 0.25], atol=1e-6)
    img = batch["images"][0].astype(np.float32) / 255
    grey = 114 / 255
    np.testing.assert_allclose(img[:25], grey, atol=1e-6)  # top bar
    np.testing.assert_allclose(img[75:], grey, atol=1e-6)  # bottom bar
    x1, y1, x2, y2 = 25, 37.5, 75, 62.5
    np.testing.assert_allclose(img[int(y1) + 2, int(x1) + 2], [1, 0, 0], atol=0.02)  # inside the box: red
    np.testing.assert_allclose(img[int(y2) + 2, int(x2) + 2], [0, 0, 0], atol=0.02)  # outside: black
    np.testing.assert_allclose(img[50, 20], [0, 0, 0], atol=0.02)
    # plain resize (the notebook) keeps normalised boxes unchanged
    pbatch = stack_examples([ex], img_size=100, max_boxes=2)
    np.testing.assert_allclose(pbatch["boxes_cxcywh"][0, 0], [0.5, 0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_array_equal(pbatch["images"][0, 50, 50], [255, 0, 0])
    np.testing.assert_array_equal(pbatch["images"][0], np.asarray(Image.fromarray(arr).resize((100, 100))))


def test_pre_resize_matches_pipeline_resize(tmp_path):
    _write_yolo(tmp_path)
    for lb in (False, True):
        raw, _ = load_examples(str(tmp_path), img_size=None)
        pre, _ = load_examples(str(tmp_path), img_size=48, letterbox=lb)
        assert all(e.image.shape == (48, 48, 3) for e in pre)
        b_raw = stack_examples(raw, img_size=48, max_boxes=4, letterbox=lb)
        b_pre = stack_examples(pre, img_size=48, max_boxes=4, letterbox=lb)
        np.testing.assert_array_equal(b_raw["images"], b_pre["images"])
        np.testing.assert_allclose(b_raw["boxes_cxcywh"], b_pre["boxes_cxcywh"], atol=1e-6)
    # a letterboxed wide image has grey bars
    assert np.all(pre[0].image[0] == 114)


def test_build_dataset_shapes_default():
    data = build_dataset(split="validation", shapes_num_images=12, img_size=S)
    assert data.class_names == SHAPES_CLASS_NAMES and data.num_classes == 4
    assert len(data.examples) == 12 and data.stats.images_kept == 12
    assert all(e.image.shape == (S, S, 3) and e.image.dtype == np.uint8 for e in data.examples)
    # the lazily rendered split has the pixels of the HF dataset make_shapes_dataset writes
    ds = make_shapes_dataset("validation", num_images=12, img_size=128)
    lazy = build_dataset(split="validation", shapes_num_images=12, img_size=None)
    for i in (0, 11):
        np.testing.assert_array_equal(lazy.examples[i].image, np.asarray(ds[i]["image"].convert("RGB")))
    assert sum(1 for _ in TrainPipeline(data.examples, batch_size=4, img_size=S, max_boxes=4).dataset(3)) == 3


def test_yolo_splits_are_never_mixed(tmp_path):
    """images/train + images/val: 'validation' finds val (an alias), an absent split is an
    error naming the split folders, and a flat layout has only 'train'."""
    _write_yolo(tmp_path, "train")
    val_img, val_lab = tmp_path / "images" / "val", tmp_path / "labels" / "val"
    val_img.mkdir(parents=True)
    val_lab.mkdir(parents=True)
    _solid(30, 30).save(val_img / "v.png")
    (val_lab / "v.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    for split in ("val", "validation", "valid"):
        exs = list(yolo_txt_examples(tmp_path, split))
        assert [Path(e.source_id).name for e in exs] == ["v.png"], split
    assert len(list(yolo_txt_examples(tmp_path, "train"))) == 3
    with pytest.raises(ValueError, match=r"no images/test/ folder; the split folders are \['train', 'val'\]"):
        yolo_txt_examples(tmp_path, "test")

    flat = tmp_path / "flat"
    _write_yolo(flat, None)
    assert len(list(yolo_txt_examples(flat, "train"))) == 3
    with pytest.raises(ValueError, match=r"no split folders .* not as 'validation'"):
        yolo_txt_examples(flat, "validation")


def test_yolo_missing_labels_folder_is_an_error(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    _solid(30, 30).save(tmp_path / "images" / "train" / "x.png")
    with pytest.raises(ValueError, match=r"no labels folder .*labels/train"):
        yolo_txt_examples(tmp_path, "train")


def test_hf_wrong_schema_is_an_error_not_empty_images():
    """A dataset whose boxes sit in another column must not load as background images."""
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(_solid(8, 8)), "path": None}],
                                     "annotations": [{"bbox": [[1.0, 1.0, 2.0, 2.0]], "category": [0]}]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "annotations": HF_FEATURES["objects"]}))
    with pytest.raises(ValueError, match=r"dataset\[0\]: no column 'objects'; the rows have \['annotations', 'image'\]"):
        list(hf_examples(ds, skip_empty=False))
    assert len(list(hf_examples(ds, objects_key="annotations", num_classes=1))) == 1


def test_pipeline_names_a_bad_image():
    img = np.zeros((16, 16, 3), np.uint8)
    grey = [_ex(np.zeros((16, 16), np.uint8), [[0.5, 0.5, 0.2, 0.2]], [0], sid="grey.png")] * 2
    with pytest.raises(ValueError, match=r"grey\.png: image of shape \(16, 16\); expected \(H, W, 3\)"):
        list(TrainPipeline(grey, batch_size=2, img_size=16, max_boxes=2).dataset(1))
    assert img.shape == (16, 16, 3)
