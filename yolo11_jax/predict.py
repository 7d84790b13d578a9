"""Detect objects in image files with a trained model and draw the boxes.

Command line::

    python -m yolo11_jax.predict --weights yolo11n.pt bus.jpg          # writes predictions/
    python -m yolo11_jax.predict --run RUN_DIR photo.jpg more_images/ --out predictions/
    python -m yolo11_jax.predict --weights model.safetensors --model small --num-classes 4 \\
        --img-size 128 images/ --out predictions/

For every readable image, ``OUT/<stem>.png`` is the original image (original size)
with each detection drawn as a box in its class's colour, labelled with the class
name and score; ``OUT/detections.json`` lists, per image, the detections in the
original image's pixel coordinates, sorted by decreasing score (``OUT/settings.json`` holds the
settings that ran)::

    [{"image": "photo.jpg", "output": "predictions/photo.png", "width": 640, "height": 480,
      "detections": [{"box_xyxy": [x1, y1, x2, y2], "score": 0.91, "class_id": 2,
                      "class_name": "triangle"}, ...]}, ...]

Defaults follow the weights (``docs/predict.md``): with an Ultralytics ``.pt``, or a
``.safetensors`` converted from one, Ultralytics' own predict settings (the image size of the
checkpoint's ``train_args``, else 640; the rectangular letterbox ``--resize rect``; confidence
0.25, IoU 0.7, 300 detections, class-aware NMS with Ultralytics' offset; boxes mapped back with
``scale_boxes``' rounding, then clipped). With a run of this project, as it was trained (plain
resize or square letterbox). Options given on the command line win. Images are grouped by input
shape and run in batches, so a folder of mixed photos compiles once per shape (the shapes are
printed), not once per image. Unreadable images, files in a directory
that are not images and repeated inputs are reported and counted as skipped; the exit
status is 2 when no image could be read, and for mistakes that stop the program before
it writes anything (an output folder that holds input images, weights that do not fit
``--model`` / ``--num-classes``, an ``--img-size`` not a multiple of 32, ...).

Library: :func:`preprocess_image`, :func:`boxes_to_original`, :func:`detect_images`,
:func:`draw_detections`, :func:`collect_image_paths`; Ultralytics' geometry in
:mod:`yolo11_jax.letterbox`; the shape-cached detector in :class:`yolo11_jax.inference.Detector`.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from yolo11_jax import inference
from yolo11_jax.data.sources import IMAGE_EXTENSIONS, open_image
from yolo11_jax.data.transforms import letterbox as letterbox_image
from yolo11_jax.data.transforms import letterbox_geometry, resize_plain


# ----------------------------------------------------------------------------- inputs


def collect_image_paths(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand files and directories into a list of image paths.

    A directory contributes every file directly inside it whose name ends in one of
    :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted by name; a file is taken as
    given, whatever its ending. An image given twice (the same file, however named) is
    taken once.

    Returns ``(paths, problems)``: ``problems`` holds one message per input left out: a
    path that does not exist, a directory without images, a file in a directory whose
    ending is not an image's, a repeated image.
    """
    paths: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            found = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                problems.append(f"{p}: directory has no {'/'.join(IMAGE_EXTENSIONS)} images")
            problems += [f"{f}: not taken (its ending is not one of {'/'.join(IMAGE_EXTENSIONS)})"
                         for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
        elif p.exists():
            found = [p]
        else:
            problems.append(f"{p}: no such file or directory")
            continue
        for f in found:
            key = f.resolve()
            if key in seen:
                problems.append(f"{f}: given more than once, taken once")
            else:
                seen.add(key)
                paths.append(f)
    return paths, problems


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB (raises on unreadable data)."""
    return open_image(path)


# ----------------------------------------------------------------------------- geometry


def preprocess_image(img: Image.Image, img_size: int, letterbox: bool = False) -> np.ndarray:
    """The network input for one RGB image, as in training.

    Plain resize to ``img_size`` square (aspect ratio ignored), or letterbox (aspect
    ratio kept, grey padding); then ``uint8 / 255``. Returns float32 ``(S, S, 3)``.
    """
    if letterbox:
        img, _, _ = letterbox_image(img, np.zeros((0, 4), np.float32), img_size)
    else:
        img = resize_plain(img, img_size)
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def boxes_to_original(boxes_xyxy: np.ndarray, width: int, height: int, img_size: int,
                      letterbox: bool = False, clip: bool = True) -> np.ndarray:
    """Map ``(N, 4)`` xyxy boxes from network-input pixels to original-image pixels.

    Undoes :func:`preprocess_image`: the plain resize scales ``x`` by
    ``width / img_size`` and ``y`` by ``height / img_size``; the letterbox removes the
    padding offset, then divides by the letterbox scale (see
    :class:`~yolo11_jax.data.transforms.LetterboxGeometry`). With ``clip`` the result
    is clipped to ``x in [0, width]``, ``y in [0, height]``. Returns float64 ``(N, 4)``.
    """
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4).copy()
    if letterbox:
        g = letterbox_geometry(width, height, img_size)
        b[:, 0::2] = (b[:, 0::2] - g.pad_left) / g.scale_x
        b[:, 1::2] = (b[:, 1::2] - g.pad_top) / g.scale_y
    else:
        b[:, 0::2] *= width / img_size
        b[:, 1::2] *= height / img_size
    if clip:
        b[:, 0::2] = np.clip(b[:, 0::2], 0.0, float(width))
        b[:, 1::2] = np.clip(b[:, 1::2], 0.0, float(height))
    return b


# ----------------------------------------------------------------------------- inference


def class_name_list(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """``names`` extended (or replaced) by ``str(id)`` so there is one name per class."""
    names = list(names or [])
    return [str(names[i]) if i < len(names) and names[i] is not None else str(i) for i in range(num_classes)]


detect_batch = inference.detect_batch


def detections_to_records(det: dict[str, np.ndarray], width: int, height: int, *, img_size: int,
                          letterbox: bool, class_names: Sequence[str]) -> list[dict]:
    """One image's detections as JSON-ready dicts in original pixels, by decreasing score."""
    boxes = boxes_to_original(det["boxes_xyxy"], width, height, img_size, letterbox)
    records = [{"box_xyxy": [float(v) for v in box], "score": float(score), "class_id": int(cls),
                "class_name": class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))}
               for box, score, cls in zip(boxes, det["scores"], det["classes"])]
    records.sort(key=lambda r: -r["score"])
    return records


