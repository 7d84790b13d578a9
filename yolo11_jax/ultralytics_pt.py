"""Read Ultralytics YOLO11 detection checkpoints (``.pt``) safely: no Ultralytics, no torch, and
no code from the file ever runs.

A ``.pt`` written by Ultralytics is a ``torch.save`` archive (a zip holding ``data.pkl`` and one
``data/<key>`` file per tensor storage; the legacy non-zip layout is read too) whose pickle
contains whole module objects: the ``DetectionModel`` and every layer, with their tensors.
``pickle.load`` would import and call whatever the pickle names. Here a restricted unpickler
resolves only the names in ``ALLOWED_GLOBALS``, an explicit list of (module, name) pairs:

* torch's tensor machinery, re-implemented with NumPy: ``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter`` (and ``_rebuild_parameter_with_state``) and the storage types
  (``torch.HalfStorage``, ``FloatStorage``, ``LongStorage``, ...) named by the storages'
  persistent ids; tensors are read from the archive's raw storages, bounds-checked;
* containers: ``collections.OrderedDict`` and ``set`` (as ``__builtin__.set`` or ``builtins.set``);
  ``torch.Size``, read as a plain tuple of ints (every trained checkpoint has one: the Detect
  head's ``shape``, set by a forward pass);
* the ``torch.nn`` and ``ultralytics.nn`` module classes of a YOLO11 detector and a few harmless
  classes other Ultralytics versions pickle (the training-arguments namespace, the loss objects
  an 8.3 training checkpoint may carry, NumPy scalars, ``torch.device``). Each becomes an inert
  ``PickledObject`` record holding the attributes the pickle gives it (for modules their
  ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, ``yaml``, ``names``, ...).

Any other name is refused before anything is created, with an error naming it. Class names that
identify another task or YOLO version (``SegmentationModel``, ``Pose``, ``C2f``, ``A2C2f``, ...)
are refused with a message saying what the file is.

``read_ultralytics(path)`` returns the float32 state dict (Ultralytics' keys, the same as
``reference_torch.YOLO11``'s) and an ``info`` dict; ``convert.load_ultralytics`` builds the
matching NNX model from them.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import numpy as np


class UltralyticsCheckpointError(ValueError):
    """The file is not a YOLO11 detection checkpoint that can be read safely."""


# --------------------------------------------------------------------------- inert records


class PickledObject:
    """An instance of an allowed class, as an inert record.

    ``args`` are the constructor arguments the pickle gave (usually none) and ``state`` the
    attribute dict it restored (for a torch module: its ``__dict__``). Subclasses exist per
    allowed class path (``class_path``); no method of the real class is ever called.
    """

    __slots__ = ("args", "state")
    class_path = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args = args + ((kwargs,) if kwargs else ())
        obj.state = {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) form
            merged = {}
            for part in state:
                if part is not None and not isinstance(part, dict):
                    raise pickle.UnpicklingError(f"{self.class_path}: unexpected pickled state {type(part)}")
                merged.update(part or {})
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_path}: unexpected pickled state {type(state)}")
        self.state = dict(state)

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<pickled {self.class_path}>"


def _record_class(path: str) -> type:
    return type(path.rsplit(".", 1)[-1], (PickledObject,), {"__slots__": (), "class_path": path})


class PickledTensor:
    """A tensor read from the archive: ``array`` (NumPy, the file's dtype; bfloat16 arrives as
    float32 holding the same values) and whether it was an ``nn.Parameter``."""

    __slots__ = ("array", "is_parameter")

    def __init__(self, array: np.ndarray | None, is_parameter: bool = False):
        self.array = array
        self.is_parameter = is_parameter

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a pickled tensor was given extra state; refusing the file")

    def __repr__(self) -> str:
        return f"<tensor {None if self.array is None else (self.array.dtype, self.array.shape)}>"


class _StorageType:
    """What a ``torch.<Type>Storage`` global stands for: an element dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype  # NumPy dtype string without byte order, or "bfloat16"

    def numpy_dtype(self, byteorder: str) -> np.dtype:
        base = "u2" if self.dtype == "bfloat16" else self.dtype
        return np.dtype(base).newbyteorder("<" if byteorder == "little" else ">")


