"""Training recipes as plug-in modules, looked up by name.

A recipe is one module that registers one :class:`Recipe`: its loss, its optimizer and schedule,
whether it keeps an EMA, its augmentation, and the loss scale its optimizer was tuned for
(:class:`OptimizerSetup`). ``train.py`` looks everything up here by the names in the
configuration (``--recipe``, ``--loss``, ``--optimizer``, ``--augment``) and never branches on
them. Adding a recipe is one new file that calls :func:`register` (and is imported once, e.g. by
``yolo11_jax/recipes/__init__.py`` for the built-in ones, or by a test); see ``docs/recipes.md``.

The parts are registered separately, so that a run can mix them (``--recipe notebook --loss
ultralytics``):

* a :class:`Loss`, by its name (``--loss``), with the defaults of the options it reads
  (``topk``, ``assigner``, ``class_bias_prior``);
* an :class:`Optimizer`, by each name it builds (``--optimizer``), with the defaults of the
  options it reads (``lr``, ``weight_decay``, ``momentum``, ``torch_compat``) and the options it
  ignores (an ignored option set away from its default is an error before the first step);
* an augmentation preset, by its name (``--augment``): a ``data.Augment``.

:func:`resolve` fills every option a recipe decides with a concrete value; ``TrainConfig`` calls it
on construction, so a configuration never holds "the recipe's value".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Optional

import optax

if TYPE_CHECKING:  # (no import cycle at run time)
    from yolo11_jax.data import Augment
    from yolo11_jax.train_config import TrainConfig

# loss_fn(predictions, boxes_cxcywh (B,M,4), labels (B,M), mask (B,M)) -> (total, parts): ``parts`` a
# dict of float32 scalars holding at least ``total_loss`` (and ``num_fg``, the foreground count,
# for ``torch_compat``); every part is logged.
LossFn = Callable[..., tuple[Any, dict]]


@dataclasses.dataclass(frozen=True)
class RunLength:
    """What an optimizer's schedule needs to know about the run."""

    steps_per_epoch: int   # batches per epoch
    total_steps: int       # batches (train-step calls) in the run
    num_images: int        # training images per epoch (for Ultralytics' iteration count)

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class OptimizerSetup:
    """What an optimizer builds for ``step.make_train_step``.

    ``tx``: the Optax transformation. ``lr_fn(step)``: the learning rate to log (a plain
    schedule), or ``hyperparams_fn(step) -> dict``: per-iteration hyperparameters written into
    ``tx``'s state (``optim.set_hyperparams``), not both. ``torch_compat``: the notebook's
    regression-branch skip. ``loss_scale``: ``None``, a number, or ``"batch"`` (the global batch
    size), the factor on the differentiated loss that the optimizer's settings assume.
    ``info``: JSON-serialisable, resolved choices for the log and ``config.json``.
    """

    tx: optax.GradientTransformation
    info: Mapping[str, Any]
    lr_fn: Optional[Callable] = None
    hyperparams_fn: Optional[Callable] = None
    torch_compat: bool = False
    loss_scale: float | str | None = None


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss: ``build(cfg) -> loss_fn`` (:data:`LossFn`), jit-able."""

    name: str
    build: Callable[["TrainConfig"], LossFn]
    defaults: Mapping[str, Any]                 # topk, assigner, class_bias_prior
    assigners: Collection[str]                  # the --assigner values it accepts


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer with its schedule: ``build(cfg, params, length) -> OptimizerSetup``.

    ``defaults(cfg_values)`` gives ``lr``, ``weight_decay``, ``momentum``, ``torch_compat`` for
    the configuration so far (a dict; ``optimizer`` and ``loss`` are already resolved).
    ``ignores``: options it does not read; set away from their defaults they are an error.
    ``check(cfg) -> problems``: combinations it refuses."""

    names: tuple[str, ...]
    build: Callable[["TrainConfig", Any, RunLength], OptimizerSetup]
    defaults: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    ignores: tuple[str, ...] = ()
    check: Callable[["TrainConfig"], list[str]] = lambda cfg: []


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe: which loss, optimizer, EMA and augmentation ``--recipe NAME`` selects."""

    name: str
    description: str
    loss: Loss
    optimizer: Optimizer
    default_optimizer: str                       # one of optimizer.names
    ema: bool                                    # keep Ultralytics' EMA of the weights (ema.py)
    augment_name: str                            # the --augment preset it registers and uses
    augment: "Augment"


RECIPES: dict[str, Recipe] = {}
LOSSES: dict[str, Loss] = {}
OPTIMIZERS: dict[str, Optimizer] = {}
AUGMENTS: dict[str, "Augment"] = {}

# The options a recipe decides (their TrainConfig default is FROM_RECIPE).
RECIPE_FIELDS = ("loss", "optimizer", "ema", "augment")
LOSS_FIELDS = ("topk", "assigner", "class_bias_prior")
OPTIMIZER_FIELDS = ("lr", "weight_decay", "momentum", "torch_compat")
AUGMENT_FIELDS = ("mosaic", "close_mosaic", "degrees", "translate", "scale", "shear", "hsv_h", "hsv_s", "hsv_v",
                  "fliplr")
DECIDED_FIELDS = RECIPE_FIELDS + LOSS_FIELDS + OPTIMIZER_FIELDS + AUGMENT_FIELDS


class _FromRecipe:
    """The default of an option a recipe decides; never left in a constructed configuration."""

    def __repr__(self) -> str:
        return "the recipe's"


FROM_RECIPE: Any = _FromRecipe()


def register(recipe: Recipe) -> Recipe:
    """Make ``recipe`` (and its loss, optimizer names and augmentation preset) known by name.
    Re-registering a name replaces it."""
    if recipe.default_optimizer not in recipe.optimizer.names:
        raise ValueError(f"recipe {recipe.name!r}: default optimizer {recipe.default_optimizer!r} is not one of "
                         f"its optimizer's names {recipe.optimizer.names}")
    RECIPES[recipe.name] = recipe
    LOSSES[recipe.loss.name] = recipe.loss
    for name in recipe.optimizer.names:
        OPTIMIZERS[name] = recipe.optimizer
    AUGMENTS[recipe.augment_name] = recipe.augment
    return recipe


def unregister(name: str) -> None:
    """Forget recipe ``name`` and the parts only it registered (for tests)."""
    recipe = RECIPES.pop(name)
    others = list(RECIPES.values())
    if all(r.loss.name != recipe.loss.name for r in others):
        LOSSES.pop(recipe.loss.name, None)
    for opt in recipe.optimizer.names:
        if all(opt not in r.optimizer.names for r in others):
            OPTIMIZERS.pop(opt, None)
    if all(r.augment_name != recipe.augment_name for r in others):
        AUGMENTS.pop(recipe.augment_name, None)


def _lookup(table: Mapping[str, Any], name, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(map(str, table))}")
    return table[name]


def get_recipe(name: str) -> Recipe:
    return _lookup(RECIPES, name, "--recipe")


def get_loss(name: str) -> Loss:
    return _lookup(LOSSES, name, "--loss")


def get_optimizer(name: str) -> Optimizer:
    return _lookup(OPTIMIZERS, name, "--optimizer")


def resolve(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a configuration's fields) with every :data:`FROM_RECIPE` (or ``None``, as in a
    ``config.json`` of an earlier version) among the decided options replaced by the value that
    runs: the recipe's loss / optimizer / EMA / augmentation, then the loss's, the optimizer's and
    the augmentation preset's own defaults. Raises ``ValueError`` for an unknown name."""
    out = dict(values)

    def unset(key):
        return out.get(key, FROM_RECIPE) is FROM_RECIPE or out.get(key) is None

    recipe = get_recipe(out["recipe"])
    chosen = dict(loss=recipe.loss.name, optimizer=recipe.default_optimizer, ema=recipe.ema,
                  augment=recipe.augment_name)
    for key in RECIPE_FIELDS:
        if unset(key):
            out[key] = chosen[key]
    for key, value in get_loss(out["loss"]).defaults.items():
        if unset(key):
            out[key] = value
    for key, value in get_optimizer(out["optimizer"]).defaults(out).items():
        if unset(key):
            out[key] = value
    preset = _lookup(AUGMENTS, out["augment"], "--augment")
    for key in AUGMENT_FIELDS:
        if unset(key):
            out[key] = getattr(preset, key)
    return out


