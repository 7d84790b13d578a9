"""The evaluation command on a hand-made run directory (random tiny weights, no training)."""

import json
import math

import pytest

from yolo11_jax.data import SHAPES_CLASS_NAMES
from yolo11_jax.evaluate import main

from tests.helpers import RUN_IMG_SIZE as IMG_SIZE, XLA_CACHE_DIR, make_run_dir


@pytest.fixture(autouse=True)
def _test_compile_cache(monkeypatch):
    """--compile-cache-dir default: the tests' cache folder, not the user's."""
    monkeypatch.setenv("YOLO11_JAX_COMPILE_CACHE", XLA_CACHE_DIR)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("eval_run"))


def test_evaluate_cli_prints_map_and_writes_json(run_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = main(["--run", str(run_dir), "--data", "shapes", "--split", "validation", "--max-samples", "16",
               "--img-size", str(IMG_SIZE), "--batch-size", "8", "--max-det", "50", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("mAP@[.5:.95]")]
    assert len(lines) == 1 and "AP50" in lines[0] and "AP75" in lines[0] and "(16 images)" in lines[0]
    results = json.loads(out.read_text())
    for key in ("mAP", "AP50", "AP75"):
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, (key, results[key])
    assert results["AP50"] >= results["AP75"]
    assert results["num_images"] == 16 and results["num_gt"] > 0
    assert [c["name"] for c in results["per_class"]] == SHAPES_CLASS_NAMES
    assert results["settings"]["conv_impl"] == "lax" and results["settings"]["compile_cache_dir"] == XLA_CACHE_DIR


def test_evaluate_cli_with_weights_file(run_dir, capsys):
    rc = main(["--weights", str(run_dir / "weights.safetensors"), "--model", "tiny", "--num-classes", "4",
               "--data", "shapes", "--split", "validation", "--max-samples", "8", "--img-size", str(IMG_SIZE),
               "--batch-size", "8", "--max-det", "50"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    line = [line for line in captured.out.splitlines() if line.startswith("mAP@[.5:.95]")][-1]
    assert not math.isnan(float(line.split()[1]))


def test_evaluate_cli_unfinished_run(run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(SystemExit) as e:
        main(["--run", str(unfinished)])
    assert e.value.code == 2


def test_evaluate_cli_run_trained_without_evaluation(run_dir, tmp_path, monkeypatch, capsys):
    """A run with ``val_split: null`` (the notebook preset, ``--val-split none``) is scored on
    'validation'; the run's resize mode reaches the evaluation (here: letterbox)."""
    import yolo11_jax.evaluate as E

    run = tmp_path / "no_eval_run"
    run.mkdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "val_split": None, "letterbox": True}))
    (run / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes())
    seen = {}
    real = E.evaluate_examples

    def spy(*args, **kwargs):
        seen.update(n=len(args[2]), letterbox=kwargs["letterbox"])
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "evaluate_examples", spy)
    assert main(["--run", str(run), "--max-samples", "4", "--batch-size", "4"]) == 0, capsys.readouterr().err
    assert seen == dict(n=4, letterbox=True)
    assert "'shapes' (validation): 4 images" in capsys.readouterr().err
    assert main(["--run", str(run), "--max-samples", "4", "--batch-size", "4", "--no-letterbox"]) == 0
    assert seen["letterbox"] is False


def test_evaluate_cli_bad_input_is_a_message_not_a_traceback(run_dir, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["--run", str(run_dir), "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (after the line saying which inference settings were chosen)
    assert last.startswith("error: ") and str(missing) in last and "Traceback" not in err
    for argv, msg in ((["--run", str(tmp_path)], f"{tmp_path / 'config.json'} not found"),
                      (["--weights", str(tmp_path / "w.safetensors"), "--data", "shapes"], "w.safetensors not found"),
                      (["--run", str(run_dir), "--batch-size", "0"], "--batch-size must be >= 1")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_official_weights_equals_pycocotools_on_the_yardstick_predictions(tmp_path, capsys):
    """``evaluate --weights yolo11n.pt`` on a small labelled COCO-JSON set of real photos (labels
    made from the recorded detections, each side moved by up to 15% of the box and one in four dropped, so that
    the mAP is neither 0 nor 1) gives the mAP pycocotools gives on the predictions of the
    torch/OpenCV yardstick of Ultralytics' pipeline (conf 0.001), within 0.002."""
    import shutil

    import numpy as np
    import torch

    from reference_torch import ultralytics_predict as ref
    from reference_torch.yolo11 import YOLO11
    from tests.real_files import PHOTOS, real_file
    from yolo11_jax.coco_eval import CocoEvaluator
    from yolo11_jax.letterbox import read_image_rgb
    from yolo11_jax.ultralytics_pt import read_ultralytics

    pt = real_file("yolo11n_official")
    fixture = json.loads((__import__("pathlib").Path(__file__).parent / "data" / "predict_yolo11n_official.json")
                         .read_text())
    state_dict, info = read_ultralytics(pt)
    names = info["class_names"]
    images, annotations, rng = [], [], np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for k, rec in enumerate(fixture["photos"], 1):
        src = real_file(rec["photo"])
        shutil.copy(src, tmp_path / "images" / src.name)
        images.append({"id": k, "file_name": src.name, "width": rec["width"], "height": rec["height"]})
        for j, d in enumerate(rec["detections"]):
            if j % 4 == 3:
                continue
            box = np.asarray(d["box_xyxy"])
            size = np.tile(box[2:] - box[:2], 2)
            x1, y1, x2, y2 = np.clip(box + rng.uniform(-0.15, 0.15, 4) * size, 0, [rec["width"], rec["height"]] * 2)
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": d["class_id"] + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    out = tmp_path / "metrics.json"
    rc = main(["--weights", str(pt), "--data", str(ann), "--image-dir", str(tmp_path / "images"),
               "--batch-size", "4", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "resize rect" in err and "conf 0.001" in err
    got = json.loads(out.read_text())
    assert got["settings"]["resize"] == "rect" and got["settings"]["conf_threshold"] == 0.001

    net = YOLO11("n", 80)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    net.eval()
    evaluator = CocoEvaluator(80, names, max_dets=100)
    by_id = {a["image_id"]: [] for a in annotations}
    for a in annotations:
        by_id[a["image_id"]].append(a)
    for img in images:
        rgb = read_image_rgb(tmp_path / "images" / img["file_name"])
        det = ref.predict(net, np.ascontiguousarray(rgb[..., ::-1]), imgsz=640, conf=0.001)
        h, w = rgb.shape[:2]
        gts = by_id.get(img["id"], [])
        gt = np.array([[(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h] for x, y, bw, bh in
                       (a["bbox"] for a in gts)]).reshape(1, -1, 4)
        labels = np.array([a["category_id"] - 1 for a in gts]).reshape(1, -1)
        k = len(det["scores"])
        evaluator.add_batch(gt, labels, np.ones(labels.shape, bool), det["boxes_xyxy"][None], det["scores"][None],
                            det["classes"][None], np.ones((1, k), bool), [(h, w)])
    want = evaluator.compute()
    print(f"evaluate: mAP {got['mAP']:.5f} AP50 {got['AP50']:.5f}; pycocotools on the yardstick's predictions: "
          f"mAP {want['mAP']:.5f} AP50 {want['AP50']:.5f}")
    assert 0.1 < want["mAP"] < 0.9, want["mAP"]
    for key in ("mAP", "AP50", "AP75"):
        assert abs(got[key] - want[key]) <= 0.002, (key, got[key], want[key])


def test_evaluate_rect_mode_on_a_run_scores_in_original_pixels(run_dir, tmp_path, capsys):
    """``--resize rect`` on the project's own run (in-memory shapes images): predict's preprocessing,
    one compiled shape for same-size images, boxes scored in each image's own pixels."""
    out = tmp_path / "m.json"
    rc = main(["--run", str(run_dir), "--max-samples", "6", "--batch-size", "4", "--resize", "rect",
               "--img-size", str(IMG_SIZE), "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "resize rect" in err and f"compiled 1 input shape(s) (batch x height x width): 4x{IMG_SIZE}x{IMG_SIZE}" in err
    results = json.loads(out.read_text())
    assert 0.0 <= results["mAP"] <= 1.0