class _Storage:
    __slots__ = ("type", "array")

    def __init__(self, storage_type: _StorageType, array: np.ndarray | None):
        self.type = storage_type
        self.array = array  # None while the legacy reader's first pass collects storage types


_STORAGE_TYPES = {
    "HalfStorage": "f2", "FloatStorage": "f4", "DoubleStorage": "f8", "BFloat16Storage": "bfloat16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """NumPy version of ``torch._utils._rebuild_tensor_v2``: a strided view of a storage, copied.
    Every index is checked against the storage's length first."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: expected a storage, got {type(storage).__name__}")
    if not (_is_int(storage_offset) and storage_offset >= 0 and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: malformed offset/size/stride "
                                     f"{storage_offset!r} {size!r} {stride!r}")
    if storage.array is None:
        return PickledTensor(None)
    data = storage.array
    if math.prod(size) == 0:
        array = np.zeros(size, data.dtype)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise pickle.UnpicklingError(f"_rebuild_tensor_v2: tensor of size {size} and stride {stride} at "
                                         f"offset {storage_offset} reads past its storage of {data.size} elements")
        view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                               strides=tuple(s * data.itemsize for s in stride), writeable=False)
        array = np.array(view)
    if storage.type.dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return PickledTensor(array.astype(array.dtype.newbyteorder("=")))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, PickledTensor):
        raise pickle.UnpicklingError(f"_rebuild_parameter: expected a tensor, got {type(data).__name__}")
    data.is_parameter = True
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _torch_size(dims=()):
    """``torch.Size((a, b, ...))`` -> the tuple of ints (``torch.Size`` is a tuple subclass; a
    network that has run a forward pass keeps one in its Detect head's ``shape``)."""
    dims = tuple(dims)
    if not all(_is_int(d) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"torch.Size: expected non-negative ints, got {dims!r}")
    return dims


def _torch_device(*args):
    """``torch.device('cpu')`` -> the string 'cpu'."""
    return ":".join(str(a) for a in args)


class _NumpyDType(PickledObject):
    __slots__ = ()
    class_path = "numpy.dtype"

    def __setstate__(self, state):
        self.state = {"pickled_state": state}


