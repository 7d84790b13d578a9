"""Class names that must agree: a model's classes against a dataset's, by name.

When a model with class names (a ``.pt``, a run, a converted ``.safetensors``) meets data with
class names, :func:`match_class_names` decides how label ``i`` of the data relates to output
``j`` of the model:

* **identical**: the same names in the same order; label ``i`` is output ``i``.
* **by name**: every data name is among the model's names (compared after :func:`normalize_name`:
  case, surrounding spaces, and ``_`` / ``-`` against a space); label ``i`` is the output of
  the same name. Evaluation scores only those outputs.
* **otherwise**: :class:`ClassNameMismatch`, listing both sets and the names not found, unless the
  caller asks for ``class_map="position"`` (label ``i`` is output ``i`` whatever the names) or
  gives explicit pairs (``"data name=model name,..."``, :func:`parse_class_map`).

**Classes without boxes.** A COCO json or a ``data.yaml`` often lists classes that no box uses
(labelme's VOC export: ``_background_`` and 15 of its 20 classes). When the caller passes the
data's boxes per class (``data_box_counts``, :func:`class_box_counts`), a data class with no box
needs no model counterpart: it is left unscored (``ClassMatch.unscored``) and
:meth:`ClassMatch.describe` names it, with the count. This applies whenever names are compared
(by name or with explicit pairs), also to an empty class whose name the model has: only the
classes with boxes are scored. A data class with boxes that the model lacks still raises
:class:`ClassNameMismatch`. Without ``data_box_counts`` every data class counts as used.

For fine-tuning onto another class list, :func:`keep_class_rows` copies the rows of the
checkpoint's class layer (the last 1x1 convolution of each level's class branch: NNX
``model/23/cv3/<level>/2``, Ultralytics ``model.23.cv3.<level>.2.*``; the notebook head's
``head.heads.<level>.cls_pred``) for the classes whose names the two lists share.

Pure functions over names and arrays; no model code runs here except in :func:`keep_class_rows`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

IDENTICAL, BY_NAME, BY_POSITION, EXPLICIT, UNNAMED = "identical", "by_name", "by_position", "explicit", "unnamed"


class ClassNameMismatch(ValueError):
    """The data's class names are not among the model's (the message lists both)."""


def normalize_name(name: str) -> str:
    """The form names are compared in: lower case, ``_`` and ``-`` as spaces, spaces collapsed."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


@dataclasses.dataclass(frozen=True)
class ClassMatch:
    """How the data's labels map onto the model's outputs.

    Attributes:
      kind: ``"identical"``, ``"by_name"``, ``"by_position"``, ``"explicit"`` or ``"unnamed"``
        (one side has no names: by position, nothing to compare).
      data_to_model: int ``(K,)``: data label ``i`` is model output ``data_to_model[i]``; ``-1``
        for an unscored data class whose name the model lacks.
      data_names, model_names: the two lists (``None`` where a side has none).
      unscored: the data classes (indices ``i``) left unscored because the data has no box of
        them (see the module docstring); ascending.
    """

    kind: str
    data_to_model: tuple[int, ...]
    data_names: Optional[tuple[str, ...]]
    model_names: Optional[tuple[str, ...]]
    unscored: tuple[int, ...] = ()

    @property
    def is_identity(self) -> bool:
        return not self.unscored and all(i == j for i, j in enumerate(self.data_to_model))

    @property
    def scored_classes(self) -> list[int]:
        """The model outputs the data's scored labels map to, in the data's label order."""
        skip = set(self.unscored)
        return [j for i, j in enumerate(self.data_to_model) if i not in skip]

    @property
    def unscored_names(self) -> list[str]:
        """The names (or label numbers) of the unscored data classes."""
        return [self._dname(i) for i in self.unscored]

    def describe(self) -> str:
        """One line for the log: what was matched and how, and which data classes are unscored."""
        k = len(self.data_to_model)
        if self.kind == IDENTICAL:
            return f"classes: the data's {k} class names are the model's, in the same order"
        if self.kind == UNNAMED:
            side = "the data" if self.data_names is None else "the model"
            return f"classes: {side} has no class names; data label i is scored as model class i ({k} classes)"
        skip = set(self.unscored)
        scored = [(i, j) for i, j in enumerate(self.data_to_model) if i not in skip]
        pairs = ", ".join(f"{self._dname(i)}->{self._mname(j)} ({j})" for i, j in scored)
        how = {BY_NAME: "mapped by name", BY_POSITION: "paired by position (--class-map position)",
               EXPLICIT: "mapped as given (--class-map)"}[self.kind]
        total = len(self.model_names) if self.model_names is not None else k
        with_boxes = " with boxes" if self.unscored else ""
        line = (f"classes: {len(scored)} data classes{with_boxes} {how} onto the model's {total}, "
                f"only those scored: {pairs}")
        if self.unscored:
            line += (f"; {len(self.unscored)} of the data's {k} classes have no box in this data and are left "
                     f"unscored: {', '.join(self.unscored_names)}")
        return line

    def _dname(self, i: int) -> str:
        return self.data_names[i] if self.data_names is not None else str(i)

    def _mname(self, j: int) -> str:
        return self.model_names[j] if self.model_names is not None and j < len(self.model_names) else str(j)


