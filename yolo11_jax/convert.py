"""Weight interop with the PyTorch references, the notebook's state dicts and Ultralytics.

``load_state_dict(model, state_dict)`` fills an NNX ``YOLOv11`` (the notebook's network) or
``YOLO11`` (Ultralytics' family) in place from a PyTorch-style state dict (torch tensors or
NumPy arrays, the reference's key names: ``reference_torch.YOLOv11`` /
``reference_torch.YOLO11``, the latter exactly Ultralytics' keys); ``to_state_dict(model)`` goes
the other way and its result loads into the reference with ``strict=True``.
``save_safetensors`` / ``load_safetensors`` store the same keys in a ``.safetensors`` file.

The conversion is a table of leaf rules (``_LEAF_RULES``), plus one group rule for the
notebook's packed attention projections and the frozen DFL constants (``model.torch_constants``:
the notebook's ``head.heads.i.proj``, YOLO11's ``model.23.dfl.conv.weight``, both
``arange(reg_max)``). Grouped and depthwise convolutions follow the same kernel rule
(torch ``(O, I / groups, kh, kw)`` <-> ``(kh, kw, I / groups, O)``). ``load_state_dict``
collects every missing key, unexpected key and shape mismatch before raising one error that
lists them all.

Fine-tuning: ``load_pretrained(model, state_dict)`` loads everything that fits and keeps the
model's own (fresh) class-output layers when the checkpoint has another class count.
Ultralytics checkpoints: ``load_ultralytics(path)`` reads a ``.pt`` without Ultralytics or torch
and without running code from it (see ``ultralytics_pt``). As a command::

    python -m yolo11_jax.convert yolo11n.pt --out yolo11n.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yolo11_jax.model import ConvBNSiLU, YOLOv11, torch_constants
from yolo11_jax.yolo11 import DEFAULT_VARIANT, DETECT_INDEX, YOLO11, Variant

Model = YOLOv11 | YOLO11

NnxPath = tuple  # e.g. ('backbone', 'stem', 'conv', 'kernel')


def _conv_to_torch(kernel_hwio: np.ndarray) -> np.ndarray:
    return np.transpose(kernel_hwio, (3, 2, 0, 1))  # HWIO -> OIHW


def _conv_from_torch(weight_oihw: np.ndarray) -> np.ndarray:
    return np.transpose(weight_oihw, (2, 3, 1, 0))  # OIHW -> HWIO


def _identity(x: np.ndarray) -> np.ndarray:
    return x


# (owner kind, NNX leaf, torch leaf, nnx -> torch, torch -> nnx)
# owner kind: 'conv' for nnx.Conv, 'bn' for our BatchNorm.
_LEAF_RULES: list[tuple[str, str, str, Callable, Callable]] = [
    ("conv", "kernel", "weight", _conv_to_torch, _conv_from_torch),
    ("conv", "bias", "bias", _identity, _identity),
    ("bn", "scale", "weight", _identity, _identity),
    ("bn", "bias", "bias", _identity, _identity),
    ("bn", "mean", "running_mean", _identity, _identity),
    ("bn", "var", "running_var", _identity, _identity),
    ("bn", "num_batches_tracked", "num_batches_tracked",
     lambda x: x.astype(np.int64), lambda x: np.asarray(x).astype(np.int32)),
]
_ATTN_PARTS = ("query", "key", "value")


_NUMPY_FLOATS = ("float16", "float32", "float64")


def _to_numpy(x: Any) -> np.ndarray:
    """A private copy: ``jnp.asarray`` may alias host memory on the CPU, and torch
    updates BatchNorm buffers in place, so sharing memory would couple the two models."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() and str(x.dtype).removeprefix("torch.") not in _NUMPY_FLOATS:  # bfloat16
            x = x.float()
        x = x.numpy()
    return np.array(x, copy=True)


def _owner_kind(model: Model, owner_path: NnxPath) -> str | None:
    node: Any = model
    for part in owner_path:
        node = node[part] if isinstance(node, nnx.List) else getattr(node, str(part))
    if isinstance(node, nnx.Conv):
        return "conv"
    if type(node).__name__ == "BatchNorm":
        return "bn"
    return None