_NUMERIC_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar(dtype, bytes)`` for numeric dtypes -> a Python number."""
    if not isinstance(dtype, _NumpyDType) or not dtype.args or dtype.args[0] not in _NUMERIC_DTYPES \
            or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar: only plain numeric scalars are read; got {dtype!r}")
    st = dtype.state.get("pickled_state")
    order = st[1] if isinstance(st, tuple) and len(st) > 1 and st[1] in "<>|=" else "="
    return np.frombuffer(data, np.dtype(dtype.args[0]).newbyteorder(order), count=1)[0].item()


_TORCH_NN = {
    "torch.nn.modules.activation": ("SiLU", "ReLU", "LeakyReLU", "Hardswish", "Sigmoid"),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.container": ("Sequential", "ModuleList", "ModuleDict"),
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.linear": ("Identity",),
    "torch.nn.modules.pooling": ("MaxPool2d",),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.loss": ("BCEWithLogitsLoss",),  # in 8.3 training checkpoints' criterion
}
_ULTRALYTICS = {
    "ultralytics.nn.tasks": ("DetectionModel",),
    "ultralytics.nn.modules.conv": ("Conv", "DWConv", "Concat"),
    "ultralytics.nn.modules.block": ("C3k2", "C3k", "Bottleneck", "SPPF", "C2PSA", "PSABlock", "Attention", "DFL"),
    "ultralytics.nn.modules.head": ("Detect",),
    # Training-arguments namespace of unstripped checkpoints (and its pre-8.1 path).
    "ultralytics.utils": ("IterableSimpleNamespace",),
    "ultralytics.yolo.utils": ("IterableSimpleNamespace",),
    # The loss an 8.3 training checkpoint's model may carry as ``criterion``.
    "ultralytics.utils.loss": ("v8DetectionLoss", "BboxLoss", "DFLoss"),
    "ultralytics.utils.tal": ("TaskAlignedAssigner",),
}

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "device"): _torch_device,
    ("torch", "Size"): _torch_size,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_TYPES.items()},
    **{(module, name): _record_class(f"{module}.{name}")
       for table in (_TORCH_NN, _ULTRALYTICS) for module, names in table.items() for name in names},
}

# Ultralytics class names that identify a file as something other than a YOLO11 detector.
OTHER_MODELS: dict[str, str] = {
    **dict.fromkeys(["SegmentationModel", "Segment", "Segment26", "Proto", "YOLOESegment", "YOLOESegModel",
                     "YOLOESegment26", "SemanticSegmentationModel", "SemanticSegment"],
                    "a segmentation model"),
    **dict.fromkeys(["PoseModel", "Pose", "Pose26"], "a pose (keypoint) model"),
    **dict.fromkeys(["OBBModel", "OBB", "OBB26"], "an oriented-box (OBB) model"),
    **dict.fromkeys(["ClassificationModel", "Classify"], "a classification model"),
    **dict.fromkeys(["DepthModel", "Depth"], "a depth-estimation model"),
    **dict.fromkeys(["RTDETRDetectionModel", "RTDETRDecoder", "HGStem", "HGBlock", "AIFI", "RepC3"],
                    "an RT-DETR model"),
    **dict.fromkeys(["WorldModel", "WorldDetect", "C2fAttn", "ImagePoolingAttn"], "a YOLO-World model"),
    **dict.fromkeys(["YOLOEModel", "YOLOEDetect", "LRPCHead"], "a YOLOE model"),
    **dict.fromkeys(["YOLOv10DetectionModel", "v10Detect", "SCDown", "PSA", "C2fCIB"], "a YOLOv10 model"),
    **dict.fromkeys(["A2C2f", "AAttn", "ABlock"], "a YOLO12 model"),
    **dict.fromkeys(["RepNCSPELAN4", "ADown", "AConv", "SPPELAN", "CBLinear", "CBFuse"], "a YOLOv9 model"),
    "C2f": "a YOLOv8-family model (C2f blocks)",
    "C3": "a YOLOv5-family model (C3 blocks)",
    "Ensemble": "an ensemble of models",
}

_NOT_A_CHECKPOINT = "only Ultralytics YOLO11 detection checkpoints (.pt) are supported"


def pickle_globals(data: bytes | io.BufferedIOBase) -> list[tuple[str, str]]:
    """Every (module, name) a pickle's GLOBAL / STACK_GLOBAL opcodes name, in order of first use,
    found by reading the opcodes (``pickletools.genops``) without running anything. A name built
    at run time from non-string values (never seen in real files) is reported as ``('?', '?')``."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    memo: dict[int, Any] = {}
    strings: list[Any] = []
    last: Any = None
    seen: dict[tuple[str, str], None] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                    "STRING"):
            last = arg
            strings.append(arg)
            continue
        if name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(arg)
            strings.append(last)
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = last
            continue
        if name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
            continue
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            seen.setdefault((module, attr), None)
        elif name == "STACK_GLOBAL":
            pair = tuple(strings[-2:]) if len(strings) >= 2 else ()
            seen.setdefault(pair if len(pair) == 2 and all(isinstance(x, str) for x in pair) else ("?", "?"), None)
        last = None
    return list(seen)


def _refuse_other_models(names: list[tuple[str, str]], path: str) -> None:
    """Refuse a file whose pickle names a class of another model kind, before unpickling, so the
    message names the kind whatever other unknown names the file has."""
    for module, name in names:
        if module.split(".")[0] == "ultralytics" and name in OTHER_MODELS:
            raise UltralyticsCheckpointError(
                f"{path}: this is {OTHER_MODELS[name]} (the file contains {module}.{name}); {_NOT_A_CHECKPOINT}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED_GLOBALS``; storages come from ``load_storage(type, key, numel)``."""

    def __init__(self, file, load_storage: Callable[[_StorageType, str, int], _Storage], path: str):
        super().__init__(file)
        self._load_storage = load_storage
        self._path = path
        self.classes_seen: set[str] = set()

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in ALLOWED_GLOBALS:
            self.classes_seen.add(f"{module}.{name}")
            return ALLOWED_GLOBALS[key]
        if module.split(".")[0] == "ultralytics" and name in OTHER_MODELS:
            raise UltralyticsCheckpointError(
                f"{self._path}: this is {OTHER_MODELS[name]} (the file contains {module}.{name}); {_NOT_A_CHECKPOINT}")
        raise UltralyticsCheckpointError(
            f"{self._path}: the pickle names {module}.{name}, which is not on the list of classes this reader "
            f"accepts; refusing the file (nothing from it was run). {_NOT_A_CHECKPOINT}")

    def persistent_load(self, pid):
        # Legacy (non-zip) files name each module class as ('module', class, source file, source);
        # the class itself went through find_class, so it is one of the allowed records.
        if (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], type)
                and issubclass(pid[1], PickledObject)):
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, location, numel = pid[:5]
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str) and isinstance(location, str)
                and _is_int(numel) and numel >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r}")
        return self._load_storage(storage_type, key, numel)


