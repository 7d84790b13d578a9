"""Data parallelism (two simulated CPU devices), two real processes, and bfloat16.

Tolerances:
* two simulated devices vs one: loss parts relative error <= 1e-5; after a step from a common
  state, parameters relative L2 <= 1e-5 per tensor (except the zero-gradient tensors named
  below) and BatchNorm statistics relative L2 <= 1e-5;
* two processes vs one: loss parts of the first step relative error <= 1e-5;
* bfloat16 vs float32: first-step loss parts relative error <= 5e-2.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from yolo11_jax.optim import make_optimizer, make_schedule
from yolo11_jax.presets import build_model
from yolo11_jax.step import TrainState, make_train_step, split_model
from tests.helpers import make_batches, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
PART_KEYS = ("total_loss", "cls_loss", "box_loss", "dfl_loss", "num_pos")
LR = 1e-3

# Exactly zero gradient in exact arithmetic (see tests/test_train_step.py): float32 noise on
# both sides, which AdamW turns into steps of up to ~lr per element. Judged per element by
# |dp - single| <= 2 * lr (each side moves at most ~lr in one step), not by a relative error.
NOISE_ONLY = {
    "['c2psa']['attn']['key']['bias'].value",    # shifts all logits of a query equally: softmax ignores it
    "['c2psa']['attn']['value']['bias'].value",  # a constant per channel that the next BatchNorms remove
    "['c2psa']['attn']['out']['bias'].value",    # likewise, feeds only train-mode BatchNorms
}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.multiprocess
def test_two_simulated_devices_match_one_device():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_parallel_check.py")], capture_output=True,
                          text=True, timeout=900, env=subprocess_env(), cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    # It really ran data-parallel: the batch split over both devices, the state on both.
    assert out["batch_devices"] == 2 and out["batch_sharding"] == "P('data',)"
    assert out["state_devices"] == 2 and out["state_replicated"]

    for step in ("step1", "step2"):
        for k in PART_KEYS:
            single, dp = out[step][k]
            assert rel(dp, single) <= 1e-5, (step, k, dp, single)
        assert out[step]["num_pos"][0] == out[step]["num_pos"][1]
        assert rel(out[step]["grad_norm"][1], out[step]["grad_norm"][0]) <= 1e-4  # sqrt of a sum of squares
    assert set(NOISE_ONLY) <= set(out["params_rel_l2"])
    for name, err in out["params_rel_l2"].items():
        if name in NOISE_ONLY:
            assert out["params_max_abs"][name] <= 2 * LR, (name, out["params_max_abs"][name])
        else:
            assert err <= 1e-5, (name, err)
    assert max(out["rest_rel_l2"].values()) <= 1e-5, out["rest_rel_l2"]
    assert out["rest_int_equal"]
    assert "not divisible by the 2 devices" in out["indivisible_error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_args(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "yolo11_jax.train", "--config", "smoke", "--run-dir", str(run_dir),
            "--epochs", "1", "--shapes-train-images", "16", "--log-every", "1", "--val-split", "none",
            "--workers", "0"]


def _relevant(log: str) -> str:
    """The lines of a child's log that explain a failure (tracebacks, errors), then its end."""
    lines = [ln for ln in log.splitlines() if "Gloo" not in ln]
    keep = [ln for ln in lines if any(w in ln for w in ("Error", "error", "Traceback", "File \""))]
    return "\n".join(keep[:60]) + "\n...\n" + "\n".join(lines[-40:])


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    multi_dir, single_dir = tmp_path / "two", tmp_path / "one"
    procs = []
    try:
        for pid in range(2):
            args = _train_args(multi_dir) + ["--coordinator-address", f"localhost:{port}",
                                             "--num-processes", "2", "--process-id", str(pid)]
            procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=subprocess_env(), cwd=tmp_path, start_new_session=True))
        single = subprocess.run(_train_args(single_dir), capture_output=True, text=True, timeout=900,
                                env=subprocess_env(), cwd=tmp_path)
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:  # always stop them, also when the test fails or times out
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    for pid, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {pid} exited with {p.returncode}:\n{_relevant(log)}"
    assert "in 2 processes" in logs[0]

    one, two = _metrics(single_dir), _metrics(multi_dir)
    # Process 0 alone writes: one line per step (2 steps) and the epoch line, not twice as many.
    assert [r["kind"] for r in two] == [r["kind"] for r in one] == ["interval", "interval", "epoch"]
    first_one, first_two = one[0], two[0]
    assert first_one["step"] == first_two["step"] == 1
    for k in PART_KEYS:
        assert rel(first_two[k], first_one[k]) <= 1e-5, (k, first_two[k], first_one[k])
    # Later steps start from parameters after AdamW's sign-like first update, where float32
    # summation order can flip noise-level elements; they stay close but are not held to 1e-5.
    for k in PART_KEYS:
        assert rel(two[1][k], one[1][k]) <= 1e-3, (k, two[1][k], one[1][k])
    # Orbax wrote one checkpoint (both processes took part), process 0 the exports.
    assert (multi_dir / "checkpoints" / "2").is_dir()
    assert (multi_dir / "weights.safetensors").is_file() and (multi_dir / "config.json").is_file()


@pytest.mark.slow
def test_bfloat16_trains_and_stays_close_to_float32():
    # 128 px and up to 16 boxes per image: a few hundred positives, so that the +-1 changes of
    # the positive count that bfloat16 rounding causes in the assigner (every part is divided
    # by it, the notebook's normalisation) move the parts by well under 5e-2. With a handful of
    # positives (64 px, 4 boxes) one anchor more or less moves cls_loss by 20%.
    num_classes, img_size = 5, 128
    batches = make_batches(num_classes, img_size, 4, 3, max_boxes=16, seed=1)
    results, states = {}, {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        model = build_model("tiny", num_classes=num_classes, dtype=dtype, rngs=nnx.Rngs(0))
        model.train()
        graphdef, params, rest = split_model(model)
        lr_fn = make_schedule(LR, schedule="epoch-cosine", epochs=5, steps_per_epoch=10)
        tx = make_optimizer(lr_fn, weight_decay=0.05, clip_norm=10.0)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
        step = make_train_step(graphdef, tx, lr_fn=lr_fn, img_size=img_size, num_classes=num_classes)
        if name == "bfloat16":  # the convolutions and the attention really run in bfloat16
            hlo = step.lower(state, batches[0]).as_text()
            assert "bf16" in hlo and "convolution" in hlo
        rows = []
        for b in batches:
            state, m = step(state, b)
            rows.append(jax.device_get(m))
        results[name], states[name] = rows, state

    for r in results["bfloat16"]:
        assert all(np.isfinite(float(r[k])) for k in PART_KEYS + ("grad_norm",)), r
    first_bf, first_f32 = results["bfloat16"][0], results["float32"][0]
    for k in PART_KEYS:
        assert rel(float(first_bf[k]), float(first_f32[k])) <= 5e-2, (k, first_bf[k], first_f32[k])
    assert float(first_bf["total_loss"]) != float(first_f32["total_loss"])  # not silently float32
    # Parameters, optimizer state and BatchNorm statistics stay float32.
    for leaf in jax.tree.leaves((states["bfloat16"].params, states["bfloat16"].rest,
                                 states["bfloat16"].opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype


def test_distributed_settings_are_checked():
    from yolo11_jax.parallel import initialize_distributed

    with pytest.raises(ValueError, match="missing: --process-id"):
        initialize_distributed("localhost:1234", 2, None)
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, 2\)"):
        initialize_distributed("localhost:1234", 2, 5)
    assert initialize_distributed(None, None, None) is False  # single process: nothing to do
