"""Ultralytics' YOLO11 training recipe (``ultralytics/engine/trainer.py``) as Optax transformations:
three parameter groups, optimizer=auto (AdamW / SGD), nominal batch size 64 with gradient
accumulation (``optax.MultiSteps``) and scaled weight decay, warmup with the accumulate ramp,
linear decay per epoch, clipping at 10. (The notebook's optimizer is in ``optim_notebook``.)

Version choice: the trainer rules are those of ``ultralytics==8.3.253``, the last release of the
8.3 line that YOLO11 came out with (its loss, in ``loss_ultralytics``, is 8.4's, whose maths for
YOLO11 equals 8.3's apart from the assigner's small-box rule). ``8.4.190`` differs in: the warmup
length (``round(min(warmup_epochs, epochs - 1) * nb)``, no 100-iteration floor; available as
``warmup_rule="8.4"``, ``--warmup-rule 8.4``), optimizer=auto
above 10,000 iterations (MuSGD instead of SGD), the cap of ``accumulate`` at
``batches_per_epoch * epochs``, and the bias group found by tag rather than by index (the same
group in 8.3). Every rule below is stated in its docstring and checked against the PyTorch
version of the same rules in ``reference_torch/ultralytics_train.py``; no Ultralytics code is used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from yolo11_jax.ema import EMA_DECAY, EMA_TAU
from yolo11_jax.optim_notebook import clip_by_global_norm_like_torch

__all__ = ['ULTRALYTICS_VERSION', 'NBS', 'GROUPS', 'ULTRALYTICS_OPTIMIZERS', 'AUTO_MAX_ITERATIONS',
           'DEFAULT_LR0', 'DEFAULT_LRF', 'DEFAULT_MOMENTUM', 'DEFAULT_WEIGHT_DECAY', 'DEFAULT_WARMUP_EPOCHS',
           'DEFAULT_WARMUP_MOMENTUM', 'DEFAULT_WARMUP_BIAS_LR', 'MIN_WARMUP_ITERATIONS', 'CLIP_NORM',
           'ADAM_B2', 'ADAM_EPS', 'ultralytics_param_group', 'ultralytics_param_labels',
           'ultralytics_iterations', 'auto_optimizer', 'accumulate_steps', 'scaled_weight_decay',
           'WARMUP_RULES', 'warmup_iterations', 'warmup_accumulate', 'accumulation_windows', 'linear_lf',
           'UltralyticsSchedule', 'set_hyperparams', 'ultralytics_recipe']

ULTRALYTICS_VERSION = "8.3.253"
NBS = 64                      # nominal batch size
GROUPS = ("weight", "bn", "bias")
ULTRALYTICS_OPTIMIZERS = ("auto", "AdamW", "SGD")
AUTO_MAX_ITERATIONS = 10_000  # optimizer=auto: AdamW up to this many iterations, SGD above
DEFAULT_LR0 = 0.01            # default.yaml: lr0, lrf, momentum, weight_decay, warmup_*
DEFAULT_LRF = 0.01
DEFAULT_MOMENTUM = 0.937
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_WARMUP_EPOCHS = 3.0
DEFAULT_WARMUP_MOMENTUM = 0.8
DEFAULT_WARMUP_BIAS_LR = 0.1
MIN_WARMUP_ITERATIONS = 100   # the 8.3 floor of the warmup length (8.4.190 has none)
CLIP_NORM = 10.0
ADAM_B2 = 0.999
ADAM_EPS = 1e-8               # torch.optim.AdamW's default, which Ultralytics keeps


def _leaf_name(path) -> str:
    """The name of a parameter leaf: the last dict key of its path (``.../conv/kernel/.value``
    -> ``'kernel'``)."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if not names:
        raise ValueError(f"parameter path {jax.tree_util.keystr(tuple(path))} has no named leaf")
    return str(names[-1])


