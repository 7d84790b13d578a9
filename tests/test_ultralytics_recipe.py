"""Ultralytics' training recipe: ``optim.ultralytics_recipe``, ``ema`` and ``make_train_step(recipe=
"ultralytics")`` against the PyTorch loop ``reference_torch.ultralytics_train`` and against
Ultralytics' formulas (stated in the docstrings of ``optim_ultralytics`` and ``ema``).

Full trajectory (``test_trajectory_matches_reference_loop``; float32 on both sides, yolo11n at
64 px, batch 2, 2 batches per epoch, optimizer=auto -> AdamW, 4 iterations = 3 optimizer steps
inside the 100-iteration warmup, windows 1, 1, 2, an epoch boundary after iteration 1):

* loss parts at every iteration: relative error <= 1e-3 (PART_RTOL);
* learning rates at every iteration: relative 1e-6 (HYPER_RTOL; float32 here, float64 in the
  reference), the optimizer-step flags identical, the gradient norm of the one-batch windows
  (that of batch_size x the loss) relative 1e-3;
* parameters, BatchNorm statistics, and the EMA's parameters and BatchNorm statistics after the
  iterations: relative L2 <= 1e-3 per tensor (STATE_RTOL), except the tensors whose exact gradient
  is zero (ZERO_GRADIENT_TENSORS: float32 noise on both sides, which AdamW turns into steps of
  ~lr per element), held to an absolute L2 of ABS_FLOOR_LR x (the largest learning rate of the
  run) x the number of steps x sqrt(size);
* the parameter updates themselves (after - before), for tensors that moved by >= 1e-4 of their
  norm: relative L2 <= 3e-2 (DELTA_RTOL). In the warmup the learning rates are at most 3 % of lr0,
  so the parameters move by less than STATE_RTOL of their norm and only this check can see a wrong
  update; its tolerance is looser because a difference of two float32 tensors that differ by 1e-4
  relative loses ~3 digits, the gradients agree to ~1e-3 per tensor (test_ultralytics_loss), and
  the trajectories drift apart over the steps (measured: 1.0e-2).

Optimizer trajectories (``test_optimizer_trajectory_matches_torch_optimizers``: AdamW, SGD and
auto -> SGD over 260 iterations on identical gradients of a small parameter set): parameters and
EMA relative L2 <= 1e-4 per tensor. The schedule, the stepping rule, the groups, the weight decay,
the summed and clipped gradient and the EMA formula are unit-tested against Ultralytics' formulas.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx

from reference_torch import ultralytics_train as RT
from reference_torch.ultralytics_loss import UltralyticsDetectionLoss
from reference_torch.yolo11 import YOLO11 as RefYOLO11
from yolo11_jax import convert, ema as E, optim
from yolo11_jax.loss import detection_loss
from yolo11_jax.loss_ultralytics import ultralytics_detection_loss
from yolo11_jax.presets import build_model
from yolo11_jax.step import init_train_state, make_train_step, split_model
from tests.helpers import make_batches, randomize_batchnorm, rel_l2, torch_targets



def optimizer_step_iterations(num_iterations: int, nw: int, batch_size: int, nbs: int = optim.NBS) -> np.ndarray:
    """The iterations (0-based batch indices) among the first ``num_iterations`` after whose
    backward pass Ultralytics steps the optimizer, from ``optim.accumulation_windows``."""
    windows, steady = optim.accumulation_windows(nw, batch_size, nbs)
    steps, ni = [], -1
    for k in itertools.count():
        ni += int(windows[k]) if k < len(windows) else steady
        if ni >= num_iterations:
            return np.asarray(steps, np.int64)
        steps.append(ni)


PART_RTOL = 1e-3
HYPER_RTOL = 1e-6
STATE_RTOL = 1e-3
DELTA_RTOL = 3e-2
DELTA_MIN_CHANGE = 1e-4
ABS_FLOOR_LR = 2.0
PART_KEYS = ("box_loss", "cls_loss", "dfl_loss", "total_loss")

# Exactly-zero gradients (see tests/test_ultralytics_loss.py): each adds a per-channel constant that
# only reaches 1x1 convolutions followed by train-mode BatchNorms.
ZERO_GRADIENT_TENSORS = {"model.10.m.0.attn.pe.bn.bias", "model.10.m.0.attn.proj.bn.bias",
                         "model.10.m.0.ffn.1.bn.bias"}

NC, IMG, BATCH, NB, EPOCHS, ITERS = 3, 64, 2, 2, 3, 4
RESUME_AT = 3  # inside the third accumulation window (iterations 2 and 3)


def _torch_state(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _check_state(ours: dict, theirs: dict, floor: float, what: str,
                 before: dict | None = None) -> tuple[float, float]:
    """Every float tensor of ``theirs`` (a torch state dict) against ``ours``, and with ``before``
    the updates; returns the worst relative L2 of the values and of the updates checked."""
    worst = worst_update = 0.0
    checked = 0
    for key, want in theirs.items():
        if "num_batches_tracked" in key or key.endswith("dfl.conv.weight"):
            continue
        got = ours[key]
        if key in ZERO_GRADIENT_TENSORS:
            assert np.linalg.norm(got - want) <= floor * math.sqrt(want.size), (what, key)
            continue
        err = rel_l2(got, want)
        worst = max(worst, err)
        assert err <= STATE_RTOL, (what, key, err)
        if before is not None:
            change = want - before[key]
            if np.linalg.norm(change) >= DELTA_MIN_CHANGE * np.linalg.norm(before[key]):
                derr = rel_l2(got - before[key], change)
                worst_update = max(worst_update, derr)
                assert derr <= DELTA_RTOL, (what, "update", key, derr)
                checked += 1
        else:
            checked += 1
    assert checked > 50, (what, checked)
    return worst, worst_update


@pytest.mark.slow
def test_trajectory_matches_reference_loop(tmp_path):
    """Three optimizer steps of the full recipe from uint8 batches match the PyTorch loop: the
    groups, optimizer=auto (AdamW at lr_fit; every lr, the biases' included, rising from 0), the
    warmup interpolation per iteration across an epoch boundary, the accumulate ramp (windows 1, 1,
    2), loss x batch size, clipping, and the EMA of the parameters and BatchNorm statistics.

    Resume: the train state (EMA and accumulated gradient included) is checkpointed after 3
    iterations, in the middle of a window, with Orbax as the trainer does (``StandardSave`` of the
    ``TrainState``), restored and continued: bit-identical to the uninterrupted run."""
    torch.manual_seed(0)
    ref = RefYOLO11("n", NC)
    randomize_batchnorm(ref, 0)
    model = nnx.eval_shape(lambda: build_model("yolo11n", num_classes=NC, rngs=nnx.Rngs(0)))
    convert.load_state_dict(model, ref.state_dict())
    before = _torch_state(ref)
    batches = make_batches(NC, IMG, BATCH, NB, max_boxes=4)
    for b in batches:
        b["images"] = np.round(b["images"] * 255).astype(np.uint8)
    loader = [(torch.from_numpy(b["images"]).permute(0, 3, 1, 2).contiguous(),
               *torch_targets(b["boxes_cxcywh"], b["labels"], b["mask"])) for b in batches]
    iterations = optim.ultralytics_iterations(NB * BATCH, BATCH, EPOCHS)

    out = RT.train(ref, UltralyticsDetectionLoss(NC, img_size=IMG), loader, optimizer="auto", num_classes=NC,
                   batch_size=BATCH, epochs=EPOCHS, iterations=iterations, max_iterations=ITERS)
    records = out["records"]

    model.train()
    graphdef, params, rest = split_model(model)
    tx, schedule, info = optim.ultralytics_recipe(params, optimizer="auto", num_classes=NC, batch_size=BATCH,
                                                  steps_per_epoch=NB, epochs=EPOCHS, iterations=iterations)
    assert (info["optimizer"], info["lr0"], info["warmup_iterations"]) == ("AdamW", round(0.01 / (4 + NC), 6), 100)
    assert (out["info"]["name"], out["info"]["lr"], out["info"]["nw"]) == ("AdamW", info["lr0"], 100)
    state = init_train_state(params, rest, tx, ema=True)
    step = make_train_step(graphdef, tx, hyperparams_fn=schedule, recipe="ultralytics", img_size=IMG, num_classes=NC)
    metrics = []
    for ni in range(ITERS):
        if ni == RESUME_AT:
            mngr = ocp.CheckpointManager(tmp_path / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
            mngr.save(ni, args=ocp.args.StandardSave(state))
            mngr.wait_until_finished()
            saved = jax.tree.map(lambda x: np.array(x, copy=True), state)  # the step donates the buffers
        state, m = step(state, batches[ni % NB])
        metrics.append(jax.device_get(m))

    assert [r["stepped"] for r in records] == [True, True, False, True]
    assert [bool(m["stepped"]) for m in metrics] == [True, True, False, True]
    for ni, (m, r) in enumerate(zip(metrics, records)):
        for key in PART_KEYS:
            assert abs(float(m[key]) - r[key]) <= PART_RTOL * abs(r[key]), (ni, key, float(m[key]), r[key])
        for g in optim.GROUPS:
            assert float(m[f"lr_{g}"]) == pytest.approx(r["lr"][g], rel=HYPER_RTOL, abs=1e-12), (ni, g)
        assert "momentum" not in m and not r["momentum"]  # AdamW: no momentum warmup
    # One-batch windows: the clipped norm is this batch's, of batch_size x the loss on both sides.
    for ni in (0, 1):
        assert float(metrics[ni]["grad_norm"]) == pytest.approx(records[ni]["grad_norm"], rel=PART_RTOL), ni
    assert records[0]["grad_norm"] > optim.CLIP_NORM  # (so clipping acted)
    lrs = [r["lr"] for r in records]
    lr0 = info["lr0"]
    assert lrs[0] == {"bias": 0.0, "weight": 0.0, "bn": 0.0}  # auto: warmup_bias_lr = 0
    assert lrs[1]["bias"] == pytest.approx(lr0 * 1 / 100)  # epoch 0: lf(0) = 1
    assert lrs[2]["bias"] == pytest.approx(lr0 * 2 / 100 * (2 / 3 * 0.99 + 0.01))  # epoch 1: lf(1)

    lr_max = max(max(r["lr"].values()) for r in records)
    floor = ABS_FLOOR_LR * lr_max * 3
    ours = convert.to_state_dict(nnx.merge(graphdef, state.params, state.rest))
    worst, worst_update = _check_state(ours, _torch_state(ref), floor, "model", before)
    ema_ours = convert.to_state_dict(nnx.merge(graphdef, state.ema.params, state.ema.rest))
    worst_ema, _ = _check_state(ema_ours, _torch_state(out["ema"].ema), floor, "ema")
    worst_part = max(abs(float(m[k]) - r[k]) / abs(r[k]) for m, r in zip(metrics, records) for k in PART_KEYS)
    print(f"worst rel: parts {worst_part:.1e}, state L2 {worst:.1e}, updates L2 {worst_update:.1e}, "
          f"EMA L2 {worst_ema:.1e}")
    assert int(state.ema.updates) == out["ema"].updates == 3
    # The EMA averages the BatchNorm statistics but keeps its own num_batches_tracked (0).
    assert int(ours["model.0.bn.num_batches_tracked"]) == ITERS
    assert int(ema_ours["model.0.bn.num_batches_tracked"]) == 0
    assert not np.array_equal(ema_ours["model.0.bn.running_mean"], before["model.0.bn.running_mean"])
    assert step._cache_size() == 1

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)  # structure, shapes, dtypes, shardings
    restored = mngr.restore(RESUME_AT, args=ocp.args.StandardRestore(abstract))
    # Orbax returns committed arrays, the step's outputs are uncommitted, and jit specialises on
    # that: a fresh process (a real resume) compiles once either way; here, stay on one program.
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
    assert float(optax.tree.norm(restored.opt_state.acc_grads)) > 0  # mid-window
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), b)
    for ni in range(RESUME_AT, ITERS):
        restored, _ = step(restored, batches[ni % NB])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert step._cache_size() == 1


class _ToyTorch(torch.nn.Module):
    """One tensor of each Ultralytics group kind: conv weight and bias, BatchNorm weight and bias,
    linear weight and bias. ``forward(x) = <all parameters, x>`` so that the gradient of the batch
    loss is exactly ``batch_size * x`` on both sides."""

    SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "bn.weight": (4,), "bn.bias": (4,),
              "fc.weight": (2, 4), "fc.bias": (2,)}

    def __init__(self, values):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(values[name]))

    def forward(self, x):
        return torch.cat([p.reshape(-1) for p in self.parameters()]) @ x


_TOY_JAX = {"conv.weight": ("conv", "kernel"), "conv.bias": ("conv", "bias"), "bn.weight": ("bn", "scale"),
            "bn.bias": ("bn", "bias"), "fc.weight": ("fc", "kernel"), "fc.bias": ("fc", "bias")}


@pytest.mark.parametrize("optimizer,iterations,warmup_rule", [("AdamW", None, "8.3"), ("SGD", None, "8.3"),
                                                               ("auto", 20_000, "8.3"), ("SGD", None, "8.4")])
def test_optimizer_trajectory_matches_torch_optimizers(optimizer, iterations, warmup_rule):
    """The recipe's optimizer against the reference loop (torch.optim.AdamW / SGD, LambdaLR, warmup,
    accumulate ramp, clip_grad_norm_, ModelEMA) over 260 iterations (batch 8, 20 batches per epoch:
    the 100-iteration warmup, 13 epochs, windows ramping 1 -> 8, 51 optimizer steps), on identical
    gradients (random, large enough that clipping acts on some windows): per-iteration lrs,
    momentum and step flags, and the parameters and EMA at the end, relative L2 <= 1e-4 per tensor
    (float32 optimizer arithmetic in a different order on each side; measured <= 6e-6). ``auto``
    above 10,000 iterations is SGD built with momentum 0.9, warmed up to 0.937, bias lr from 0.
    ``warmup_rule="8.4"``: 8.4.190's warmup length, min(3, 13 - 1) * 20 = 60 iterations."""
    nb, batch, epochs, n = 20, 8, 13, 260
    rng = np.random.default_rng(0)
    values = {k: (0.5 * rng.normal(size=shape)).astype(np.float32) for k, shape in _ToyTorch.SHAPES.items()}
    size = sum(v.size for v in values.values())
    # Batch 7 is large (every window holding it is clipped), the others small (their windows are not).
    xs = [(rng.normal(size=size) * (2.0 if i == 7 else 0.01)).astype(np.float32) for i in range(nb)]
    loader = [(torch.from_numpy(x), None, None) for x in xs]
    ref = _ToyTorch(values)
    out = RT.train(ref, lambda pred, *_: (pred, {"total_loss": pred.detach()}), loader, optimizer=optimizer,
                   num_classes=3, batch_size=batch, epochs=epochs, iterations=iterations, max_iterations=n,
                   warmup_rule=warmup_rule)

    params = {}
    for name, (module, leaf) in _TOY_JAX.items():
        params.setdefault(module, {})[leaf] = jnp.asarray(values[name])
    tx, schedule, info = optim.ultralytics_recipe(params, optimizer=optimizer, num_classes=3, batch_size=batch,
                                                  steps_per_epoch=nb, epochs=epochs, iterations=iterations,
                                                  warmup_rule=warmup_rule)
    assert info["optimizer"] == out["info"]["name"]
    nw = {"8.3": 100, "8.4": 60}[warmup_rule]
    assert info["warmup_iterations"] == out["info"]["nw"] == nw
    offsets = np.cumsum([0] + [v.size for v in values.values()])

    def grads_of(x):
        flat = {name: (batch * x[offsets[i]:offsets[i + 1]]).reshape(values[name].shape)
                for i, name in enumerate(values)}
        g = {}
        for name, (module, leaf) in _TOY_JAX.items():
            g.setdefault(module, {})[leaf] = flat[name]
        return g

    @jax.jit
    def step(params, opt_state, ema, ni, x):
        hyper = schedule(ni)
        opt_state = optim.set_hyperparams(opt_state, hyper)
        updates, new_state = tx.update(grads_of(x), opt_state, params)
        params = optax.apply_updates(params, updates)
        stepped = new_state.gradient_step != opt_state.gradient_step
        return params, new_state, E.update_ema(ema, params, {}, where=stepped), hyper, stepped

    opt_state, ema = tx.init(params), E.init_ema(params, {})
    for ni, r in enumerate(out["records"]):
        params, opt_state, ema, hyper, stepped = step(params, opt_state, ema, jnp.int32(ni), jnp.asarray(xs[ni % nb]))
        assert bool(stepped) == r["stepped"], ni
        for g in optim.GROUPS:
            assert float(hyper[f"lr_{g}"]) == pytest.approx(r["lr"][g], rel=HYPER_RTOL, abs=1e-12), (ni, g)
        if info["optimizer"] == "SGD":
            assert float(hyper["momentum"]) == pytest.approx(r["momentum"]["weight"], rel=HYPER_RTOL), ni
    steps = sum(r["stepped"] for r in out["records"])
    assert steps == int(ema.updates) == out["ema"].updates == len(optimizer_step_iterations(n, nw, batch))
    assert len({r["accumulate"] for r in out["records"]}) == 8  # the ramp 1 ... 8
    window_norms, last = [], -1
    for s in optimizer_step_iterations(n, nw, batch):
        window_norms.append(batch * np.linalg.norm(sum(xs[i % nb] for i in range(last + 1, s + 1))))
        last = s
    assert min(window_norms) < optim.CLIP_NORM < max(window_norms)  # clipping acts on some windows only
    ema_ref = dict(out["ema"].ema.named_parameters())
    worst = 0.0
    for name, (module, leaf) in _TOY_JAX.items():
        want = dict(ref.named_parameters())[name].detach().numpy()
        errors = (rel_l2(np.asarray(params[module][leaf]), want),
                  rel_l2(np.asarray(ema.params[module][leaf]), ema_ref[name].numpy()))
        assert max(errors) <= 1e-4, (name, errors)
        assert rel_l2(np.asarray(params[module][leaf]), values[name]) > 1e-2, name  # it did train
        worst = max(worst, *errors)
    print(f"{optimizer}: worst parameter / EMA rel L2 {worst:.1e}")


