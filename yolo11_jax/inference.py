"""Inference shared by training, ``evaluate`` and ``predict``: loading a trained model, the
eval-mode graph, the jitted forward + NMS, and COCO evaluation over a dataset.

Loading (:func:`load_model`) accepts

* a training run directory (``--run``): its ``config.json`` and final ``weights.safetensors``;
* a ``.safetensors`` file with the reference's key names (``--weights``); the training config
  that ``train.py`` stores in the file's metadata gives the defaults;
* an Ultralytics ``.pt`` checkpoint (``--weights yolo11n.pt``), read by
  ``convert.load_ultralytics`` without running code from the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax.coco_eval import CocoEvaluator
from yolo11_jax.postprocess import postprocess


# ----------------------------------------------------------------------------- model loading

class WeightsError(ValueError):
    """Weights that cannot be loaded into the model asked for (corrupt, another network or class count)."""


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference and what is known about how it was trained.

    ``config`` is the training configuration (``config.json``, the ``.safetensors`` metadata,
    or what the ``.pt`` file records; ``{}`` if nothing), ``source`` the file the weights came
    from.
    """

    model: nnx.Module
    model_name: str
    num_classes: int
    class_names: list[str] | None
    config: dict
    source: Path


def read_run(run_dir: Path) -> tuple[dict, Path]:
    """``(config, weights path)`` of a training run directory. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the missing or unreadable file."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: is {run_dir} a training run directory?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    weights = run_dir / "weights.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found: the run has not finished (no final export)")
    return cfg, weights


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file ({} if none or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - metadata is only a source of defaults
        return {}


def weights_config(path: Path) -> dict:
    """The training config a ``.safetensors`` file carries: ``train.py``'s ``config`` metadata,
    or the ``model`` / ``num_classes`` / ``class_names`` entries that ``python -m
    yolo11_jax.convert`` writes. {} for none."""
    meta = safetensors_metadata(path)
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except ValueError:
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    if "model" in meta and "model" not in cfg:
        cfg["model"] = meta["model"]
    for key in ("num_classes", "class_names"):
        if key in meta and key not in cfg:
            try:
                cfg[key] = json.loads(meta[key])
            except ValueError:
                pass
    return cfg


def _num_classes_from_safetensors(path: Path) -> int | None:
    """The class count implied by a notebook-family weights file (its first class-output bias)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            # the first class-output bias of the notebook family, of the YOLO11 family
            for key in ("head.heads.0.cls_pred.bias", "model.23.cv3.0.2.bias"):
                if key in f.keys():
                    return int(f.get_slice(key).get_shape()[0])
    except Exception:  # noqa: BLE001
        pass
    return None


def load_model(*, run: Path | None = None, weights: Path | None = None, model_name: str | None = None,
               num_classes: int | None = None, default_model: str = "small") -> LoadedModel:
    """Build the network and load its weights from a run directory or a weights file.

    ``model_name`` and ``num_classes`` override what the run or file records. Raises
    ``FileNotFoundError`` / ``ValueError`` with a message naming the file and the problem
    (a missing file, weights that do not fit the model or class count, ...).
    """
    from yolo11_jax import convert
    from yolo11_jax.presets import build_model

    if (run is None) == (weights is None):
        raise ValueError("give exactly one of a run directory or a weights file")
    if run is not None:
        cfg, path = read_run(Path(run))
    else:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
        if path.suffix == ".pt":
            return _load_pt(path, model_name=model_name, num_classes=num_classes)
        cfg = weights_config(path)
    name = model_name or cfg.get("model") or default_model
    classes = num_classes or cfg.get("num_classes") or _num_classes_from_safetensors(path)
    if not classes:
        raise ValueError(f"cannot tell the number of classes of {path}: pass --num-classes")
    model = build_model(name, num_classes=int(classes), rngs=nnx.Rngs(0))
    try:
        convert.load_safetensors(path, model)
    except Exception as e:  # noqa: BLE001 - a corrupt file, or weights of another model / class count
        raise WeightsError(f"cannot load {path} into the {name!r} model with {classes} classes "
                           f"(check --model and --num-classes): {str(e).splitlines()[0]}") from None
    names = cfg.get("class_names")
    return LoadedModel(model, name, int(classes), list(names) if names else None, cfg, path)


