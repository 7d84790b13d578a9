"""COCO mAP of a trained model on a validation split.

The library behind it is :mod:`yolo11_jax.inference` (``evaluate_examples`` runs the
eval-mode network, the jitted fixed-size NMS and pycocotools).

Command line::

    python -m yolo11_jax.evaluate --run RUN_DIR [--data SPEC --split validation]
    python -m yolo11_jax.evaluate --weights model.safetensors --model small --num-classes 4 --data shapes
    python -m yolo11_jax.evaluate --weights yolo11n.pt --data coco/annotations/instances_val2017.json

With ``--run`` the model, image size, resize mode and data default to those in the run's
config.json; with ``--weights``, to the training config stored in the file's metadata (when
``train.py`` or ``python -m yolo11_jax.convert`` wrote it), or to what an Ultralytics ``.pt``
records. Ultralytics weights (a ``.pt``, or a ``.safetensors`` converted from one) are scored
the way ``predict`` runs them, with Ultralytics' preprocessing (``--resize rect``, the
checkpoint's image size) at confidence 0.001, and the boxes are compared in each image's own
pixels; the project's runs are scored in the network's input frame, as during training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from yolo11_jax import inference
from yolo11_jax.class_names import class_box_counts, match_class_names, parse_class_map, remap_source
from yolo11_jax.coco_eval import format_table, select_classes
from yolo11_jax.data import BBOX_FORMATS, build_dataset

# (The library behind this command is yolo11_jax.inference.)
evaluate_examples = inference.evaluate_examples


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    inference.add_model_arguments(ap)
    ap.add_argument("--data", help="data spec as for training (default: the run's validation data)")
    ap.add_argument("--split", default=None, help="split to evaluate (default: the run's validation split)")
    ap.add_argument("--image-dir", help="image folder for a COCO .json annotation file (default: the run's)")
    ap.add_argument("--bbox-format", choices=BBOX_FORMATS,
                    help="bbox convention of Hugging Face data (default: the run's, else the data's own)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    ap.add_argument("--max-samples", type=int, help="evaluate at most this many images")
    ap.add_argument("--class-map", help="how the data's classes meet the model's when their names differ: "
                    "'position' (data label i is model class i), or 'data name=model name,...' pairs; default: "
                    "by name, an error listing both sets when a data class with boxes is not the model's (data "
                    "classes with no box in the evaluated data are left unscored and named in the log)")
    inference.add_inference_arguments(ap, conf_threshold=0.001)
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    inference.check_sizes(ap, args, ("batch_size", "max_samples", "num_classes"))
    given = inference.given_inference_options(ap, args)
    loaded = inference.load_model_for_cli(ap, args)
    if loaded is None:
        return 2
    cfg = loaded.config
    opts = inference.resolve_inference_options(loaded, given, conf_threshold=0.001,
                                               log=lambda m: print(m, file=sys.stderr))
    img_size, letterbox, rect = opts.img_size, opts.resize == "letterbox", opts.resize == "rect"
    data_spec = args.data or cfg.get("val_data") or cfg.get("data") or "shapes"
    # A run trained without evaluation stores val_split null: fall back to 'validation'.
    split = args.split or cfg.get("val_split") or "validation"
    try:
        # The same validation set the training run scored (seed, empty images, limits, conventions).
        data = build_dataset(data_spec, split=split, num_classes=loaded.num_classes,
                             img_size=None if rect else img_size, letterbox=letterbox, skip_empty=False,
                             max_samples=args.max_samples or cfg.get("val_max_samples"),
                             image_dir=args.image_dir or cfg.get("val_image_dir") or cfg.get("image_dir"),
                             bbox_format=args.bbox_format or cfg.get("bbox_format"),
                             shapes_num_images=cfg.get("shapes_val_images"), shapes_seed=cfg.get("seed", 0),
                             shapes_img_size=cfg.get("shapes_img_size", 128), progress=True)
        print(f"{data_spec!r} ({split}): {len(data.examples)} images; {data.stats.summary()}", file=sys.stderr)
        # The model's class names (the run's, a .pt's), else the data's when they are as many.
        names = next((n for n in (loaded.class_names, data.class_names) if n and len(n) == loaded.num_classes), None)
        # The data's labels onto the model's classes: by name when both have names (class_names.py).
        # A data class with no box in the evaluated data needs no counterpart: it is left unscored.
        counts = class_box_counts(data.examples, len(data.class_names)) if data.class_names else None
        match = match_class_names(loaded.class_names, data.class_names, num_model_classes=loaded.num_classes,
                                  class_map=parse_class_map(args.class_map), data_box_counts=counts)
        print(match.describe(), file=sys.stderr)
        examples = remap_source(data.examples, match)
        if rect:  # as predict runs it, boxes in each image's own pixels
            detector = inference.Detector(loaded.model, conf_threshold=opts.conf_threshold,
                                          iou_threshold=opts.iou_threshold, max_det=opts.max_det,
                                          class_offset=opts.nms_class_offset, batch_size=args.batch_size)
            results = inference.evaluate_original_frame(detector, examples, opts,
                                                        num_classes=loaded.num_classes, class_names=names,
                                                        batch_size=args.batch_size)
            print(f"compiled {len(detector.compiled)} input shape(s) (batch x height x width): "
                  + ", ".join(f"{b}x{h}x{w}" for b, h, w in detector.compiled), file=sys.stderr)
        else:  # in the network's input frame, as training scores it
            results = evaluate_examples(inference.eval_graphdef(loaded.model), inference.model_states(loaded.model),
                                        examples, num_classes=loaded.num_classes, img_size=img_size,
                                        batch_size=args.batch_size, letterbox=letterbox, class_names=names,
                                        conf_threshold=opts.conf_threshold, iou_threshold=opts.iou_threshold,
                                        max_det=opts.max_det, class_offset=opts.nms_class_offset)
        if not match.is_identity:  # only the classes the data's labels map to
            results = select_classes(results, match.scored_classes)
            results["classes_unscored"] = match.unscored_names  # the data's classes with no box here
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"mAP@[.5:.95] {results['mAP']:.4f}  AP50 {results['AP50']:.4f}  AP75 {results['AP75']:.4f}  "
          f"({len(data.examples)} images)")
    if args.json:
        settings = {**dataclasses.asdict(opts), "weights": str(loaded.source)}  # the values that ran
        args.json.write_text(json.dumps(inference.json_safe({**results, "settings": settings}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
