"""The library pieces wired into training: --init-weights builds the network its file describes
(the YOLO11 variant recorded in config.json and the export, rebuilt on reload), and box padding
from the data (a YOLO folder with 40 boxes in an image trains with no box dropped at defaults)."""

import json
import time
import warnings

import numpy as np
import pytest
from flax import nnx

from tests.helpers import XLA_CACHE_DIR
from tests.test_box_counts import COUNTS, _yolo_folder
from yolo11_jax import convert, inference
from yolo11_jax.configs import named_config
from yolo11_jax.data.box_counts import pad_size
from yolo11_jax.presets import build_model
from yolo11_jax.train import _saved_variant, finish, loop, setup, train
from yolo11_jax.yolo11 import DEFAULT_VARIANT, Variant

ONE_STEP = dict(val_split=None, eval_every_epochs=0, steps=1, log_every=1, step_timing_steps=0,
                compile_cache_dir=XLA_CACHE_DIR, checkpoint_every_epochs=0)


@pytest.mark.slow  # a training run
def test_init_weights_train_with_the_files_variant_and_export_it(tmp_path, capsys):
    variant = Variant(sppf_act=False)
    assert variant != DEFAULT_VARIANT
    source = build_model("yolo11n", num_classes=4, variant=variant, rngs=nnx.Rngs(3))
    ckpt = tmp_path / "sppf-identity.safetensors"
    convert.save_safetensors(source, str(ckpt), metadata=convert.variant_metadata(source))
    cfg = named_config("smoke", **ONE_STEP, model="yolo11n", init_weights=str(ckpt), img_size=64,
                       run_dir=str(tmp_path / "ft"))
    train(cfg, progress=True)
    log = "".join(capsys.readouterr())
    assert "following the architecture recorded" in log and variant.name in log
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert Variant.from_json(saved[convert.VARIANT_METADATA_KEY]) == variant
    assert _saved_variant(tmp_path / "ft") == variant          # what --resume rebuilds
    meta = inference.safetensors_metadata(tmp_path / "ft" / "weights.safetensors")
    assert convert.variant_from_metadata(meta) == variant
    loaded = inference.load_model(run=tmp_path / "ft")
    assert loaded.model.variant == variant
    assert inference.load_model(weights=tmp_path / "ft" / "weights.safetensors").model.variant == variant


@pytest.mark.slow  # a training run
def test_forty_boxes_in_an_image_train_with_none_dropped_at_defaults(tmp_path):
    folder = _yolo_folder(tmp_path / "data")
    cfg = named_config("smoke", **ONE_STEP, data=str(folder), batch_size=2, run_dir=str(tmp_path / "run"))
    assert cfg.max_boxes == "auto" and cfg.trim_boxes == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = setup(cfg, progress=False)
        t_start = time.perf_counter()
        loop(run, end_step=1, t_start=t_start)
        finish(run, end_step=1, t_start=t_start)
    stats = run.train_data.stats
    assert stats.samples_made >= 2 and stats.sample_boxes > 0 and stats.boxes_truncated_max_boxes == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_boxes"] == run.cfg.max_boxes == pad_size(max(COUNTS)) == 64   # no mosaic in smoke
    assert saved["resolved"]["max_boxes"]["boxes_over"] == 0
    assert saved["resolved"]["trim_boxes"] is True       # auto: on from 64 boxes in one process


@pytest.mark.slow  # a training run
def test_batches_of_several_box_paddings_train_through(tmp_path, capsys):
    """With the padding trimmed per batch (auto from 64 boxes), batches come in several shapes;
    the loop compiles the step once per shape instead of failing at the second one."""
    folder = _yolo_folder(tmp_path / "data")
    cfg = named_config("smoke", **dict(ONE_STEP, steps=3), data=str(folder), batch_size=2,
                       run_dir=str(tmp_path / "run"))
    result = train(cfg, progress=True)
    log = "".join(capsys.readouterr())
    assert result["steps"] == 3 and np.isfinite(result["history"][-1]["total_loss"])
    assert "compiled the step for batches padded to 32 boxes (2 batch shapes so far)" in log


def test_keep_class_rows_after_init_weights(tmp_path):
    """--init-weights onto another class list: the log names the shared classes; with
    --keep-class-rows the shared class keeps the checkpoint's rows of the class-output layers."""
    import numpy as np

    from yolo11_jax.train import load_initial_weights

    source = build_model("tiny", num_classes=3, rngs=nnx.Rngs(1))
    ckpt = tmp_path / "three.safetensors"
    convert.save_safetensors(source, str(ckpt), metadata={"class_names": json.dumps(["cat", "dog", "bird"])})
    data_names = ["bird", "fish"]
    plain = build_model("tiny", num_classes=2, rngs=nnx.Rngs(0))
    lines = load_initial_weights(plain, ckpt, data_names=data_names)
    assert "1 of the data's class names are the checkpoint's (bird)" in lines[-1]
    kept = build_model("tiny", num_classes=2, rngs=nnx.Rngs(0))
    lines = load_initial_weights(kept, ckpt, data_names=data_names, keep_class_rows=True)
    assert lines[-1].startswith("class rows: kept the checkpoint's rows of 1 shared classes (bird)"), lines[-1]
    src, got, fresh = (convert.to_state_dict(m) for m in (source, kept, plain))
    for prefix in kept.class_output_prefixes():
        np.testing.assert_array_equal(got[prefix + "weight"][0], src[prefix + "weight"][2])   # bird <- bird
        np.testing.assert_array_equal(got[prefix + "bias"][0], src[prefix + "bias"][2])
        np.testing.assert_array_equal(got[prefix + "weight"][1], fresh[prefix + "weight"][1])  # fish: initialised


def test_an_explicit_small_max_boxes_gives_one_summary_warning(tmp_path):
    from yolo11_jax.data import build_dataset
    from yolo11_jax.train import _make_pipeline

    folder = _yolo_folder(tmp_path / "data")
    cfg = named_config("smoke", **ONE_STEP, data=str(folder), batch_size=2, max_boxes=10, trim_boxes="off",
                       data_threads=1, cache_images="off")
    data = build_dataset(str(folder), img_size=64)
    logged, warned = [], []
    cfg, pipeline, _, _, resolved = _make_pipeline(cfg, data, logged.append, warn=warned.append)
    assert cfg.max_boxes == 10 and len(warned) == 1 and "--max-boxes 64 keeps every box" in warned[0]
    assert "3 of 6 images" in warned[0] and any("max_boxes=10 (as given" in line for line in logged)
    assert resolved == dict(max_boxes=dict(max_boxes=10, needed=40, source="explicit", images_over=3,
                                           boxes_over=sum(n - 10 for n in COUNTS if n > 10)),
                            trim_boxes=False, data_threads=1, cache_images=False)
