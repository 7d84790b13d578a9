"""Pure functions of the training step: loss and gradients, and one optimizer update.

The model is split once with ``nnx.split(model, nnx.Param, ...)`` into a static
``graphdef``, the trainable ``params`` and the ``rest`` (BatchNorm statistics).
Everything here takes and returns those pytrees, so it jit-compiles once and
donates its buffers (the functional pattern of Flax's performance guide).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from yolo11_jax.loss import detection_loss
from yolo11_jax.optim import skip_group
from yolo11_jax.parallel import batch_sharded, replicated

Batch = dict[str, jax.Array]  # images (B,H,W,3) f32 in [0,1], boxes_cxcywh (B,M,4), labels (B,M), mask (B,M)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes during training, as one pytree."""

    step: jax.Array       # int32 scalar: optimizer steps taken
    params: Any           # nnx.State of nnx.Param
    rest: Any             # nnx.State of everything else (BatchNorm statistics)
    opt_state: Any        # optax state


def split_model(model: nnx.Module):
    """``(graphdef, params, rest)`` with ``params`` the trainable ``nnx.Param`` leaves."""
    return nnx.split(model, nnx.Param, ...)


def make_loss_fn(graphdef, **loss_kwargs) -> Callable:
    """``loss_fn(params, rest, batch) -> (total, (parts, new_rest))`` in train mode.

    ``new_rest`` holds the BatchNorm statistics after this forward pass.
    """

    def loss_fn(params, rest, batch: Batch):
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables at this trace level
        predictions = model(batch["images"])
        total, parts = detection_loss(predictions, batch["boxes_cxcywh"], batch["labels"], batch["mask"],
                                      **loss_kwargs)
        return total, (parts, nnx.state(model, nnx.Not(nnx.Param)))

    return loss_fn


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, lr_fn: Callable | None = None,
                    mesh: jax.sharding.Mesh | None = None, torch_compat: bool = False, **loss_kwargs) -> Callable:
    """A jitted ``train_step(state, batch) -> (state, metrics)`` that donates ``state``.

    ``loss_kwargs`` go to ``loss.detection_loss`` (``img_size``, the weights, ``assigner``, ...).
    With ``torch_compat`` (``tx`` from ``optim.make_optimizer(..., torch_compat=True)``), a
    batch without any positive anchor leaves the regression branch untouched, as in the
    notebook's loop (see ``optim``).

    ``metrics`` are device scalars: the loss parts, ``num_pos``, ``grad_norm``
    (before clipping), ``param_norm`` and, if ``lr_fn(step)`` is given, ``lr``.
    Nothing is pulled to the host.

    With a ``mesh`` (see ``parallel.make_mesh``) the step is data-parallel: the batch is
    sharded along its first axis over the mesh's ``data`` axis, the state and the metrics are
    replicated, and every batch statistic is global (see ``parallel``).
    """
    loss_fn = make_loss_fn(graphdef, **loss_kwargs)
    if mesh is None:
        jit = functools.partial(jax.jit, donate_argnums=(0,))
    else:
        jit = functools.partial(jax.jit, donate_argnums=(0,), in_shardings=(replicated(mesh), batch_sharded(mesh)),
                                out_shardings=(replicated(mesh), replicated(mesh)))

    @jit
    def train_step(state: TrainState, batch: Batch):
        (_, (parts, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.rest, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if torch_compat:
            params, opt_state = skip_group(parts["num_fg"] == 0, params, state.params, opt_state, state.opt_state)
        metrics = dict(parts)
        metrics["grad_norm"] = global_norm(grads)
        metrics["param_norm"] = global_norm(params)
        if lr_fn is not None:
            metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
        new_state = TrainState(step=state.step + 1, params=params, rest=new_rest, opt_state=opt_state)
        return new_state, metrics

    return train_step