def problems(cfg: "TrainConfig") -> list[str]:
    """The combinations ``cfg`` asks for that would not run as asked: an assigner its loss does not
    use, an option its optimizer ignores set away from its default, the optimizer's own checks."""
    from yolo11_jax.train_config import TrainConfig

    out = []
    loss = get_loss(cfg.loss)
    if cfg.assigner not in loss.assigners:
        out.append(f"--assigner {cfg.assigner} is not used by --loss {cfg.loss}, which assigns with "
                   f"{' / '.join(loss.assigners)}")
    optimizer = get_optimizer(cfg.optimizer)
    library = TrainConfig.__dataclass_fields__
    for key in optimizer.ignores:
        if getattr(cfg, key) != library[key].default:
            out.append(f"--{key.replace('_', '-')} {getattr(cfg, key)} is not used by --optimizer {cfg.optimizer} "
                       f"(leave it at {library[key].default})")
    return out + list(optimizer.check(cfg))


def augmentation(cfg: "TrainConfig") -> "Augment":
    """The ``data.Augment`` of a configuration (its resolved parts)."""
    from yolo11_jax.data import Augment

    return Augment(**{key: getattr(cfg, key) for key in AUGMENT_FIELDS})


from yolo11_jax.recipes import notebook, ultralytics  # noqa: E402,F401  (the built-in recipes register)
