"""Recipes as plug-in modules (yolo11_jax/recipes/): a recipe registered from outside runs through
``train`` unchanged; configurations state the values that run; ignored combinations are errors."""

import dataclasses
import json
import re

import jax.numpy as jnp
import optax
import pytest

from yolo11_jax.data.box_counts import pad_size

from tests.helpers import XLA_CACHE_DIR
from yolo11_jax import recipes
from yolo11_jax.data import Augment
from yolo11_jax.train import build_parser, main, setup, train
from yolo11_jax.train_config import CONFIGS, TrainConfig, named_config

TINY = dict(model="tiny", data="shapes", shapes_train_images=16, shapes_val_images=0, shapes_img_size=64,
            img_size=64, batch_size=8, max_samples=None, val_split=None, eval_every_epochs=0, log_every=1,
            num_classes=None, workers=0, compile_cache_dir=XLA_CACHE_DIR)


def _toy_loss(cfg):
    def loss(predictions, boxes_cxcywh, labels, mask):
        # the mean squared class logit, pulled towards -1
        total = sum(jnp.mean((level[0].astype(jnp.float32) + 1.0) ** 2) for level in predictions)
        return total, {"total_loss": total, "num_fg": jnp.sum(mask, dtype=jnp.int32)}
    return loss


def _toy_optimizer(cfg, params, length):
    return recipes.OptimizerSetup(tx=optax.sgd(cfg.lr, momentum=cfg.momentum), info={"optimizer": "toy SGD"},
                                  lr_fn=lambda step: cfg.lr)


@pytest.fixture
def toy_recipe():
    recipe = recipes.register(recipes.Recipe(
        name="toy", description="a test recipe",
        loss=recipes.Loss(name="toy", build=_toy_loss, assigners=("none",),
                          defaults=dict(topk=1, assigner="none", class_bias_prior=False)),
        optimizer=recipes.Optimizer(names=("toy-sgd",), build=_toy_optimizer,
                                    defaults=lambda values: dict(lr=0.05, weight_decay=0.0, momentum=0.5,
                                                                 torch_compat=False)),
        default_optimizer="toy-sgd", ema=True, augment_name="toy-flip", augment=Augment(fliplr=0.5)))
    yield recipe
    recipes.unregister("toy")


def test_a_recipe_registered_outside_runs_one_step_through_train(tmp_path, toy_recipe):
    cfg = named_config("smoke", **TINY, recipe="toy", steps=2, run_dir=str(tmp_path / "toy"))
    assert (cfg.loss, cfg.optimizer, cfg.lr, cfg.ema, cfg.augment, cfg.fliplr) == ("toy", "toy-sgd", 0.05, True,
                                                                                    "toy-flip", 0.5)
    out = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "interval"]
    assert [r["step"] for r in steps] == [1, 2] and steps[1]["total_loss"] < steps[0]["total_loss"]
    saved = json.loads((tmp_path / "toy" / "config.json").read_text())
    assert saved["recipe"] == "toy" and saved["resolved"]["optimizer_info"] == {"optimizer": "toy SGD"}
    # time to the first step and step-only throughput on the first interval row; the run's
    # end-to-end throughput and its ratio to the step-only figure on the epoch row and in the summary
    assert steps[0]["time_to_first_step_s"] >= steps[0]["compile_s"] > 0 and steps[0]["step_only_images_per_s"] > 0
    assert "compile_s" not in steps[1] and steps[1]["input_efficiency"] > 0
    epoch = next(r for r in rows if r["kind"] == "epoch")
    assert epoch["end_to_end_images_per_s"] > 0
    assert epoch["input_efficiency"] == pytest.approx(epoch["end_to_end_images_per_s"]
                                                      / steps[0]["step_only_images_per_s"])
    assert out["throughput"]["input_efficiency"] == epoch["input_efficiency"]
    assert {r["kind"] for r in rows} == {"interval", "epoch"}
    with pytest.raises(ValueError, match="unknown --recipe 'toy'"):
        recipes.unregister("toy")
        TrainConfig(recipe="toy")
    recipes.register(toy_recipe)  # (the fixture unregisters it)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_json_of_each_named_config_states_every_recipe_decided_value(tmp_path, name):
    """setup() under each named config (its data swapped for a few embedded images, so that no
    network is needed) writes a config.json without a None among the options a recipe decides."""
    base = named_config(name)
    run = setup(named_config(name, **TINY, run_dir=str(tmp_path / name)), progress=False)
    saved = json.loads((tmp_path / name / "config.json").read_text())
    for key in recipes.DECIDED_FIELDS:
        assert saved[key] is not None and saved[key] == getattr(base, key), key
    assert saved["num_classes"] == 4 and saved["conv_impl"] == base.conv_impl
    assert saved["resolved"]["total_steps"] == run.total_steps > 0
    run.metrics.close()


