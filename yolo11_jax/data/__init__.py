"""Data for YOLOv11 training: readers, cleaning, synthetic data, augmentation and the Grain pipeline.

Typical use::

    from yolo11_jax.data import build_dataset, TrainPipeline, ULTRALYTICS

    train = build_dataset("shapes", split="train", img_size=128)   # or 'detection-datasets/coco', ...
    print(train.stats.summary())                                     # indexed: nothing decoded yet
    pipe = TrainPipeline(train.examples, batch_size=16, img_size=128, max_boxes=20, seed=0,
                         augment=ULTRALYTICS, workers=2)
    for batch in pipe.dataset(total_steps):
        ...  # batch["images"] (B, S, S, 3) uint8, batch["boxes_cxcywh"] (B, M, 4),
             # batch["labels"] (B, M) int32, batch["mask"] (B, M) bool

Modules: :mod:`.shapes` (embedded synthetic dataset), one reader per format (:mod:`.hf`,
:mod:`.coco_json`, :mod:`.yolo_folder`), :mod:`.records` (records, the lazily decoded
:class:`RecordSource`, counters), :mod:`.cleaning` (the cleaning shared by every reader),
:mod:`.transforms` (resize / letterbox),
:mod:`.augment` (Ultralytics-style augmentation), :mod:`.pipeline` (the Grain pipeline),
:mod:`.build` (spec resolution, :func:`build_dataset`).
"""

from .build import DetectionData, ReadOptions, build_dataset, guess_coco_image_dir, load_examples, resolve_spec
from .augment import ULTRALYTICS, Augment
from .box_counts import (MAX_BOXES_CAP, PAD_SIZES, BoxCounts, MaxBoxes, box_counts, cheap_assigner_for, max_boxes_warning,
                         pad_size, resolve_max_boxes, warn_max_boxes)
from .pipeline import TrainPipeline, add_counts, eval_batches
from .shapes import SHAPES_CLASS_NAMES, make_shapes_dataset, render_shapes_image, shapes_features, shapes_source
from .sources import (
    BBOX_FORMATS,
    DataStats,
    Example,
    ExampleCleaner,
    Record,
    RecordSource,
    UnreadableImageError,
    boxes_to_xyxy_pixels,
    coco_categories,
    coco_json_examples,
    collect_examples,
    hf_class_names,
    hf_examples,
    open_hf_dataset,
    read_yolo_label_file,
    yolo_class_names,
    yolo_dirs,
    yolo_txt_examples,
)
from .transforms import LETTERBOX_FILL, LetterboxGeometry, letterbox, letterbox_geometry, resize_plain

__all__ = [
    "MAX_BOXES_CAP",
    "PAD_SIZES",
    "BoxCounts",
    "MaxBoxes",
    "box_counts",
    "cheap_assigner_for",
    "max_boxes_warning",
    "pad_size",
    "resolve_max_boxes",
    "Augment",
    "BBOX_FORMATS",
    "Record",
    "RecordSource",
    "TrainPipeline",
    "ULTRALYTICS",
    "UnreadableImageError",
    "add_counts",
    "eval_batches",
    "shapes_source",
    "warn_max_boxes",
    "DataStats",
    "DetectionData",
    "Example",
    "ExampleCleaner",
    "LETTERBOX_FILL",
    "LetterboxGeometry",
    "ReadOptions",
    "SHAPES_CLASS_NAMES",
    "SHAPES_FEATURES",
    "shapes_features",
    "boxes_to_xyxy_pixels",
    "build_dataset",
    "coco_categories",
    "coco_json_examples",
    "collect_examples",
    "guess_coco_image_dir",
    "hf_class_names",
    "hf_examples",
    "letterbox",
    "letterbox_geometry",
    "load_examples",
    "make_shapes_dataset",
    "open_hf_dataset",
    "read_yolo_label_file",
    "render_shapes_image",
    "resize_plain",
    "resolve_spec",
    "yolo_class_names",
    "yolo_dirs",
    "yolo_txt_examples",
]


def __getattr__(name: str):
    if name == "SHAPES_FEATURES":  # built on first use (shapes.shapes_features)
        return shapes_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
