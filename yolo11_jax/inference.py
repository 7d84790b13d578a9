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
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax import compile_cache, host_memory, kernels
from yolo11_jax.coco_eval import CocoEvaluator
from yolo11_jax.yolo11 import Variant
from yolo11_jax.options import add_arguments, at_least, between, defaults, multiple_of, option, validate
from yolo11_jax.options import given as config_given
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
    or the ``model`` / ``num_classes`` / ``class_names`` / ``yolo11_variant`` / ``origin`` /
    ``imgsz`` / ``ultralytics_version`` entries that ``python -m yolo11_jax.convert`` writes.
    {} for none."""
    meta = safetensors_metadata(path)
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except ValueError:
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    for key in ("model", "yolo11_variant", "origin", "ultralytics_version"):  # plain strings
        if key in meta and key not in cfg:
            cfg[key] = meta[key]
    for key in ("num_classes", "class_names", "imgsz"):  # JSON values
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
               num_classes: int | None = None, default_model: str = "small",
               conv_impl: str = kernels.DEFAULT_CONV_IMPL) -> LoadedModel:
    """Build the network and load its weights from a run directory or a weights file.

    ``model_name`` and ``num_classes`` override what the run or file records; ``conv_impl``:
    the convolution kernels (``kernels.CONV_IMPLS``). Raises
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
            loaded = _load_pt(path, model_name=model_name, num_classes=num_classes)
            kernels.set_conv_impl(loaded.model, conv_impl)
            return loaded
        cfg = weights_config(path)
    name = model_name or cfg.get("model") or default_model
    classes = num_classes or cfg.get("num_classes") or _num_classes_from_safetensors(path)
    if not classes:
        raise ValueError(f"cannot tell the number of classes of {path}: pass --num-classes")
    # The YOLO11 architecture variant the weights were trained with (an Ultralytics 8.4 SPPF
    # without activation, ...): recorded by convert and train, the default when absent.
    try:
        variant = Variant.from_json(cfg.get(convert.VARIANT_METADATA_KEY))
    except ValueError as e:
        raise WeightsError(f"{path}: {convert.VARIANT_METADATA_KEY}: {e}") from None
    try:
        model = build_model(name, num_classes=int(classes), variant=variant, conv_impl=conv_impl, rngs=nnx.Rngs(0))
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None
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
    cfg = {"model": info["preset"], "num_classes": info["num_classes"], "class_names": info["class_names"],
           "origin": "ultralytics", "ultralytics_version": info["ultralytics_version"], "imgsz": info["imgsz"],
           convert.VARIANT_METADATA_KEY: model.variant.to_json()}
    return LoadedModel(model, info["preset"], info["num_classes"], info["class_names"], cfg, path)


def add_model_arguments(ap, *, required: bool = True) -> None:
    """The options of ``evaluate`` and ``predict`` that choose the model: ``--run`` or
    ``--weights`` (one is required), ``--model``, ``--num-classes``. (The image size, resize
    mode and NMS settings are :class:`InferenceOptions`, see :func:`add_inference_arguments`.)"""
    from yolo11_jax.presets import PRESETS

    src = ap.add_mutually_exclusive_group(required=required)
    src.add_argument("--run", type=Path, help="a training run directory (its weights.safetensors and config.json)")
    src.add_argument("--weights", type=Path,
                     help="a .safetensors file with the reference's key names, or an Ultralytics .pt checkpoint")
    ap.add_argument("--model", choices=sorted(PRESETS),
                    help="model preset (default: the run's; with --weights: the file's metadata, else 'small')")
    ap.add_argument("--num-classes", type=int,
                    help="number of classes (default: the run's, else read from the weights)")


# ----------------------------------------------------------------------------- inference options

RESIZE_MODES = ("rect", "letterbox", "plain")
"""``rect``: Ultralytics' predict letterbox (long side to the image size, padded to the smallest
rectangle of multiples of 32, see :mod:`yolo11_jax.letterbox`); ``letterbox``: the project's
square letterbox (``--letterbox`` in training); ``plain``: square resize ignoring the aspect ratio."""