def test_help_shows_the_chosen_configs_values(capsys):
    with pytest.raises(SystemExit):
        main(["--config", "cpu-ultralytics", "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # (argparse wraps after hyphens)
    cfg = named_config("cpu-ultralytics")
    for key, want in (("optimizer", "auto"), ("model", "yolo11n"), ("epochs", "14"), ("lr", "0.01"),
                      ("mosaic", "1.0"), ("topk", "10"), ("assigner", "ultralytics"), ("ema", "True"),
                      ("conv_impl", "auto"), ("nbs", "16"), ("max_boxes", "auto"),
                      ("trim_boxes", "auto"), ("cache_images", "auto")):
        assert str(getattr(cfg, key)) == want
        assert f"(cpu-ultralytics config: {want})" in text, key
    assert "None" not in " ".join(a.help for a in build_parser("cpu-ultralytics")._actions
                                  if a.dest in recipes.DECIDED_FIELDS)


@pytest.mark.parametrize("overrides,message", [
    (dict(recipe="ultralytics", assigner="chunked"), "--assigner chunked is not used by --loss ultralytics"),
    (dict(nbs=16), "--nbs 16 is not used by --optimizer notebook"),
    (dict(warmup_rule="8.4"), "--warmup-rule 8.4 is not used by --optimizer notebook"),
    (dict(recipe="ultralytics", schedule="constant"), "--schedule constant is not used by --optimizer auto"),
    (dict(recipe="ultralytics", lr=1e-3), "--lr 0.001 is not used by --optimizer auto"),
    (dict(loss="ultralytics", torch_compat=True), "--torch-compat reproduces the notebook's loop"),
])
def test_an_ignored_combination_is_an_error_before_the_first_step(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(named_config("smoke", **TINY, **overrides, run_dir=str(tmp_path / "x")), progress=False)
    assert not (tmp_path / "x").exists()


def test_configurations_are_frozen_and_resolved_once(capsys):
    cfg = named_config("smoke", recipe="ultralytics", mosaic=0.25)
    assert (cfg.augment, cfg.mosaic, cfg.fliplr, cfg.loss, cfg.topk) == ("ultralytics", 0.25, 0.5, "ultralytics", 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    mixed = named_config("smoke", loss="ultralytics")  # the notebook's optimizer with Ultralytics' loss
    assert (mixed.optimizer, mixed.torch_compat, mixed.topk, mixed.class_bias_prior) == ("notebook", False, 10, True)
    # spellings of earlier versions
    assert TrainConfig(assigner="dense").assigner == "spec"
    assert "--assigner dense is deprecated" in capsys.readouterr().err
    # a config.json of an earlier version, with None for "the recipe's value", resumes resolved
    old = {**dataclasses.asdict(named_config("smoke")), "lr": None, "augment": None, "mosaic": None}
    assert TrainConfig(**old) == named_config("smoke")


def test_max_boxes_auto_is_resolved_from_the_index_and_recorded(tmp_path):
    args = build_parser().parse_args(["--max-boxes", "auto"])
    assert args.max_boxes == "auto"
    run = setup(named_config("smoke", **TINY, max_boxes="auto", run_dir=str(tmp_path / "auto")), progress=False)
    most = max(rec.num_boxes for rec in getattr(run.train_data.examples, "records", run.train_data.examples))
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    # no mosaic in the smoke config: the most boxes of one image, rounded up to a pad size
    assert saved["max_boxes"] == run.cfg.max_boxes == pad_size(most) >= most >= 1
    assert saved["resolved"]["max_boxes"]["needed"] == most and saved["resolved"]["max_boxes"]["source"] == "data"
    assert saved["resolved"]["trim_boxes"] is False and saved["resolved"]["data_threads"] >= 1
    assert isinstance(saved["resolved"]["cache_images"], bool)
    # what --host-malloc did (in this test process JAX's backend started before setup, so "too late"
    # unless an earlier setup of this process applied it): the same description configure gives now
    from yolo11_jax import host_memory
    assert saved["resolved"]["host_malloc"] == host_memory.configure(run.cfg.host_malloc)
    run.metrics.close()


def test_an_assigner_registered_outside_is_accepted_and_used():
    """A fork adds ``--assigner NAME`` from its own module: the notebook's loss accepts it and
    builds its loss with it; an unknown name is still refused."""
    from yolo11_jax.assign import task_aligned_assign
    from yolo11_jax.recipes import notebook

    calls = []

    def make(img_size):
        calls.append(img_size)
        return task_aligned_assign

    notebook.register_assigner("toy-assigner", make)
    try:
        cfg = named_config("smoke", assigner="toy-assigner")
        assert recipes.problems(cfg) == []
        loss_fn = recipes.get_loss(cfg.loss).build(cfg)
        assert calls == [cfg.img_size] and loss_fn.keywords["assigner"] is task_aligned_assign
        assert any("--assigner nope" in p for p in recipes.problems(named_config("smoke", assigner="nope")))
        with pytest.raises(ValueError, match="already registered"):
            notebook.register_assigner("toy-assigner", make)
    finally:
        del notebook.ASSIGNERS["toy-assigner"]


def test_warmup_rule_reaches_ultralytics_optimizer():
    """--warmup-rule picks the warmup length of the Ultralytics recipe's schedule (3 images at batch
    3, 60 epochs: 100 iterations under 8.3.253's rule, 3 under 8.4.190's)."""
    from yolo11_jax.recipes import ultralytics as U

    params = {"conv": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)}}
    length = recipes.RunLength(steps_per_epoch=1, total_steps=60, num_images=3)
    for rule, nw in (("8.3", 100), ("8.4", 3)):
        cfg = named_config("smoke", recipe="ultralytics", warmup_rule=rule, batch_size=3, num_classes=21)
        info = U.build_optimizer(cfg, params, length).info
        assert (info["warmup_rule"], info["warmup_iterations"]) == (rule, nw)
