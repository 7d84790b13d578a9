"""Pure functions of the training step: loss and gradients, and one optimizer update.

The model is split once with ``nnx.split(model, nnx.Param, ...)`` into a static
``graphdef``, the trainable ``params`` and the ``rest`` (BatchNorm statistics).
Everything here takes and returns those pytrees, so it jit-compiles once and
donates its buffers (the functional pattern of Flax's performance guide).

The step knows no recipe: it takes a loss function (``make_train_step(loss=...)``, built by a
recipe, ``yolo11_jax.recipes``), an Optax ``tx`` and the optional parts a recipe's optimizer
brings (``lr_fn`` or ``hyperparams_fn``, ``torch_compat``, ``loss_scale``), and updates the EMA
whenever the state carries one. For example, Ultralytics' recipe gives its loss, a ``tx`` that
accumulates gradients with ``optax.MultiSteps``, per-group learning rates set every iteration
from the iteration number, and the loss scaled by the global batch size; one call is one batch
and ``TrainState.step`` counts batches. (``recipe="notebook"`` / ``"ultralytics"`` with loss
keyword arguments is the older spelling, ``loss.detection_loss(recipe=...)``.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from yolo11_jax.ema import EMAState, init_ema, update_ema
from yolo11_jax.loss import LOSS_NAMES, detection_loss
from yolo11_jax.optim import set_hyperparams, skip_group
from yolo11_jax.parallel import batch_sharded, replicated

# images (B,H,W,3) uint8 in [0, 255] or float32 in [0, 1], boxes_cxcywh (B,M,4) normalised,
# labels (B,M) int, mask (B,M) bool
Batch = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (what checkpoints save)."""

    step: jax.Array       # int32 scalar: train-step calls (batches) taken; = optimizer steps without accumulation
    params: Any           # nnx.State of nnx.Param
    rest: Any             # nnx.State of everything else (BatchNorm statistics)
    opt_state: Any        # optax state
    ema: EMAState | None = None  # Ultralytics' EMA of params and rest, with its update count (ema.py)


def split_model(model: nnx.Module):
    """``(graphdef, params, rest)`` with ``params`` the trainable ``nnx.Param`` leaves."""
    return nnx.split(model, nnx.Param, ...)