#: Ultralytics' class offset for class-aware NMS (``max_wh``).
ULTRALYTICS_CLASS_OFFSET = 7680.0


@dataclasses.dataclass
class InferenceOptions:
    """How ``predict`` and ``evaluate`` prepare images and select detections. ``None`` means
    "from the weights" (:func:`resolve_inference_options`)."""

    img_size: Optional[int] = option(
        None, "network input size in pixels; with --resize rect, the long side",
        check=(at_least(1), multiple_of(32)))
    resize: Optional[str] = option(
        None, "how an image becomes the network input: 'rect' (Ultralytics' letterbox to the smallest "
              "rectangle of multiples of 32), 'letterbox' (square, grey padding), 'plain' (square resize)",
        choices=RESIZE_MODES)
    conf_threshold: Optional[float] = option(
        None, "keep detections with score above this", check=between(0.0, 1.0))
    iou_threshold: float = option(0.7, "NMS: suppress same-class boxes overlapping more than this IoU",
                                  check=between(0.0, 1.0))
    max_det: int = option(300, "at most this many detections per image", check=at_least(1))
    nms_class_offset: Optional[float] = option(
        None, "class-aware NMS: 0 compares class ids exactly; a positive value shifts each box by "
              "class * this value, Ultralytics' way", check=at_least(0.0))
    conv_impl: str = option(kernels.DEFAULT_CONV_IMPL, "convolution kernels (yolo11_jax/kernels.py): lax (XLA's), "
                            "or the faster CPU kernels: " + ", ".join(k for k in kernels.CONV_IMPLS if k != "lax"),
                            choices=tuple(kernels.CONV_IMPLS))
    compile_cache_dir: str = option("default", "directory of JAX's persistent compilation cache, so that a second "
                                    "run compiles nothing; default: $YOLO11_JAX_COMPILE_CACHE, else "
                                    "$XDG_CACHE_HOME/yolo11_jax/xla, else ~/.cache/yolo11_jax/xla; '' switches it off",
                                    metavar="DIR")
    host_malloc: str = option("auto", host_memory.OPTION_HELP, choices=host_memory.POLICIES)


def add_inference_arguments(ap, *, conf_threshold: float) -> None:
    """``--img-size``, ``--resize``, ``--conf-threshold``, ``--iou-threshold``, ``--max-det``,
    ``--nms-class-offset`` from :class:`InferenceOptions`, and the old ``--letterbox`` /
    ``--no-letterbox`` (same as ``--resize letterbox`` / ``--resize plain``). ``--help`` shows the
    defaults :func:`resolve_inference_options` applies (``conf_threshold``: the command's)."""
    add_arguments(ap, InferenceOptions, shown_defaults={
        "img_size": "Ultralytics weights: the checkpoint's train_args imgsz; a run: its img_size; else 640",
        "resize": "rect for Ultralytics weights, else as the run was trained",
        "conf_threshold": conf_threshold,
        "nms_class_offset": f"{ULTRALYTICS_CLASS_OFFSET:g} for Ultralytics weights, else 0"})
    ap.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                    help="deprecated: the old spelling of --resize letterbox / --resize plain")


def weights_origin(loaded: LoadedModel) -> tuple[bool, int | None]:
    """``(from Ultralytics, its training image size)`` of the loaded weights: an Ultralytics
    ``.pt`` (the loader records ``origin`` and ``imgsz``, the checkpoint's ``train_args.imgsz``),
    or a ``.safetensors`` converted from one (its metadata's ``origin`` and ``imgsz``; files
    converted before ``origin`` was written are known by ``ultralytics_version`` or a ``source``
    ending in ``.pt``). The image size is ``None`` when nothing recorded it."""
    cfg = loaded.config or {}
    meta = safetensors_metadata(loaded.source) if loaded.source.suffix == ".safetensors" else {}
    from_pt = (loaded.source.suffix == ".pt" or "ultralytics" in (cfg.get("origin"), meta.get("origin"))
               or bool(meta.get("ultralytics_version")) or str(meta.get("source", "")).endswith(".pt"))
    if not from_pt:
        return False, None
    imgsz = cfg.get("imgsz", meta.get("imgsz"))
    try:
        imgsz = json.loads(imgsz) if isinstance(imgsz, str) else imgsz
        imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz  # [h, w]: the long side
        return True, int(imgsz) if imgsz else None
    except (TypeError, ValueError):
        return True, None