# ----------------------------------------------------------------------------- schedule

def _toy_params():
    """A parameter tree with every kind of leaf: conv kernel, BatchNorm scale and bias, conv bias."""
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {"conv": {"kernel": f(3, 3, 2, 4)}, "bn": {"scale": f(4), "bias": f(4)},
            "head": {"kernel": f(1, 1, 4, 5), "bias": f(5)}}


def _interp(x, x1, y0, y1):
    return float(np.interp(x, [0, x1], [y0, y1]))


@pytest.mark.parametrize("optimizer,iterations", [("SGD", None), ("auto", 10_001), ("AdamW", None), ("auto", 50)])
def test_schedule_follows_ultralytics_formulas(optimizer, iterations):
    """Per-group lr and momentum at chosen iterations, against Ultralytics' formulas in float64:
    warmup over max(round(3 * nb), 100) iterations, lr ``interp(ni, [0, nw], [start, lr0 * lf(epoch)])``
    (start 0.1 for biases, 0.0 under auto, 0 for the others), then ``lr0 * lf(epoch)``, linear
    ``lf``; SGD momentum 0.8 -> the momentum argument (0.937, also under auto, which builds SGD
    with 0.9), AdamW none. Relative 1e-6 (float32)."""
    nb, epochs = 50, 10
    _, schedule, info = optim.ultralytics_recipe(_toy_params(), optimizer=optimizer, num_classes=20, batch_size=16,
                                                 steps_per_epoch=nb, epochs=epochs, iterations=iterations)
    nw = max(round(3 * nb), 100)
    assert info["warmup_iterations"] == nw == 150
    lr0 = {"SGD": 0.01, "AdamW": 0.01}.get(optimizer) or (0.01 if iterations > 10_000 else round(0.01 / 24, 6))
    assert info["lr0"] == lr0
    bias_start = 0.0 if optimizer == "auto" else 0.1
    sgd = info["optimizer"] == "SGD"
    fn = jax.jit(schedule)
    for ni in (0, 1, 49, 50, 75, 149, 150, 151, 199, 200, 499, 10_000):
        epoch = ni // nb
        target = lr0 * (max(1 - epoch / epochs, 0) * 0.99 + 0.01)
        want = {"lr_weight": _interp(ni, nw, 0.0, target) if ni <= nw else target,
                "lr_bias": _interp(ni, nw, bias_start, target) if ni <= nw else target}
        want["lr_bn"] = want["lr_weight"]
        if sgd:
            want["momentum"] = _interp(ni, nw, 0.8, 0.937) if ni <= nw else 0.937
        got = {k: float(v) for k, v in fn(jnp.int32(ni)).items()}
        assert set(got) == set(want)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=HYPER_RTOL, abs=1e-12), (ni, k, got[k], want[k])


