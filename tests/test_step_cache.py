"""The trace cache (``step_cache``): the step it saves and loads computes what the jitted step
computes, bit for bit; its key changes with what the traced program depends on and with nothing
else; a damaged file is traced again; the trainer uses it only where its key covers the step."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from yolo11_jax import YOLOv11, recipes, step_cache
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
from yolo11_jax.optim_ultralytics import ultralytics_recipe
from yolo11_jax.step import init_train_state, make_train_step, split_model
from tests.helpers import make_batches, subprocess_env

NUM_CLASSES, IMG, BATCH = 3, 64, 4


def build(conv_impl="lax"):
    """A tiny network under Ultralytics' recipe with accumulation over 2 batches and the EMA,
    so that the cached program holds the optimizer's ``cond`` and the EMA's ``where``."""
    model = YOLOv11(NUM_CLASSES, base=8, depth=1, rngs=nnx.Rngs(0))
    if conv_impl != "lax":
        from yolo11_jax.kernels import set_conv_impl
        set_conv_impl(model, conv_impl)
    model.train()
    graphdef, params, rest = split_model(model)
    tx, schedule, _ = ultralytics_recipe(params, optimizer="AdamW", lr0=1e-3, num_classes=NUM_CLASSES,
                                         batch_size=BATCH, steps_per_epoch=4, epochs=2, iterations=8,
                                         nbs=2 * BATCH)
    loss = functools.partial(ultralytics_detection_loss, img_size=IMG, num_classes=NUM_CLASSES)
    step = make_train_step(graphdef, tx, loss=loss, hyperparams_fn=schedule, loss_scale="batch")
    state = init_train_state(params, rest, tx, ema=True)
    batches = [{k: jax.numpy.asarray(v) for k, v in b.items()}
               for b in make_batches(NUM_CLASSES, IMG, BATCH, 3, max_boxes=4)]
    return graphdef, step, state, batches


def copy(state):
    return jax.tree.map(jax.numpy.copy, state)


def run(step, state, batches):
    out = []
    for b in batches:
        state, metrics = step(state, b)
        out.append(metrics)
    return jax.tree.leaves((state, out))


def assert_bitwise(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert np.array_equal(x, y), f"leaf {i} differs: max |d| {np.max(np.abs(x.astype(float) - y)):.3g}"


def test_saved_and_loaded_steps_equal_the_jitted_step_bit_for_bit(tmp_path):
    graphdef, step, state, batches = build()
    key = step_cache.cache_key(graphdef, state, batches[0], {"run": 1})
    expected = run(step, copy(state), batches)
    saved = step_cache.compile_step(step, copy(state), batches[0], folder=tmp_path, key=key)
    assert saved.outcome == "saved" and saved.path == tmp_path / f"{key}{step_cache.SUFFIX}"
    assert saved.path.stat().st_size > 0
    assert_bitwise(run(saved, copy(state), batches), expected)
    loaded = step_cache.compile_step(step, copy(state), batches[0], folder=tmp_path, key=key)
    assert loaded.outcome == "loaded"
    assert_bitwise(run(loaded, copy(state), batches), expected)
    # The state is donated, as by the jitted step.
    s = copy(state)
    loaded(s, batches[0])
    assert jax.tree.leaves(s)[0].is_deleted()


def test_a_damaged_file_is_traced_again_and_said_so(tmp_path):
    graphdef, step, state, batches = build()
    key = step_cache.cache_key(graphdef, state, batches[0], {})
    (tmp_path / f"{key}{step_cache.SUFFIX}").write_bytes(b"not an exported program")
    said = []
    again = step_cache.compile_step(step, copy(state), batches[0], folder=tmp_path, key=key, log=said.append)
    assert again.outcome == "saved" and len(said) == 1 and "could not be read" in said[0] and key in said[0]
    assert_bitwise(run(again, copy(state), batches), run(step, copy(state), batches))
    assert step_cache.compile_step(step, copy(state), batches[0], folder=tmp_path, key=key).outcome == "loaded"


def test_the_key_follows_what_the_program_depends_on():
    graphdef, _, state, batches = build()
    key = step_cache.cache_key(graphdef, state, batches[0], {"lr": 1e-3})
    assert key == step_cache.cache_key(graphdef, state, batches[0], {"lr": 1e-3})
    assert key != step_cache.cache_key(graphdef, state, batches[0], {"lr": 2e-3})   # an option
    smaller = dict(batches[0], images=batches[0]["images"][:, :32, :32])
    assert key != step_cache.cache_key(graphdef, state, smaller, {"lr": 1e-3})   # a shape
    other, _, _, _ = build(conv_impl="cpu_depthwise")  # a static attribute of the network
    assert key != step_cache.cache_key(other, state, batches[0], {"lr": 1e-3})
    assert batches[0]["images"].dtype == np.float32
    uint8 = dict(batches[0], images=(batches[0]["images"] * 255).astype(np.uint8))
    assert key != step_cache.cache_key(graphdef, state, uint8, {"lr": 1e-3})   # a dtype
    with jax.default_matmul_precision("bfloat16"):  # jax's configuration
        assert key != step_cache.cache_key(graphdef, state, batches[0], {"lr": 1e-3})


KEY_IN_A_PROCESS = r"""
import tests.conftest  # the test session's jax configuration (matmul precision), which the key covers
from tests.test_step_cache import build
from yolo11_jax import step_cache
graphdef, _, state, batches = build()
print(step_cache.cache_key(graphdef, state, batches[0], {"lr": 1e-3}))
"""


def test_the_key_is_the_same_in_another_process():
    """No process-dependent text (object addresses, hash seeds) gets into the key."""
    graphdef, _, state, batches = build()
    proc = subprocess.run([sys.executable, "-c", KEY_IN_A_PROCESS], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(PYTHONHASHSEED="123"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == step_cache.cache_key(graphdef, state, batches[0], {"lr": 1e-3})


def test_the_key_covers_this_packages_sources(tmp_path, monkeypatch):
    graphdef, _, state, batches = build()
    key = step_cache.cache_key(graphdef, state, batches[0], {})
    monkeypatch.setattr(step_cache, "source_digest", lambda: "another source tree")
    assert step_cache.cache_key(graphdef, state, batches[0], {}) != key


def test_eligible_only_where_the_key_covers_the_step():
    builtin = {"loss": recipes.get_loss("ultralytics").build, "optimizer": recipes.get_optimizer("AdamW").build}
    assert step_cache.eligible(devices=1, processes=1, builders=builtin) is None
    assert "2 devices" in step_cache.eligible(devices=2, processes=1, builders=builtin)
    assert "2 processes" in step_cache.eligible(devices=1, processes=2, builders=builtin)

    def my_loss(cfg):
        return None
    why = step_cache.eligible(devices=1, processes=1, builders=dict(builtin, loss=my_loss))
    assert why is not None and "loss" in why and __name__ in why


@pytest.mark.slow
def test_the_trainer_saves_then_loads_the_step_and_trains_the_same(tmp_path):
    from yolo11_jax.configs import named_config
    from yolo11_jax.train import train
    rows = {}
    for name, extra in [("first", {}), ("second", {}), ("off", {"trace_cache": "off"})]:
        cfg = named_config("smoke", val_split=None, eval_every_epochs=0, workers=1, epochs=1,
                           compile_cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / name), **extra)
        train(cfg, progress=False)
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rows[name] = lines
    first_rows = {name: [r for r in lines if "trace_cache" in r] for name, lines in rows.items()}
    assert [r["trace_cache"] for r in first_rows["first"]] == ["saved"]
    assert [r["trace_cache"] for r in first_rows["second"]] == ["loaded"]
    assert [r["trace_cache"] for r in first_rows["off"]] == ["off (--trace-cache off)"]
    assert len(list((tmp_path / "cache" / step_cache.SUBDIR).glob(f"*{step_cache.SUFFIX}"))) == 1
    losses = {name: [r["total_loss"] for r in lines if r["kind"] == "interval"] for name, lines in rows.items()}
    assert losses["first"] == losses["second"] == losses["off"] and len(losses["first"]) >= 1