def resolve_inference_options(loaded: LoadedModel, given: Mapping[str, Any], *, conf_threshold: float,
                              log=None) -> InferenceOptions:
    """Concrete options: what the command line gave (``given``), else the weights' defaults.

    Ultralytics weights (:func:`weights_origin`): image size ``train_args.imgsz`` (rounded up
    to a multiple of 32) else 640, ``rect``, class offset 7680. The project's runs and files:
    the run's image size else 640, its ``letterbox`` setting (``letterbox`` or ``plain``),
    offset 0. ``conf_threshold`` is the
    command's default (0.25 predict, 0.001 evaluate); IoU 0.7 and ``max_det`` 300 for all;
    ``compile_cache_dir`` "default" becomes the folder it names (``compile_cache.default_cache_dir``).
    ``log`` (a callable) receives one line saying what was chosen and why.
    """
    cfg = loaded.config or {}
    ultra, imgsz = weights_origin(loaded)
    if ultra:
        # (Ultralytics' check_imgsz rounds the size up to a multiple of the stride, 32)
        auto = dict(img_size=-(-(imgsz or 640) // 32) * 32, resize="rect",
                    nms_class_offset=ULTRALYTICS_CLASS_OFFSET)
        why = f"Ultralytics weights: imgsz {'from train_args' if imgsz else 'default'}"
    else:
        auto = dict(img_size=cfg.get("img_size") or 640, resize="letterbox" if cfg.get("letterbox") else "plain",
                    nms_class_offset=0.0)
        why = "the run's settings" if cfg else "defaults"
    base = defaults(InferenceOptions)
    values = {**base, "conf_threshold": conf_threshold, **auto,
              **{k: v for k, v in given.items() if v is not None}}
    if values["compile_cache_dir"] == "default":  # (recorded as the folder it names)
        values["compile_cache_dir"] = compile_cache.default_cache_dir()
    opts = InferenceOptions(**values)
    if log is not None:
        log(f"inference: {why}; img_size {opts.img_size}, resize {opts.resize}, conf {opts.conf_threshold}, "
            f"iou {opts.iou_threshold}, max_det {opts.max_det}, nms class offset {opts.nms_class_offset:g}, "
            f"conv {opts.conv_impl}"
            + (f" (from the command line: {', '.join(sorted(given))})" if given else ""))
    return opts


def given_inference_options(ap, args) -> dict[str, Any]:
    """The :class:`InferenceOptions` the command line set (``--letterbox`` / ``--no-letterbox``
    mapped to ``resize``), checked: bad values end through ``ap.error`` (status 2)."""
    given = config_given(args, InferenceOptions)
    if getattr(args, "letterbox", None) is not None:
        mode = "letterbox" if args.letterbox else "plain"
        print(f"warning: --{'' if args.letterbox else 'no-'}letterbox is deprecated; it means --resize {mode}",
              file=sys.stderr)
        if given.setdefault("resize", mode) != mode:
            ap.error(f"--{'' if args.letterbox else 'no-'}letterbox contradicts --resize {given['resize']}")
    problems = validate(InferenceOptions(**{**defaults(InferenceOptions), **given}))
    if problems:
        ap.error("; ".join(problems))
    return given


def check_sizes(ap, args, names: Sequence[str]) -> None:
    """``ap.error`` (status 2) unless each option in ``names`` that was given is >= 1."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def load_model_for_cli(ap, args) -> LoadedModel | None:
    """:func:`load_model` from the options of :func:`add_model_arguments`. A missing or
    unreadable run or file ends the program through ``ap.error`` (status 2); weights that do
    not load print ``error: ...`` and give ``None`` (the command then exits with status 2). Turns on
    the compilation cache of ``--compile-cache-dir`` and builds with ``--conv-impl``."""
    host_memory.configure(getattr(args, "host_malloc", None) or "auto")  # before a backend starts
    cache = getattr(args, "compile_cache_dir", None)
    cache = "default" if cache is None else cache
    compile_cache.enable(compile_cache.default_cache_dir() if cache == "default" else cache)
    conv_impl = getattr(args, "conv_impl", None) or kernels.DEFAULT_CONV_IMPL
    try:
        return load_model(run=args.run, weights=args.weights, model_name=args.model, num_classes=args.num_classes,
                          conv_impl=conv_impl)
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
def predict_batch(graphdef, states, images, *, img_size: int | tuple[int, int] | None = None,
                  conf_threshold: float = 0.001, iou_threshold: float = 0.7, max_det: int = 300,
                  class_offset: float = 0.0):
    """Eval-mode forward + NMS. ``graphdef`` must come from a model in eval mode
    (:func:`eval_graphdef`); ``states`` is a tuple of ``nnx.State`` that merge with it.

    ``images``: ``(B, H, W, 3)`` float32 in [0, 1], or uint8 (divided by 255 here); ``H`` and
    ``W`` multiples of 32. ``img_size`` (the frame the boxes are clipped to) defaults to
    ``(H, W)``. Returns ``postprocess``'s dict: ``boxes_xyxy (B, max_det, 4)`` pixels,
    ``scores``, ``classes``, ``valid``. The thresholds and ``class_offset`` are traced (changing
    them does not recompile); each new input shape compiles once (jit's cache).
    """
    model = nnx.merge(graphdef, *states)
    hw = tuple(images.shape[1:3]) if img_size is None else img_size
    return postprocess(model(as_float_images(images)), img_size=hw, conf_threshold=conf_threshold,
                       iou_threshold=iou_threshold, max_det=max_det, class_offset=class_offset)


def as_float_images(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 / 255 (on the device); float images pass unchanged."""
    import jax.numpy as jnp

    images = jnp.asarray(images)
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images


def detect_batch(graphdef, states, images: Sequence[np.ndarray], *, batch_size: int, img_size: int | None = None,
                 conf_threshold: float, iou_threshold: float, max_det: int,
                 class_offset: float = 0.0) -> list[dict[str, np.ndarray]]:
    """:func:`predict_batch` on up to ``batch_size`` prepared images of one shape ``(H, W, 3)``.

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
                                       iou_threshold=float(iou_threshold), max_det=int(max_det),
                                       class_offset=float(class_offset)))
    out = []
    for row in range(n):
        keep = np.asarray(det["valid"][row], bool) & (np.asarray(det["classes"][row]) >= 0)
        scores = np.asarray(det["scores"][row], np.float64)[keep]
        order = np.argsort(-scores, kind="stable")
        out.append({"boxes_xyxy": np.asarray(det["boxes_xyxy"][row], np.float64)[keep][order],
                    "scores": scores[order],
                    "classes": np.asarray(det["classes"][row], np.int64)[keep][order]})
    return out


class Detector:
    """The jitted forward + NMS of one model over images of any (stride-32) shapes.

    Images are grouped by shape; each group runs in batches of ``batch_size``, the last one
    padded (by repeating its last image) to ``batch_size`` when that shape already ran a full
    batch, else up to the next power of two (a shape seen once does not run ``batch_size``
    copies); so a folder of mixed
    photos compiles once per ``(batch, height, width)``, never once per image. With the ``rect``
    letterbox at image size ``S`` the shapes are ``S x 32k`` or ``32k x S``: at most ``S / 16``
    of them. ``compiled`` lists the shapes compiled so far; ``log`` (a callable) is told each new one.
    """

    def __init__(self, model: nnx.Module, *, conf_threshold: float, iou_threshold: float, max_det: int,
                 class_offset: float = 0.0, batch_size: int = 8, log: Callable[[str], None] | None = None):
        self.graphdef, self.states = eval_graphdef(model), model_states(model)
        self.conf_threshold, self.iou_threshold, self.max_det = conf_threshold, iou_threshold, max_det
        self.class_offset, self.batch_size, self.log = class_offset, max(1, int(batch_size)), log
        self.compiled: list[tuple[int, int, int]] = []

    def _rows(self, n: int, shape: tuple) -> int:
        if (self.batch_size, int(shape[0]), int(shape[1])) in self.compiled:
            return self.batch_size
        return min(self.batch_size, 1 << (n - 1).bit_length())

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections of prepared ``uint8`` (or float) images ``(H_i, W_i, 3)``, in each image's
        input frame: one dict per image as :func:`detect_batch` returns."""
        out: list[dict | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(np.shape(im)), []).append(i)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                rows = self._rows(len(chunk), shape)
                key = (rows, int(shape[0]), int(shape[1]))
                if key not in self.compiled:
                    self.compiled.append(key)
                    if self.log is not None:
                        self.log(f"compiling the network for input shape {key[0]}x{key[1]}x{key[2]} "
                                 f"(batch x height x width)")
                dets = detect_batch(self.graphdef, self.states, [images[i] for i in chunk], batch_size=rows,
                                    conf_threshold=self.conf_threshold, iou_threshold=self.iou_threshold,
                                    max_det=self.max_det, class_offset=self.class_offset)
                for i, d in zip(chunk, dets):
                    out[i] = d
        return out  # type: ignore[return-value]


def prepare_image(image_rgb: np.ndarray, opts: InferenceOptions) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """One RGB ``uint8 (H, W, 3)`` image as the network input under ``opts.resize``, and the
    function mapping ``(N, 4)`` xyxy boxes of that input back to original pixels (clipped).

    ``rect``: :func:`yolo11_jax.letterbox.rect_letterbox` / ``scale_boxes_to_original``;
    ``letterbox`` and ``plain``: the training resize (``data.transforms``) and its inverse."""
    from PIL import Image

    from yolo11_jax.data.transforms import letterbox as square_letterbox
    from yolo11_jax.data.transforms import letterbox_geometry, resize_plain
    from yolo11_jax.letterbox import rect_letterbox, scale_boxes_to_original

    h, w = image_rgb.shape[:2]
    s = opts.img_size
    if opts.resize == "rect":
        canvas, g = rect_letterbox(image_rgb, s)
        return canvas, lambda b: scale_boxes_to_original(b, g.input_hw, (h, w))
    img = Image.fromarray(image_rgb)
    if opts.resize == "letterbox":
        canvas = square_letterbox(img, np.zeros((0, 4), np.float32), s)[0]
        g = letterbox_geometry(w, h, s)
        scale = np.array([g.scale_x, g.scale_y] * 2)
        offset = np.array([g.pad_left, g.pad_top] * 2, np.float64)
    else:
        canvas = resize_plain(img, s)
        scale, offset = np.array([s / w, s / h] * 2), np.zeros(4)

    def back(b: np.ndarray) -> np.ndarray:
        b = (np.asarray(b, np.float64).reshape(-1, 4) - offset) / scale
        return np.clip(b, 0.0, np.array([w, h, w, h], np.float64))

    return np.asarray(canvas, np.uint8), back


def detect_rgb_images(detector: Detector, images_rgb: Sequence[np.ndarray],
                      opts: InferenceOptions) -> list[dict[str, np.ndarray]]:
    """Detections of original RGB ``uint8`` images in their own pixels: per image
    ``boxes_xyxy (K, 4)`` (float64, clipped), ``scores (K,)``, ``classes (K,)``, by decreasing
    score, and ``input_hw`` (the network input's height and width)."""
    prepared = [prepare_image(im, opts) for im in images_rgb]
    dets = detector([p[0] for p in prepared])
    return [{**d, "boxes_xyxy": back(d["boxes_xyxy"]), "input_hw": canvas.shape[:2]}
            for d, (canvas, back) in zip(dets, prepared)]


# ----------------------------------------------------------------------------- evaluation

def evaluate_batches(graphdef, states, batches, *, num_classes: int, img_size: int, total: int | None = None,
                     class_names: Sequence[str] | None = None, conf_threshold: float = 0.001,
                     iou_threshold: float = 0.7, max_det: int = 300, progress: bool = True,
                     class_offset: float = 0.0) -> dict:
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
                                           max_det=max_det, class_offset=class_offset))
        keep = np.asarray(batch["example_valid"], bool)
        evaluator.add_batch(batch["boxes_cxcywh"][keep], batch["labels"][keep], batch["mask"][keep],
                            det["boxes_xyxy"][keep], det["scores"][keep], det["classes"][keep],
                            det["valid"][keep], img_size)
    return evaluator.compute()