def _ultralytics_steps(num_iterations, nw, batch, nbs=64):
    """Ultralytics' stepping rule, written out: the iterations after which it steps."""
    accumulate = max(round(nbs / batch), 1)
    last, steps = -1, []
    for ni in range(num_iterations):
        if ni <= nw:
            accumulate = max(1, int(np.interp(ni, [0, nw], [1, nbs / batch]).round()))
        if ni - last >= accumulate:
            steps.append(ni)
            last = ni
    return steps


@pytest.mark.parametrize("batch,nb,warmup_epochs,nbs", [(2, 2, 3.0, 64), (16, 50, 3.0, 64), (24, 40, 3.0, 64),
                                                         (7, 30, 5.5, 64), (64, 40, 3.0, 64), (128, 10, 3.0, 64),
                                                         (16, 40, 0.0, 64), (16, 40, 3.0, 16), (8, 40, 3.0, 32)])
def test_accumulation_windows_follow_the_stepping_rule(batch, nb, warmup_epochs, nbs):
    """The windows of ``optim.accumulation_windows`` reproduce ``ni - last_opt_step >= accumulate``
    with the warmup's accumulate ramp, and the recipe's ``optax.MultiSteps`` steps exactly there
    (run for nw + 150 iterations); also for another nominal batch ``nbs`` (16 = the batch: no
    accumulation at all, as the cpu-ultralytics config runs)."""
    nw = optim.warmup_iterations(warmup_epochs, nb)
    n = max(nw, 0) + 150
    want = _ultralytics_steps(n, nw, batch, nbs)
    assert optimizer_step_iterations(n, nw, batch, nbs).tolist() == want
    params = _toy_params()
    tx, schedule, info = optim.ultralytics_recipe(params, optimizer="SGD", num_classes=3, batch_size=batch,
                                                  steps_per_epoch=nb, epochs=10, warmup_epochs=warmup_epochs,
                                                  nbs=nbs)
    assert info["accumulate"] == max(round(nbs / batch), 1)

    def body(carry, ni):
        opt_state = optim.set_hyperparams(carry, schedule(ni))
        _, new = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
        return new, new.gradient_step != carry.gradient_step

    _, stepped = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(n)))(tx.init(params))
    assert np.flatnonzero(np.asarray(stepped)).tolist() == want
    if batch < nbs and warmup_epochs > 0:
        assert max(np.diff([-1] + want)) > 1  # the ramp did accumulate
    if batch >= nbs:
        assert want == list(range(n))  # one optimizer step per batch


