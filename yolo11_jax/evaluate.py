"""COCO mAP of a trained model on a validation split.

Library: ``evaluate_examples(graphdef, state, examples, ...)`` runs the eval-mode
network, the jitted fixed-size NMS (``postprocess``) and pycocotools.

Command line::

    python -m yolo11_jax.evaluate --run RUN_DIR [--data SPEC --split validation]
    python -m yolo11_jax.evaluate --weights model.safetensors --model small --num-classes 4 --data shapes

With ``--run`` the model, image size, resize mode and data default to those in the run's
config.json; with ``--weights``, to the training config stored in the file's metadata (when
``train.py`` wrote it).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from yolo11_jax.coco_eval import CocoEvaluator, format_table
from yolo11_jax.data import BatchLoader, Example
from yolo11_jax.postprocess import postprocess


@functools.partial(jax.jit, static_argnames=("graphdef", "img_size", "conf_threshold", "iou_threshold", "max_det"))
def predict_batch(graphdef, states, images, *, img_size: int, conf_threshold: float = 0.001,
                  iou_threshold: float = 0.7, max_det: int = 300):
    """Eval-mode forward + NMS. ``graphdef`` must come from a model in ``eval()`` mode.

    ``states`` is a tuple of ``nnx.State`` (e.g. ``(params, rest)``) that merge with it.
    Returns ``postprocess``'s dict: ``boxes_xyxy (B, max_det, 4)`` pixels, ``scores``,
    ``classes``, ``valid``.
    """
    model = nnx.merge(graphdef, *states)
    return postprocess(model(images), img_size=img_size, conf_threshold=conf_threshold,
                       iou_threshold=iou_threshold, max_det=max_det)


def eval_graphdef(model: nnx.Module):
    """The static structure of ``model`` in eval mode (BatchNorm on running statistics)."""
    model.eval()
    graphdef = nnx.graphdef(model)
    model.train()
    return graphdef


def evaluate_examples(graphdef, states, examples: Sequence[Example], *, num_classes: int, img_size: int,
                      batch_size: int = 16, letterbox: bool = False,
                      class_names: Sequence[str] | None = None, conf_threshold: float = 0.001,
                      iou_threshold: float = 0.7, max_det: int = 300, progress: bool = True) -> dict:
    """COCO metrics of the model ``nnx.merge(graphdef, *states)`` on ``examples``.

    Boxes are compared in the network's input frame (``img_size`` pixels). Returns
    ``CocoEvaluator.compute()``'s dict: ``mAP`` (0.5:0.95), ``AP50``, ``AP75``, ``per_class``, ...
    Every ground-truth box counts: the padding size is the largest box count in ``examples``.
    """
    if not examples:
        raise ValueError("evaluate: no examples to evaluate")
    max_boxes = max(1, max(len(ex.labels) for ex in examples))
    loader = BatchLoader(examples, batch_size=min(batch_size, len(examples)), img_size=img_size,
                         max_boxes=max_boxes, shuffle=False, drop_last=False, letterbox=letterbox)
    evaluator = CocoEvaluator(num_classes, list(class_names) if class_names else None, max_dets=100)
    for batch in tqdm(loader.epoch(0), total=len(loader), desc="evaluate", leave=False, disable=not progress):
        det = jax.device_get(predict_batch(graphdef, states, batch["images"], img_size=img_size,
                                           conf_threshold=conf_threshold, iou_threshold=iou_threshold,
                                           max_det=max_det))
        keep = batch["example_valid"]
        evaluator.add_batch(batch["boxes_cxcywh"][keep], batch["labels"][keep], batch["mask"][keep],
                            det["boxes_xyxy"][keep], det["scores"][keep], det["classes"][keep],
                            det["valid"][keep], img_size)
    return evaluator.compute()


def _json_safe(x):
    """Strict JSON: NaN (a class without ground truth) becomes null; NumPy scalars become floats."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_parser() -> argparse.ArgumentParser:
    from yolo11_jax.data import BBOX_FORMATS
    from yolo11_jax.presets import PRESETS

    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a training run directory (uses its final weights and config)")
    src.add_argument("--weights", type=Path, help="a .safetensors file with the reference's key names")
    ap.add_argument("--model", choices=sorted(PRESETS),
                    help="model preset (default: the run's; with --weights: the file's metadata, else 'small')")
    ap.add_argument("--num-classes", type=int,
                    help="number of classes (default: the run's, else read from the weights)")
    ap.add_argument("--data", help="data spec as for training (default: the run's validation data)")
    ap.add_argument("--split", default=None, help="split to evaluate (default: the run's validation split)")
    ap.add_argument("--image-dir", help="image folder for a COCO .json annotation file (default: the run's)")
    ap.add_argument("--bbox-format", choices=BBOX_FORMATS,
                    help="bbox convention of Hugging Face data (default: the run's, else the data's own)")
    ap.add_argument("--img-size", type=int, help="input size in pixels (default: the run's, else 640)")
    ap.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                    help="resize keeping the aspect ratio with grey padding (default: as the run was trained; "
                         "plain resize without a run config)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    ap.add_argument("--max-samples", type=int, help="evaluate at most this many images")
    ap.add_argument("--conf-threshold", type=float, default=0.001,
                    help="keep detections with score above this (default: %(default)s)")
    ap.add_argument("--iou-threshold", type=float, default=0.7,
                    help="NMS: suppress same-class boxes overlapping more than this IoU (default: %(default)s)")
    ap.add_argument("--max-det", type=int, default=300,
                    help="at most this many detections per image (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return ap


def main(argv=None) -> int:
    from yolo11_jax import convert
    from yolo11_jax.data import build_dataset
    from yolo11_jax.predict import _num_classes_from_weights, check_sizes, run_config_and_weights
    from yolo11_jax.presets import build_model

    ap = build_parser()
    args = ap.parse_args(argv)
    check_sizes(ap, args, ("batch_size", "max_det", "img_size", "max_samples", "num_classes"))

    # Every path is checked before the data is loaded.
    cfg, weights = run_config_and_weights(ap, args.run, args.weights)
    model_name = args.model or cfg.get("model") or "small"
    img_size = args.img_size or cfg.get("img_size") or 640
    letterbox = bool(cfg.get("letterbox", False)) if args.letterbox is None else args.letterbox
    data_spec = args.data or cfg.get("val_data") or cfg.get("data") or "shapes"
    # A run trained without evaluation stores val_split null: fall back to 'validation'.
    split = args.split or cfg.get("val_split") or "validation"
    try:
        # The same validation set the training run scored (seed, empty images, limits, conventions).
        data = build_dataset(data_spec, split=split, num_classes=args.num_classes or cfg.get("num_classes"),
                             img_size=img_size, letterbox=letterbox, skip_empty=False,
                             max_samples=args.max_samples or cfg.get("val_max_samples"),
                             image_dir=args.image_dir or cfg.get("val_image_dir") or cfg.get("image_dir"),
                             bbox_format=args.bbox_format or cfg.get("bbox_format"),
                             shapes_num_images=cfg.get("shapes_val_images"), shapes_seed=cfg.get("seed", 0),
                             shapes_img_size=cfg.get("shapes_img_size", 128), progress=True)
        print(f"{data_spec!r} ({split}): {len(data.examples)} images; {data.stats.summary()}", file=sys.stderr)
        num_classes = (args.num_classes or cfg.get("num_classes") or _num_classes_from_weights(weights)
                       or data.num_classes)
        model = build_model(model_name, num_classes=num_classes, rngs=nnx.Rngs(0))
        convert.load_safetensors(weights, model)
        graphdef = eval_graphdef(model)
        results = evaluate_examples(graphdef, (nnx.state(model),), data.examples, num_classes=num_classes,
                                    img_size=img_size, batch_size=args.batch_size, letterbox=letterbox,
                                    class_names=data.class_names or cfg.get("class_names"),
                                    conf_threshold=args.conf_threshold, iou_threshold=args.iou_threshold,
                                    max_det=args.max_det)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"mAP@[.5:.95] {results['mAP']:.4f}  AP50 {results['AP50']:.4f}  AP75 {results['AP75']:.4f}  "
          f"({len(data.examples)} images)")
    if args.json:
        args.json.write_text(json.dumps(_json_safe(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
