"""The evaluation command on a hand-made run directory (random tiny weights, no training)."""

import json
import math

import pytest

from yolo11_jax.data import SHAPES_CLASS_NAMES
from yolo11_jax.evaluate import main

from tests.conftest import RUN_IMG_SIZE as IMG_SIZE, make_run_dir


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
