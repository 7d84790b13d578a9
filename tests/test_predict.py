"""The prediction command: outputs, box mapping back to the original image, bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from yolo11_jax import convert
from yolo11_jax.data import SHAPES_CLASS_NAMES, render_shapes_image
from yolo11_jax.data.pipeline import stack_examples
from yolo11_jax.data.sources import Example
from yolo11_jax.data.transforms import letterbox_boxes, letterbox_geometry
from yolo11_jax.predict import (
    boxes_to_original,
    class_colour,
    collect_image_paths,
    draw_detections,
    main,
    preprocess_image,
)
from yolo11_jax.presets import build_model

from tests.helpers import RUN_IMG_SIZE as IMG_SIZE, make_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A non-square JPEG file, a folder with a PNG, a BMP, a non-image and a corrupt JPEG."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    wide = render_shapes_image(rng, 96)[0].resize((120, 50))
    wide.save(root / "wide.jpg", quality=95)
    folder = root / "folder"
    folder.mkdir()
    render_shapes_image(rng, 64)[0].save(folder / "b_square.png")
    render_shapes_image(rng, 64)[0].resize((40, 90)).save(folder / "a_tall.bmp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return root


# ----------------------------------------------------------------------------- box mapping


def test_boxes_to_original_plain_resize_non_square():
    # 200 x 100 image plain-resized to 64 x 64: x scales by 200/64, y by 100/64.
    got = boxes_to_original(np.array([[16.0, 8.0, 32.0, 48.0], [0.0, 0.0, 64.0, 64.0]]), 200, 100, 64)
    np.testing.assert_allclose(got, [[50.0, 12.5, 100.0, 75.0], [0.0, 0.0, 200.0, 100.0]])


def test_boxes_to_original_letterbox_non_square():
    # 200 x 100 letterboxed into 64: scale 0.32, resized 64 x 32, padding 16 rows on top.
    g = letterbox_geometry(200, 100, 64)
    assert (g.new_w, g.new_h, g.pad_left, g.pad_top) == (64, 32, 0, 16)
    got = boxes_to_original(np.array([[16.0, 24.0, 32.0, 40.0]]), 200, 100, 64, letterbox=True)
    np.testing.assert_allclose(got, [[50.0, 25.0, 100.0, 75.0]])
    # tall image: padding on the left and right
    g = letterbox_geometry(50, 100, 64)
    assert (g.new_w, g.new_h, g.pad_left, g.pad_top) == (32, 64, 16, 0)
    got = boxes_to_original(np.array([[16.0, 0.0, 48.0, 32.0]]), 50, 100, 64, letterbox=True)
    np.testing.assert_allclose(got, [[0.0, 0.0, 50.0, 50.0]])


def test_boxes_to_original_inverts_the_training_letterbox():
    """Original box -> training's letterbox_boxes -> canvas pixels -> back is the identity."""
    w, h, s = 173, 61, 64  # odd sizes: the two letterbox scales differ by rounding
    orig = np.array([[10.0, 5.0, 80.0, 40.0], [100.0, 20.0, 170.0, 60.0]])
    cxcywh = np.stack([(orig[:, 0] + orig[:, 2]) / 2 / w, (orig[:, 1] + orig[:, 3]) / 2 / h,
                       (orig[:, 2] - orig[:, 0]) / w, (orig[:, 3] - orig[:, 1]) / h], 1)
    c = letterbox_boxes(cxcywh, letterbox_geometry(w, h, s), s).astype(np.float64) * s
    canvas_xyxy = np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2,
                            c[:, 1] + c[:, 3] / 2], 1)
    np.testing.assert_allclose(boxes_to_original(canvas_xyxy, w, h, s, letterbox=True), orig, atol=1e-3)
    # plain resize: normalised boxes are unchanged by training, so pixels scale per axis
    np.testing.assert_allclose(boxes_to_original(cxcywh_to_xyxy(cxcywh) * s, w, h, s), orig, atol=1e-9)


def cxcywh_to_xyxy(b):
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def test_boxes_to_original_clips_to_the_image():
    got = boxes_to_original(np.array([[-5.0, 0.0, 70.0, 64.0]]), 200, 100, 64, letterbox=True)
    np.testing.assert_allclose(got, [[0.0, 0.0, 200.0, 100.0]])  # padding maps outside, then clipped
    got = boxes_to_original(np.array([[-5.0, -1.0, 70.0, 64.0]]), 200, 100, 64)
    np.testing.assert_allclose(got, [[0.0, 0.0, 200.0, 100.0]])
    assert boxes_to_original(np.zeros((0, 4)), 10, 10, 64).shape == (0, 4)


