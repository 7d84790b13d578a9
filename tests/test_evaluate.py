"""The evaluation command on a hand-made run directory (random tiny weights, no training)."""

import json
import math

import pytest

from yolo11_jax.data import SHAPES_CLASS_NAMES
from yolo11_jax.evaluate import main

from tests.helpers import RUN_IMG_SIZE as IMG_SIZE, make_run_dir


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
