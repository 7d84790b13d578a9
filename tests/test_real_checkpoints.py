"""Real Ultralytics checkpoints, as users have them (``tests/real_files.py``: files shipped inside
other projects' wheels, pinned by sha256, never committed, read only by the restricted reader).

* Every YOLO11 detector in the set imports, and its raw outputs on a photo equal those of the
  PyTorch reference built with the architecture variant the file records and loaded with the
  file's own tensors: ``rel_err <= 1e-4`` per level and output (``tests.helpers.rel_err``:
  ``max|a - b| / max(1, max|b|)``, float32 on both sides).
* The reference built with the other SPPF variant misses by far more (> 1e-2): the parity test
  can tell the variants apart.
* The pickle names exactly the globals pinned here (the restricted reader's list was built from
  them), and files of other kinds are refused with a message naming the kind.
* A converted ``.safetensors`` carries the variant: reloading it builds the same network.

The tests that build networks are marked ``slow`` (the fast tier leaves them out; CI runs
everything). Without the files these tests skip, saying how to fetch them (``python -m tests.real_files
fetch``); under ``CI=true`` they fail instead.
"""

import json

import numpy as np
import pytest
import torch
from flax import nnx

from reference_torch.yolo11 import YOLO11 as RefYOLO11
from tests import real_files
from tests.helpers import nchw, rel_err
from tests.real_files import real_file
from tests.test_ultralytics_import import REAL_YOLO11N_GLOBALS
from yolo11_jax import convert, inference
from yolo11_jax.ultralytics_pt import (ALLOWED_GLOBALS, UltralyticsCheckpointError, load_pickle, pickle_globals,
                                       read_ultralytics)
from yolo11_jax.yolo11 import DEFAULT_VARIANT, Variant

TOLERANCE = 1e-4  # rel_err of every raw output (class logits, DFL logits) per level
WRONG_VARIANT_MIN_ERROR = 1e-2

# What each detector records (read once with the restricted reader; the files are pinned by
# sha256, so these are facts of the files): writer version, scale, classes, train imgsz, SPPF.cv1 act.
EXPECTED = {
    "yolo11n_official": dict(version="8.2.100", scale="n", nc=80, imgsz=640, sppf_act=True),
    "yolo11n_8.3_emotions": dict(version="8.3.86", scale="n", nc=8, imgsz=320, sppf_act=True),
    "yolo11n_8.4_irball": dict(version="8.4.60", scale="n", nc=1, imgsz=512, sppf_act=False),
    "yolo11s_8.4_uitag": dict(version="8.4.30", scale="s", nc=9, imgsz=640, sppf_act=False),
}

# The pickle globals of every YOLO11 detector in the set: all four name the same ones, the set the
# stand-ins of test_ultralytics_import are written with.
DETECTOR_GLOBALS = REAL_YOLO11N_GLOBALS

IMAGE_HW = (256, 320)  # network input for the parity tests: small and not square


def photo(hw=IMAGE_HW) -> np.ndarray:
    """(1, H, W, 3) float32 in [0, 1]: the first real photo of ``real_files.PHOTOS`` resized to
    ``hw``, or, while the set has none, a deterministic synthetic scene (smooth gradients,
    rectangles and noise: nothing constant, so every layer is exercised)."""
    h, w = hw
    if real_files.PHOTOS:
        import cv2

        bgr = cv2.imread(str(real_file(real_files.PHOTOS[0].name)), cv2.IMREAD_COLOR)
        assert bgr is not None
        rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        return (rgb.astype(np.float32) / 255.0)[None]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 13.0)], -1)
    for _ in range(12):
        y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y0:y0 + rng.integers(10, h // 2), x0:x0 + rng.integers(10, w // 2)] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)[None]


def reference_from_file(path, variant: Variant):
    """The torch reference with ``variant``, holding the file's tensors (strict load), in eval mode."""
    state_dict, info = read_ultralytics(path)
    ref = RefYOLO11(info["scale"], info["num_classes"], info["reg_max"], sppf_act=variant.sppf_act,
                    sppf_n=variant.sppf_n, sppf_shortcut=variant.sppf_shortcut)
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, strict=True)
    return ref.eval()


