"""``train --init-weights ... --keep-class-rows`` on yolo11n, whose class branch is
``max(64, min(nc, 100))`` wide: fine-tuning from 80 classes onto 5, the branch keeps the
checkpoint's width (``yolo11.Variant.cls_hidden``) so its hidden layers load from the file, the
last 1x1 class layer is new, and the shared classes' rows are copied into it
(``convert.init_weights_variant`` / ``build_for_init_weights``, ``train.load_initial_weights``).
Without ``--keep-class-rows`` Ultralytics' behaviour holds: the branch is built by the rule and
re-initialised. The variant travels with the run (config.json, export metadata) so resume,
evaluate and predict rebuild the same network.

Checkpoints are the torch reference's random initialisation with randomised BatchNorms (cheap on
the CPU); models are abstract NNX networks filled with a fresh reference initialisation (as in
``test_yolo11.fresh_model``) except where ``build_for_init_weights`` itself builds one.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from flax import nnx

from reference_torch.yolo11 import YOLO11 as RefYOLO11
from tests.helpers import XLA_CACHE_DIR, randomize_batchnorm
from yolo11_jax import convert, inference
from yolo11_jax.train import _saved_variant, load_initial_weights
from yolo11_jax.yolo11 import DEFAULT_VARIANT, YOLO11, Variant

CKPT_NAMES = [f"c{i}" for i in range(77)] + ["person", "car", "dog"]   # 80, COCO-like
DATA_NAMES = ["dog", "zebra", "person", "car", "fish"]                 # 3 shared: dog, person, car
SHARED = [(0, 79), (2, 77), (3, 78)]                                   # (data class, checkpoint class)
HIDDEN = ("0.1.conv", "0.1.bn", "1.0.conv", "1.0.bn", "1.1.conv", "1.1.bn")  # layers of cv3.<level>
LAST = [f"model.23.cv3.{i}.2." for i in range(3)]


def checkpoint_file(tmp_path, names=CKPT_NAMES, seed=7, **variant):
    """A yolo11n ``.safetensors`` with ``len(names)`` classes and those class names; returns
    ``(path, state dict)``."""
    torch.manual_seed(seed)
    ref = RefYOLO11("n", len(names), **({"cls_hidden": variant["cls_hidden"]} if "cls_hidden" in variant else {}))
    randomize_batchnorm(ref, seed)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    path = tmp_path / "ckpt.safetensors"
    meta = {"class_names": json.dumps(names)}
    if variant:
        meta[convert.VARIANT_METADATA_KEY] = Variant(**variant).to_json()
    convert.save_safetensors(sd, str(path), metadata=meta)
    return path, sd


def fresh_model(num_classes, variant=DEFAULT_VARIANT, seed=11):
    """A concrete yolo11n with ``variant`` holding a fresh Ultralytics-style initialisation."""
    model = nnx.eval_shape(lambda: YOLO11("n", num_classes, variant=variant, rngs=nnx.Rngs(0)))
    torch.manual_seed(seed)
    convert.load_state_dict(model, RefYOLO11("n", num_classes, cls_hidden=variant.cls_hidden).state_dict())
    return model


def hidden_keys(sd):
    return sorted(k for k in sd if any(k.startswith(f"model.23.cv3.{i}.{h}.") for i in range(3) for h in HIDDEN))


# ----------------------------------------------------------------------------- which network


def test_keep_class_rows_builds_the_checkpoints_class_branch_width(tmp_path):
    path, _ = checkpoint_file(tmp_path)
    facts = convert.weights_file_facts(path)
    assert (facts.num_classes, facts.class_widths, facts.variant) == (80, (64, 80), DEFAULT_VARIANT)
    variant, note = convert.init_weights_variant(facts, 5, keep_class_rows=True, class_names=DATA_NAMES)
    assert variant == Variant(cls_hidden=80)
    assert "class branch kept 80 wide" in note and "instead of 64" in note and "3 shared classes" in note
    assert "Ultralytics re-initialises the whole branch" in note
    # Ultralytics' behaviour otherwise: without the option, with no shared name, with no data names
    for kw in (dict(keep_class_rows=False, class_names=DATA_NAMES),
               dict(keep_class_rows=True, class_names=["zebra", "fish"]),
               dict(keep_class_rows=True, class_names=None)):
        assert convert.init_weights_variant(facts, 5, **kw) == (DEFAULT_VARIANT, None), kw
    # 80 -> 90 classes: the rule gives 90, the checkpoint has 80: kept at 80
    assert convert.init_weights_variant(facts, 90, keep_class_rows=True,
                                        class_names=["person"] + [f"x{i}" for i in range(89)])[0] \
        == Variant(cls_hidden=80)
    # the rule already gives the checkpoint's width (120 -> 110 classes: both 100): the default
    wide = dataclasses.replace(facts, num_classes=120, class_widths=(64, 100), class_names=[f"w{i}" for i in range(119)] + ["person"])
    assert convert.init_weights_variant(wide, 110, keep_class_rows=True, class_names=["person"] + [f"y{i}" for i in range(109)]) == (DEFAULT_VARIANT, None)
    # same class count: the file's network
    assert convert.init_weights_variant(facts, 80, keep_class_rows=True, class_names=CKPT_NAMES) == (DEFAULT_VARIANT,
                                                                                                      None)


def test_a_fine_tuned_files_width_is_kept_for_its_own_class_count_and_dropped_without_the_option(tmp_path):
    """A run fine-tuned with --keep-class-rows (5 classes, 80 wide) records cls_hidden=80: its own
    class count rebuilds it; onto another class list without the option, the rule again."""
    path, _ = checkpoint_file(tmp_path, names=DATA_NAMES, cls_hidden=80)
    facts = convert.weights_file_facts(path)
    assert facts.variant == Variant(cls_hidden=80) and facts.class_widths == (64, 80)
    assert convert.init_weights_variant(facts, 5) == (Variant(cls_hidden=80), None)
    variant, note = convert.init_weights_variant(facts, 3, class_names=["dog", "cat", "cow"])
    assert variant == DEFAULT_VARIANT and "64 wide (Ultralytics' rule for 3 classes), not the file's 80" in note
    assert convert.init_weights_variant(facts, 3, keep_class_rows=True, class_names=["dog", "cat", "cow"])[0] \
        == Variant(cls_hidden=80)


def test_a_safetensors_without_variant_metadata_builds_the_width_its_tensors_have(tmp_path):
    path, sd = checkpoint_file(tmp_path, names=DATA_NAMES, cls_hidden=80)
    bare = tmp_path / "bare.safetensors"
    convert.save_safetensors(sd, str(bare))     # no metadata at all
    facts = convert.weights_file_facts(bare)
    assert facts.variant == DEFAULT_VARIANT and facts.class_names is None and facts.class_widths == (64, 80)
    variant, note = convert.init_weights_variant(facts, 5)
    assert variant == Variant(cls_hidden=80) and "80 wide" in note


# ----------------------------------------------------------------------------- what loads


def test_keep_class_rows_on_yolo11n_loads_the_hidden_layers_and_the_shared_rows(tmp_path):
    path, ckpt = checkpoint_file(tmp_path)
    model = fresh_model(5, Variant(cls_hidden=80))
    fresh = convert.to_state_dict(model)
    lines = load_initial_weights(model, path, data_names=DATA_NAMES, keep_class_rows=True)
    summary = "\n".join(lines)
    assert "loaded 493 of 499 tensors" in summary, summary
    assert "re-initialised (class count differs) 6 tensors in 3 layers: model.23.cv3.0.2, model.23.cv3.1.2, " \
           "model.23.cv3.2.2" in summary
    assert lines[-1].startswith("class rows: kept the checkpoint's rows of 3 shared classes (dog, person, car) "
                                "in 3 class layers"), lines[-1]
    after = convert.to_state_dict(model)
    hidden = hidden_keys(after)   # per level 3 convolutions (weight) and 3 BatchNorms (5 leaves)
    assert len(hidden) == 3 * (3 + 3 * 5) and {".".join(k.split(".")[4:7]) for k in hidden} == set(HIDDEN)
    for k in after:
        if not k.startswith(tuple(LAST)):   # the whole network but the class layers: the checkpoint's
            np.testing.assert_array_equal(after[k], ckpt[k].astype(after[k].dtype), err_msg=k)
    for p in LAST:
        w, b = after[p + "weight"], after[p + "bias"]
        assert w.shape == (5, 80, 1, 1)
        for i, j in SHARED:
            np.testing.assert_array_equal(w[i], ckpt[p + "weight"][j])
            np.testing.assert_array_equal(b[i], ckpt[p + "bias"][j])
        for i in (1, 4):   # zebra, fish: the model's initialisation
            np.testing.assert_array_equal(w[i], fresh[p + "weight"][i])
            np.testing.assert_array_equal(b[i], fresh[p + "bias"][i])


def test_without_keep_class_rows_yolo11n_reinitialises_the_branch_as_ultralytics_does(tmp_path):
    path, ckpt = checkpoint_file(tmp_path)
    model = fresh_model(5)          # what build_for_init_weights builds without the option
    fresh = convert.to_state_dict(model)
    lines = load_initial_weights(model, path, data_names=DATA_NAMES)
    assert "3 of the data's class names are the checkpoint's (dog, person, car); --keep-class-rows keeps" in lines[-1]
    after = convert.to_state_dict(model)
    reinit = [k for k in after if k.startswith("model.23.cv3.") and not k.startswith(
        tuple(f"model.23.cv3.{i}.0.0." for i in range(3)))]
    assert len(reinit) == 3 * (3 + 3 * 5 + 2)   # the hidden layers and the class layer, every level
    assert {k.rsplit(".", 1)[0].split("cv3.")[1][2:] for k in reinit} == set(HIDDEN) | {"2"}
    for k in after:
        want = fresh[k] if k in reinit else ckpt[k].astype(after[k].dtype)
        np.testing.assert_array_equal(after[k], want, err_msg=k)
    assert after["model.23.cv3.0.1.1.conv.weight"].shape == (64, 64, 1, 1)
    # keep_class_rows on that network: nothing can be kept (the class layer takes 64 inputs, not 80)
    model = fresh_model(5)
    lines = load_initial_weights(model, path, data_names=DATA_NAMES, keep_class_rows=True)
    assert "no class layer could keep them" in lines[-1]


def test_the_default_variant_refuses_what_the_cls_hidden_one_loads(tmp_path):
    """The check can fail: the same 80-wide file does not fit a yolo11n built by the rule when the
    class counts agree (the branch is no class-count re-initialisation then)."""
    path, ckpt = checkpoint_file(tmp_path, names=DATA_NAMES, cls_hidden=80)
    with pytest.raises(ValueError, match=re.escape("shape mismatch: model.23.cv3.0.0.1.conv.weight")):
        load_initial_weights(fresh_model(5), path)
    model = fresh_model(5, Variant(cls_hidden=80))
    assert "loaded 499 of 499 tensors" in load_initial_weights(model, path)[0]


# ----------------------------------------------------------------------------- the variant travels


def test_the_cls_hidden_variant_travels_with_exports_and_config(tmp_path):
    """What a --keep-class-rows run writes (config.json's and the export's yolo11_variant) rebuilds
    the 80-wide network: resume (``_saved_variant``), evaluate / predict (``inference.load_model``)."""
    variant = Variant(cls_hidden=80)
    model = fresh_model(5, variant)
    meta = convert.variant_metadata(model)
    assert json.loads(meta[convert.VARIANT_METADATA_KEY])["cls_hidden"] == 80
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"model": "yolo11n", "num_classes": 5, "class_names": DATA_NAMES, **meta}
    (run / "config.json").write_text(json.dumps(cfg))
    assert _saved_variant(run) == variant
    convert.save_safetensors(model, str(run / "weights.safetensors"),
                             metadata={"config": json.dumps(cfg), **meta})
    for loaded in (inference.load_model(weights=run / "weights.safetensors"), inference.load_model(run=run)):
        assert loaded.model.variant == variant and loaded.model.model[23].cls_hidden == 80
        got, want = convert.to_state_dict(loaded.model), convert.to_state_dict(model)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert convert.weights_variant(run / "weights.safetensors")[0] == variant


def test_a_pt_file_whose_class_branch_is_not_the_rule_reads_as_cls_hidden(tmp_path):
    """Ultralytics always builds ``max(ch0, min(nc, 100))``; a file whose pickled modules are built
    otherwise is read as the network it is (like its scale and class count, from its tensors),
    and computes as the reference of that width."""
    from tests.test_ultralytics_import import assert_equals_reference, released, stand_in_model, ultralytics_stand_ins
    from yolo11_jax.ultralytics_pt import read_ultralytics

    with ultralytics_stand_ins() as classes:
        dm, reference = stand_in_model(classes, cls_hidden=80)
        path = tmp_path / "w.pt"
        torch.save(released(dm), path)
        plain, _ = stand_in_model(classes)
        plain_path = tmp_path / "plain.pt"
        torch.save(released(plain), plain_path)
    _, info = read_ultralytics(path)
    assert info["variant"]["cls_hidden"] == 80
    model, info = convert.load_ultralytics(path)
    assert model.variant == Variant(cls_hidden=80) and info["variant_name"] == "yolo11[cls_hidden=80]"
    assert_equals_reference(model, reference)
    _, plain_info = read_ultralytics(plain_path)
    assert "cls_hidden" not in plain_info["variant"]


@pytest.mark.slow  # builds two yolo11n with NNX's own initialisation (~30 s on 2 CPU cores without the cache)
def test_build_for_init_weights_with_keep_class_rows_end_to_end(tmp_path):
    path, ckpt = checkpoint_file(tmp_path)
    model, note = convert.build_for_init_weights("yolo11n", path, num_classes=5, keep_class_rows=True,
                                                 class_names=DATA_NAMES, rngs=nnx.Rngs(0))
    assert model.variant == Variant(cls_hidden=80) and "class branch kept 80 wide" in note
    load_initial_weights(model, path, data_names=DATA_NAMES, keep_class_rows=True)
    after = convert.to_state_dict(model)
    for k in hidden_keys(after):
        np.testing.assert_array_equal(after[k], ckpt[k].astype(after[k].dtype), err_msg=k)
    for p in LAST:
        for i, j in SHARED:
            np.testing.assert_array_equal(after[p + "weight"][i], ckpt[p + "weight"][j])
    plain, note = convert.build_for_init_weights("yolo11n", path, num_classes=5, class_names=DATA_NAMES,
                                                 rngs=nnx.Rngs(0))
    assert plain.variant == DEFAULT_VARIANT and note is None


@pytest.mark.slow  # a training run
def test_a_keep_class_rows_run_records_the_width_and_reloads_it(tmp_path, capsys):
    from tests.test_box_counts import _yolo_folder
    from yolo11_jax.configs import named_config
    from yolo11_jax.train import train

    folder = _yolo_folder(tmp_path / "data")    # classes bird, feeder
    path, ckpt = checkpoint_file(tmp_path, names=[f"c{i}" for i in range(79)] + ["bird"])
    cfg = named_config("smoke", val_split=None, eval_every_epochs=0, steps=1, log_every=1, step_timing_steps=0,
                       compile_cache_dir=XLA_CACHE_DIR, checkpoint_every_epochs=0, data=str(folder), batch_size=2,
                       model="yolo11n", init_weights=str(path), keep_class_rows=True, img_size=64,
                       run_dir=str(tmp_path / "ft"))
    train(cfg, progress=True)
    log = "".join(capsys.readouterr())
    assert "--keep-class-rows: class branch kept 80 wide" in log and "instead of 64" in log, log
    assert "kept the checkpoint's rows of 1 shared classes (bird)" in log
    variant = Variant(cls_hidden=80)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert Variant.from_json(saved[convert.VARIANT_METADATA_KEY]) == variant
    assert _saved_variant(tmp_path / "ft") == variant           # what --resume rebuilds
    meta = inference.safetensors_metadata(tmp_path / "ft" / "weights.safetensors")
    assert convert.variant_from_metadata(meta) == variant
    assert inference.load_model(run=tmp_path / "ft").model.variant == variant
    assert inference.load_model(weights=tmp_path / "ft" / "weights.safetensors").model.variant == variant