def _load_pt(path: Path, *, model_name: str | None, num_classes: int | None) -> LoadedModel:
    from yolo11_jax import convert

    try:
        model, info = convert.load_ultralytics(path)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    if model_name is not None and model_name != info["preset"]:
        raise WeightsError(f"{path} holds a {info['preset']} network, not {model_name!r} (drop --model)")
    if num_classes is not None and num_classes != info["num_classes"]:
        raise WeightsError(f"{path} has {info['num_classes']} classes, not {num_classes} (drop --num-classes)")
    model.train()  # (eval_graphdef switches modes itself)
    cfg = {"model": info["preset"], "num_classes": info["num_classes"], "class_names": info["class_names"]}
    return LoadedModel(model, info["preset"], info["num_classes"], info["class_names"], cfg, path)


def add_model_arguments(ap, *, required: bool = True) -> None:
    """The options of ``evaluate`` and ``predict`` that choose the model: ``--run`` or
    ``--weights`` (one is required), ``--model``, ``--num-classes``, ``--img-size``, ``--letterbox``."""
    from yolo11_jax.presets import PRESETS

    src = ap.add_mutually_exclusive_group(required=required)
    src.add_argument("--run", type=Path, help="a training run directory (its weights.safetensors and config.json)")
    src.add_argument("--weights", type=Path,
                     help="a .safetensors file with the reference's key names, or an Ultralytics .pt checkpoint")
    ap.add_argument("--model", choices=sorted(PRESETS),
                    help="model preset (default: the run's; with --weights: the file's metadata, else 'small')")
    ap.add_argument("--num-classes", type=int,
                    help="number of classes (default: the run's, else read from the weights)")
    ap.add_argument("--img-size", type=int, help="network input size in pixels (default: the run's, else 640)")
    ap.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                    help="resize keeping the aspect ratio with grey padding (default: as the run was trained; "
                         "plain resize without a run config)")


def add_nms_arguments(ap, *, conf_threshold: float) -> None:
    """``--conf-threshold``, ``--iou-threshold``, ``--max-det``."""
    ap.add_argument("--conf-threshold", type=float, default=conf_threshold,
                    help="keep detections with score above this (default: %(default)s)")
    ap.add_argument("--iou-threshold", type=float, default=0.7,
                    help="NMS: suppress same-class boxes overlapping more than this IoU (default: %(default)s)")
    ap.add_argument("--max-det", type=int, default=300,
                    help="at most this many detections per image (default: %(default)s)")


def check_sizes(ap, args, names: Sequence[str]) -> None:
    """``ap.error`` (status 2) unless each option in ``names`` that was given is >= 1, and
    ``--img-size`` (if among them) a multiple of 32."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if "img_size" in names and args.img_size is not None and args.img_size % 32:
        ap.error(f"--img-size must be a multiple of 32, got {args.img_size}")


def load_model_for_cli(ap, args) -> LoadedModel | None:
    """:func:`load_model` from the options of :func:`add_model_arguments`. A missing or
    unreadable run or file ends the program through ``ap.error`` (status 2); weights that do
    not load print ``error: ...`` and give ``None`` (the command then exits with status 2)."""
    try:
        return load_model(run=args.run, weights=args.weights, model_name=args.model, num_classes=args.num_classes)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    except (OSError, ValueError) as e:
        ap.error(str(e))


# ----------------------------------------------------------------------------- forward + NMS

def eval_graphdef(model: nnx.Module):
    """The static structure of ``model`` in eval mode (BatchNorm on running statistics)."""
    model.eval()
    graphdef = nnx.graphdef(model)
    model.train()
    return graphdef


@functools.partial(jax.jit, static_argnames=("graphdef", "img_size", "max_det"))
def predict_batch(graphdef, states, images, *, img_size: int, conf_threshold: float = 0.001,
                  iou_threshold: float = 0.7, max_det: int = 300):
    """Eval-mode forward + NMS. ``graphdef`` must come from a model in eval mode
    (:func:`eval_graphdef`); ``states`` is a tuple of ``nnx.State`` that merge with it.

    ``images``: ``(B, S, S, 3)`` float32 in [0, 1], or uint8 (divided by 255 here). Returns
    ``postprocess``'s dict: ``boxes_xyxy (B, max_det, 4)`` pixels, ``scores``, ``classes``,
    ``valid``. The thresholds are traced (changing them does not recompile).
    """
    model = nnx.merge(graphdef, *states)
    return postprocess(model(as_float_images(images)), img_size=img_size, conf_threshold=conf_threshold,
                       iou_threshold=iou_threshold, max_det=max_det)


def as_float_images(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 / 255 (on the device); float images pass unchanged."""
    import jax.numpy as jnp

    images = jnp.asarray(images)
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images


