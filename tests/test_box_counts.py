"""Box padding from the data (yolo11_jax/data/box_counts.py) through the pipeline: a YOLO folder
with up to 40 boxes per image loses no box at the default padding, with and without mosaic; an
explicit small max_boxes gives one summary warning with the counts."""

import warnings

import numpy as np
import pytest
from PIL import Image

from yolo11_jax.data import (ULTRALYTICS, DataStats, TrainPipeline, add_counts, box_counts, build_dataset, pad_size,
                             resolve_max_boxes, warn_max_boxes)
from yolo11_jax.data.box_counts import batch_box_bucket, max_boxes_warning, trim_boxes

COUNTS = [40, 3, 17, 0, 25, 9]  # boxes per image


def _yolo_folder(root, counts=COUNTS, size=64):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("bird\nfeeder\n")
    for i, n in enumerate(counts):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"f{i}.png")
        # A grid of 12% boxes: each survives the letterbox and the affine's filters at any scale.
        lines = [f"{k % 2} {0.1 + 0.8 * (k % 7) / 6:.4f} {0.1 + 0.8 * (k // 7) / 6:.4f} 0.12 0.12" for k in range(n)]
        (root / "labels" / f"f{i}.txt").write_text("\n".join(lines))
    return root


def test_pad_size_and_resolution():
    assert [pad_size(n) for n in (0, 1, 8, 9, 40, 160, 5000)] == [8, 8, 8, 16, 64, 256, 8192]
    counts = box_counts([type("R", (), {"num_boxes": n, "source_id": f"r{n}"})() for n in COUNTS])
    assert (counts.images, counts.boxes, counts.max_per_image) == (6, 94, 40)
    plain = resolve_max_boxes(counts)
    assert (plain.max_boxes, plain.needed, plain.source, plain.boxes_over) == (64, 40, "data", 0)
    mosaic = resolve_max_boxes(counts, mosaic=True)
    assert (mosaic.max_boxes, mosaic.needed, mosaic.source) == (256, 160, "data")
    capped = resolve_max_boxes(counts, mosaic=True, cap=128)
    assert (capped.max_boxes, capped.source) == (128, "cap")
    assert "a mosaic of 4 images can hold up to 160" in max_boxes_warning(capped, counts)
    explicit = resolve_max_boxes(counts, requested=10, mosaic=True)
    assert (explicit.max_boxes, explicit.source, explicit.images_over, explicit.boxes_over) == (10, "explicit", 3, 52)
    assert max_boxes_warning(plain, counts) is None
    with pytest.raises(ValueError, match="max_boxes must be >= 1"):
        resolve_max_boxes(counts, requested=0)


@pytest.mark.parametrize("mosaic", [False, True])
def test_default_padding_drops_no_box(tmp_path, mosaic):
    data = build_dataset(str(_yolo_folder(tmp_path / "d")), img_size=64)
    assert data.class_names == ["bird", "feeder"] and data.stats.boxes_kept == sum(COUNTS)
    choice = resolve_max_boxes(box_counts(data.examples), mosaic=mosaic)
    assert choice.max_boxes == (256 if mosaic else 64)
    augment = ULTRALYTICS if mosaic else ULTRALYTICS.__class__()
    stats = DataStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_max_boxes(data.examples, choice.max_boxes, mosaic=mosaic) == (0, 0)
        pipe = TrainPipeline(data.examples, batch_size=3, img_size=64, max_boxes=choice.max_boxes, seed=0,
                             augment=augment)
        most = 0
        for batch in pipe.dataset(4):
            add_counts(stats, batch)
            most = max(most, int(batch["mask"].sum(1).max()))
    assert stats.samples_made == 12 and stats.boxes_truncated_max_boxes == 0
    if not mosaic:  # each image twice, no augmentation: every box, twice
        assert stats.sample_boxes == 2 * sum(COUNTS) and most == 40
    else:  # mosaics: other box counts than the images', none cut
        assert stats.sample_boxes != 2 * sum(COUNTS) and 0 < most <= choice.max_boxes


def test_explicit_small_max_boxes_one_summary_warning(tmp_path):
    data = build_dataset(str(_yolo_folder(tmp_path / "d")), img_size=64)
    with pytest.warns(UserWarning) as rec:
        assert warn_max_boxes(data.examples, 8) == (4, 59)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "4 of 6 images have more than max_boxes=8 boxes: 59 of their boxes (62.8% of 94)" in msg
    assert "--max-boxes 64 keeps every box" in msg and "f0.png (40)" in msg
    stats = DataStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch in TrainPipeline(data.examples, batch_size=3, img_size=64, max_boxes=8, seed=0).dataset(2):
            add_counts(stats, batch)
    assert stats.samples_made == 6 and stats.sample_boxes == 94 and stats.boxes_truncated_max_boxes == 59
    assert stats.samples_truncated_max_boxes == 4


def test_trim_boxes_keeps_every_box(tmp_path):
    data = build_dataset(str(_yolo_folder(tmp_path / "d")), img_size=64)
    full = TrainPipeline(data.examples, batch_size=2, img_size=64, max_boxes=256, seed=1)
    trimmed = TrainPipeline(data.examples, batch_size=2, img_size=64, max_boxes=256, seed=1, trim_boxes=True)
    sizes = set()
    for step, batch in enumerate(trimmed.dataset(3)):
        ref = full.batch(step)
        m = batch["mask"].shape[1]
        sizes.add(m)
        assert m == batch_box_bucket(ref["mask"]) and not ref["mask"][:, m:].any()
        for k in ("boxes_cxcywh", "labels", "mask"):
            np.testing.assert_array_equal(batch[k], ref[k][:, :m])
        np.testing.assert_array_equal(batch["images"], ref["images"])
    assert sizes <= {8, 16, 32, 64} and len(sizes) > 1
    assert trim_boxes({"mask": np.ones((2, 8), bool)})["mask"].shape == (2, 8)
    with pytest.raises(ValueError, match="one process"):
        TrainPipeline(data.examples, batch_size=2, img_size=64, max_boxes=64, shard=(0, 2), trim_boxes=True)