def test_accumulated_gradient_is_summed_and_clipped_like_torch():
    """Without warmup (windows of round(64 / 32) = 2 batches), SGD's first update is
    ``-lr * (1 + momentum) * clip(g1 + g2)`` (Nesterov, first momentum buffer = the gradient), the
    sum not the mean, clipped to norm 10 with torch's ``10 / (norm + 1e-6)``; the first batch of a
    window gives zero updates. Relative 1e-6."""
    params = _toy_params()
    tx, schedule, _ = optim.ultralytics_recipe(params, optimizer="SGD", num_classes=3, batch_size=32,
                                               steps_per_epoch=10, epochs=10, warmup_epochs=0, weight_decay=0.0)
    hp = schedule(0)
    assert float(hp["lr_weight"]) == pytest.approx(0.01) and float(hp["momentum"]) == pytest.approx(0.937)
    rng = np.random.default_rng(1)
    for scale in (0.1, 10.0):  # below and above the clipping norm
        g1, g2 = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * scale, jnp.float32), params)
                  for _ in range(2)]
        state = optim.set_hyperparams(tx.init(params), hp)
        u1, state = tx.update(g1, state, params)
        assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(u1))
        u2, state = tx.update(g2, state, params)
        total = jax.tree.map(lambda a, b: np.asarray(a, np.float64) + np.asarray(b, np.float64), g1, g2)
        norm = math.sqrt(sum(float(np.sum(t ** 2)) for t in jax.tree.leaves(total)))
        clip = min(1.0, 10.0 / (norm + 1e-6))
        assert (clip < 1) == (scale > 1)
        for got, t in zip(jax.tree.leaves(u2), jax.tree.leaves(total)):
            np.testing.assert_allclose(np.asarray(got), -0.01 * 1.937 * clip * t, rtol=1e-6, atol=1e-9)