def parse_class_map(spec: Optional[str]) -> Optional[object]:
    """``--class-map``: ``None``; ``"position"``; or ``"data name=model name,..."`` pairs (a dict)."""
    if spec is None or spec == "":
        return None
    if spec.strip().lower() == "position":
        return "position"
    pairs = {}
    for item in spec.split(","):
        if "=" not in item:
            raise ValueError(f"--class-map {spec!r}: expected 'position' or 'data name=model name,...' pairs, "
                             f"got {item!r}")
        d, m = (s.strip() for s in item.split("=", 1))
        pairs[d] = m
    return pairs


def _index(names: Sequence[str], side: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for j, n in enumerate(names):
        key = normalize_name(n)
        if key in out:
            raise ClassNameMismatch(f"{side} has the class name {n!r} twice (classes {out[key]} and {j})")
        out[key] = j
    return out


def class_box_counts(source, num_classes: int) -> Optional[np.ndarray]:
    """Boxes per data class, int64 ``(num_classes,)``, of a ``RecordSource`` or a list of examples
    (their ``labels``; nothing is decoded). ``None`` for a source that cannot be counted up
    front (a stream).

    Raises:
      ValueError: a label outside ``0 .. num_classes - 1`` (naming the record).
    """
    records = getattr(source, "records", None)
    if records is None:
        if not isinstance(source, (list, tuple)):
            return None
        records = source
    counts = np.zeros(int(num_classes), np.int64)
    for r in records:
        labels = np.asarray(r.labels).reshape(-1).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{getattr(r, 'source_id', '?')}: labels {np.unique(labels).tolist()} outside "
                             f"0..{num_classes - 1}")
        counts += np.bincount(labels, minlength=num_classes)
    return counts


