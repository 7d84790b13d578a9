"""Ultralytics' ``ModelEMA``: an exponential moving average of the weights and BatchNorm statistics.

Semantics of ``ultralytics==8.3.253`` (``utils/torch_utils.py``; 8.4.190 computes the same with
``torch._foreach_lerp_``):

* the EMA starts as a copy of the model, with ``updates = 0``;
* it is updated only after each real optimizer step (not after the batches that only accumulate
  gradients): first ``updates += 1``, then ``d = 0.9999 * (1 - exp(-updates / 2000))``, then for
  every floating-point entry ``ema <- d * ema + (1 - d) * model``. The floating entries are the
  parameters and the BatchNorm running mean and variance; integer entries (``num_batches_tracked``)
  keep the value they had when the EMA was created, as in Ultralytics (whose EMA copy never
  tracks batches);
* the model's BatchNorm statistics are taken after the forward passes of the step's batches.

The EMA is kept in float32 (Ultralytics 8.3 rounds its EMA to float16 when it validates with AMP
on a GPU and stores it in float16 in checkpoints; here checkpoints hold it exactly, so a resume
is exact). Everything is a pure function of pytrees (``nnx.State``), jit-able, for the train
step; :func:`eval_variables` gives what evaluation and export use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

EMA_DECAY = 0.9999
EMA_TAU = 2000.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EMAState:
    """The moving average and its update count, as one pytree (part of ``step.TrainState``)."""

    params: Any          # nnx.State of nnx.Param, float32
    rest: Any            # nnx.State of the rest (BatchNorm mean / var averaged, num_batches_tracked kept)
    updates: jax.Array   # int32 scalar: optimizer steps averaged so far


def ema_decay(updates, decay: float = EMA_DECAY, tau: float = EMA_TAU) -> jax.Array:
    """``decay * (1 - exp(-updates / tau))`` (float32; ``expm1`` keeps its relative precision
    near ``updates = 1``, where ``d ~ 5e-4``)."""
    u = jnp.asarray(updates, jnp.float32)
    return decay * -jnp.expm1(-u / tau)


def init_ema(params, rest) -> EMAState:
    """A new EMA: copies of ``params`` and ``rest`` (new buffers, so that a donated train state
    never holds one buffer twice) with ``updates = 0``."""
    return EMAState(params=jax.tree.map(jnp.copy, params), rest=jax.tree.map(jnp.copy, rest),
                    updates=jnp.zeros((), jnp.int32))


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def update_ema(ema: EMAState, params, rest, *, where=None, decay: float = EMA_DECAY,
               tau: float = EMA_TAU) -> EMAState:
    """One Ultralytics EMA update from the model's ``params`` and ``rest``.

    ``where`` (a bool scalar, may be traced): update only where True and return ``ema``
    unchanged otherwise (the train step passes "an optimizer step happened"); ``None`` always
    updates.
    """
    updates = ema.updates + 1
    d = ema_decay(updates, decay, tau)

    def average(e, m):
        if not _is_float(e):
            return e
        new = (d * e + (1.0 - d) * m).astype(e.dtype)
        return new if where is None else jnp.where(where, new, e)

    new_updates = updates if where is None else jnp.where(where, updates, ema.updates)
    return EMAState(params=jax.tree.map(average, ema.params, params),
                    rest=jax.tree.map(average, ema.rest, rest), updates=new_updates)


def eval_variables(state) -> tuple[Any, Any]:
    """What to evaluate and export: the EMA's ``(params, rest)`` when the state has an EMA (as
    Ultralytics validates and saves its EMA), else the raw ``(params, rest)``."""
    if getattr(state, "ema", None) is not None:
        return state.ema.params, state.ema.rest
    return state.params, state.rest