def test_auto_optimizer_choice_and_errors():
    """optimizer=auto: AdamW at lr_fit = round(0.002 * 5 / (4 + nc), 6), beta1 0.9, up to 10,000
    Ultralytics iterations; SGD 0.01, momentum 0.9 above; warmup_bias_lr 0 either way; lr0 and
    momentum ignored. Named optimizers take lr0 (0.01) and momentum (0.937)."""
    params = _toy_params()
    kw = dict(num_classes=80, batch_size=16, steps_per_epoch=100, epochs=10)
    assert optim.ultralytics_iterations(2000, 16, 100) == math.ceil(2000 / 64) * 100
    assert optim.ultralytics_iterations(2000, 128, 100) == math.ceil(2000 / 128) * 100
    _, _, info = optim.ultralytics_recipe(params, optimizer="auto", iterations=10_000, lr0=0.5, momentum=0.5, **kw)
    assert (info["optimizer"], info["lr0"], info["momentum"], info["warmup_bias_lr"]) == ("AdamW", 0.000119, 0.9, 0.0)
    assert info["betas"] == [0.9, 0.999]
    _, _, info = optim.ultralytics_recipe(params, optimizer="auto", iterations=10_001, **kw)
    assert (info["optimizer"], info["lr0"], info["momentum"], info["warmup_bias_lr"]) == ("SGD", 0.01, 0.9, 0.0)
    assert info["warmup_final_momentum"] == 0.937 and info["nesterov"]
    assert optim.auto_optimizer(1, 5) == ("AdamW", 0.002, 0.9)
    assert optim.auto_optimizer(20, 5)[1] == 0.000417
    tx, _, info = optim.ultralytics_recipe(params, optimizer="adamw", **kw)
    assert (info["optimizer"], info["lr0"], info["momentum"], info["warmup_bias_lr"]) == ("AdamW", 0.01, 0.937, 0.1)
    b1 = [s.inner_state.hyperparams["b1"] for s in tx.init(params).inner_opt_state["groups"].inner_states.values()]
    assert [float(b) for b in b1] == pytest.approx([0.937] * 3)
    with pytest.raises(ValueError, match="needs iterations"):
        optim.ultralytics_recipe(params, optimizer="auto", **kw)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.ultralytics_recipe(params, optimizer="Adam", **kw)
    with pytest.raises(KeyError, match="unknown hyperparameter"):
        optim.set_hyperparams(tx.init(params), {"lr_conv": 0.1})
    with pytest.raises(KeyError, match="no injected hyperparameter"):
        optim.set_hyperparams(tx.init(params), {"momentum": 0.9})  # AdamW has none