def detect_images(graphdef, states, images: Sequence[Image.Image], *, img_size: int, letterbox: bool = False,
                  class_names: Sequence[str] | None = None, num_classes: int | None = None,
                  batch_size: int = 8, conf_threshold: float = 0.25, iou_threshold: float = 0.7,
                  max_det: int = 300) -> list[list[dict]]:
    """Detections of in-memory PIL images, in each image's original pixel coordinates.

    ``graphdef`` must come from :func:`~yolo11_jax.inference.eval_graphdef`; ``states``
    is a tuple of ``nnx.State`` that merge with it. Returns one list per image of
    ``{"box_xyxy", "score", "class_id", "class_name"}`` dicts sorted by score.
    """
    if not images:
        return []
    names = class_name_list(num_classes or len(class_names or []), class_names)
    bs = max(1, min(batch_size, len(images)))
    results: list[list[dict]] = []
    for start in range(0, len(images), bs):
        chunk = [im.convert("RGB") for im in images[start:start + bs]]
        dets = detect_batch(graphdef, states, [preprocess_image(im, img_size, letterbox) for im in chunk],
                            batch_size=bs, img_size=img_size, conf_threshold=conf_threshold,
                            iou_threshold=iou_threshold, max_det=max_det)
        for im, det in zip(chunk, dets):
            results.append(detections_to_records(det, im.width, im.height, img_size=img_size,
                                                 letterbox=letterbox, class_names=names))
    return results


# ----------------------------------------------------------------------------- drawing


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour per class; hues follow the golden ratio so neighbours differ."""
    hue = (int(class_id) * 0.618033988749895 + 0.05) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(img: Image.Image, detections: Sequence[dict]) -> Image.Image:
    """A copy of ``img`` (RGB, same size) with each detection's box and ``"name score"`` label.

    ``detections`` are dicts with ``box_xyxy`` (original pixels), ``score``,
    ``class_id``, ``class_name``. The lowest-score boxes are drawn first.
    """
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    line = max(1, round(side / 250))
    font = _font(max(10, round(side / 40)))
    for d in sorted(detections, key=lambda r: r["score"]):
        x1, y1, x2, y2 = d["box_xyxy"]
        colour = class_colour(d["class_id"])
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
        text = f"{d['class_name']} {d['score']:.2f}"
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l + 2, b - t + 2
        tx = min(max(0.0, x1), max(0.0, out.width - tw))
        ty = y1 - th if y1 - th >= 0 else min(y1, max(0.0, out.height - th))  # above the box, else inside
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((tx + 1 - l, ty + 1 - t), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255), font=font)
    return out


# ----------------------------------------------------------------------------- command line


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _output_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per path; repeated stems get ``_1``, ``_2``, ... so nothing is overwritten."""
    used: set[str] = set()
    names = []
    for p in paths:
        name, k = f"{p.stem}.png", 0
        while name.lower() in used:
            k += 1
            name = f"{p.stem}_{k}.png"
        used.add(name.lower())
        names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m yolo11_jax.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", metavar="IMAGES",
                    help="image files and/or directories (a directory contributes its "
                         f"{', '.join(IMAGE_EXTENSIONS)} files, sorted; its other files, and an image "
                         "given twice, are reported and counted as skipped)")
    ap.add_argument("--out", type=Path, default=Path("predictions"),
                    help="output directory for the annotated <stem>.png images and detections.json "
                         "(default: %(default)s)")
    inference.add_model_arguments(ap)
    ap.add_argument("--class-names", help="comma-separated class names (default: the run's, else the class ids)")
    inference.add_inference_arguments(ap, conf_threshold=0.25)
    ap.add_argument("--batch-size", type=int, default=8,
                    help="images of one input shape per forward pass (a shape's last batch is padded) "
                         "(default: %(default)s)")
    return ap