@pytest.mark.parametrize("letterbox", [False, True])
def test_preprocess_matches_the_training_loader(letterbox):
    img = render_shapes_image(np.random.default_rng(1), 64)[0].resize((90, 50))
    ex = Example(image=np.asarray(img), boxes_cxcywh=np.zeros((0, 4), np.float32),
                 labels=np.zeros((0,), np.int32), source_id="x")
    expected = stack_examples([ex], img_size=IMG_SIZE, max_boxes=1, letterbox=letterbox)["images"][0]
    np.testing.assert_array_equal(preprocess_image(img, IMG_SIZE, letterbox), expected.astype(np.float32) / 255.0)


# ----------------------------------------------------------------------------- helpers


def test_collect_image_paths(inputs):
    paths, problems = collect_image_paths([inputs / "folder", inputs / "wide.jpg", inputs / "missing.png",
                                           inputs / "folder" / ".." / "wide.jpg"])
    assert [p.name for p in paths] == ["a_tall.bmp", "b_square.png", "c_corrupt.jpg", "wide.jpg"]
    # every input left out is reported, one message each: the non-image file in the folder,
    # the missing path, the same image given twice
    assert len(problems) == 3
    assert "notes.txt: not taken" in problems[0] and "missing.png: no such file" in problems[1]
    assert "wide.jpg: given more than once, taken once" in problems[2]


def test_class_colours_are_distinct_and_drawing_keeps_the_size():
    colours = {class_colour(c) for c in range(80)}
    assert len(colours) == 80
    img = Image.new("RGB", (120, 50), (0, 0, 0))
    dets = [{"box_xyxy": [10.0, 5.0, 60.0, 45.0], "score": 0.9, "class_id": 1, "class_name": "square"},
            {"box_xyxy": [0.0, 0.0, 120.0, 50.0], "score": 0.3, "class_id": 0, "class_name": "circle"}]
    out = draw_detections(img, dets)
    assert out.size == img.size and out.mode == "RGB"
    assert np.asarray(out).any() and not np.asarray(img).any()  # a copy was drawn on, not the input


# ----------------------------------------------------------------------------- command