# --------------------------------------------------------------------------- archive readers


def _zip_pickle(path: str) -> tuple[Any, set[str]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkl) != 1:
            raise UltralyticsCheckpointError(f"{path}: a zip file, but not a torch.save archive (no single "
                                             f"data.pkl); {_NOT_A_CHECKPOINT}")
        prefix = pkl[0][:-len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise UltralyticsCheckpointError(f"{path}: unknown byte order {byteorder!r}")
        cache: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            if key not in cache:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise UltralyticsCheckpointError(f"{path}: storage {member} is missing from the archive")
                dtype = storage_type.numpy_dtype(byteorder)
                raw = zf.read(member)
                if len(raw) < numel * dtype.itemsize:
                    raise UltralyticsCheckpointError(f"{path}: storage {member} has {len(raw)} bytes; "
                                                     f"{numel} x {dtype.itemsize} expected")
                cache[key] = _Storage(storage_type, np.frombuffer(raw, dtype, count=numel))
            return cache[key]

        data = zf.read(pkl[0])
        _refuse_other_models(pickle_globals(data), path)
        unpickler = _RestrictedUnpickler(io.BytesIO(data), load_storage, path)
        return unpickler.load(), unpickler.classes_seen


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _legacy_pickle(path: str) -> tuple[Any, set[str]]:
    """``torch.save(..., _use_new_zipfile_serialization=False)``: magic number, protocol,
    system info, the main pickle, the sorted storage keys, then per key an int64 element count
    and the raw bytes. The main pickle is read twice: first to learn each storage's type
    (storages come after it), then with the data."""

    def small(f):  # the header pickles hold only ints, dicts, bools and strings
        return _RestrictedUnpickler(f, _no_storage, path).load()

    with open(path, "rb") as f:
        try:
            magic, protocol, sys_info = small(f), small(f), small(f)
        except UltralyticsCheckpointError:
            raise
        except Exception as e:
            raise UltralyticsCheckpointError(f"{path}: not a PyTorch checkpoint ({e}); {_NOT_A_CHECKPOINT}") from None
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
            raise UltralyticsCheckpointError(f"{path}: not a PyTorch checkpoint; {_NOT_A_CHECKPOINT}")
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        start = f.tell()
        _refuse_other_models(pickle_globals(f), path)
        f.seek(start)
        types: dict[str, tuple[_StorageType, int]] = {}

        def collect(storage_type, key, numel):
            types[key] = (storage_type, numel)
            return _Storage(storage_type, None)

        _RestrictedUnpickler(f, collect, path).load()
        keys = small(f)
        if not isinstance(keys, list) or set(keys) != set(types):
            raise UltralyticsCheckpointError(f"{path}: the storage list does not match the pickle")
        storages: dict[str, _Storage] = {}
        for key in keys:
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            storage_type, numel = types[key]
            dtype = storage_type.numpy_dtype(byteorder)
            raw = f.read(count * dtype.itemsize)
            if count != numel or len(raw) != count * dtype.itemsize:
                raise UltralyticsCheckpointError(f"{path}: storage {key} is truncated or inconsistent")
            storages[key] = _Storage(storage_type, np.frombuffer(raw, dtype))
        f.seek(start)
        unpickler = _RestrictedUnpickler(f, lambda t, key, n: storages[key], path)
        return unpickler.load(), unpickler.classes_seen


def _no_storage(storage_type, key, numel):
    raise pickle.UnpicklingError("unexpected storage reference")


def load_pickle(path: str | os.PathLike) -> tuple[Any, set[str]]:
    """Unpickle a ``torch.save`` file with the restricted unpickler.

    Returns ``(object, classes)``: the object with ``PickledObject`` records for allowed class
    instances and ``PickledTensor`` for tensors, and the set of allowed global names it used.
    Raises ``UltralyticsCheckpointError`` for a disallowed name or a file that is not a
    ``torch.save`` archive.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _zip_pickle(path)
        return _legacy_pickle(path)
    except UltralyticsCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RecursionError) as e:
        raise UltralyticsCheckpointError(f"{path}: cannot read the checkpoint: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- checkpoint interpretation


def module_state_dict(module: PickledObject, prefix: str = "") -> dict[str, np.ndarray]:
    """``nn.Module.state_dict()`` of a pickled module record: parameters, persistent buffers,
    then child modules, recursively, as NumPy arrays in the file's dtypes."""
    out: dict[str, np.ndarray] = {}
    params = module.get("_parameters") or {}
    buffers = module.get("_buffers") or {}
    non_persistent = module.get("_non_persistent_buffers_set") or set()
    for name, t in list(params.items()) + [(k, v) for k, v in buffers.items() if k not in non_persistent]:
        if t is None:
            continue
        if not isinstance(t, PickledTensor):
            raise UltralyticsCheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
        out[prefix + name] = t.array
    for name, child in (module.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PickledObject):
            raise UltralyticsCheckpointError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _find_model(obj: Any, path: str) -> tuple[PickledObject, str | None, dict]:
    """The pickled DetectionModel, the checkpoint key it came from, and the checkpoint dict."""
    if isinstance(obj, PickledObject):
        if obj.class_path != "ultralytics.nn.tasks.DetectionModel":
            raise UltralyticsCheckpointError(f"{path}: the file holds a {obj.class_path}, not a checkpoint; "
                                             f"{_NOT_A_CHECKPOINT}")
        return obj, None, {}
    if not isinstance(obj, dict):
        raise UltralyticsCheckpointError(f"{path}: the file holds a {type(obj).__name__}, not a checkpoint dict; "
                                         f"{_NOT_A_CHECKPOINT}")
    if obj and all(isinstance(v, PickledTensor) for v in obj.values()):
        first = next(iter(obj))
        raise UltralyticsCheckpointError(
            f"{path}: this is a plain state dict ({len(obj)} tensors, e.g. {first!r}), not an Ultralytics "
            f"checkpoint: it has no model config or class names. Load it with yolo11_jax.convert.load_state_dict "
            f"into build_model('yolo11<scale>', num_classes=...) instead")
    # Ultralytics prefers the EMA weights when both are present, as here.
    for key in ("ema", "model"):
        value = obj.get(key)
        if isinstance(value, PickledObject):
            if value.class_path != "ultralytics.nn.tasks.DetectionModel":
                raise UltralyticsCheckpointError(f"{path}: checkpoint[{key!r}] is a {value.class_path}; "
                                                 f"{_NOT_A_CHECKPOINT}")
            return value, key, obj
    raise UltralyticsCheckpointError(
        f"{path}: no model in the checkpoint: neither 'ema' nor 'model' holds a DetectionModel "
        f"(keys: {sorted(map(str, obj))}); {_NOT_A_CHECKPOINT}")


_SCALE_BY_STEM_WIDTH = {16: "n", 32: "s", 96: "x"}  # layer 0's output channels; 64 is m or l


def infer_scale(state_dict: dict[str, np.ndarray]) -> str | None:
    """YOLO11 scale from the tensor shapes (layer 0's width; C3k2 repeats tell m from l), or None."""
    w = state_dict.get("model.0.conv.weight")
    if w is None or w.ndim != 4:
        return None
    if w.shape[0] == 64:
        return "l" if "model.2.m.1.cv1.conv.weight" in state_dict else "m"
    return _SCALE_BY_STEM_WIDTH.get(int(w.shape[0]))


def _class_names(names: Any, num_classes: int, path: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UltralyticsCheckpointError(f"{path}: class names are not indexed 0..n-1: {sorted(names)[:10]}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UltralyticsCheckpointError(f"{path}: the model's 'names' are not a list of strings")
    return list(names)


def read_ultralytics(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read an Ultralytics YOLO11 detection ``.pt`` without running code from it.

    Reads released weights (``"model"`` holds the FP16 ``DetectionModel``) and training
    checkpoints such as ``last.pt`` / ``best.pt`` (``"model"`` is None and ``"ema"`` holds it),
    in torch's zip or legacy format.

    Returns:
      state_dict: ``{Ultralytics key: float32 array}`` (``num_batches_tracked`` stays int64),
        the keys of ``reference_torch.YOLO11``; DFL weight included.
      info: ``num_classes``, ``class_names`` (list), ``scale`` ('n'..'x'), ``preset``
        ('yolo11n'..), ``weights_key`` ('model' or 'ema'; None for a bare pickled model),
        ``ultralytics_version`` (the checkpoint's ``version``, or None), ``epoch``, ``date``,
        ``file_dtype`` (the weights' dtype in the file, e.g. 'float16'), ``path``,
        ``variant`` (the ``yolo11.Variant`` fields the file records, a dict; ``cls_hidden`` only
        when the class branch's width is not Ultralytics' rule), ``reg_max``,
        ``imgsz`` (``train_args.imgsz``, or None), ``architecture`` (``architecture_records``).

    Raises:
      UltralyticsCheckpointError (a ValueError): with one message for a disallowed pickle class,
        a segmentation/pose/OBB/classification model, another YOLO version, a plain state dict,
        or config and tensors that disagree.
    """
    path = str(path)
    obj, classes = load_pickle(path)
    model, key, ckpt = _find_model(obj, path)
    raw = module_state_dict(model)
    yaml = model.get("yaml") if isinstance(model.get("yaml"), dict) else {}

    _check_is_yolo11(path, yaml, raw, classes)
    shape_scale = infer_scale(raw)
    yaml_scale = yaml.get("scale")
    if not yaml_scale and isinstance(yaml.get("yaml_file"), str):
        m = re.search(r"yolo11([nsmlx])", os.path.basename(yaml["yaml_file"]))
        yaml_scale = m.group(1) if m else None
    if shape_scale is None:
        w = raw.get("model.0.conv.weight")
        raise UltralyticsCheckpointError(
            f"{path}: the first layer has shape {None if w is None else tuple(w.shape)}, which matches no YOLO11 "
            f"scale (output channels 16 / 32 / 64 / 64 / 96 for n / s / m / l / x)")
    if yaml_scale is not None and yaml_scale != shape_scale:
        raise UltralyticsCheckpointError(f"{path}: the model config says scale {yaml_scale!r} but the tensors are "
                                         f"those of scale {shape_scale!r}")

    bias = raw.get("model.23.cv3.0.2.bias")
    if bias is None or bias.ndim != 1:
        raise UltralyticsCheckpointError(f"{path}: no class-output layer model.23.cv3.0.2 (not a YOLO11 Detect head)")
    num_classes = int(bias.shape[0])
    names = model.get("names")
    detect = _layer(model, 23)
    claims = {"the config's nc": yaml.get("nc"), "the model's nc": model.get("nc"),
              "the Detect head's nc": detect.get("nc") if detect is not None else None,
              "the number of class names": len(names) if isinstance(names, (dict, list, tuple)) else None}
    wrong = {k: v for k, v in claims.items() if v is not None and v != num_classes}
    if wrong:
        raise UltralyticsCheckpointError(
            f"{path}: the class-output layer has {num_classes} classes but "
            + ", ".join(f"{k} is {v}" for k, v in wrong.items()))

    records = architecture_records(model)
    variant, reg_max = _variant_from_records(records, path)
    widths = class_branch_widths({k: a.shape for k, a in raw.items()})
    if widths is not None and widths[1] != max(widths[0], min(num_classes, 100)):
        # Ultralytics' own Detect always follows the rule; a file whose class branch has another
        # width (its modules built so) is read as the network it is: Variant.cls_hidden.
        variant["cls_hidden"] = widths[1]
    dfl = raw.get("model.23.dfl.conv.weight")
    if dfl is not None and dfl.shape[1:2] != (reg_max,):
        raise UltralyticsCheckpointError(f"{path}: the Detect record says reg_max={reg_max} but "
                                         f"model.23.dfl.conv.weight has shape {tuple(dfl.shape)}")

    float_dtypes = sorted({str(a.dtype) for a in raw.values() if a.dtype.kind == "f"})
    state_dict = {k: (a.astype(np.float32) if a.dtype.kind == "f" else a) for k, a in raw.items()}
    info = dict(
        path=path, preset=f"yolo11{shape_scale}", scale=shape_scale, num_classes=num_classes,
        class_names=_class_names(names, num_classes, path), weights_key=key,
        ultralytics_version=ckpt.get("version"), epoch=ckpt.get("epoch"), date=ckpt.get("date"),
        file_dtype=",".join(float_dtypes), variant=variant, reg_max=reg_max,
        imgsz=_train_imgsz(ckpt, model), architecture=records,
    )
    return state_dict, info


CLASS_HIDDEN_KEY = "model.23.cv3.0.0.1.conv.weight"  # the class branch's first 1x1: (c3, ch0, 1, 1)


def class_branch_widths(shapes: dict[str, tuple]) -> tuple[int, int] | None:
    """``(ch0, c3)`` of a YOLO11 state dict's Detect class branch, from its tensor shapes
    (``{key: shape}``): the stride-8 input width and the hidden width of the level-0 branch
    (``CLASS_HIDDEN_KEY``, OIHW). ``None`` when the key is missing or not 4-D. Ultralytics builds
    ``c3 = max(ch0, min(nc, 100))``; ``yolo11.Variant.cls_hidden`` records any other width."""
    shape = shapes.get(CLASS_HIDDEN_KEY)
    if shape is None or len(shape) != 4:
        return None
    return int(shape[1]), int(shape[0])


# Attributes of Ultralytics' module records that fix the architecture (see architecture_records).
_RECORD_ATTRS: dict[str, tuple[str, ...]] = {
    "SPPF": ("n", "add"), "Bottleneck": ("add",), "PSABlock": ("add",),
    "Attention": ("num_heads", "key_dim", "head_dim"), "Detect": ("nc", "reg_max", "legacy", "end2end"),
    "C3k2": ("c",), "C2PSA": ("c",),
}


def architecture_records(model: PickledObject) -> dict[str, dict]:
    """What the file records about its architecture: ``{path: {"class": name, ...}}`` for every
    Ultralytics module in the pickled model (``path`` as in state-dict keys, e.g. ``model.9.cv1``).

    Per class: ``Conv`` / ``DWConv``: ``act``, the class name of its pickled activation module
    (``SiLU``, ``Identity``, ...); ``SPPF``: ``n``, ``add`` (absent before 8.4) and ``k``, its
    max-pool's kernel size; ``Bottleneck`` / ``PSABlock``: ``add``; ``Attention``:
    ``num_heads``, ``key_dim``, ``head_dim``; ``Detect``: ``nc``, ``reg_max``, and ``legacy`` /
    ``end2end`` where the file has them; ``C3k2`` / ``C2PSA``: ``c`` (hidden width). The children
    of ``C3k2.m`` (``C3k`` or ``Bottleneck``) give its c3k flag and repeat count.
    """
    out: dict[str, dict] = {}

    def walk(module: PickledObject, prefix: str) -> None:
        for name, child in (module.get("_modules") or {}).items():
            if not isinstance(child, PickledObject):
                continue
            path = f"{prefix}{name}"
            if child.class_path.startswith("ultralytics.nn.modules."):
                rec: dict[str, Any] = {"class": child.class_name}
                for attr in _RECORD_ATTRS.get(child.class_name, ()):
                    if attr in child.state:
                        rec[attr] = child.state[attr]
                children = child.get("_modules") or {}
                if child.class_name in ("Conv", "DWConv"):
                    act = children.get("act")
                    rec["act"] = act.class_name if isinstance(act, PickledObject) else repr(act)
                if child.class_name == "SPPF" and isinstance(children.get("m"), PickledObject):
                    k = children["m"].get("kernel_size")
                    rec["k"] = k[0] if isinstance(k, tuple) and len(set(k)) == 1 else k
                out[path] = rec
            walk(child, path + ".")

    walk(model, "")
    return out


def _variant_from_records(records: dict[str, dict], path: str) -> tuple[dict, int]:
    """The YOLO11 variant (``yolo11.Variant`` fields) and reg_max the records describe."""
    sppf = records.get("model.9")
    if sppf is None or sppf["class"] != "SPPF":
        raise UltralyticsCheckpointError(f"{path}: layer model.9 is {sppf and sppf['class']}, not YOLO11's SPPF")
    act = records.get("model.9.cv1", {}).get("act")
    if act not in ("SiLU", "Identity"):
        raise UltralyticsCheckpointError(f"{path}: record model.9.cv1.act is {act}; this network has a SiLU or no "
                                         f"activation (Identity) there")
    n, add = sppf.get("n", 3), sppf.get("add", False)
    if not (_is_int(n) and n >= 1) or not isinstance(add, bool):
        raise UltralyticsCheckpointError(f"{path}: record model.9 (SPPF) has n={n!r}, add={add!r}")
    if sppf.get("k", 5) != 5:
        raise UltralyticsCheckpointError(f"{path}: record model.9.m (SPPF max-pool) has kernel_size {sppf.get('k')}; "
                                         f"YOLO11 pools with 5")
    detect = records.get("model.23")
    if detect is None or detect["class"] != "Detect":
        raise UltralyticsCheckpointError(f"{path}: layer model.23 is {detect and detect['class']}, not a Detect head")
    reg_max = detect.get("reg_max", 16)
    if not (_is_int(reg_max) and reg_max >= 2):
        raise UltralyticsCheckpointError(f"{path}: record model.23.reg_max is {reg_max!r}; this network needs "
                                         f"reg_max >= 2 (DFL)")
    return {"sppf_act": act == "SiLU", "sppf_n": n, "sppf_shortcut": add}, reg_max


def _train_imgsz(ckpt: dict, model: PickledObject) -> int | list | None:
    """The training image size (``train_args.imgsz``, else the model's ``args.imgsz``), or None."""
    for holder in (ckpt.get("train_args"), model.get("args")):
        if isinstance(holder, PickledObject):
            holder = holder.state
        if isinstance(holder, dict) and holder.get("imgsz") is not None:
            v = holder["imgsz"]
            if _is_int(v) or (isinstance(v, (list, tuple)) and all(_is_int(x) for x in v)):
                return v if _is_int(v) else list(v)
    return None


def _layer(model: PickledObject, index: int) -> PickledObject | None:
    seq = (model.get("_modules") or {}).get("model")
    if not isinstance(seq, PickledObject):
        return None
    layer = (seq.get("_modules") or {}).get(str(index))
    return layer if isinstance(layer, PickledObject) else None


def _check_is_yolo11(path: str, yaml: dict, raw: dict[str, np.ndarray], classes: set[str]) -> None:
    """Tell YOLO11 from the detectors that pickle the same classes (YOLO26, v3/v5u/v8 variants)."""
    yaml_file = os.path.basename(str(yaml.get("yaml_file", "")))
    if (yaml.get("end2end") or yaml.get("reg_max") == 1 or re.match(r"yolo26", yaml_file)
            or any(".one2one_" in k for k in raw)):
        raise UltralyticsCheckpointError(
            f"{path}: this is an end-to-end model such as YOLO26 (one-to-one head, config "
            f"end2end={yaml.get('end2end')}, reg_max={yaml.get('reg_max', 16)}, file {yaml_file or '?'}); "
            f"{_NOT_A_CHECKPOINT}")
    family = re.match(r"yolo(?:v)?(\d+)", yaml_file)
    if family and family.group(1) != "11":
        raise UltralyticsCheckpointError(f"{path}: this model was built from {yaml_file} (YOLO{family.group(1)}), "
                                         f"not YOLO11; {_NOT_A_CHECKPOINT}")
    blocks = {c.rsplit(".", 1)[1] for c in classes if c.startswith("ultralytics.nn.modules.")}
    if not {"C3k2", "C2PSA"} <= blocks:
        raise UltralyticsCheckpointError(
            f"{path}: this is another YOLO version: YOLO11 has C3k2 and C2PSA blocks, this model has "
            f"{', '.join(sorted(blocks)) or 'no Ultralytics blocks'}; {_NOT_A_CHECKPOINT}")