def _flat_variables(model: Model) -> dict[NnxPath, nnx.Variable]:
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _key(path: NnxPath) -> str:
    return ".".join(str(p) for p in path)


def _torch_layout(model: Model) -> dict[str, tuple[NnxPath, Callable, Callable]]:
    """torch key -> (NNX path, nnx->torch fn, torch->nnx fn) for every plain leaf."""
    packed = [tuple(path) for path, m in nnx.iter_modules(model) if isinstance(m, nnx.MultiHeadAttention)]
    table = {}
    for path in _flat_variables(model):
        owner, leaf = path[:-1], path[-1]
        if any(owner[:len(p)] == p for p in packed):
            continue  # the notebook's packed attention projections, handled as a group
        kind = _owner_kind(model, owner)
        for rule_kind, nnx_leaf, torch_leaf, to_t, from_t in _LEAF_RULES:
            if rule_kind == kind and nnx_leaf == leaf:
                table[_key(owner + (torch_leaf,))] = (path, to_t, from_t)
                break
        else:
            raise AssertionError(f"no conversion rule for NNX leaf {_key(path)}")
    return table


def _attn_modules(model: Model) -> dict[str, nnx.MultiHeadAttention]:
    return {_key(path): m for path, m in nnx.iter_modules(model) if isinstance(m, nnx.MultiHeadAttention)}


def to_state_dict(model: Model) -> dict[str, np.ndarray]:
    """The model's weights and BatchNorm statistics under the reference's torch key names.

    Returns NumPy arrays in torch layouts (OIHW convolutions, the notebook's packed attention
    ``in_proj_weight (3c, c)``), plus the frozen DFL constants (``arange(reg_max)``).
    ``{k: torch.from_numpy(v) for k, v in ...}`` loads into ``reference_torch.YOLOv11`` /
    ``YOLO11`` with ``strict=True``.
    """
    flat = _flat_variables(model)
    out: dict[str, np.ndarray] = {}
    for torch_key, (path, to_t, _) in _torch_layout(model).items():
        out[torch_key] = np.array(to_t(np.asarray(flat[path][...])), order="C")
    for prefix, attn in _attn_modules(model).items():
        c = attn.in_features
        w = [np.asarray(getattr(attn, p).kernel[...]).reshape(c, c).T for p in _ATTN_PARTS]
        b = [np.asarray(getattr(attn, p).bias[...]).reshape(c) for p in _ATTN_PARTS]
        out[f"{prefix}.in_proj_weight"] = np.array(np.concatenate(w, 0), order="C")
        out[f"{prefix}.in_proj_bias"] = np.concatenate(b, 0)
        out[f"{prefix}.out_proj.weight"] = np.array(np.asarray(attn.out.kernel[...]).reshape(c, c).T, order="C")
        out[f"{prefix}.out_proj.bias"] = np.asarray(attn.out.bias[...]).copy()
    out.update(torch_constants(model))
    return dict(sorted(out.items()))