def match_class_names(model_names: Optional[Sequence[str]], data_names: Optional[Sequence[str]], *,
                      num_model_classes: Optional[int] = None, class_map=None,
                      data_box_counts: Optional[Sequence[int]] = None) -> ClassMatch:
    """Decide how the data's labels map onto the model's outputs (see the module docstring).

    Args:
      model_names: the model's class names, or ``None``.
      data_names: the data's class names (label ``i`` is ``data_names[i]``), or ``None``.
      num_model_classes: the model's output count (default ``len(model_names)``).
      class_map: ``None`` (names decide), ``"position"``, or a dict ``{data name: model name}``
        (:func:`parse_class_map`); data names it leaves out are matched by name.
      data_box_counts: int ``(len(data_names),)``: boxes of each data class in the data being
        scored (:func:`class_box_counts`), or ``None`` (every class counts as used). Where names
        are compared, a class with 0 boxes needs no model counterpart and is left unscored.

    Raises:
      ClassNameMismatch: a data name with boxes is not among the model's (both lists in the
        message), an explicit pair names a model class that does not exist, or a data label has
        no model output to pair with by position.
      ValueError: ``data_box_counts`` is not one count per data class.
    """
    n_model = num_model_classes if num_model_classes is not None else (len(model_names) if model_names else None)
    mt = tuple(str(n) for n in model_names) if model_names is not None else None
    dt = tuple(str(n) for n in data_names) if data_names is not None else None
    if class_map == "position" or mt is None or dt is None:
        k = len(dt) if dt is not None else (n_model or 0)
        if n_model is not None and k > n_model:
            raise ClassNameMismatch(f"the data has {k} classes but the model only {n_model}: they cannot be paired "
                                    f"by position (data: {list(dt) if dt else k}; model: {list(mt) if mt else n_model})")
        kind = BY_POSITION if class_map == "position" and mt is not None and dt is not None else UNNAMED
        if kind == BY_POSITION and dt == mt[:len(dt)] and len(dt) == len(mt):
            kind = IDENTICAL
        return ClassMatch(kind, tuple(range(k)), dt, mt)
    if dt == mt:
        return ClassMatch(IDENTICAL, tuple(range(len(dt))), dt, mt)
    if data_box_counts is not None:
        counts = [int(c) for c in np.asarray(data_box_counts).reshape(-1)]
        if len(counts) != len(dt):
            raise ValueError(f"data_box_counts has {len(counts)} counts for {len(dt)} data classes")
    else:
        counts = [1] * len(dt)  # unknown: every class counts as used
    model_index = _index(mt, "the model")
    _index(dt, "the data")
    explicit = {normalize_name(k): v for k, v in (class_map or {}).items()}
    unknown = [k for k in (class_map or {}) if normalize_name(k) not in {normalize_name(d) for d in dt}]
    if unknown:
        raise ClassNameMismatch(f"--class-map names data classes {unknown} that the data does not have "
                                f"(data classes: {list(dt)})")
    mapping, missing, unscored = [], [], []
    for i, name in enumerate(dt):
        pair = explicit.get(normalize_name(name))
        target = name if pair is None else pair
        j = model_index.get(normalize_name(target))
        if counts[i] == 0:  # no box of it here: it needs no counterpart, and is not scored
            unscored.append(i)
            if j is None and pair is not None:  # but a pair given by hand must name a model class
                missing.append(f"{name}={target}")
        elif j is None:
            missing.append(name if pair is None else f"{name}={target}")
        mapping.append(-1 if j is None else j)
    if missing:
        with_boxes = [d for d, c in zip(dt, counts) if c > 0] if data_box_counts is not None else None
        raise ClassNameMismatch(
            f"the data's class names are not all among the model's: {missing} not found.\n"
            f"  data ({len(dt)}): {list(dt)}\n"
            + (f"  data classes with boxes ({len(with_boxes)}): {with_boxes} (the others need no counterpart)\n"
               if with_boxes is not None and len(with_boxes) < len(dt) else "")
            + f"  model ({len(mt)}): {list(mt)}\n"
            "Pass --class-map position to score data label i as model class i anyway, or "
            "--class-map 'data name=model name,...' to pair them by hand.")
    skip = set(unscored)
    scored = [j for i, j in enumerate(mapping) if i not in skip]
    if len(set(scored)) != len(scored):
        raise ClassNameMismatch("two data classes map onto one model class: "
                                f"{ {d: j for i, (d, j) in enumerate(zip(dt, mapping)) if i not in skip} }")
    kind = EXPLICIT if class_map else BY_NAME
    return ClassMatch(kind, tuple(int(j) for j in mapping), dt, mt, tuple(unscored))


def remap_labels(labels: np.ndarray, match: ClassMatch) -> np.ndarray:
    """Data labels -> model class ids (int32, same shape).

    Raises:
      ValueError: a label outside the data's classes, or of a class left unscored (the match was
        made with box counts that did not count this box).
    """
    table = np.asarray(match.data_to_model, np.int32)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"labels outside 0..{len(table) - 1}: {np.unique(labels)}")
    if not labels.size:
        return labels.astype(np.int32)
    stray = sorted(set(np.unique(labels).tolist()) & set(match.unscored))
    if stray:
        raise ValueError(f"boxes of the data classes {[match._dname(i) for i in stray]}, which were left unscored "
                         "as having no box")
    return table[labels.astype(np.int64)]


def remap_source(source, match: ClassMatch):
    """``source`` (a ``RecordSource`` or a list of examples) with every label mapped to the model's
    class ids; the same object when the map is the identity. Nothing is decoded."""
    if match.is_identity:
        return source
    from yolo11_jax.data.records import RecordSource

    if isinstance(source, RecordSource):
        records = [dataclasses.replace(r, labels=remap_labels(r.labels, match)) for r in source.records]
        return RecordSource(records, img_size=source.img_size, letterbox=source.letterbox, name=source.name)
    return [dataclasses.replace(ex, labels=remap_labels(ex.labels, match)) for ex in source]


# --------------------------------------------------------------------------- fine-tuning