def init_train_state(params, rest, tx: optax.GradientTransformation, *, ema: bool = False) -> TrainState:
    """A step-0 ``TrainState``; ``ema=True`` adds an EMA initialised as a copy of the model."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                      ema=init_ema(params, rest) if ema else None)


def prepare_images(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 ``/ 255`` (Ultralytics' ``img.float() / 255``, within one float32
    ulp: XLA may multiply by the reciprocal; the same arithmetic as ``inference``); any other dtype
    passes unchanged. Inside the jitted step, so uint8 batches travel to the device."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images


def make_loss_fn(graphdef, *, loss: Callable | None = None, loss_scale: float | str | None = None,
                 **loss_kwargs) -> Callable:
    """``loss_fn(params, rest, batch) -> (scaled total, (parts, new_rest))`` in train mode.

    ``new_rest`` holds the BatchNorm statistics after this forward pass. ``loss(predictions,
    boxes_cxcywh, labels, mask) -> (total, parts)`` is the loss (a recipe's,
    ``recipes.LossFn``); without it, ``loss.detection_loss`` with ``loss_kwargs`` (``recipe``,
    ``img_size``, ...). ``loss_scale`` multiplies the total that is differentiated (``parts`` stay
    unscaled): ``None`` none, a number, or ``"batch"`` for the batch size (the global one under a
    mesh: the traced batch is global).
    """
    if loss is None:
        loss = functools.partial(detection_loss, **loss_kwargs)
    elif loss_kwargs:
        raise ValueError(f"loss= is a complete loss function; got loss options too: {sorted(loss_kwargs)}")

    def loss_fn(params, rest, batch: Batch):
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables at this trace level
        images = prepare_images(batch["images"])
        predictions = model(images)
        total, parts = loss(predictions, batch["boxes_cxcywh"], batch["labels"], batch["mask"])
        if loss_scale == "batch":
            total = total * images.shape[0]
        elif loss_scale is not None:
            total = total * loss_scale
        return total, (parts, nnx.state(model, nnx.Not(nnx.Param)))

    return loss_fn


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, loss: Callable | None = None,
                    lr_fn: Callable | None = None, hyperparams_fn: Callable | None = None,
                    mesh: jax.sharding.Mesh | None = None, torch_compat: bool = False, recipe: str | None = None,
                    loss_scale: float | str | None = None, **loss_kwargs) -> Callable:
    """A jitted ``train_step(state, batch) -> (state, metrics)`` that donates ``state``.

    ``loss``: the loss function (``recipes.LossFn``, e.g. ``recipes.get_loss(name).build(cfg)``);
    ``loss_scale`` as in :func:`make_loss_fn`. Or, the older spelling, no ``loss`` and ``recipe``
    (``"notebook"``, default, or ``"ultralytics"``, whose ``loss_scale`` defaults to ``"batch"``)
    with ``loss_kwargs`` for ``loss.detection_loss`` (``img_size``, the weights, ``assigner``, ...).
    ``batch["images"]`` may be uint8 (converted to float32 / 255 inside the step) or float32 in
    [0, 1].

    Recipe ``"notebook"`` (``tx`` from ``optim.make_optimizer``): with ``torch_compat``
    (``make_optimizer(..., torch_compat=True)``), a batch without any positive anchor leaves the
    regression branch untouched, as in the notebook's loop (see ``optim``).

    Recipe ``"ultralytics"`` (``tx, hyperparams_fn, _ = optim.ultralytics_recipe(...)``, state from
    ``init_train_state(..., ema=True)``):

    * the loss is ``loss_scale * total`` with ``loss_scale`` (default ``"batch"``) the global
      batch size, as Ultralytics backpropagates ``batch_size * (box + cls + dfl)``; its optimizer
      settings (AdamW's ``lr_fit``, SGD's 0.01, the warmup bias lr, clipping at 10) were tuned for
      that scale (see ``optim.ultralytics_recipe``);
    * ``hyperparams_fn(state.step)`` (the iteration number) gives the per-group learning rates and
      SGD momentum, written into ``tx``'s state (``optim.set_hyperparams``) before the update;
    * ``tx`` (``optax.MultiSteps``) sums the gradients of the batches of a window and steps the
      optimizer on the window's last batch; the EMA (``state.ema``) is updated only then.

    The parts are independent: ``hyperparams_fn`` works with any injected-hyperparameter ``tx``,
    the EMA is updated whenever ``state.ema`` is set (after every real step of a ``MultiSteps``
    ``tx``, else every call).

    ``metrics`` are device scalars: the loss parts as the recipe's loss returns them (unscaled;
    for Ultralytics the values it logs), ``num_pos``, ``grad_norm`` (of this batch's gradient of
    the scaled loss, before accumulation and clipping), ``param_norm``; ``lr`` if ``lr_fn(step)``
    is given; the ``hyperparams_fn`` values (``lr_weight``, ``lr_bn``, ``lr_bias``, ``momentum``);
    ``stepped`` (bool: the optimizer stepped on this batch) with a ``MultiSteps`` ``tx``.
    Nothing is pulled to the host.

    With a ``mesh`` (see ``parallel.make_mesh``) the step is data-parallel: the batch is
    sharded along its first axis over the mesh's ``data`` axis, the state (EMA included) and the
    metrics are replicated, and every batch statistic is global (see ``parallel``).
    """
    if loss is None:
        recipe = recipe or "notebook"
        if recipe not in LOSS_NAMES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {LOSS_NAMES}")
        if torch_compat and recipe != "notebook":
            raise ValueError("torch_compat reproduces the notebook's loop; it needs recipe='notebook'")
        if loss_scale is None and recipe == "ultralytics":
            loss_scale = "batch"
        if recipe != "notebook":
            loss_kwargs["recipe"] = recipe
    elif recipe is not None:
        raise ValueError("give loss= (a loss function) or recipe= (a loss by name), not both")
    if lr_fn is not None and hyperparams_fn is not None:
        raise ValueError("give lr_fn (notebook optimizer) or hyperparams_fn (Ultralytics recipe), not both")
    loss_fn = make_loss_fn(graphdef, loss=loss, loss_scale=loss_scale, **loss_kwargs)
    if mesh is None:
        jit = functools.partial(jax.jit, donate_argnums=(0,))
    else:
        jit = functools.partial(jax.jit, donate_argnums=(0,), in_shardings=(replicated(mesh), batch_sharded(mesh)),
                                out_shardings=(replicated(mesh), replicated(mesh)))

    @jit
    def train_step(state: TrainState, batch: Batch):
        (_, (parts, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.rest, batch)
        metrics = dict(parts)
        opt_state = state.opt_state
        if hyperparams_fn is not None:
            hyperparams = hyperparams_fn(state.step)
            opt_state = set_hyperparams(opt_state, hyperparams)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if torch_compat:
            params, opt_state = skip_group(parts["num_fg"] == 0, params, state.params, opt_state, state.opt_state)
        stepped = None
        if isinstance(opt_state, optax.MultiStepsState):
            stepped = opt_state.gradient_step != state.opt_state.gradient_step
        ema = state.ema
        if ema is not None:
            ema = update_ema(ema, params, new_rest, where=stepped)
        metrics["grad_norm"] = global_norm(grads)
        metrics["param_norm"] = global_norm(params)
        if lr_fn is not None:
            metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
        if hyperparams_fn is not None:
            metrics.update(hyperparams)
        if stepped is not None:
            metrics["stepped"] = stepped
        new_state = TrainState(step=state.step + 1, params=params, rest=new_rest, opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step