def read_image_array(path: Path, resize: str) -> np.ndarray:
    """An image file as RGB ``uint8 (H, W, 3)``: decoded by OpenCV as Ultralytics does for the
    ``rect`` resize (PIL where OpenCV cannot read the format), by PIL as training does otherwise."""
    if resize == "rect":
        from yolo11_jax.letterbox import read_image_rgb

        try:
            return read_image_rgb(path)
        except ValueError:
            pass
    return np.asarray(load_image(path), np.uint8)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    inference.check_sizes(ap, args, ("batch_size", "num_classes"))
    given = inference.given_inference_options(ap, args)
    paths, problems = collect_image_paths(args.images)
    out_dir = args.out.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        ap.error(f"--out {args.out} exists and is not a directory")
    if any(p.resolve().parent == out_dir for p in paths):
        ap.error(f"--out {args.out} holds input images: the annotated copies would replace them "
                 "(choose another output folder)")
    loaded = inference.load_model_for_cli(ap, args)
    if loaded is None:
        return 2
    num_classes = loaded.num_classes
    opts = inference.resolve_inference_options(loaded, given, conf_threshold=0.25,
                                               log=lambda m: print(m, file=sys.stderr))
    names = [s.strip() for s in args.class_names.split(",")] if args.class_names else loaded.class_names
    if args.class_names and len(names) != num_classes:
        ap.error(f"--class-names gives {len(names)} names for {num_classes} classes")
    class_names = class_name_list(num_classes, names)

    for msg in problems:
        _warn(msg)
    skipped = len(problems)
    if not paths:
        print(f"0 images, 0 detections, {skipped} skipped")
        print("error: no image could be read (no input images found)", file=sys.stderr)
        return 2
    detector = inference.Detector(loaded.model, conf_threshold=opts.conf_threshold,
                                  iou_threshold=opts.iou_threshold, max_det=opts.max_det,
                                  class_offset=opts.nms_class_offset, batch_size=min(args.batch_size, len(paths)),
                                  log=lambda m: print(m, file=sys.stderr))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the output folder {args.out}: {e}", file=sys.stderr)
        return 2
    out_names = dict(zip(paths, _output_names(paths)))

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        nonlocal skipped
        for p in paths:
            try:
                yield p, read_image_array(p, opts.resize)
            except Exception as e:  # noqa: BLE001 - any decoding problem skips the image
                skipped += 1
                _warn(f"skipping {p}: cannot read image ({type(e).__name__}: {e})")

    results: list[dict] = []
    num_dets = 0
    try:
        # chunks of several batches, so that images of one shape share batches
        for chunk in _batches(readable(), 4 * detector.batch_size):
            dets = inference.detect_rgb_images(detector, [im for _, im in chunk], opts)
            for (path, img), det in zip(chunk, dets):
                h, w = img.shape[:2]
                records = [{"box_xyxy": [float(v) for v in box], "score": float(score), "class_id": int(cls),
                            "class_name": class_names[int(cls)] if 0 <= int(cls) < num_classes else str(int(cls))}
                           for box, score, cls in zip(det["boxes_xyxy"], det["scores"], det["classes"])]
                out_path = args.out / out_names[path]
                draw_detections(Image.fromarray(img), records).save(out_path)
                results.append({"image": str(path), "output": str(out_path), "width": w, "height": h,
                                "input_hw": [int(v) for v in det["input_hw"]], "detections": records})
                num_dets += len(records)
        (args.out / "detections.json").write_text(json.dumps(results, indent=1))
        (args.out / "settings.json").write_text(json.dumps(  # the values that ran
            {**dataclasses.asdict(opts), "weights": str(loaded.source), "batch_size": detector.batch_size,
             "compiled_shapes": detector.compiled}, indent=1))
    except OSError as e:  # the output folder cannot be written
        print(f"error: cannot write the outputs to {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"{len(results)} images, {num_dets} detections, {skipped} skipped")
    if not results:
        print(f"error: no image could be read ({skipped} skipped)", file=sys.stderr)
        return 2
    shapes = ", ".join(f"{b}x{h}x{w}" for b, h, w in detector.compiled)
    print(f"compiled {len(detector.compiled)} input shape(s) (batch x height x width): {shapes}", file=sys.stderr)
    print(f"wrote {len(results)} annotated images and detections.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
