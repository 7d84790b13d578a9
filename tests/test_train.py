"""The training command: outputs, resume, divergence handling, bad input."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import reference_torch as R
from yolo11_jax.configs import CONFIGS, TrainConfig, named_config
from yolo11_jax.train import NonFiniteLossError, build_parser, train
from tests.helpers import XLA_CACHE_DIR, subprocess_env

SMOKE = dict(val_split=None, eval_every_epochs=0, workers=1, compile_cache_dir=XLA_CACHE_DIR)
SMOKE_STEPS_PER_EPOCH = 8  # 64 images, batch 8


def smoke_config(tmp_path, name, **overrides):
    return named_config("smoke", **{**SMOKE, "run_dir": str(tmp_path / name), **overrides})


def epoch_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


@pytest.mark.slow
def test_cli_writes_every_promised_output(tmp_path):
    run = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "yolo11_jax.train", "--config", "smoke", "--run-dir", str(run),
                           "--eval-every-epochs", "2"], capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "loss_curves.png", "sample_batch.png", "iou_variants.png",
                 "map_curve.png", "weights.safetensors"):
        assert (run / name).stat().st_size > 0, name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"] == "smoke" and cfg["num_classes"] == 4 and cfg["eval_every_epochs"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    intervals = [r for r in rows if r["kind"] == "interval"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2 and len(intervals) >= 4
    for key in ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "lr", "grad_norm", "images_per_s"):
        assert all(np.isfinite(r[key]) for r in intervals), key
    assert "mAP" in epochs[1] and "AP50" in epochs[1] and "mAP" not in epochs[0]
    assert "final validation mAP" in proc.stderr + proc.stdout
    # The exported weights load into the PyTorch reference with strict=True.
    from safetensors.torch import load_file
    ref = R.YOLOv11(num_classes=4, base=8, depth=1)
    ref.load_state_dict(load_file(str(run / "weights.safetensors")), strict=True)
    assert (run / "checkpoints").is_dir()


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = train(smoke_config(tmp_path, "full", epochs=3), progress=False)
    part = smoke_config(tmp_path, "part", epochs=3)
    train(part, progress=False, stop_after_steps=SMOKE_STEPS_PER_EPOCH)
    assert len(epoch_rows(tmp_path / "part")) == 1
    train(smoke_config(tmp_path, "part", epochs=3), resume=tmp_path / "part", progress=False)
    a, b = epoch_rows(tmp_path / "full"), epoch_rows(tmp_path / "part")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    wa = (tmp_path / "full" / "weights.safetensors").read_bytes()
    from safetensors.numpy import load_file
    fa, fb = load_file(str(tmp_path / "full" / "weights.safetensors")), load_file(
        str(tmp_path / "part" / "weights.safetensors"))
    assert len(wa) > 0 and fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fb[k], fa[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert full["history"][-1]["total_loss"] < full["history"][0]["total_loss"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = smoke_config(tmp_path, "nan", epochs=1)
    train(cfg, progress=False)
    ckpt = tmp_path / "nan" / "checkpoints"
    before = sorted(p.name for p in ckpt.iterdir())
    bad = smoke_config(tmp_path, "nan", epochs=2, lr=1e30)  # (a NaN learning rate is refused by the checks)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint .step 8. .* is intact"):
        train(bad, resume=tmp_path / "nan", progress=False)
    assert sorted(p.name for p in ckpt.iterdir()) == before
    # ... and it still restores: resuming with a sane learning rate finishes the run.
    train(smoke_config(tmp_path, "nan", epochs=2), resume=tmp_path / "nan", progress=False)
    assert [r["epoch"] for r in epoch_rows(tmp_path / "nan")] == [1, 2]


def test_class_id_out_of_range_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"shapes/train\[\d+\]: class id \d is outside the valid range 0\.\.1"):
        train(smoke_config(tmp_path, "cls", num_classes=2), progress=False)
    assert not (tmp_path / "cls" / "checkpoints").exists()


def test_bad_config_is_reported_clearly(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        train(smoke_config(tmp_path, "bad", img_size=100), progress=False)
    # Settings used only at the first evaluation or later are checked before any training.
    with pytest.raises(ValueError) as err:
        train(smoke_config(tmp_path, "bad", eval_batch_size=0, keep_checkpoints=0, eval_every_epochs=-1, workers=-2),
              progress=False)
    for msg in ("--eval-batch-size must be >= 1, got 0", "--keep-checkpoints must be >= 1, got 0",
                "--eval-every-epochs must be >= 0, got -1", "--workers must be >= 0, got -2"):
        assert msg in str(err.value)
    with pytest.raises(ValueError, match=r"validation data 'shapes' \(validation\) has no usable images"):
        train(smoke_config(tmp_path, "noval", val_split="validation", eval_every_epochs=1, shapes_val_images=0),
              progress=False)
    with pytest.raises(ValueError, match=r"3 class names for 4 classes"):
        train(smoke_config(tmp_path, "names", class_names=["a", "b", "c"]), progress=False)
    assert not any((tmp_path / name / "checkpoints").exists() for name in ("bad", "noval", "names"))


@pytest.mark.slow
def test_a_finished_run_directory_is_not_overwritten(tmp_path):
    train(smoke_config(tmp_path, "run", epochs=1), progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"already holds a run with checkpoints: continue it with --resume"):
        train(smoke_config(tmp_path, "run", epochs=1, lr=5e-4), progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == named_config("smoke").lr == 1e-3


@pytest.mark.slow
def test_cli_resume_normalises_overrides_and_rewrites_the_interrupted_epoch(tmp_path):
    from yolo11_jax.train import main
    run = tmp_path / "run"
    train(smoke_config(tmp_path, "run", epochs=2), progress=False, stop_after_steps=SMOKE_STEPS_PER_EPOCH)
    # Rows of an epoch interrupted after the checkpoint are dropped on resume, not repeated.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "interval", "epoch": 2, "step": 12, "total_loss": 1.0}) + "\n")
    assert main(["--resume", str(run), "--val-split", "none", "--workers", "0"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["val_split"] is None and cfg["workers"] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert all(r.get("total_loss") != 1.0 for r in rows)
    with pytest.raises(SystemExit):
        main(["--resume", str(run), "--config", "notebook-coco"])


def test_help_documents_every_option():
    text = build_parser().format_help()
    for field in TrainConfig.__dataclass_fields__:
        if field in ("config", "class_names"):
            continue
        assert "--" + field.replace("_", "-") in text, field
    for name in CONFIGS:
        assert name in text


def test_cli_reports_unreadable_data_without_a_traceback(tmp_path, capsys, monkeypatch):
    from yolo11_jax import train as train_mod

    rc = train_mod.main(["--config", "smoke", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "a")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'detection-datasets/coco' on the Hub")

    monkeypatch.setattr(train_mod, "build_dataset", unreachable)
    rc = train_mod.main(["--config", "notebook-coco", "--run-dir", str(tmp_path / "b")])
    assert rc == 2
    assert "could not read the data" in capsys.readouterr().err


def step_rows(run_dir, kind="interval"):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


@pytest.mark.slow
def test_resume_inside_an_epoch_continues_with_the_next_batch(tmp_path):
    """Stopped after step 11 (inside epoch 2, a checkpoint by --checkpoint-every), the resumed
    run's losses equal an uninterrupted run's, step for step, bit for bit on the CPU."""
    kw = dict(epochs=2, log_every=1, checkpoint_every_steps=11)
    train(smoke_config(tmp_path, "full", **kw), progress=False)
    train(smoke_config(tmp_path, "part", **kw), progress=False, stop_after_steps=11)
    assert json.loads((tmp_path / "part" / "checkpoints" / "11" / "meta" / "metadata").read_text())["step"] == 11
    train(smoke_config(tmp_path, "part", **kw), resume=tmp_path / "part", progress=False)
    full, part = step_rows(tmp_path / "full"), step_rows(tmp_path / "part")
    assert [r["step"] for r in part] == [r["step"] for r in full] == list(range(1, 17))
    for a, b in zip(full, part):
        for key in ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos", "lr"):
            assert a[key] == b[key], (a["step"], key)
    assert [r["total_loss"] for r in epoch_rows(tmp_path / "full")] == [r["total_loss"] for r in epoch_rows(tmp_path / "part")]


@pytest.mark.slow
def test_length_evaluation_and_checkpoints_count_steps(tmp_path):
    """--steps sets the length (here 1.5 epochs); evaluation and checkpoints every N steps, plus
    the last step."""
    cfg = smoke_config(tmp_path, "steps", steps=12, eval_every_steps=5, val_split="validation",
                       checkpoint_every_steps=4, checkpoint_every_epochs=0, keep_checkpoints=10)
    out = train(cfg, progress=False)
    assert out["steps"] == 12
    assert [e["step"] for e in out["evals"]] == [5, 10, 12]
    assert [r["step"] for r in step_rows(tmp_path / "steps", "eval")] == [5, 10, 12]
    assert sorted(int(p.name) for p in (tmp_path / "steps" / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert [r["epoch"] for r in epoch_rows(tmp_path / "steps")] == [1, 2]  # the last epoch is partial


def test_deprecated_spellings_still_work(tmp_path, capsys):
    from yolo11_jax import train as train_mod

    args = build_parser().parse_args(["--preset", "notebook", "--eval-every", "3"])
    train_mod._deprecated(args)
    cfg = train_mod.config_from_args(args)
    assert cfg.config == "notebook-coco" and cfg.model == "notebook" and cfg.eval_every_epochs == 3
    err = capsys.readouterr().err
    assert "--preset is deprecated: use --config notebook-coco" in err
    assert "--eval-every is deprecated: use --eval-every-epochs" in err
    with pytest.raises(ValueError, match="unknown config 'notebook'.*--config notebook-coco.*--model notebook"):
        named_config("notebook")
    # A config.json of an earlier version (preset, eval_every) resumes under the new names.
    run = tmp_path / "old"
    run.mkdir()
    old = {**dataclasses.asdict(smoke_config(tmp_path, "old")), "preset": "smoke", "eval_every": 0}
    del old["config"], old["eval_every_epochs"]
    (run / "config.json").write_text(json.dumps(old))
    cfg = train_mod.resumed_config(run, build_parser().parse_args([]))
    assert cfg.config == "smoke" and cfg.eval_every_epochs == 0


def test_options_come_from_one_declaration():
    """Every TrainConfig field with a command-line flag is an argparse option whose default is
    None (only given options override) and whose help names the cpu config's value; the
    checks of the declaration reject bad values."""
    from yolo11_jax import options as C

    ap = build_parser()
    actions = {a.dest: a for a in ap._actions}
    cpu = named_config("cpu")
    for f in C.cli_fields(TrainConfig):
        assert f.name in actions and actions[f.name].default is None, f.name
        assert f"(cpu config: {getattr(cpu, f.name)})" in actions[f.name].help, f.name
    problems = C.validate(TrainConfig(img_size=100, model="huge", topk=0))
    assert problems == ["--model must be one of " + ", ".join(TrainConfig.__dataclass_fields__["model"]
                                                              .metadata["choices"]) + ", got 'huge'",
                        "--img-size must be a multiple of 32, got 100", "--topk must be >= 1, got 0"]


@pytest.mark.slow
def test_fine_tuning_from_an_80_class_checkpoint(tmp_path, capsys):
    """--init-weights: an 80-class yolo11n checkpoint into a 4-class run re-initialises the class
    outputs (named in the log), loads everything else, and a few training steps lower the loss."""
    from flax import nnx

    from yolo11_jax import convert
    from yolo11_jax.presets import build_model

    ckpt = tmp_path / "yolo11n-80.safetensors"
    source = build_model("yolo11n", num_classes=80, rngs=nnx.Rngs(7))
    convert.save_safetensors(source, ckpt)
    cfg = smoke_config(tmp_path, "ft", model="yolo11n", init_weights=str(ckpt), img_size=96, shapes_img_size=96,
                       steps=8, log_every=1, lr=2e-3)
    train(cfg, progress=True)
    out = capsys.readouterr()
    log = out.out + out.err
    assert "init weights:" in log and "re-initialised (class count differs)" in log
    assert "model.23.cv3.0.2" in log and "model.23.cv2" not in log.split("re-initialised")[1]
    losses = [r["total_loss"] for r in step_rows(tmp_path / "ft")]
    assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0]
    # everything but the class branch came from the checkpoint
    from safetensors.numpy import load_file
    import json as _json
    assert _json.loads((tmp_path / "ft" / "config.json").read_text())["init_weights"] == str(ckpt)
    assert load_file(str(ckpt))["model.0.conv.weight"].shape == load_file(
        str(tmp_path / "ft" / "weights.safetensors"))["model.0.conv.weight"].shape


@pytest.mark.slow
def test_the_ema_is_evaluated_and_exported_and_resumes_exactly(tmp_path, monkeypatch):
    """--recipe ultralytics keeps an EMA: the exported weights are the EMA's (not the raw
    parameters, which the checkpoint keeps too), and a run stopped inside an epoch and resumed
    exports the same EMA, bit for bit."""
    from flax import nnx

    from yolo11_jax import convert
    from yolo11_jax import train as train_mod
    from yolo11_jax.ema import eval_variables

    saved, exported = {}, {}
    real_save, real_export = train_mod.save_checkpoint, convert.save_safetensors

    def spy_save(mngr, state, meta, data_iterator=None):
        saved[meta["step"]] = jax.device_get((state.params, state.rest, eval_variables(state)))
        return real_save(mngr, state, meta, data_iterator)

    def spy_export(model, path, metadata=None):
        exported[str(path)] = convert.to_state_dict(model)
        return real_export(model, path, metadata)

    import jax

    monkeypatch.setattr(train_mod, "save_checkpoint", spy_save)
    monkeypatch.setattr(convert, "save_safetensors", spy_export)
    kw = dict(recipe="ultralytics", epochs=2, log_every=2, checkpoint_every_steps=5)
    train(smoke_config(tmp_path, "full", **kw), progress=False)
    params, rest, (ema_params, ema_rest) = saved[16]
    graphdef = nnx.graphdef(__import__("yolo11_jax.presets", fromlist=["x"]).build_model(
        "tiny", num_classes=4, rngs=nnx.Rngs(0)))
    want = convert.to_state_dict(nnx.merge(graphdef, ema_params, ema_rest))
    raw = convert.to_state_dict(nnx.merge(graphdef, params, rest))
    got = exported[str(tmp_path / "full" / "weights.safetensors")]
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert any(not np.array_equal(got[k], raw[k]) for k in raw if k.endswith(".weight"))
    # interrupted after step 5 (inside epoch 1), resumed: the same EMA is exported
    train(smoke_config(tmp_path, "part", **kw), progress=False, stop_after_steps=5)
    train(smoke_config(tmp_path, "part", **kw), resume=tmp_path / "part", progress=False)
    again = exported[str(tmp_path / "part" / "weights.safetensors")]
    assert all(np.array_equal(again[k], got[k]) for k in got)