def test_cli_outputs(run_dir, inputs, tmp_path, capsys):
    from yolo11_jax.inference import predict_batch

    out = tmp_path / "pred"
    cache_before = predict_batch._cache_size() if hasattr(predict_batch, "_cache_size") else None
    rc = main(["--run", str(run_dir), str(inputs / "wide.jpg"), str(inputs / "folder"), "--out", str(out),
               "--conf-threshold", "0.0", "--max-det", "5", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    if cache_before is not None:  # 3 readable images in batches of 2: one compiled shape
        assert predict_batch._cache_size() - cache_before <= 1

    # the corrupt file is skipped with a warning naming it, and counted
    assert "c_corrupt.jpg" in captured.err and "warning" in captured.err.lower()
    summary = [line for line in captured.out.splitlines() if "images," in line]
    assert summary and summary[-1].startswith("3 images,") and summary[-1].endswith("2 skipped")
    assert "notes.txt: not taken" in captured.err

    originals = {"wide": (120, 50), "b_square": (64, 64), "a_tall": (40, 90)}
    for stem, size in originals.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.size == size and im.format == "PNG"
    assert not (out / "c_corrupt.png").exists()

    records = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in records] == [str(inputs / "wide.jpg"), str(inputs / "folder" / "a_tall.bmp"),
                                             str(inputs / "folder" / "b_square.png")]
    total = 0
    for r in records:
        stem = r["image"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        assert (r["width"], r["height"]) == originals[stem]
        dets = r["detections"]
        assert 1 <= len(dets) <= 5  # conf 0.0: random weights still give detections
        total += len(dets)
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            assert set(d) == {"box_xyxy", "score", "class_id", "class_name"}
            x1, y1, x2, y2 = d["box_xyxy"]
            assert all(isinstance(v, float) for v in d["box_xyxy"])
            assert 0.0 <= x1 <= x2 <= r["width"] and 0.0 <= y1 <= y2 <= r["height"]
            assert 0 <= d["class_id"] < 4 and d["class_name"] == SHAPES_CLASS_NAMES[d["class_id"]]
            assert 0.0 <= d["score"] <= 1.0
    assert summary[-1] == f"3 images, {total} detections, 2 skipped"


def test_cli_weights_letterbox_and_mapping(run_dir, tmp_path, capsys):
    """--weights with explicit options and --letterbox: the JSON boxes are the network's
    boxes mapped back through the letterbox (checked against a direct forward pass)."""
    from yolo11_jax.inference import eval_graphdef
    from yolo11_jax.predict import detect_images

    img_path = tmp_path / "img.png"
    render_shapes_image(np.random.default_rng(3), 64)[0].resize((100, 40)).save(img_path)
    out = tmp_path / "pred"
    rc = main(["--weights", str(run_dir / "weights.safetensors"), "--model", "tiny", "--num-classes", "4",
               "--img-size", str(IMG_SIZE), "--letterbox", str(img_path), "--out", str(out),
               "--conf-threshold", "0.0", "--max-det", "5"])
    assert rc == 0
    rec = json.loads((out / "detections.json").read_text())
    assert len(rec) == 1 and (rec[0]["width"], rec[0]["height"]) == (100, 40)
    dets = rec[0]["detections"]
    assert dets and all(d["class_name"] == str(d["class_id"]) for d in dets)  # no names without a run

    model = build_model("tiny", num_classes=4, rngs=nnx.Rngs(1))
    convert.load_safetensors(run_dir / "weights.safetensors", model)
    with Image.open(img_path) as im:
        direct = detect_images(eval_graphdef(model), (nnx.state(model),), [im.convert("RGB")], img_size=IMG_SIZE,
                               letterbox=True, num_classes=4, conf_threshold=0.0, max_det=5)[0]
    assert [d["class_id"] for d in dets] == [d["class_id"] for d in direct]
    np.testing.assert_allclose([d["box_xyxy"] for d in dets], [d["box_xyxy"] for d in direct], atol=1e-4)
    for d in dets:  # letterboxed 100 x 40: content spans canvas y in [12.5, 51.5] -> all of [0, 40]
        x1, y1, x2, y2 = d["box_xyxy"]
        assert 0.0 <= x1 <= x2 <= 100.0 and 0.0 <= y1 <= y2 <= 40.0


def test_cli_no_readable_image_exits_2(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    rc = main(["--run", str(run_dir), str(bad), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 2
    assert "bad.png" in captured.err and "missing.jpg" in captured.err
    assert "no image could be read" in captured.err
    assert "0 images, 0 detections, 2 skipped" in captured.out


def test_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "yolo11_jax.predict", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for opt in ("--run", "--weights", "--model", "--num-classes", "--img-size", "--out", "--conf-threshold",
                "--iou-threshold", "--max-det", "--batch-size", "--letterbox", "--no-letterbox"):
        assert opt in proc.stdout, opt


def test_cli_refuses_to_overwrite_inputs_and_reports_bad_options(run_dir, inputs, tmp_path, capsys):
    """Mistakes end with a one-line message and status 2, before anything is written."""
    folder = inputs / "folder"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad_runs = [
        (["--out", str(folder)], "holds input images"),
        (["--out", str(tmp_path / "o"), "--img-size", "100"], "--img-size must be a multiple of 32, got 100"),
        (["--out", str(tmp_path / "o"), "--img-size", "-64"], "--img-size must be >= 1, got -64"),
        (["--out", str(tmp_path / "o"), "--class-names", "x,y"], "--class-names gives 2 names for 4 classes"),
    ]
    for extra, msg in bad_runs:
        with pytest.raises(SystemExit) as e:
            main(["--run", str(run_dir), str(folder), *extra])
        assert e.value.code == 2 and msg in capsys.readouterr().err, msg
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (tmp_path / "o").exists()

    # weights that do not fit the model: an error line naming the file and the options to check
    rc = main(["--weights", str(run_dir / "weights.safetensors"), "--model", "tiny", "--num-classes", "3",
               str(inputs / "wide.jpg"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot load") and "--num-classes" in err and "Traceback" not in err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    rc = main(["--weights", str(corrupt), "--model", "tiny", "--num-classes", "4", str(inputs / "wide.jpg"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "corrupt.safetensors" in capsys.readouterr().err
    # an output path that is a file
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(["--run", str(run_dir), str(inputs / "wide.jpg"), "--out", str(tmp_path / "file")])
    assert "exists and is not a directory" in capsys.readouterr().err