@pytest.mark.parametrize("preset", ["yolo11n", "tiny"])
def test_param_groups_are_ultralytics_groups(preset):
    """The labels of every parameter equal the group Ultralytics' ``build_optimizer`` gives the same
    tensor of the PyTorch twin (``reference_torch.ultralytics_train.param_groups``): conv / linear /
    attention-projection weights, BatchNorm weights, biases (the notebook network's packed attention
    ``in_proj_weight`` / ``in_proj_bias`` included). The frozen DFL constants are not NNX parameters."""
    if preset == "tiny":
        import reference_torch as R
        ref = R.YOLOv11(num_classes=NC, base=8, depth=1)
    else:
        ref = RefYOLO11("n", NC)
    model = nnx.eval_shape(lambda: build_model(preset, num_classes=NC, rngs=nnx.Rngs(0)))
    graphdef, params, rest = split_model(model)
    codes = {g: float(i + 1) for i, g in enumerate(optim.GROUPS)}
    labels = optim.ultralytics_param_labels(params)
    coded = jax.tree.map(lambda p, g: jnp.full(p.shape, codes[g], jnp.float32), params, labels)
    as_torch = convert.to_state_dict(nnx.merge(graphdef, coded, jax.tree.map(jnp.zeros_like, rest)))
    want = {name: g for g, members in RT.param_groups(ref).items() for name, _ in members}
    trainable = {k for k, p in ref.named_parameters() if p.requires_grad}
    got = {}
    for key in trainable:
        values = np.unique(as_torch[key])
        assert len(values) == 1, key
        got[key] = optim.GROUPS[int(values[0]) - 1]
    assert got == {k: want[k] for k in trainable}
    assert all(k.endswith((".proj", "dfl.conv.weight")) for k in set(want) - trainable)  # frozen DFL constants
    counts = {g: list(got.values()).count(g) for g in optim.GROUPS}
    assert min(counts.values()) > 10, counts
    with pytest.raises(ValueError, match="no Ultralytics parameter group"):
        optim.ultralytics_param_labels({"embed": {"embedding": jnp.zeros(3)}})


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
def test_weight_decay_only_on_weights_and_scaled(optimizer):
    """Weight decay ``5e-4 * batch * accumulate / 64`` (batch 24: accumulate 3, 5.625e-4; batch 128:
    accumulate 1, 1e-3) on the weights group only: with zero gradients, one step (batch 128, no
    warmup) moves every kernel by exactly ``-lr * wd * p`` (AdamW, decoupled) or
    ``-lr * (1 + momentum) * wd * p`` (SGD, coupled and Nesterov), and leaves BN scales and biases
    unchanged. Relative 1e-6."""
    params = _toy_params()
    assert optim.scaled_weight_decay(5e-4, 24) == pytest.approx(5.625e-4)
    assert optim.scaled_weight_decay(5e-4, 16) == pytest.approx(5e-4)
    tx, schedule, info = optim.ultralytics_recipe(params, optimizer=optimizer, num_classes=3, batch_size=128,
                                                  steps_per_epoch=10, epochs=10, warmup_epochs=0, lr0=0.02)
    assert (info["accumulate"], info["weight_decay"]) == (1, pytest.approx(1e-3))
    state = optim.set_hyperparams(tx.init(params), schedule(0))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    factor = 0.02 * 1e-3 * (1.937 if optimizer == "SGD" else 1.0)
    for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        p = params[path[0].key][path[1].key]
        if path[-1].key == "kernel":
            np.testing.assert_allclose(np.asarray(u), -factor * np.asarray(p), rtol=1e-6)
        else:
            assert float(jnp.abs(u).max()) == 0.0, path