@dataclasses.dataclass(frozen=True)
class KeptRows:
    """What :func:`keep_class_rows` did.

    Attributes:
      pairs: ``(new class, checkpoint class)`` index pairs whose rows were copied.
      layers: the class layers (state-dict prefixes) written.
      skipped: why a layer was left as it was (its input width differs, ...).
    """

    pairs: tuple[tuple[int, int], ...]
    layers: tuple[str, ...]
    skipped: tuple[str, ...]

    def summary(self, new_names: Sequence[str]) -> str:
        if not self.pairs:
            return "class rows: no class name is shared with the checkpoint; the class layers stay initialised"
        if not self.layers:
            return (f"class rows: {len(self.pairs)} class names are shared with the checkpoint, but no class layer "
                    f"could keep them (they stay initialised): {'; '.join(self.skipped)}")
        names = ", ".join(new_names[i] for i, _ in self.pairs)
        text = (f"class rows: kept the checkpoint's rows of {len(self.pairs)} shared classes ({names}) in "
                f"{len(self.layers)} class layers")
        return text + (f"; not kept: {'; '.join(self.skipped)}" if self.skipped else "")


def shared_class_pairs(new_names: Sequence[str], checkpoint_names: Sequence[str]) -> list[tuple[int, int]]:
    """``(new class, checkpoint class)`` for every new class whose name the checkpoint has."""
    ckpt = _index(checkpoint_names, "the checkpoint")
    return [(i, ckpt[normalize_name(n)]) for i, n in enumerate(new_names) if normalize_name(n) in ckpt]


def class_rows_state_dict(target: Mapping[str, np.ndarray], checkpoint: Mapping[str, np.ndarray],
                          prefixes: Sequence[str], pairs: Sequence[tuple[int, int]]
                          ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Copy class rows between two torch-layout state dicts (pure, on arrays).

    For each ``prefix`` (e.g. ``"model.23.cv3.0.2."``): ``weight`` is ``(C, C_in, 1, 1)`` (OIHW),
    ``bias`` is ``(C,)``; row ``j`` of the checkpoint goes to row ``i`` of the target for each
    ``(i, j)`` in ``pairs``. Returns ``(the updated tensors, prefixes written, reasons for the
    prefixes skipped)``; a layer whose input width differs (its branch was re-initialised) is
    skipped, as its rows would not mean the same thing.
    """
    out, written, skipped = {}, [], []
    for p in prefixes:
        w_t, w_c = target.get(p + "weight"), checkpoint.get(p + "weight")
        if w_t is None or w_c is None:
            skipped.append(f"{p}weight missing")
            continue
        if w_t.shape[1:] != w_c.shape[1:]:
            skipped.append(f"{p[:-1]} takes {w_c.shape[1]} inputs in the checkpoint, {w_t.shape[1]} here "
                           "(its branch was re-initialised)")
            continue
        new_w = np.array(w_t, copy=True)
        for i, j in pairs:
            new_w[i] = w_c[j]
        out[p + "weight"] = new_w
        if p + "bias" in target and p + "bias" in checkpoint:
            new_b = np.array(target[p + "bias"], copy=True)
            for i, j in pairs:
                new_b[i] = checkpoint[p + "bias"][j]
            out[p + "bias"] = new_b
        written.append(p)
    return out, written, skipped


def keep_class_rows(model, checkpoint_state_dict: Mapping[str, object], checkpoint_names: Sequence[str],
                    new_names: Sequence[str]) -> KeptRows:
    """After ``convert.load_pretrained`` re-initialised the class layers (a new class list), copy
    back the checkpoint's rows of the classes whose names the two lists share, in place.

    ``model`` is a ``YOLO11`` or the notebook's ``YOLOv11`` (its ``class_output_prefixes()`` name
    the class layers); the checkpoint is a torch-layout state dict (``ultralytics_pt`` /
    ``load_safetensors``)."""
    from yolo11_jax import convert

    pairs = shared_class_pairs(new_names, checkpoint_names)
    target = convert.to_state_dict(model)
    ckpt = {k: np.asarray(getattr(v, "numpy", lambda: v)()) for k, v in checkpoint_state_dict.items()
            if any(k.startswith(p) for p in model.class_output_prefixes())}
    updates, written, skipped = class_rows_state_dict(target, ckpt, model.class_output_prefixes(), pairs)
    if pairs and updates:
        convert.load_state_dict(model, {**target, **updates})
    return KeptRows(tuple(pairs), tuple(written) if pairs else (), tuple(skipped))