def load_state_dict(model: Model, state_dict: Mapping[str, Any]) -> None:
    """Fill ``model`` in place from a torch-style state dict.

    Args:
      model: an NNX ``YOLOv11`` or ``YOLO11`` whose architecture matches the state dict. It may
        be abstract (``nnx.eval_shape(lambda: build_model(...))``): every variable is then
        filled, without paying for a random initialisation.
      state_dict: ``{torch key: tensor or array}`` as saved by the notebook's ``YOLOv11``,
        ``reference_torch.YOLOv11`` / ``YOLO11``, or an Ultralytics ``DetectionModel``.

    Raises:
      ValueError: listing every missing key, unexpected key, shape mismatch and changed
        frozen DFL constant, all at once.
    """
    given = {k: _to_numpy(v) for k, v in state_dict.items()}
    expected = torch_shapes(model)
    problems = _fit_problems(model, given, expected)
    if problems:
        raise ValueError(f"state dict does not fit this {type(model).__name__} ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))
    _assign(model, given)


def torch_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """``{torch key: shape}`` of ``to_state_dict(model)``, from the variables' shapes alone, so it
    also works on an abstract model (``nnx.eval_shape``)."""
    flat = _flat_variables(model)
    shapes = {}
    for torch_key, (path, to_t, _) in _torch_layout(model).items():
        var = flat[path]
        shapes[torch_key] = tuple(to_t(np.broadcast_to(np.zeros((), var.dtype), var.shape)).shape)
    for prefix, attn in _attn_modules(model).items():
        c = attn.in_features
        shapes.update({f"{prefix}.in_proj_weight": (3 * c, c), f"{prefix}.in_proj_bias": (3 * c,),
                       f"{prefix}.out_proj.weight": (c, c), f"{prefix}.out_proj.bias": (c,)})
    shapes.update({k: tuple(v.shape) for k, v in torch_constants(model).items()})
    return dict(sorted(shapes.items()))


def _fit_problems(model: Model, given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                  shape_ok: Callable[[str], bool] = lambda k: False) -> list[str]:
    """Every missing key, unexpected key, shape mismatch (unless ``shape_ok(key)``) and changed
    frozen constant."""
    constants = torch_constants(model)
    problems = []
    for k in sorted(expected.keys() - given.keys()):
        problems.append(f"missing key: {k} (expected shape {expected[k]})")
    for k in sorted(given.keys() - expected.keys()):
        problems.append(f"unexpected key: {k} (shape {tuple(given[k].shape)})")
    for k in sorted(expected.keys() & given.keys()):
        if tuple(given[k].shape) != expected[k]:
            if not shape_ok(k):
                problems.append(f"shape mismatch: {k}: got {tuple(given[k].shape)}, model expects {expected[k]}")
        elif k in constants and not np.array_equal(given[k], constants[k]):
            problems.append(f"{k}: the DFL projection is frozen at arange({model.reg_max}); "
                            f"got {given[k].ravel()}")
    return problems


def _assign(model: Model, given: Mapping[str, np.ndarray], skip: frozenset[str] = frozenset()) -> None:
    """Write every key of the layout except ``skip`` (all shapes already checked)."""
    flat = _flat_variables(model)
    for torch_key, (path, _, from_t) in _torch_layout(model).items():
        if torch_key in skip:
            continue
        var = flat[path]
        _set(var, jnp.asarray(from_t(given[torch_key]), dtype=var.dtype))
    for prefix, attn in _attn_modules(model).items():
        c, heads = attn.in_features, attn.num_heads
        w_in, b_in = given[f"{prefix}.in_proj_weight"], given[f"{prefix}.in_proj_bias"]
        for i, part in enumerate(_ATTN_PARTS):
            proj = getattr(attn, part)
            _set(proj.kernel, jnp.asarray(w_in[i * c:(i + 1) * c].T.reshape(c, heads, c // heads)))
            _set(proj.bias, jnp.asarray(b_in[i * c:(i + 1) * c].reshape(heads, c // heads)))
        _set(attn.out.kernel, jnp.asarray(given[f"{prefix}.out_proj.weight"].T.reshape(heads, c // heads, c)))
        _set(attn.out.bias, jnp.asarray(given[f"{prefix}.out_proj.bias"]))


def _set(var: nnx.Variable, value: jax.Array) -> None:
    """``var[...] = value``; on an abstract model (``nnx.eval_shape``) the value replaces the
    placeholder."""
    if isinstance(var.get_value(), jax.ShapeDtypeStruct):
        var.set_value(value)
    else:
        var[...] = value


def save_safetensors(model_or_state_dict: Model | Mapping[str, Any], path: str,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write the torch-named weights to ``path`` (``.safetensors``); ``metadata`` values are strings."""
    from safetensors.numpy import save_file

    sd = to_state_dict(model_or_state_dict) if isinstance(model_or_state_dict, nnx.Module) else {
        k: _to_numpy(v) for k, v in model_or_state_dict.items()}
    save_file({k: np.array(v, order="C") for k, v in sd.items()}, str(path),
              metadata=dict(metadata) if metadata else None)


def load_safetensors(path: str, model: Model | None = None) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` state dict; if ``model`` is given, also load it into the model."""
    from safetensors.numpy import load_file

    sd = load_file(str(path))
    if model is not None:
        load_state_dict(model, sd)
    return sd


# --------------------------------------------------------------------------- fine-tuning


@dataclasses.dataclass
class PretrainedReport:
    """What ``load_pretrained`` did, as sorted torch keys. ``reinitialized`` are the class-branch
    leaves whose shapes differ from the checkpoint's: they keep the model's own values, i.e. its
    initialisation when the model was built fresh (as Ultralytics does when fine-tuning)."""

    loaded: list[str]
    reinitialized: list[str]
    checkpoint_num_classes: int
    model_num_classes: int

    def summary(self) -> str:
        """A few lines for a training log."""
        lines = [f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.reinitialized)} tensors from the checkpoint "
                 f"({self.checkpoint_num_classes} classes) into the model ({self.model_num_classes} classes)"]
        if self.reinitialized:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.reinitialized})
            lines.append(f"re-initialised (class count differs) {len(self.reinitialized)} tensors in "
                         f"{len(layers)} layers: "
                         + ", ".join(layers))
        return "\n".join(lines)


def load_pretrained(model: Model, state_dict: Mapping[str, Any]) -> PretrainedReport:
    """Load a checkpoint for fine-tuning, possibly trained on another number of classes.

    Every tensor is loaded, except, when the checkpoint's class count differs from
    ``model.num_classes``, the class-branch layers whose shapes depend on it: the last 1x1
    convolution of each level's class branch (weight and bias) and, in yolo11n, whose class
    branch is ``max(64, min(nc, 100))`` wide, the branch's hidden layers too (as in Ultralytics,
    which loads only the tensors whose shapes fit), unless the model's ``Variant.cls_hidden``
    gives them the checkpoint's width (``train --keep-class-rows``): then they load, and only
    the last 1x1 layers are re-initialised. Those layers (a layer is a convolution or a
    BatchNorm; all of its leaves) keep the values ``model`` has: build the model fresh with
    ``build_model`` and they are its initialisation.

    Args:
      model: a ``YOLO11`` or ``YOLOv11``.
      state_dict: torch-named tensors or arrays (``to_state_dict`` layout), e.g. from
        ``ultralytics_pt.read_ultralytics`` or ``load_safetensors``.

    Returns:
      a ``PretrainedReport`` (``.summary()`` for the log).

    Raises:
      ValueError: listing every problem at once: missing or unexpected keys, a shape
        mismatch outside the class branch, or one inside it while the class counts agree.
    """
    given = {k: _to_numpy(v) for k, v in state_dict.items()}
    expected = torch_shapes(model)
    out_prefix = model.class_output_prefixes()[0]
    ckpt_classes = given.get(out_prefix + "bias")
    ckpt_nc = int(ckpt_classes.shape[0]) if ckpt_classes is not None and ckpt_classes.ndim == 1 \
        else model.num_classes
    branch = model.class_branch_prefixes()

    def reinit_ok(k: str) -> bool:
        return ckpt_nc != model.num_classes and k.startswith(branch)

    problems = _fit_problems(model, given, expected, shape_ok=reinit_ok)
    if problems:
        raise ValueError(f"checkpoint does not fit this {type(model).__name__} ({model.num_classes} classes) "
                         f"({len(problems)} problems):\n  " + "\n  ".join(problems))
    mismatched_layers = {k.rsplit(".", 1)[0] for k in expected.keys() & given.keys()
                         if tuple(given[k].shape) != expected[k]}
    reinitialized = sorted(k for k in expected if k.rsplit(".", 1)[0] in mismatched_layers)
    _assign(model, given, skip=frozenset(reinitialized))
    loaded = sorted(k for k in expected if k not in reinitialized)
    return PretrainedReport(loaded=loaded, reinitialized=reinitialized, checkpoint_num_classes=ckpt_nc,
                            model_num_classes=model.num_classes)


# --------------------------------------------------------------------------- Ultralytics checkpoints


VARIANT_METADATA_KEY = "yolo11_variant"


def variant_metadata(model: Model) -> dict[str, str]:
    """The ``.safetensors`` metadata entry recording a YOLO11's ``Variant`` (``{}`` for the
    notebook's networks). ``convert`` writes it; training's exports should merge it too."""
    return {VARIANT_METADATA_KEY: model.variant.to_json()} if isinstance(model, YOLO11) else {}


def variant_from_metadata(meta: Mapping[str, str], source: str = "") -> Variant:
    """The ``Variant`` a ``.safetensors`` file's metadata records (``yolo11_variant``, possibly
    inside a training ``config`` JSON), else the default. Raises ``ValueError`` naming the file
    for a malformed entry."""
    text = meta.get(VARIANT_METADATA_KEY)
    if text is None and "config" in meta:
        try:
            cfg = json.loads(meta["config"])
        except ValueError:
            cfg = {}
        text = cfg.get(VARIANT_METADATA_KEY) if isinstance(cfg, dict) else None
    try:
        return Variant.from_json(text)
    except ValueError as e:
        raise ValueError(f"{source}: metadata {VARIANT_METADATA_KEY}: {e}") from None


@dataclasses.dataclass(frozen=True)
class WeightsFileFacts:
    """What a weights file says about the network it holds (``weights_file_facts``).

    Attributes:
      variant: the ``Variant`` it records (a ``.pt``: its module records and, for
        ``cls_hidden``, its tensor shapes; a ``.safetensors``: its metadata, the default without).
      where: where the variant came from, for the log.
      num_classes: the class count of its class-output layer (``None``: no YOLO11 head).
      class_names: its class names, or ``None``.
      class_widths: ``(ch0, c3)`` of its Detect class branch (``ultralytics_pt.class_branch_widths``),
        or ``None``.
    """

    variant: Variant
    where: str
    num_classes: int | None
    class_names: list[str] | None
    class_widths: tuple[int, int] | None


def weights_file_facts(path: str | os.PathLike) -> WeightsFileFacts:
    """Read ``WeightsFileFacts`` from an Ultralytics ``.pt`` or a ``.safetensors`` (the latter
    without reading its tensors: the shapes and metadata only)."""
    from yolo11_jax.ultralytics_pt import class_branch_widths, read_ultralytics

    path = str(path)
    if path.endswith(".pt"):
        state_dict, info = read_ultralytics(path)
        return WeightsFileFacts(
            Variant(**info["variant"]),
            f"the records of {os.path.basename(path)} (Ultralytics {info['ultralytics_version'] or '?'})",
            info["num_classes"], list(info["class_names"]),
            class_branch_widths({k: v.shape for k, v in state_dict.items()}))
    from safetensors import safe_open

    from yolo11_jax.inference import weights_config

    with safe_open(path, framework="numpy") as f:
        meta = dict(f.metadata() or {})
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()
                  if k.startswith(f"model.{DETECT_INDEX}.cv3.0.")}
    bias = shapes.get(f"model.{DETECT_INDEX}.cv3.0.2.bias")
    names = weights_config(path).get("class_names")
    if VARIANT_METADATA_KEY not in meta and VARIANT_METADATA_KEY not in meta.get("config", ""):
        variant, where = DEFAULT_VARIANT, f"{os.path.basename(path)} (no {VARIANT_METADATA_KEY} metadata: the default)"
    else:
        variant, where = variant_from_metadata(meta, path), f"the metadata of {os.path.basename(path)}"
    return WeightsFileFacts(variant, where, int(bias[0]) if bias is not None and len(bias) == 1 else None,
                            list(names) if isinstance(names, list) else None, class_branch_widths(shapes))


def weights_variant(path: str | os.PathLike) -> tuple[Variant, str]:
    """``(variant, where it came from)`` of a weights file: an Ultralytics ``.pt`` (its records)
    or a ``.safetensors`` (its metadata; the default when it has none)."""
    facts = weights_file_facts(path)
    return facts.variant, facts.where


def init_weights_variant(facts: WeightsFileFacts, num_classes: int, *, keep_class_rows: bool = False,
                         class_names=None) -> tuple[Variant, str | None]:
    """The ``Variant`` to fine-tune a YOLO11 with ``num_classes`` classes from a file
    (``facts``), and a log line when its class branch is not the file's variant's.

    The file's variant, with the class branch's hidden width (``cls_hidden``) chosen so:

    * the same class count: the file's width (the network the file describes);
    * another class count, ``keep_class_rows`` and at least one class name (``class_names``, the
      data's) shared with the file's: the file's width when Ultralytics' rule would give another
      one (yolo11n from 80 COCO classes: 80, not 64), so that the branch's hidden layers load
      from the file and only its last 1x1 class layer is new, where ``class_names.keep_class_rows``
      copies the shared classes' rows. A deviation from Ultralytics, which rebuilds the branch
      by its rule and re-initialises every layer whose shape changed;
    * otherwise Ultralytics' rule (``cls_hidden=None``).
    """
    from yolo11_jax.yolo11 import ultralytics_class_hidden

    variant = facts.variant
    if facts.class_widths is None or facts.num_classes is None:
        return variant, None
    ch0, ckpt_width = facts.class_widths
    rule_width = ultralytics_class_hidden(ch0, num_classes)
    if facts.num_classes == num_classes:
        want = None if ckpt_width == rule_width else ckpt_width
        if want == variant.cls_hidden:
            return variant, None
        return dataclasses.replace(variant, cls_hidden=want), (
            f"init weights: the class branch of {facts.where} is {ckpt_width} wide; building it so")
    shared = []
    if keep_class_rows and class_names and facts.class_names:
        from yolo11_jax.class_names import shared_class_pairs

        shared = shared_class_pairs(list(class_names), facts.class_names)
    if shared and ckpt_width != rule_width:
        return dataclasses.replace(variant, cls_hidden=ckpt_width), (
            f"--keep-class-rows: class branch kept {ckpt_width} wide (the checkpoint's, for {facts.num_classes} classes) "
            f"instead of {rule_width} (Ultralytics' max({ch0}, min({num_classes}, 100)) for {num_classes} classes), so "
            f"its hidden layers load from the file and only the last class layer is new, where the rows of the "
            f"{len(shared)} shared classes are kept (Ultralytics re-initialises the whole branch)")
    if variant.cls_hidden is not None:
        return dataclasses.replace(variant, cls_hidden=None), (
            f"init weights: class branch {rule_width} wide (Ultralytics' rule for {num_classes} classes), not the "
            f"file's {ckpt_width} (for its {facts.num_classes} classes)")
    return variant, None


def build_for_init_weights(preset: str, path: str | os.PathLike, *, num_classes: int, keep_class_rows: bool = False,
                           class_names=None, **build_kwargs) -> tuple[Model, str | None]:
    """The model to fine-tune from ``path`` (``--init-weights``): ``presets.build_model(preset,
    num_classes=..., **build_kwargs)`` (``dtype``, ``conv_impl``, ``rngs``), a YOLO11 preset
    built with the architecture variant the file records, so that its weights compute what they
    were trained to, and the class branch's width chosen by ``init_weights_variant``
    (``keep_class_rows``: ``train --keep-class-rows``; ``class_names``: the data's). Returns
    ``(model, note)``: ``note`` is the log line(s) when the variant is not the default or the
    class branch is not the file's variant's (``None`` otherwise, and for the notebook's
    networks)."""
    from yolo11_jax.presets import build_model, get_preset

    if get_preset(preset).scale is None:
        return build_model(preset, num_classes=num_classes, **build_kwargs), None
    facts = weights_file_facts(path)
    variant, branch_note = init_weights_variant(facts, num_classes, keep_class_rows=keep_class_rows,
                                                class_names=class_names)
    model = build_model(preset, num_classes=num_classes, variant=variant, **build_kwargs)
    notes = []
    if facts.variant != DEFAULT_VARIANT:
        notes.append(f"init weights: following the architecture recorded in {facts.where}: {facts.variant.name} "
                     f"(--model {preset} builds {DEFAULT_VARIANT.name} from scratch)")
    if branch_note:
        notes.append(branch_note)
    return model, "\n".join(notes) or None


_CLASS_IN_NNX = {"Conv": "ConvBNSiLU", "DWConv": "ConvBNSiLU"}
_NNX_CHECKED = ("ConvBNSiLU", "Bottleneck", "C3k", "C3k2", "SPPF", "C2PSA", "PSABlock", "Attention", "Detect", "DFL")


def check_architecture(model: YOLO11, records: Mapping[str, dict], path: str = "") -> None:
    """Compare the architecture a checkpoint records (``ultralytics_pt.architecture_records``)
    with ``model``, module by module under the shared key names: the module classes (so C3k2's
    c3k flag and repeat count), every Conv's activation (``SiLU`` or ``Identity``), SPPF's ``n``
    and ``add``, the shortcuts, the attention heads, Detect's ``nc`` / ``reg_max`` and its
    ``legacy`` / ``end2end`` flags. Raises ``UltralyticsCheckpointError`` listing every record
    the network does not represent."""
    from yolo11_jax.ultralytics_pt import UltralyticsCheckpointError

    nnx_modules = {".".join(map(str, p)): m for p, m in nnx.iter_modules(model) if p}
    problems = []
    for key, rec in records.items():
        cls = rec["class"]
        m = nnx_modules.get(key)
        want = _CLASS_IN_NNX.get(cls, cls)
        if m is None or type(m).__name__ != want:
            problems.append(f"record {key} is a {cls}; this network has "
                            f"{'nothing' if m is None else 'a ' + type(m).__name__} there")
            continue
        if cls in ("Conv", "DWConv"):
            if rec.get("act") not in ("SiLU", "Identity"):
                problems.append(f"record {key}.act is {rec.get('act')}; this network has only SiLU or no activation")
            elif (rec["act"] == "SiLU") != bool(m.act):
                problems.append(f"record {key}.act is {rec['act']}; this network has "
                                f"{'SiLU' if m.act else 'no activation'} there")
        checks = {"SPPF": {"n": m.n if cls == "SPPF" else None, "add": getattr(m, "add", None)},
                  "Bottleneck": {"add": getattr(m, "add", None)}, "PSABlock": {"add": getattr(m, "add", None)},
                  "Attention": {a: getattr(m, a, None) for a in ("num_heads", "key_dim", "head_dim")},
                  "C3k2": {"c": getattr(m, "c", None)}, "C2PSA": {"c": getattr(m, "c", None)},
                  "Detect": {"nc": getattr(m, "num_classes", None), "reg_max": getattr(m, "reg_max", None),
                             "legacy": False, "end2end": False}}.get(cls, {})
        for attr, ours in checks.items():
            if attr not in rec:
                continue
            differs = bool(rec[attr]) != ours if isinstance(ours, bool) else rec[attr] != ours
            if differs:
                problems.append(f"record {key}.{attr} is {rec[attr]!r}; this network has {ours!r}")
    for key, m in nnx_modules.items():
        name = type(m).__name__
        if name in _NNX_CHECKED and key not in records and not key.endswith(".dfl"):
            problems.append(f"this network has a {name} at {key}; the file records none there")
    if problems:
        raise UltralyticsCheckpointError(
            f"{path}: the file's architecture records ask for what this YOLO11 network cannot represent "
            f"({len(problems)} problems):\n  " + "\n  ".join(problems))


def load_ultralytics(path: str | os.PathLike, *, dtype=None) -> tuple[YOLO11, dict]:
    """An NNX ``YOLO11`` with the weights of an Ultralytics YOLO11 detection checkpoint.

    Neither Ultralytics nor torch is needed, and no code from the file runs: the pickle is read
    by ``ultralytics_pt.read_ultralytics``'s restricted unpickler (see there for what it accepts).
    Both released weights (``"model"``) and training checkpoints (``last.pt`` / ``best.pt``,
    ``"ema"``) load; FP16 weights become float32.

    The network is the one the file describes: its scale and class count from the tensors, its
    ``Variant`` (SPPF's activation, ``n`` and shortcut) and ``reg_max`` from the pickled modules,
    and every other recorded choice checked (``check_architecture``): a record the network
    cannot represent is refused, never computed differently.

    Args:
      path: the ``.pt`` file.
      dtype: compute dtype (``None``: float32; ``jnp.bfloat16`` for mixed precision).

    Returns:
      ``(model, info)``: the model in eval mode (``model.train()`` to fine-tune), and ``info``
      with ``num_classes``, ``class_names``, ``scale``, ``preset``, ``weights_key`` ('model' or
      'ema'), ``ultralytics_version``, ``epoch``, ``date``, ``file_dtype``, ``path``,
      ``variant`` (the fields), ``variant_name``, ``reg_max``, ``imgsz``, ``architecture``.

    Raises:
      ultralytics_pt.UltralyticsCheckpointError (a ValueError) when the file is not a YOLO11
      detection checkpoint, names a class outside the allowed list, records an architecture this
      network cannot represent, or its tensors do not fit.
    """
    from yolo11_jax.presets import build_model
    from yolo11_jax.ultralytics_pt import UltralyticsCheckpointError, read_ultralytics

    state_dict, info = read_ultralytics(path)
    variant = Variant(**info["variant"])
    info["variant_name"] = variant.name
    # Abstract construction: every variable is then set from the checkpoint.
    model = nnx.eval_shape(lambda: build_model(info["preset"], num_classes=info["num_classes"],
                                               reg_max=info["reg_max"], variant=variant, dtype=dtype,
                                               rngs=nnx.Rngs(0)))
    check_architecture(model, info["architecture"], str(path))
    try:
        load_state_dict(model, state_dict)
    except ValueError as e:
        raise UltralyticsCheckpointError(f"{path}: the tensors do not fit {info['preset']} ({variant.name}) with "
                                         f"{info['num_classes']} classes: {e}") from None
    model.eval()
    return model, info


def safetensors_metadata(preset: str, class_names: list[str], **extra: Any) -> dict[str, str]:
    """The metadata ``python -m yolo11_jax.convert`` writes: ``model`` (preset name),
    ``num_classes``, ``class_names`` (a JSON list), and any ``extra`` values as strings
    (``yolo11_variant``: ``variant_metadata``)."""
    meta = {"model": preset, "num_classes": str(len(class_names)), "class_names": json.dumps(list(class_names))}
    meta.update({k: str(v) for k, v in extra.items() if v is not None})
    return meta


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m yolo11_jax.convert",
        description="Convert an Ultralytics YOLO11 detection checkpoint (.pt) to .safetensors with the "
                    "reference's (= Ultralytics') key names, float32. Reads the file without Ultralytics or "
                    "torch and without running code from it.")
    ap.add_argument("checkpoint", help="the Ultralytics .pt file: released weights (yolo11n.pt ...) or a "
                                       "training checkpoint (last.pt / best.pt)")
    ap.add_argument("--out", help="output .safetensors path (default: the checkpoint's name with "
                                  ".safetensors)")
    ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".safetensors"
    if os.path.exists(out) and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        model, info = load_ultralytics(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    imgsz = info.get("imgsz")
    meta = safetensors_metadata(info["preset"], info["class_names"], source=os.path.basename(args.checkpoint),
                                origin="ultralytics", ultralytics_version=info["ultralytics_version"],
                                imgsz=json.dumps(imgsz) if imgsz is not None else None, **variant_metadata(model))
    save_safetensors(model, out, metadata=meta)
    print(f"wrote {out}: {info['preset']}, {info['num_classes']} classes, architecture {info['variant_name']}, weights from "
          f"checkpoint[{info['weights_key']!r}] (Ultralytics {info['ultralytics_version'] or 'version unknown'}, "
          f"{info['file_dtype']} in the file, float32 here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
