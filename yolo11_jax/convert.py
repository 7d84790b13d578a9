"""Weight interop with the PyTorch reference (and the notebook's state dicts).

``load_state_dict(model, state_dict)`` fills an NNX ``YOLOv11`` in place from a
PyTorch-style state dict (torch tensors or NumPy arrays, the notebook's key
names); ``to_state_dict(model)`` goes the other way and its result loads into
``reference_torch.YOLOv11`` with ``strict=True``. ``save_safetensors`` /
``load_safetensors`` store the same keys in a ``.safetensors`` file.

The conversion is a table of leaf rules (``_LEAF_RULES``) plus one group rule
for the packed attention projections. ``load_state_dict`` collects every
missing key, unexpected key and shape mismatch before raising one error that
lists them all.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from yolo11_jax.model import YOLOv11

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


def _owner_kind(model: YOLOv11, owner_path: NnxPath) -> str | None:
    node: Any = model
    for part in owner_path:
        node = node[part] if isinstance(node, nnx.List) else getattr(node, str(part))
    if isinstance(node, nnx.Conv):
        return "conv"
    if type(node).__name__ == "BatchNorm":
        return "bn"
    return None


def _flat_variables(model: YOLOv11) -> dict[NnxPath, nnx.Variable]:
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _key(path: NnxPath) -> str:
    return ".".join(str(p) for p in path)


def _torch_layout(model: YOLOv11) -> dict[str, tuple[NnxPath, Callable, Callable]]:
    """torch key -> (NNX path, nnx->torch fn, torch->nnx fn) for every plain leaf."""
    table = {}
    for path in _flat_variables(model):
        owner, leaf = path[:-1], path[-1]
        if "attn" in owner:
            continue  # packed projections, handled as a group
        kind = _owner_kind(model, owner)
        for rule_kind, nnx_leaf, torch_leaf, to_t, from_t in _LEAF_RULES:
            if rule_kind == kind and nnx_leaf == leaf:
                table[_key(owner + (torch_leaf,))] = (path, to_t, from_t)
                break
        else:
            raise AssertionError(f"no conversion rule for NNX leaf {_key(path)}")
    return table


def _attn_modules(model: YOLOv11) -> dict[str, nnx.MultiHeadAttention]:
    return {_key(path): m for path, m in nnx.iter_modules(model) if isinstance(m, nnx.MultiHeadAttention)}


def to_state_dict(model: YOLOv11) -> dict[str, np.ndarray]:
    """The model's weights and BatchNorm statistics under the notebook's torch key names.

    Returns NumPy arrays in torch layouts (OIHW convolutions, packed attention
    ``in_proj_weight (3c, c)``), plus each head's frozen ``proj = arange(reg_max)``.
    ``{k: torch.from_numpy(v) for k, v in ...}`` loads with ``strict=True``.
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
    for i in range(len(model.head.heads)):
        out[f"head.heads.{i}.proj"] = np.arange(model.reg_max, dtype=np.float32)
    return dict(sorted(out.items()))


def load_state_dict(model: YOLOv11, state_dict: Mapping[str, Any]) -> None:
    """Fill ``model`` in place from a torch-style state dict.

    Args:
      model: an NNX ``YOLOv11`` whose architecture matches the state dict.
      state_dict: ``{torch key: tensor or array}`` as saved by the notebook's
        ``YOLOv11`` or ``reference_torch.YOLOv11``.

    Raises:
      ValueError: listing every missing key, unexpected key, shape mismatch
        and non-``arange`` DFL ``proj``, all at once.
    """
    given = {k: _to_numpy(v) for k, v in state_dict.items()}
    expected = to_state_dict(model)
    problems = []
    for k in sorted(expected.keys() - given.keys()):
        problems.append(f"missing key: {k} (expected shape {tuple(expected[k].shape)})")
    for k in sorted(given.keys() - expected.keys()):
        problems.append(f"unexpected key: {k} (shape {tuple(given[k].shape)})")
    for k in sorted(expected.keys() & given.keys()):
        if tuple(given[k].shape) != tuple(expected[k].shape):
            problems.append(f"shape mismatch: {k}: got {tuple(given[k].shape)}, "
                            f"model expects {tuple(expected[k].shape)}")
        elif k.endswith(".proj") and not np.array_equal(given[k], expected[k]):
            problems.append(f"{k}: the DFL projection is frozen at arange({model.reg_max}); got {given[k]}")
    if problems:
        raise ValueError(f"state dict does not fit this YOLOv11 ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))

    flat = _flat_variables(model)
    for torch_key, (path, _, from_t) in _torch_layout(model).items():
        var = flat[path]
        var[...] = jnp.asarray(from_t(given[torch_key]), dtype=var[...].dtype)
    for prefix, attn in _attn_modules(model).items():
        c, heads = attn.in_features, attn.num_heads
        w_in, b_in = given[f"{prefix}.in_proj_weight"], given[f"{prefix}.in_proj_bias"]
        for i, part in enumerate(_ATTN_PARTS):
            proj = getattr(attn, part)
            proj.kernel[...] = jnp.asarray(w_in[i * c:(i + 1) * c].T.reshape(c, heads, c // heads))
            proj.bias[...] = jnp.asarray(b_in[i * c:(i + 1) * c].reshape(heads, c // heads))
        attn.out.kernel[...] = jnp.asarray(given[f"{prefix}.out_proj.weight"].T.reshape(heads, c // heads, c))
        attn.out.bias[...] = jnp.asarray(given[f"{prefix}.out_proj.bias"])


def save_safetensors(model_or_state_dict: YOLOv11 | Mapping[str, Any], path: str,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write the torch-named weights to ``path`` (``.safetensors``)."""
    from safetensors.numpy import save_file

    sd = to_state_dict(model_or_state_dict) if isinstance(model_or_state_dict, YOLOv11) else {
        k: _to_numpy(v) for k, v in model_or_state_dict.items()}
    save_file({k: np.array(v, order="C") for k, v in sd.items()}, str(path),
              metadata=dict(metadata) if metadata else None)


def load_safetensors(path: str, model: YOLOv11 | None = None) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` state dict; if ``model`` is given, also load it into the model."""
    from safetensors.numpy import load_file

    sd = load_file(str(path))
    if model is not None:
        load_state_dict(model, sd)
    return sd