def evaluate_examples(graphdef, states, examples, *, num_classes: int, img_size: int, batch_size: int = 16,
                      letterbox: bool = False, class_names: Sequence[str] | None = None,
                      conf_threshold: float = 0.001, iou_threshold: float = 0.7, max_det: int = 300,
                      progress: bool = True, workers: int = 0, class_offset: float = 0.0) -> dict:
    """:func:`evaluate_batches` over a dataset (``data.eval_batches``: every example once, in
    order; every ground-truth box counts)."""
    from yolo11_jax.data import eval_batches

    batches, total = eval_batches(examples, batch_size=batch_size, img_size=img_size, letterbox=letterbox,
                                  workers=workers)
    return evaluate_batches(graphdef, states, batches, total=total, num_classes=num_classes,
                            img_size=img_size, class_names=class_names, conf_threshold=conf_threshold,
                            iou_threshold=iou_threshold, max_det=max_det, progress=progress,
                            class_offset=class_offset)


def _original_rgb(source, index: int) -> tuple[np.ndarray, Any]:
    """Record ``index`` of a dataset built without resizing: ``(RGB uint8 image, Example)``. A
    record read from a file or from encoded bytes is decoded with OpenCV, as Ultralytics does."""
    from yolo11_jax.letterbox import decode_image_rgb

    example = source[index]
    records = getattr(source, "records", None)
    raw = records[index].image if records is not None else None
    if isinstance(raw, (str, Path)):
        return decode_image_rgb(np.fromfile(str(raw), np.uint8), str(raw)), example
    if isinstance(raw, dict) and raw.get("bytes"):  # a Hugging Face image cell
        raw = raw["bytes"]
    if isinstance(raw, (bytes, bytearray)):
        return decode_image_rgb(raw, example.source_id), example
    return np.asarray(example.image, np.uint8), example