# ----------------------------------------------------------------------------- EMA

def test_ema_decay_formula():
    """``d = 0.9999 * (1 - exp(-updates / 2000))``: ~5e-4 at the first update, 0.9999 (1 - 1/e)
    at 2000; relative 1e-6 against float64."""
    for u in (1, 2, 3, 10, 2000, 10_000, 100_000):
        want = 0.9999 * (1 - math.exp(-u / 2000))
        assert float(E.ema_decay(u)) == pytest.approx(want, rel=1e-6), u
    assert float(E.ema_decay(1)) == pytest.approx(4.99825e-4, rel=1e-5)


def test_ema_averages_parameters_and_bn_statistics_but_not_counters():
    """One update of the EMA of a network's state (the ``tiny`` preset's ``nnx.State``s):
    ``updates`` 0 -> 1 first, then ``ema = d(1) * ema + (1 - d(1)) * model`` for the parameters and
    the BatchNorm mean and variance (relative 1e-6 against float64), while ``num_batches_tracked``
    keeps the EMA's own value; ``where=False`` changes nothing."""
    abstract = nnx.eval_shape(lambda: build_model("tiny", num_classes=NC, rngs=nnx.Rngs(0)))
    _, params, rest = split_model(abstract)
    rng = np.random.default_rng(0)
    def fill(x, counter):  # random floats; integer counters set to ``counter``
        return np.asarray(rng.normal(size=x.shape) if jnp.issubdtype(x.dtype, jnp.floating)
                          else np.full(x.shape, counter), x.dtype)

    ema = E.init_ema(jax.tree.map(lambda x: fill(x, 3), params), jax.tree.map(lambda x: fill(x, 3), rest))
    new_params, new_rest = jax.tree.map(lambda x: fill(x, 8), params), jax.tree.map(lambda x: fill(x, 8), rest)
    update = jax.jit(E.update_ema)
    skipped = update(ema, new_params, new_rest, where=jnp.bool_(False))
    assert int(skipped.updates) == 0
    for a, b in zip(jax.tree.leaves(skipped), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    updated = update(ema, new_params, new_rest, where=jnp.bool_(True))
    assert int(updated.updates) == 1
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    kinds = set()
    before = jax.tree_util.tree_flatten_with_path((ema.params, ema.rest))[0]
    for (path, e0), m, e1 in zip(before, jax.tree.leaves((new_params, new_rest)),
                                 jax.tree.leaves((updated.params, updated.rest))):
        name = str(path[-2].key)
        kinds.add(name)
        if name == "num_batches_tracked":
            assert int(e1) == int(e0) == 3 and int(m) == 8
        else:
            want = d * np.asarray(e0, np.float64) + (1 - d) * np.asarray(m, np.float64)
            np.testing.assert_allclose(np.asarray(e1), want, rtol=1e-6, atol=1e-7)
    assert {"kernel", "scale", "bias", "mean", "var", "num_batches_tracked"} <= kinds
    assert E.eval_variables(type("S", (), {"ema": updated, "params": 1, "rest": 2})()) == (updated.params, updated.rest)
    assert E.eval_variables(type("S", (), {"ema": None, "params": 1, "rest": 2})()) == (1, 2)


# ----------------------------------------------------------------------------- loss dispatch

def test_detection_loss_dispatches_to_the_ultralytics_loss():
    """``detection_loss(recipe='ultralytics')`` traces to exactly the computation of
    ``ultralytics_detection_loss`` with its own defaults (top-10, alpha 0.5, its assigner), not the
    notebook's; ``recipe='notebook'`` with the new ``None`` defaults traces to exactly the explicit
    notebook values (top-13, alpha 1, ``task_aligned_assign``). Compared as jaxprs."""
    from yolo11_jax.assign import task_aligned_assign

    rng = np.random.default_rng(0)
    preds = [tuple(jnp.asarray(rng.normal(size=(2, IMG // s, IMG // s, c)), jnp.float32) for c in (NC, 4, 64))
             for s in (8, 16, 32)]
    b = make_batches(NC, IMG, 2, 1, max_boxes=5, seed=2)[0]
    args = (preds, b["boxes_cxcywh"], b["labels"], b["mask"])

    def jaxpr(fn, **kw):
        return str(jax.make_jaxpr(lambda *a: fn(*a, img_size=IMG, **kw))(*args))

    ours = jaxpr(detection_loss, recipe="ultralytics")
    assert ours == jaxpr(ultralytics_detection_loss)
    assert ours != jaxpr(ultralytics_detection_loss, topk=13, alpha=1.0)
    notebook = jaxpr(detection_loss)
    assert notebook == jaxpr(detection_loss, topk=13, alpha=1.0, assigner=task_aligned_assign, recipe="notebook")
    assert notebook != ours and notebook != jaxpr(detection_loss, topk=10)
    with pytest.raises(ValueError, match="unknown recipe"):
        detection_loss(*args, img_size=IMG, recipe="yolo")


def test_warmup_length_rules():
    """8.3.253: max(round(warmup_epochs * nb), 100), -1 without warmup; 8.4.190:
    round(min(warmup_epochs, epochs - 1) * nb), no floor, -1 when 0; unknown rules refused."""
    w = optim.warmup_iterations
    assert w(3.0, 125) == 375 == w(3.0, 125, 6, rule="8.4")  # the shapes fine-tune: the same either way
    assert w(3.0, 1, 60) == 100 and w(3.0, 1, 60, rule="8.4") == 3  # 3 photos, batch 3, 60 epochs
    assert w(3.0, 20, 2, rule="8.4") == 20  # min(3, 2 - 1) epochs
    assert w(3.0, 20, 1, rule="8.4") == -1 and w(3.0, 20, 1) == 100  # one epoch: no warmup under 8.4
    assert w(0.0, 20, 10, rule="8.4") == -1 == w(0.0, 20)
    assert w(0.01, 20, 10, rule="8.4") == -1  # rounds to 0: no warmup, as 8.4.190's `if nw and ...`
    with pytest.raises(ValueError, match="8.5"):
        w(3.0, 20, 10, rule="8.5")
    with pytest.raises(ValueError, match="epochs"):
        w(3.0, 20, rule="8.4")
