"""Data loading for YOLOv11 training: readers, cleaning, synthetic data and batching.

Typical use::

    from yolo11_jax.data import build_dataset, BatchLoader

    train = build_dataset("shapes", split="train", img_size=128)   # or 'detection-datasets/coco', ...
    print(train.stats.summary())
    loader = BatchLoader(train.examples, batch_size=16, img_size=128, max_boxes=20, seed=0)
    for epoch in range(num_epochs):
        for batch in loader.epoch(epoch):
            ...  # batch["images"] (B, S, S, 3) float32, batch["boxes_cxcywh"] (B, M, 4),
                 # batch["labels"] (B, M) int32, batch["mask"] (B, M) bool

Modules: :mod:`.shapes` (embedded synthetic dataset), :mod:`.sources` (readers and
the shared cleaning), :mod:`.transforms` (resize / letterbox), :mod:`.pipeline`
(:class:`BatchLoader`), :mod:`.build` (spec resolution, :func:`build_dataset`).
"""

from .build import DetectionData, ReadOptions, build_dataset, guess_coco_image_dir, load_examples, resolve_spec
from .pipeline import BatchLoader
from .shapes import SHAPES_CLASS_NAMES, SHAPES_FEATURES, make_shapes_dataset, render_shapes_image
from .sources import (
    BBOX_FORMATS,
    DataStats,
    Example,
    ExampleCleaner,
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
    "BBOX_FORMATS",
    "BatchLoader",
    "DataStats",
    "DetectionData",
    "Example",
    "ExampleCleaner",
    "LETTERBOX_FILL",
    "LetterboxGeometry",
    "ReadOptions",
    "SHAPES_CLASS_NAMES",
    "SHAPES_FEATURES",
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