def ultralytics_param_group(path) -> str:
    """The Ultralytics parameter group of one parameter leaf, from its name.

    The rule (Ultralytics' ``build_optimizer`` in NNX terms; the first match wins):

    * ``'bias'`` in the leaf name -> ``'bias'`` (no weight decay): biases of ``nnx.Conv``,
      ``nnx.Linear``, the attention projections and the BatchNorms (Ultralytics: ``"bias"`` in
      the parameter's full name, tested first);
    * ``scale`` -> ``'bn'`` (no weight decay): the scale of ``model.BatchNorm``. ``scale`` is the
      parameter name of every Flax normalisation layer (``nnx.BatchNorm``, ``LayerNorm``,
      ``GroupNorm``, ``RMSNorm``) and of no other layer of this project's networks, as Ultralytics'
      group holds the weights of every ``torch.nn`` class whose name contains "Norm";
    * ``kernel`` -> ``'weight'`` (with weight decay): convolution, linear and attention-projection
      kernels.

    Any other leaf name raises ``ValueError`` (Ultralytics would put it with the weights; here an
    unknown kind of parameter is an error, not a silent guess).
    """
    name = _leaf_name(path)
    if "bias" in name:
        return "bias"
    if name == "scale":
        return "bn"
    if name == "kernel":
        return "weight"
    raise ValueError(f"no Ultralytics parameter group for {jax.tree_util.keystr(tuple(path))}: "
                     "known leaves are 'kernel' (weight), 'scale' (bn) and '*bias*' (bias)")


