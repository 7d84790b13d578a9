"""The readers' public names in one place, for code written before the readers were split by
format. New code imports from :mod:`yolo11_jax.data` or from the format's own module:

* :mod:`.records` -- :class:`Record`, :class:`Example`, :class:`RecordSource`, :class:`DataStats`,
  :func:`open_image`, :data:`IMAGE_EXTENSIONS`, :data:`BBOX_FORMATS`;
* :mod:`.cleaning` -- :class:`ExampleCleaner`, the one cleaning step of every reader;
* :mod:`.hf` -- Hugging Face datasets (objects, Hub names, save_to_disk folders, parquet);
* :mod:`.coco_json` -- COCO ``instances_*.json`` files;
* :mod:`.yolo_folder` -- Ultralytics YOLO folders.
"""

from .cleaning import ExampleCleaner
from .coco_json import coco_categories, coco_json_examples
from .hf import (DatasetRowImage, HubUnreachableError, hf_class_names, hf_examples, hub_errors, open_hf_dataset)
from .records import (BBOX_FORMATS, IMAGE_EXTENSIONS, DataStats, Example, Record, RecordSource, UnreadableImageError,
                      boxes_to_xyxy_pixels, collect_examples, image_size, open_image)
from .yolo_folder import read_yolo_label_file, yolo_class_names, yolo_dirs, yolo_txt_examples

__all__ = ["BBOX_FORMATS", "IMAGE_EXTENSIONS", "DataStats", "DatasetRowImage", "Example", "ExampleCleaner",
           "HubUnreachableError", "Record", "RecordSource", "UnreadableImageError", "boxes_to_xyxy_pixels",
           "coco_categories", "coco_json_examples", "collect_examples", "hf_class_names", "hf_examples", "hub_errors",
           "image_size", "open_hf_dataset", "open_image", "read_yolo_label_file", "yolo_class_names", "yolo_dirs",
           "yolo_txt_examples"]