def evaluate_original_frame(detector: Detector, source, opts: InferenceOptions, *, num_classes: int,
                            class_names: Sequence[str] | None = None, batch_size: int = 16,
                            progress: bool = True) -> dict:
    """COCO metrics with every image prepared as ``predict`` prepares it (``opts.resize``, e.g.
    ``rect``) and the boxes compared in the original image's pixels.

    ``source``: a dataset of original-size examples (``build_dataset(..., img_size=None)``),
    indexable, ``boxes_cxcywh`` normalised by each image's size. Returns
    ``CocoEvaluator.compute()``'s dict.
    """
    evaluator = CocoEvaluator(num_classes, list(class_names) if class_names else None, max_dets=100)
    n = len(source)
    if n == 0:
        raise ValueError("evaluate: no examples to evaluate")
    for start in tqdm(range(0, n, batch_size), desc="evaluate", leave=False, disable=not progress):
        loaded = [_original_rgb(source, i) for i in range(start, min(n, start + batch_size))]
        dets = detect_rgb_images(detector, [im for im, _ in loaded], opts)
        for (im, ex), det in zip(loaded, dets):
            k = len(det["scores"])
            gt = np.asarray(ex.boxes_cxcywh, np.float64).reshape(1, -1, 4)
            evaluator.add_batch(gt, np.asarray(ex.labels).reshape(1, -1), np.ones((1, gt.shape[1]), bool),
                                det["boxes_xyxy"].reshape(1, k, 4), det["scores"].reshape(1, k),
                                det["classes"].reshape(1, k), np.ones((1, k), bool), [im.shape[:2]])
    return evaluator.compute()


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