def raw_errors(model, ref, images) -> list[float]:
    """rel_err of (class logits, box DFL logits) at each level: JAX model vs torch reference."""
    ours = model(images)
    with torch.no_grad():
        theirs = ref(nchw(images))
    errs = []
    for (cls_j, _, raw_j), (cls_t, _, raw_t) in zip(ours, theirs):
        errs.append(rel_err(np.asarray(cls_j), cls_t.permute(0, 2, 3, 1).numpy()))
        errs.append(rel_err(np.asarray(raw_j), raw_t.permute(0, 2, 3, 1).numpy()))
    return errs


@pytest.fixture(scope="module")
def loaded():
    """{name: (model, info)} of the detectors, loaded once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = convert.load_ultralytics(real_file(name))
        return cache[name]

    return get


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
@pytest.mark.parametrize("name", real_files.DETECTORS)
def test_detector_records_are_read(name, loaded):
    model, info = loaded(name)
    exp = EXPECTED[name]
    assert (info["ultralytics_version"], info["scale"], info["num_classes"], info["imgsz"]) == \
        (exp["version"], exp["scale"], exp["nc"], exp["imgsz"])
    assert model.variant == Variant(sppf_act=exp["sppf_act"])
    assert model.model[9].cv1.act is exp["sppf_act"]
    assert len(info["class_names"]) == exp["nc"] and info["reg_max"] == 16


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
@pytest.mark.parametrize("name", real_files.DETECTORS)
def test_detector_matches_the_reference_built_with_the_recorded_variant(name, loaded):
    model, info = loaded(name)
    ref = reference_from_file(real_file(name), model.variant)
    errs = raw_errors(model, ref, photo())
    assert max(errs) <= TOLERANCE, errs


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
@pytest.mark.parametrize("name", ["yolo11n_official", "yolo11n_8.4_irball"])
def test_the_other_sppf_variant_gives_a_large_error(name, loaded):
    """The parity test can fail: the same tensors in the reference with SPPF.cv1's activation
    flipped differ by far more than the tolerance."""
    model, _ = loaded(name)
    wrong = Variant(sppf_act=not model.variant.sppf_act)
    errs = raw_errors(model, reference_from_file(real_file(name), wrong), photo())
    assert max(errs) > WRONG_VARIANT_MIN_ERROR, errs


@pytest.mark.parametrize("name", real_files.DETECTORS)
def test_pickle_names_exactly_the_pinned_globals(name):
    import zipfile

    with zipfile.ZipFile(real_file(name)) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    names = set(pickle_globals(data))
    assert names == DETECTOR_GLOBALS
    assert names <= set(ALLOWED_GLOBALS)
    _, classes = load_pickle(real_file(name))  # the unpickler resolves what the scan found, no more
    assert classes == {f"{m}.{n}" for m, n in names}


@pytest.mark.parametrize("name", sorted(real_files.REFUSED))
def test_other_model_kinds_are_refused_naming_the_kind(name):
    with pytest.raises(UltralyticsCheckpointError) as e:
        convert.load_ultralytics(real_file(name))
    message = str(e.value)
    assert real_files.REFUSED[name] in message, message
    assert "only Ultralytics YOLO11 detection checkpoints" in message


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
def test_a_record_the_network_cannot_represent_is_refused_naming_it(loaded):
    model, info = loaded("yolo11n_8.4_irball")
    records = json.loads(json.dumps(info["architecture"]))
    convert.check_architecture(model, records)  # as read: fits
    records["model.9.cv1"]["act"] = "SiLU"  # the file would say SiLU where this network has none
    records["model.10.m.0.attn"]["num_heads"] = 4
    records["model.6.m.0"]["class"] = "Bottleneck"  # a C3k2 without its C3k
    with pytest.raises(UltralyticsCheckpointError) as e:
        convert.check_architecture(model, records, "f.pt")
    message = str(e.value)
    for record in ("model.9.cv1.act is SiLU", "model.10.m.0.attn.num_heads is 4", "record model.6.m.0 is a Bottleneck"):
        assert record in message, message
    assert "(3 problems)" in message


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
def test_converted_file_carries_the_variant(tmp_path, loaded):
    """convert writes the variant into the .safetensors metadata; reloading it (inference's
    loader, the fine-tuning builder) builds the same network, with the same outputs."""
    src = real_file("yolo11n_8.4_irball")
    out = tmp_path / "irball.safetensors"
    assert convert.main([str(src), "--out", str(out)]) == 0
    variant, where = convert.weights_variant(out)
    assert variant == Variant(sppf_act=False) and "metadata" in where
    reloaded = inference.load_model(weights=out)
    assert reloaded.model.variant == variant
    assert reloaded.config["origin"] == "ultralytics" and reloaded.config["imgsz"] == 512
    model, _ = loaded("yolo11n_8.4_irball")
    reloaded.model.eval()
    images = photo((128, 160))
    for a, b in zip(model(images), reloaded.model(images)):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    built, note = convert.build_for_init_weights("yolo11n", out, num_classes=3, rngs=nnx.Rngs(0))
    assert built.variant == variant and "sppf_act=False" in note
    built, note = convert.build_for_init_weights("yolo11n", real_file("yolo11n_official"), num_classes=3,
                                                 rngs=nnx.Rngs(0))
    assert built.variant == DEFAULT_VARIANT and note is None


@pytest.mark.slow  # loads real networks and runs them (10-30 s each on 2 CPU cores)
@pytest.mark.parametrize("name", ["yolo11n_official", "yolo11s_8.4_uitag"])
def test_fine_tuning_starts_from_the_file(name, loaded):
    """``--init-weights``: the model is built with the file's variant, every tensor outside the
    class branch loads (the report says what was re-initialised), and the box branch then
    computes exactly what the file's own network computes."""
    model, info = loaded(name)
    path = real_file(name)
    built, note = convert.build_for_init_weights(info["preset"], path, num_classes=3, rngs=nnx.Rngs(0))
    assert built.variant == model.variant
    assert (note is None) == (model.variant == DEFAULT_VARIANT)
    state_dict, _ = read_ultralytics(path)
    report = convert.load_pretrained(built, state_dict)
    assert report.checkpoint_num_classes == info["num_classes"] and report.model_num_classes == 3
    assert report.reinitialized and all(k.startswith("model.23.cv3.") for k in report.reinitialized)
    assert len(report.loaded) + len(report.reinitialized) == len(state_dict)
    assert "re-initialised" in report.summary()
    built.eval()
    images = photo((128, 160))
    for (_, _, raw_file), (_, _, raw_tuned) in zip(model(images), built(images)):
        np.testing.assert_array_equal(np.asarray(raw_file), np.asarray(raw_tuned))