def detect_batch(graphdef, states, images: Sequence[np.ndarray], *, batch_size: int, img_size: int,
                 conf_threshold: float, iou_threshold: float, max_det: int) -> list[dict[str, np.ndarray]]:
    """:func:`predict_batch` on up to ``batch_size`` prepared images ``(S, S, 3)``.

    The batch is padded to exactly ``batch_size`` rows by repeating the last image (every call
    has the same shape, one compilation); the padded rows are dropped. Returns one dict per
    image with the valid detections only, in decreasing score order: ``boxes_xyxy (K, 4)``
    in network-input pixels, ``scores (K,)``, ``classes (K,)``.
    """
    n = len(images)
    if not 0 < n <= batch_size:
        raise ValueError(f"need 1..{batch_size} images, got {n}")
    batch = np.stack(list(images) + [images[-1]] * (batch_size - n))
    det = jax.device_get(predict_batch(graphdef, states, batch, img_size=img_size,
                                       conf_threshold=float(conf_threshold),
                                       iou_threshold=float(iou_threshold), max_det=int(max_det)))
    out = []
    for row in range(n):
        keep = np.asarray(det["valid"][row], bool) & (np.asarray(det["classes"][row]) >= 0)
        scores = np.asarray(det["scores"][row], np.float64)[keep]
        order = np.argsort(-scores, kind="stable")
        out.append({"boxes_xyxy": np.asarray(det["boxes_xyxy"][row], np.float64)[keep][order],
                    "scores": scores[order],
                    "classes": np.asarray(det["classes"][row], np.int64)[keep][order]})
    return out


# ----------------------------------------------------------------------------- evaluation

def evaluate_batches(graphdef, states, batches, *, num_classes: int, img_size: int, total: int | None = None,
                     class_names: Sequence[str] | None = None, conf_threshold: float = 0.001,
                     iou_threshold: float = 0.7, max_det: int = 300, progress: bool = True) -> dict:
    """COCO metrics of the model ``nnx.merge(graphdef, *states)`` over ``batches``.

    ``batches`` yields dicts with ``images (B, S, S, 3)``, ``boxes_cxcywh (B, M, 4)``
    normalised, ``labels``, ``mask`` and ``example_valid (B,)`` (rows to score). Boxes are
    compared in the network's input frame (``img_size`` pixels). Returns
    ``CocoEvaluator.compute()``'s dict: ``mAP`` (0.5:0.95), ``AP50``, ``AP75``, ``per_class``, ...
    """
    evaluator = CocoEvaluator(num_classes, list(class_names) if class_names else None, max_dets=100)
    for batch in tqdm(batches, total=total, desc="evaluate", leave=False, disable=not progress):
        det = jax.device_get(predict_batch(graphdef, states, batch["images"], img_size=img_size,
                                           conf_threshold=conf_threshold, iou_threshold=iou_threshold,
                                           max_det=max_det))
        keep = np.asarray(batch["example_valid"], bool)
        evaluator.add_batch(batch["boxes_cxcywh"][keep], batch["labels"][keep], batch["mask"][keep],
                            det["boxes_xyxy"][keep], det["scores"][keep], det["classes"][keep],
                            det["valid"][keep], img_size)
    return evaluator.compute()


def evaluate_examples(graphdef, states, examples, *, num_classes: int, img_size: int, batch_size: int = 16,
                      letterbox: bool = False, class_names: Sequence[str] | None = None,
                      conf_threshold: float = 0.001, iou_threshold: float = 0.7, max_det: int = 300,
                      progress: bool = True, workers: int = 0) -> dict:
    """:func:`evaluate_batches` over a dataset (``data.eval_batches``: every example once, in
    order; every ground-truth box counts)."""
    from yolo11_jax.data import eval_batches

    batches, total = eval_batches(examples, batch_size=batch_size, img_size=img_size, letterbox=letterbox,
                                  workers=workers)
    return evaluate_batches(graphdef, states, batches, total=total, num_classes=num_classes,
                            img_size=img_size, class_names=class_names, conf_threshold=conf_threshold,
                            iou_threshold=iou_threshold, max_det=max_det, progress=progress)


def model_states(model: nnx.Module) -> tuple[Any, ...]:
    """The states that :func:`predict_batch` merges with ``eval_graphdef(model)``."""
    return (nnx.state(model),)


def json_safe(x: Any) -> Any:
    """Strict JSON: NaN (a class without ground truth) becomes null; NumPy scalars plain numbers."""
    if isinstance(x, Mapping):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
