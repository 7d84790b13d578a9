"""The notebook recipe's optimizer and schedule, as Optax transformations (Ultralytics' are in
``optim_ultralytics``; ``optim`` imports both).

The notebook's optimizer: AdamW on every trainable parameter, global-norm clipping at 10,
and a cosine learning-rate schedule stepped once per epoch.

``torch.optim.AdamW(lr, weight_decay)`` and ``optax.adamw(lr, weight_decay=...)`` compute
``p * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)`` alike (betas 0.9 / 0.999, eps 1e-8);
the notebook decays every parameter, BatchNorm scales and biases included, as ``optax.adamw``
does without a mask. By default ``make_optimizer`` is the plain Optax chain
``clip_by_global_norm -> adamw``.

``torch_compat=True`` (what the notebook recipe and the trajectory-parity test use) adds the
two details that keep a run step for step equal to the notebook's PyTorch loop:

* ``torch.nn.utils.clip_grad_norm_`` divides by ``norm + 1e-6``, ``optax.clip_by_global_norm``
  by ``norm``;
* on a batch with no positive anchor at all, the notebook's loss never touches the
  regression branch (``reg_convs``, ``reg_pred``), so those parameters have ``.grad = None``
  and ``torch.optim.AdamW`` skips them: no step, no weight decay, no moment decay and no step
  count. The optimizer then keeps the regression branch in its own Adam state
  (``param_group``), and the train step calls :func:`skip_group` to restore that group's
  parameters and state on such a batch (with optax's single shared step count, updating it
  anyway would drift from the reference after the first such batch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

__all__ = ['SCHEDULES', 'clip_by_global_norm_like_torch', 'make_schedule', 'REG_GROUP', 'box_branch_prefixes',
           'param_group', 'make_optimizer', 'skip_group']

SCHEDULES = ("epoch-cosine", "step-cosine", "constant")


def clip_by_global_norm_like_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

    ``optax.clip_by_global_norm`` divides by ``norm`` without the 1e-6; the difference is
    tiny, but this keeps trajectories step-for-step equal to the reference.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_schedule(lr: float, *, schedule: str, epochs: int, steps_per_epoch: int,
                  warmup_steps: int = 0, final_lr_fraction: float = 0.0):
    """``lr_fn(step) -> learning rate`` (jit-able).

    * ``epoch-cosine`` (the notebook): ``CosineAnnealingLR(T_max=epochs)`` stepped once per
      epoch, i.e. epoch ``e`` uses ``lr * (1 + cos(pi * e / epochs)) / 2``;
    * ``step-cosine``: the same curve evaluated every step;
    * ``constant``.

    ``warmup_steps > 0`` multiplies the first steps by a linear ramp from 1 / warmup_steps
    to 1. ``final_lr_fraction`` raises the cosine's floor from 0 to ``lr * fraction``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    total = max(epochs * steps_per_epoch, 1)
    floor = final_lr_fraction

    def lr_fn(step):
        step = jnp.asarray(step, jnp.float32)
        if schedule == "constant":
            factor = jnp.ones_like(step)
        else:
            progress = (jnp.floor(step / steps_per_epoch) / epochs if schedule == "epoch-cosine"
                        else step / total)
            factor = floor + (1 - floor) * (1 + jnp.cos(math.pi * progress)) / 2
        if warmup_steps > 0:
            factor = factor * jnp.minimum(1.0, (step + 1) / warmup_steps)
        return lr * factor

    return lr_fn


REG_GROUP = "reg"


def _key(k):
    """A path entry as a plain value (``DictKey('cv2')`` -> ``'cv2'``, ``SequenceKey(0)`` -> 0)."""
    return getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))


def box_branch_prefixes(params) -> set[tuple]:
    """The path prefixes of the box-regression branch, found from the structure of ``params``:

    * the notebook head's ``reg_convs`` / ``reg_pred`` (its regression convolutions, one per level);
    * a detection head with two per-level branches ``cv2`` (box) and ``cv3`` (class) side by side
      and no ``cv1``, which is YOLO11's ``Detect`` (every other ``cv2`` in YOLO11, of C2PSA, C3k2
      and SPPF blocks, sits next to a ``cv1``): its ``cv2``.
    """
    paths = [tuple(_key(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    children: dict[tuple, set] = {}
    for path in paths:
        for i in range(len(path)):
            children.setdefault(path[:i], set()).add(path[i])
    found = set()
    for prefix, keys in children.items():
        for name in ("reg_convs", "reg_pred"):
            if name in keys:
                found.add(prefix + (name,))
        if {"cv2", "cv3"} <= keys and "cv1" not in keys \
                and all(isinstance(k, int) for k in children[prefix + ("cv2",)]):
            found.add(prefix + ("cv2",))
    return found


def param_group(params):
    """Labels pytree: ``'reg'`` for the box-regression branch (:func:`box_branch_prefixes`),
    ``'main'`` for everything else."""
    prefixes = box_branch_prefixes(params)

    def label(path, _):
        keys = tuple(_key(k) for k in path)
        return REG_GROUP if any(keys[:len(p)] == p for p in prefixes) else "main"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(lr_fn, *, weight_decay: float = 0.05, clip_norm: float | None = 10.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   torch_compat: bool = False) -> optax.GradientTransformation:
    """Clip the global gradient norm at ``clip_norm`` (``None`` or 0: off), then AdamW with the
    learning rate ``lr_fn(step)`` and decoupled weight decay on every parameter.

    ``torch_compat=False``: ``optax.chain(optax.clip_by_global_norm, optax.adamw)``.
    ``torch_compat=True``: the same update unrolled as a ``named_chain`` (``clip`` -> ``adam``
    -> ``decay`` -> ``lr``) with torch's clipping and the Adam moments (and their step count)
    kept per parameter group (``param_group``), so that :func:`skip_group` can freeze the
    regression branch while the schedule counts every step, like ``CosineAnnealingLR``.
    """
    clip = clip_norm is not None and clip_norm > 0
    if not torch_compat:
        adamw = optax.adamw(lr_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
        return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip else adamw
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    return optax.named_chain(
        ("clip", clip_by_global_norm_like_torch(clip_norm) if clip else optax.identity()),
        ("adam", optax.multi_transform({"main": adam, REG_GROUP: adam}, param_group)),
        ("decay", optax.add_decayed_weights(weight_decay)),
        ("lr", optax.scale_by_learning_rate(lr_fn)))


def skip_group(skip, new_params, old_params, new_opt_state, old_opt_state, group: str = REG_GROUP):
    """Where ``skip`` (a bool scalar) is True, undo a step for one parameter group: its
    parameters and its optimizer state (moments and step count) keep their old values.
    The optimizer state must come from ``make_optimizer(..., torch_compat=True)``."""
    if not (isinstance(new_opt_state, dict) and isinstance(new_opt_state.get("adam"), optax.MultiTransformState)):
        raise TypeError("skip_group needs the state of make_optimizer(..., torch_compat=True)")

    def pick(new, old):
        return jnp.where(skip, old, new)

    params = jax.tree.map(lambda label, new, old: pick(new, old) if label == group else new,
                          param_group(new_params), new_params, old_params)
    multi = new_opt_state["adam"]
    inner = dict(multi.inner_states)
    inner[group] = jax.tree.map(pick, multi.inner_states[group], old_opt_state["adam"].inner_states[group])
    opt_state = type(new_opt_state)(new_opt_state)
    opt_state["adam"] = multi._replace(inner_states=inner)
    return params, opt_state