@pytest.mark.slow  # loads a real network (10-30 s on 2 CPU cores)
def test_keep_class_rows_from_the_official_yolo11n_keeps_its_class_branch_and_two_rows():
    """``train --init-weights yolo11n.pt --keep-class-rows`` onto person, car and a name COCO does
    not have: the class branch is built 80 wide (the file's; Ultralytics' rule gives 64 at 3
    classes), its hidden layers are the file's, and the class layer's person and car rows are the
    file's rows 0 and 2; everything but the three class layers comes from the file."""
    from yolo11_jax.train import load_initial_weights

    path = real_file("yolo11n_official")
    names = ["person", "car", "not-a-coco-name"]
    model, note = convert.build_for_init_weights("yolo11n", path, num_classes=3, keep_class_rows=True,
                                                 class_names=names, rngs=nnx.Rngs(0))
    assert model.variant == Variant(cls_hidden=80) and "class branch kept 80 wide" in note and "instead of 64" in note
    lines = load_initial_weights(model, path, data_names=names, keep_class_rows=True)
    assert "re-initialised (class count differs) 6 tensors in 3 layers" in "\n".join(lines), lines
    assert lines[-1].startswith("class rows: kept the checkpoint's rows of 2 shared classes (person, car) in 3 class "
                                "layers"), lines[-1]
    state_dict, info = read_ultralytics(path)
    assert info["class_names"][0] == "person" and info["class_names"][2] == "car"
    after = convert.to_state_dict(model)
    last = tuple(f"model.23.cv3.{i}.2." for i in range(3))
    hidden = [k for k in after if k.startswith("model.23.cv3.") and not k.startswith(last)]
    assert len(hidden) == 3 * 4 * (1 + 5)    # per level 4 Conv: kernel and 5 BatchNorm leaves each
    for k in after:
        if not k.startswith(last):
            np.testing.assert_array_equal(after[k], state_dict[k].astype(after[k].dtype), err_msg=k)
    for p in last:
        assert after[p + "weight"].shape == (3, 80, 1, 1)
        for i, j in ((0, 0), (1, 2)):
            np.testing.assert_array_equal(after[p + "weight"][i], state_dict[p + "weight"][j])
            np.testing.assert_array_equal(after[p + "bias"][i], state_dict[p + "bias"][j])
        assert not np.array_equal(after[p + "weight"][2], state_dict[p + "weight"][1])