def ultralytics_param_labels(params):
    """The labels pytree of ``params`` (``'weight'``, ``'bn'`` or ``'bias'`` per leaf), for
    ``optax.multi_transform``; see :func:`ultralytics_param_group`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: ultralytics_param_group(path), params)


def ultralytics_iterations(num_images: int, batch_size: int, epochs: int, nbs: int = NBS) -> int:
    """The number of "iterations" with which Ultralytics' ``optimizer=auto`` chooses:
    ``ceil(num_images / max(batch_size, nbs)) * epochs`` (not the number of batches)."""
    return math.ceil(num_images / max(batch_size, nbs)) * epochs


def auto_optimizer(num_classes: int, iterations: int) -> tuple[str, float, float]:
    """``optimizer=auto``: ``(name, lr, momentum)``.

    ``('AdamW', round(0.002 * 5 / (4 + nc), 6), 0.9)`` when ``iterations <= 10,000``, else
    ``('SGD', 0.01, 0.9)`` (8.3; 8.4.190 picks MuSGD there). The momentum is 0.9 in both cases
    (not default.yaml's 0.937), as in Ultralytics' source.
    """
    if iterations > AUTO_MAX_ITERATIONS:
        return "SGD", 0.01, 0.9
    return "AdamW", round(0.002 * 5 / (4 + num_classes), 6), 0.9


def accumulate_steps(batch_size: int, nbs: int = NBS) -> int:
    """Batches per optimizer step after the warmup: ``max(round(nbs / batch_size), 1)``."""
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, nbs: int = NBS) -> float:
    """``weight_decay * batch_size * accumulate / nbs``: the decay of the weights group."""
    return weight_decay * batch_size * accumulate_steps(batch_size, nbs) / nbs


WARMUP_RULES = ("8.3", "8.4")
"""The warmup-length rules: ``"8.3"`` (8.3.253, the default) and ``"8.4"`` (8.4.190)."""


def warmup_iterations(warmup_epochs: float, steps_per_epoch: int, epochs: int | None = None,
                      rule: str = "8.3") -> int:
    """The last warmup iteration ``nw`` (warmup while ``iteration <= nw``), or -1 (no warmup).

    * ``rule="8.3"`` (8.3.253): ``max(round(warmup_epochs * steps_per_epoch), 100)``; -1 when
      ``warmup_epochs <= 0``.
    * ``rule="8.4"`` (8.4.190's ``_get_warmup_iterations``): ``round(min(warmup_epochs,
      epochs - 1) * steps_per_epoch)``, no 100-iteration floor, so that the last epoch is always
      past the warmup; -1 when that is 0 (8.4.190 skips the warmup when ``nw == 0``). Needs
      ``epochs``. On a short run over a few images the two differ most: 60 epochs of one batch
      warm up for 100 iterations (longer than the run) under 8.3, for 3 under 8.4.
    """
    if rule not in WARMUP_RULES:
        raise ValueError(f"warmup rule {rule!r}: choose one of {WARMUP_RULES}")
    if rule == "8.4":
        if epochs is None:
            raise ValueError("the 8.4 warmup rule needs the run's epochs")
        nw = round(min(warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch) if warmup_epochs > 0 else 0
        return nw if nw > 0 else -1
    if warmup_epochs <= 0:
        return -1
    return max(round(warmup_epochs * steps_per_epoch), MIN_WARMUP_ITERATIONS)


def warmup_accumulate(iteration: int, nw: int, batch_size: int, nbs: int = NBS) -> int:
    """The accumulation during the warmup (``iteration <= nw``):
    ``max(1, round(interp(iteration, [0, nw], [1, nbs / batch_size])))`` (numpy's rounding, half
    to even)."""
    return max(1, int(np.round(np.interp(iteration, [0, nw], [1.0, nbs / batch_size]))))


def accumulation_windows(nw: int, batch_size: int, nbs: int = NBS) -> tuple[np.ndarray, int]:
    """Ultralytics' optimizer steps as accumulation windows: ``(windows, steady)``.

    Ultralytics sums the gradients of every batch and steps at iteration ``ni`` when
    ``ni - last_opt_step >= accumulate`` (``last_opt_step`` starts at -1), where ``accumulate``
    is :func:`warmup_accumulate` while ``ni <= nw`` and then keeps its last value,
    ``accumulate_steps(batch_size, nbs)``. ``windows[k]`` is the number of batches in the
    ``k``-th window (from the step before it, exclusive, to its own step, inclusive), computed up
    to the first step after the warmup; every later window has ``steady`` batches.
    """
    steady = accumulate_steps(batch_size, nbs)
    if nw < 0:
        return np.zeros((0,), np.int32), steady
    windows, last, ni = [], -1, 0
    while True:
        accumulate = warmup_accumulate(ni, nw, batch_size, nbs) if ni <= nw else steady
        if ni - last >= accumulate:
            windows.append(ni - last)
            last = ni
            if ni > nw:
                break
        ni += 1
    return np.asarray(windows, np.int32), steady


def linear_lf(epoch, epochs: int, lrf: float = DEFAULT_LRF):
    """Ultralytics' linear decay factor ``max(1 - epoch / epochs, 0) * (1 - lrf) + lrf`` (epoch
    ``e``, 0-based, trains at ``lr0 * lf(e)``; the last epoch at ``lf(epochs - 1)``, not lrf).
    Works on Python numbers and on jnp arrays."""
    if isinstance(epoch, (int, float, np.integer, np.floating)):
        return max(1.0 - epoch / epochs, 0.0) * (1.0 - lrf) + lrf
    return jnp.maximum(1.0 - epoch / epochs, 0.0) * (1.0 - lrf) + lrf


@dataclasses.dataclass(frozen=True)
class UltralyticsSchedule:
    """The per-iteration hyperparameters of Ultralytics' trainer: ``schedule(step) -> dict``.

    ``step`` is the global iteration ``ni`` (0-based batch index over the whole run), epoch
    ``ni // steps_per_epoch``. Returns float32 scalars ``lr_weight``, ``lr_bn``, ``lr_bias``
    (1 / unit of the summed gradient) and, for SGD, ``momentum``:

    * after the warmup (``ni > nw``): every group at ``lr0 * lf(epoch)`` (``LambdaLR`` stepped at
      the start of every epoch; the warmup's last value, which is the same, holds until then);
    * during the warmup (``ni <= nw``): ``interp(ni, [0, nw], [start, lr0 * lf(epoch)])`` with
      ``start = warmup_bias_lr`` for the biases and 0 for the weights and BN scales;
    * SGD momentum: ``interp(ni, [0, nw], [warmup_momentum, final_momentum])`` during the warmup,
      then ``final_momentum`` (the value the warmup leaves in the optimizer), or the built
      ``momentum`` when there is no warmup. ``final_momentum`` is the user's momentum argument
      (0.937 by default) even under ``optimizer=auto``, which builds SGD with 0.9: Ultralytics'
      warmup interpolates to ``args.momentum``.
    * AdamW has no momentum warmup (its groups carry ``betas``, not ``momentum``): beta1 stays at
      ``momentum``, so no ``momentum`` key.

    jit-able: ``step`` may be a traced int32 scalar.
    """

    lr0: float
    epochs: int
    steps_per_epoch: int
    warmup_iterations: int
    lrf: float = DEFAULT_LRF
    warmup_bias_lr: float = DEFAULT_WARMUP_BIAS_LR
    sgd: bool = False
    momentum: float = DEFAULT_MOMENTUM
    warmup_momentum: float = DEFAULT_WARMUP_MOMENTUM
    final_momentum: float = DEFAULT_MOMENTUM

    def __call__(self, step) -> dict[str, jax.Array]:
        ni = jnp.asarray(step, jnp.int32)
        epoch = (ni // self.steps_per_epoch).astype(jnp.float32)
        target = self.lr0 * linear_lf(epoch, self.epochs, self.lrf)
        nw = self.warmup_iterations
        out = {f"lr_{g}": target for g in GROUPS}
        momentum = jnp.float32(self.momentum)
        if nw >= 0:
            warm = ni <= nw
            x = ni.astype(jnp.float32)

            def interp(start, end):  # np.interp on [0, nw]: start + (end - start) / nw * x
                return start + (end - start) / max(nw, 1) * x

            for g in GROUPS:
                start = self.warmup_bias_lr if g == "bias" else 0.0
                out[f"lr_{g}"] = jnp.where(warm, interp(start, target), target)
            momentum = jnp.where(warm, interp(self.warmup_momentum, self.final_momentum),
                                 jnp.float32(self.final_momentum))
        out = {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}
        if self.sgd:
            out["momentum"] = jnp.asarray(momentum, jnp.float32)
        return out


def set_hyperparams(opt_state, hyperparams: Mapping[str, Any]):
    """Write per-iteration hyperparameters into the ``optax.inject_hyperparams`` states of the
    parameter groups of ``opt_state`` (from :func:`ultralytics_recipe`, anywhere in its nesting).

    ``hyperparams`` has keys ``lr_<group>`` (that group's ``learning_rate``) and ``momentum``
    (every group's ``momentum``). Each value keeps the dtype of the entry it replaces. Raises
    ``KeyError`` when a key has no entry in ``opt_state``. jit-able.
    """
    targets: dict[tuple[str | None, str], Any] = {}
    for key, value in hyperparams.items():
        if key.startswith("lr_") and key[3:] in GROUPS:
            targets[(key[3:], "learning_rate")] = value
        elif key == "momentum":
            for g in GROUPS:
                targets[(g, "momentum")] = value
        else:
            raise KeyError(f"unknown hyperparameter {key!r}: expected lr_<group> ({', '.join(GROUPS)}) or momentum")
    found = set()

    def replace(path, leaf):
        if len(path) < 2 or not (isinstance(path[-2], jax.tree_util.GetAttrKey) and path[-2].name == "hyperparams"):
            return leaf
        group = None
        for i, k in enumerate(path[:-1]):
            if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "inner_states":
                group = path[i + 1].key
        target = (group, path[-1].key)
        if target not in targets:
            return leaf
        found.add(target)
        return jnp.asarray(targets[target], jnp.asarray(leaf).dtype)

    new_state = jax.tree_util.tree_map_with_path(replace, opt_state)
    missing = set(targets) - found
    if missing:
        raise KeyError(f"no injected hyperparameter for {sorted(missing)} in the optimizer state "
                       "(expected the state of optim.ultralytics_recipe)")
    return new_state


def _adamw(learning_rate, b1, weight_decay):
    """``torch.optim.AdamW(lr, betas=(b1, 0.999), eps=1e-8, weight_decay)``: decoupled decay
    ``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``."""
    return optax.adamw(learning_rate, b1=b1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=weight_decay)


def _sgd(learning_rate, momentum, weight_decay):
    """``torch.optim.SGD(lr, momentum, nesterov=True, weight_decay)``: the decay is added to the
    gradient before the momentum (coupled L2), ``buf <- momentum * buf + g``,
    ``p <- p - lr * (g + momentum * buf)``."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum, nesterov=True))


def ultralytics_recipe(
    params,
    *,
    optimizer: str = "auto",
    num_classes: int,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    iterations: int | None = None,
    lr0: float | None = None,
    lrf: float = DEFAULT_LRF,
    momentum: float | None = None,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    warmup_epochs: float = DEFAULT_WARMUP_EPOCHS,
    warmup_momentum: float = DEFAULT_WARMUP_MOMENTUM,
    warmup_bias_lr: float = DEFAULT_WARMUP_BIAS_LR,
    nbs: int = NBS,
    clip_norm: float = CLIP_NORM,
    warmup_rule: str = "8.3",
) -> tuple[optax.GradientTransformation, UltralyticsSchedule, dict[str, Any]]:
    """Ultralytics' optimizer, accumulation, clipping and schedule: ``(tx, schedule, info)``.

    ``tx`` = ``optax.MultiSteps(chain(clip, multi_transform(groups)), use_grad_mean=False)``:

    * **accumulation**: the gradients of the iterations of one window are **summed** (Ultralytics
      never divides by ``accumulate``); the window lengths follow Ultralytics' stepping rule with
      the warmup's accumulate ramp (:func:`accumulation_windows`), looked up by MultiSteps'
      ``every_k_schedule`` from its count of optimizer steps. On the other iterations the updates
      are zero and the parameters stay;
    * **clipping** of the summed gradient to global norm ``clip_norm`` (10) like
      ``torch.nn.utils.clip_grad_norm_`` (scale ``min(1, 10 / (norm + 1e-6))``);
    * **three groups** (:func:`ultralytics_param_group`): ``weight`` (conv / linear / attention
      kernels, weight decay ``scaled_weight_decay``), ``bn`` (BatchNorm scales, no decay),
      ``bias`` (every bias, no decay); each an ``optax.inject_hyperparams`` AdamW (torch's
      decoupled decay, betas ``(momentum, 0.999)``, eps 1e-8) or SGD (Nesterov, torch's coupled
      decay), whose ``learning_rate`` (and SGD ``momentum``) the train step sets every iteration
      from ``schedule(iteration)`` with :func:`set_hyperparams`.

    The loss scale: Ultralytics backpropagates ``batch_size * (box + cls + dfl)``, and its lr, warmup
    bias lr and clipping norm assume gradients of that size, so the recipe's loss scale is the global
    batch (``recipes/ultralytics.py``; :func:`step.make_loss_fn` applies it).

    Args:
      params: the model's ``nnx.Param`` state (only its structure and leaf names are used).
      optimizer: ``'auto'`` (:func:`auto_optimizer`: AdamW at ``lr_fit`` up to 10,000
        ``iterations``, else SGD 0.01; momentum 0.9; ``lr0`` and ``momentum`` ignored except
        as the SGD warmup's final momentum; ``warmup_bias_lr`` forced to 0.0, as Ultralytics
        does), ``'AdamW'`` or ``'SGD'`` (case-insensitive; ``lr0`` and ``momentum`` as given).
      num_classes: the class count (``lr_fit``).
      batch_size: the global batch size (images per iteration, over all devices), like
        Ultralytics' ``batch``, which is global under DDP too. (Ultralytics' DDP normalises the loss
        and the BatchNorm statistics per GPU; a data-parallel step here, like a single-device
        Ultralytics run, does both over the global batch.)
      steps_per_epoch: batches per epoch (Ultralytics' ``nb``: the warmup length, the epoch of
        an iteration).
      epochs: the run's epochs (the linear decay).
      iterations: Ultralytics' iteration count for ``optimizer='auto'``,
        ``ultralytics_iterations(len(dataset), batch_size, epochs)``; required for auto.
      lr0, lrf, momentum, weight_decay (before scaling), warmup_epochs, warmup_momentum,
        warmup_bias_lr, nbs, clip_norm: Ultralytics' defaults are 0.01, 0.01, 0.937, 5e-4, 3, 0.8,
        0.1, 64 and 10 (momentum: SGD momentum / AdamW beta1).
      warmup_rule: the warmup length, ``"8.3"`` (default) or ``"8.4"`` (:func:`warmup_iterations`).

    Returns:
      ``tx``; ``schedule``, an :class:`UltralyticsSchedule` (``step -> {'lr_weight', 'lr_bn',
      'lr_bias'[, 'momentum']}``); ``info``, the resolved choices (JSON) for logs and ``config.json``.
    """
    if min(batch_size, steps_per_epoch, epochs) < 1:
        raise ValueError(f"batch_size, steps_per_epoch and epochs must be >= 1: {batch_size}, {steps_per_epoch}, {epochs}")
    final_momentum = DEFAULT_MOMENTUM if momentum is None else float(momentum)
    requested, name, lr, built_momentum = _choose_optimizer(optimizer, num_classes, iterations, lr0, final_momentum)
    if requested == "auto":
        warmup_bias_lr = 0.0  # as Ultralytics sets it under auto
    decay = scaled_weight_decay(weight_decay, batch_size, nbs)
    nw = warmup_iterations(warmup_epochs, steps_per_epoch, epochs, rule=warmup_rule)
    windows, steady = accumulation_windows(nw, batch_size, nbs)
    schedule = UltralyticsSchedule(lr0=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_iterations=nw,
                                   lrf=lrf, warmup_bias_lr=warmup_bias_lr, sgd=name == "SGD",
                                   momentum=built_momentum, warmup_momentum=warmup_momentum,
                                   final_momentum=final_momentum)
    groups = _group_transforms(name, schedule, built_momentum, decay)
    inner = optax.named_chain(
        ("clip", clip_by_global_norm_like_torch(clip_norm)),
        ("groups", optax.multi_transform(groups, ultralytics_param_labels)))
    tx = optax.MultiSteps(inner, every_k_schedule=_every_k_schedule(windows, steady),
                          use_grad_mean=False).gradient_transformation()
    labels = jax.tree.leaves(ultralytics_param_labels(params))
    info = {
        "ultralytics_version": ULTRALYTICS_VERSION, "optimizer": name, "requested_optimizer": requested, "lr0": lr,
        "lrf": lrf, "schedule": "linear", "momentum": built_momentum,
        "warmup_final_momentum": final_momentum if name == "SGD" else None,
        "betas": [built_momentum, ADAM_B2] if name == "AdamW" else None, "eps": ADAM_EPS if name == "AdamW" else None,
        "nesterov": name == "SGD", "nbs": nbs, "batch_size": batch_size, "accumulate": accumulate_steps(batch_size, nbs),
        "weight_decay": decay, "weight_decay_base": weight_decay, "warmup_epochs": warmup_epochs,
        "warmup_iterations": nw, "warmup_rule": warmup_rule, "warmup_momentum": warmup_momentum if name == "SGD" else None,
        "warmup_bias_lr": warmup_bias_lr,
        "warmup_optimizer_steps": len(windows),  # the windows themselves: accumulation_windows(nw, batch_size, nbs)
        "clip_norm": clip_norm, "loss_scale": "batch_size", "iterations": iterations, "epochs": epochs,
        "steps_per_epoch": steps_per_epoch, "param_groups": {g: labels.count(g) for g in GROUPS},
        "ema_decay": EMA_DECAY, "ema_tau": EMA_TAU,  # ema.py, when the train state carries an EMA
    }
    return tx, schedule, info


def _choose_optimizer(optimizer: str, num_classes: int, iterations: int | None, lr0: float | None,
                      momentum: float) -> tuple[str, str, float, float]:
    """``(requested, name, lr, momentum)`` of ``ultralytics_recipe``'s ``optimizer`` argument
    (case-insensitive; ``auto`` resolved by :func:`auto_optimizer`)."""
    names = {n.lower(): n for n in ULTRALYTICS_OPTIMIZERS}
    if optimizer.lower() not in names:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {ULTRALYTICS_OPTIMIZERS}")
    requested = names[optimizer.lower()]
    if requested != "auto":
        return requested, requested, DEFAULT_LR0 if lr0 is None else float(lr0), momentum
    if iterations is None:
        raise ValueError("optimizer='auto' needs iterations= (Ultralytics' count, "
                         "optim.ultralytics_iterations(len(dataset), batch_size, epochs))")
    name, lr, built_momentum = auto_optimizer(num_classes, iterations)
    return requested, name, lr, built_momentum


def _group_transforms(name: str, schedule: UltralyticsSchedule, momentum: float,
                      weight_decay: float) -> dict[str, optax.GradientTransformation]:
    """One ``optax.inject_hyperparams`` AdamW or SGD per group, started at ``schedule(0)``'s values;
    weight decay on the ``weight`` group only."""
    start = {k: float(v) for k, v in schedule(0).items()}
    group_decay = {"weight": weight_decay, "bn": 0.0, "bias": 0.0}
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731  (strong float32: no recompiles)

    def group_tx(g):
        if name == "SGD":
            return optax.inject_hyperparams(_sgd)(learning_rate=f32(start[f"lr_{g}"]), momentum=f32(start["momentum"]),
                                                  weight_decay=f32(group_decay[g]))
        return optax.inject_hyperparams(_adamw)(learning_rate=f32(start[f"lr_{g}"]), b1=f32(momentum),
                                                weight_decay=f32(group_decay[g]))

    return {g: group_tx(g) for g in GROUPS}


def _every_k_schedule(windows: np.ndarray, steady: int):
    """``every_k_schedule(gradient_step)`` for ``optax.MultiSteps``: the length (batches) of
    accumulation window ``gradient_step`` (0-based): ``windows[k]``, then ``steady``."""
    table = jnp.asarray(windows if len(windows) else np.asarray([steady], np.int32), jnp.int32)
    num_windows = len(windows)

    def every_k_schedule(gradient_step):
        gradient_step = jnp.asarray(gradient_step, jnp.int32)
        return jnp.where(gradient_step < num_windows, table[jnp.minimum(gradient_step, len(table) - 1)],
                         jnp.int32(steady))

    return every_k_schedule
