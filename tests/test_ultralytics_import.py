"""Reading Ultralytics ``.pt`` checkpoints without Ultralytics, without torch, without running
code from the file (``yolo11_jax.ultralytics_pt``, ``convert.load_ultralytics``, the convert CLI).

The checkpoints are written here: the reference network's modules get stand-in classes that
live under Ultralytics' module paths (``ultralytics.nn.modules.block.C3k2``, ...; registered in
``sys.modules`` only while ``torch.save`` runs), the model is converted to FP16 and saved in the
two layouts Ultralytics writes. ``test_stand_in_checkpoint_names_the_globals_of_a_real_one``
checks that the pickle names exactly the globals of real yolo11n files (those of
``tests/test_real_checkpoints.py``, written by Ultralytics 8.2.100 to 8.4.60). The architecture
variants no real file in the set exercises (SPPF's ``n`` and ``add``, a legacy Detect head) are
covered here with these synthetic stand-ins.
"""

import builtins
import contextlib
import io
import json
import os
import pathlib
import pickle
import pickletools
import re
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from reference_torch import yolo11 as Ry
from yolo11_jax import convert
from yolo11_jax.ultralytics_pt import ALLOWED_GLOBALS, UltralyticsCheckpointError, load_pickle, read_ultralytics
from yolo11_jax.yolo11 import Variant
from tests.helpers import ROOT, rel_err, subprocess_env

NAMES = ["cat", "dog", "bird", "fish", "horse"]
BLOCK, CONV, HEAD, TASKS = ("ultralytics.nn.modules.block", "ultralytics.nn.modules.conv",
                            "ultralytics.nn.modules.head", "ultralytics.nn.tasks")
STAND_INS = {  # reference class -> where Ultralytics defines its namesake
    Ry.Conv: CONV, Ry.DWConv: CONV, Ry.Concat: CONV,
    Ry.Bottleneck: BLOCK, Ry.C3k: BLOCK, Ry.C3k2: BLOCK, Ry.SPPF: BLOCK, Ry.C2PSA: BLOCK,
    Ry.PSABlock: BLOCK, Ry.Attention: BLOCK, Ry.DFL: BLOCK, Ry.Detect: HEAD,
}
# (module, name) of every global in a yolo11n checkpoint written by Ultralytics 8.2 to 8.4
# (torch.Size: the Detect head's ``shape``, set by a forward pass).
REAL_YOLO11N_GLOBALS = {
    ("__builtin__", "set"), ("collections", "OrderedDict"), ("torch", "Size"),
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    *(("torch.nn.modules." + m, n) for m, n in [
        ("activation", "SiLU"), ("batchnorm", "BatchNorm2d"), ("container", "ModuleList"),
        ("container", "Sequential"), ("conv", "Conv2d"), ("linear", "Identity"), ("pooling", "MaxPool2d"),
        ("upsampling", "Upsample")]),
    (TASKS, "DetectionModel"), (CONV, "Conv"), (CONV, "DWConv"), (CONV, "Concat"),
    *((BLOCK, n) for n in ["C3k2", "C3k", "Bottleneck", "SPPF", "C2PSA", "PSABlock", "Attention", "DFL"]),
    (HEAD, "Detect"),
}


@contextlib.contextmanager
def ultralytics_stand_ins():
    """``sys.modules`` entries for Ultralytics' module paths holding stand-in classes; yields
    ``{class name: class}``. Everything is removed again on exit."""
    names = ["ultralytics", "ultralytics.nn", "ultralytics.nn.modules", BLOCK, CONV, HEAD, TASKS, "ultralytics.utils"]
    modules = {n: types.ModuleType(n) for n in names}
    classes = {}

    def add(module, name, bases, **attrs):
        cls = type(name, bases, {"__module__": module, "__qualname__": name, **attrs})
        setattr(modules[module], name, cls)
        classes[name] = cls

    for ref_cls, module in STAND_INS.items():
        add(module, ref_cls.__name__, (ref_cls,))
    for name in ["DetectionModel", "SegmentationModel", "ClassificationModel"]:
        add(TASKS, name, (nn.Module,))
    for name in ["C2f", "A2C2f"]:
        add(BLOCK, name, (Ry.C3k2,))
    for name in ["Pose", "OBB", "v10Detect"]:
        add(HEAD, name, (Ry.Detect,))
    add("ultralytics.utils", "IterableSimpleNamespace", (types.SimpleNamespace,))
    assert not any(n in sys.modules for n in names), "a real ultralytics package is imported"
    sys.modules.update(modules)
    try:
        yield classes
    finally:
        for n in names:
            sys.modules.pop(n, None)


def stand_in_model(classes, scale="n", nc=len(NAMES), model_class="DetectionModel", seed=0, **variant):
    """An FP16 object graph like an Ultralytics ``DetectionModel``, and the reference holding
    the same (float32) weights. ``variant``: ``sppf_act`` / ``sppf_n`` / ``sppf_shortcut`` of the
    reference's SPPF."""
    torch.manual_seed(seed)
    ref = Ry.YOLO11(scale, nc, **variant)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(17)
    dm = classes[model_class]()
    dm.model = ref.model
    shared_silu = nn.SiLU()  # Ultralytics' Conv.default_act: one instance for every Conv
    for m in dm.model.modules():
        if type(m) in STAND_INS:
            m.__class__ = classes[type(m).__name__]
        if isinstance(m, Ry.Conv) and isinstance(m.act, nn.SiLU):
            m.act = shared_silu
    for i, layer in enumerate(dm.model):
        layer.type = f"{type(layer).__module__}.{type(layer).__name__}"
        layer.np = sum(p.numel() for p in layer.parameters())
    dm.yaml = {"nc": nc, "scales": {k: list(v) for k, v in Ry.SCALES.items()}, "backbone": Ry.YAML_ROWS[:11],
               "head": Ry.YAML_ROWS[11:], "scale": scale, "yaml_file": f"yolo11{scale}.yaml", "channels": 3}
    dm.save = [4, 6, 10, 13, 16, 19, 22]
    dm.names = dict(enumerate(NAMES[:nc])) if nc <= len(NAMES) else {i: str(i) for i in range(nc)}
    dm.nc = nc
    dm.inplace = True
    dm.stride = torch.tensor([8.0, 16.0, 32.0])
    dm.model[-1].shape = torch.Size((1, 144, 8400))  # what a forward pass leaves in a real Detect head
    dm.half()
    reference = Ry.YOLO11(scale, nc, **variant)
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in dm.state_dict().items()})
    return dm, reference


def released(dm, version="8.3.0"):
    """Layout of released weights (after Ultralytics' strip_optimizer): 'model' holds the network."""
    return {"date": "2024-09-30T00:00:00", "version": version, "license": "AGPL-3.0", "docs": "https://docs",
            "epoch": -1, "best_fitness": None, "model": dm, "ema": None, "updates": None, "optimizer": None,
            "train_args": {"imgsz": 640, "epochs": 100}, "train_metrics": {"metrics/mAP50(B)": 0.5},
            "train_results": {"epoch": [1, 2]}}


def training(dm, classes, version="8.4.190"):
    """Layout of last.pt / best.pt during training: 'model' is None and 'ema' holds the network."""
    dm.args = classes["IterableSimpleNamespace"](imgsz=640, epochs=100, model="yolo11n.pt")
    return {"epoch": 3, "best_fitness": 0.25, "stopper": {"best_fitness": 0.25, "best_epoch": 2}, "model": None,
            "ema": dm, "updates": 120, "modelopt": None,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(4, dtype=torch.float16)}},
                          "param_groups": [{"lr": 0.01, "momentum": 0.937, "params": [0]}]},
            "scaler": {"scale": 65536.0}, "train_args": {"imgsz": 640}, "train_metrics": {"fitness": 0.25},
            "train_results": {}, "date": "2025-01-01T00:00:00+00:00", "version": version,
            "git": {"branch": "main"}, "license": "AGPL-3.0", "docs": "https://docs"}


def write(path, obj, **save_kwargs):
    torch.save(obj, path, **save_kwargs)
    return path


def pickled_globals(path):
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return {tuple(arg.split(" ", 1)) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def assert_equals_reference(model, reference):
    ours, theirs = convert.to_state_dict(model), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert torch.equal(torch.from_numpy(ours[k]).to(v.dtype), v), k
        assert ours[k].dtype == (np.float32 if v.is_floating_point() else np.int64), k


# ----------------------------------------------------------------------------- reading


def test_stand_in_checkpoint_names_the_globals_of_a_real_one(tmp_path):
    with ultralytics_stand_ins() as classes:
        dm, _ = stand_in_model(classes)
        path = write(tmp_path / "yolo11n.pt", released(dm))
    assert pickled_globals(path) == REAL_YOLO11N_GLOBALS
    assert REAL_YOLO11N_GLOBALS <= set(ALLOWED_GLOBALS)


@pytest.mark.parametrize("layout,save_kwargs", [
    ("released", {}),
    ("training", {}),
    # torch's legacy non-zip format (it warns that it cannot find the stand-ins' source code)
    pytest.param("released", {"_use_new_zipfile_serialization": False},
                 marks=pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")),
])
def test_checkpoint_loads_equal_to_the_reference_from_the_same_tensors(tmp_path, layout, save_kwargs):
    with ultralytics_stand_ins() as classes:
        dm, reference = stand_in_model(classes)
        ckpt = released(dm) if layout == "released" else training(dm, classes)
        path = write(tmp_path / "w.pt", ckpt, **save_kwargs)
    assert "ultralytics" not in sys.modules
    model, info = convert.load_ultralytics(path)
    assert_equals_reference(model, reference)
    assert info["num_classes"] == 5 and info["class_names"] == NAMES
    assert (info["scale"], info["preset"]) == ("n", "yolo11n")
    assert info["weights_key"] == ("model" if layout == "released" else "ema")
    assert info["ultralytics_version"] == ("8.3.0" if layout == "released" else "8.4.190")
    assert info["file_dtype"] == "float16"
    assert model.num_classes == 5 and model.model[0].bn.use_running_average  # returned in eval mode


@pytest.mark.parametrize("variant", [dict(sppf_act=False), dict(sppf_act=False, sppf_n=2, sppf_shortcut=True)])
def test_the_sppf_variant_is_read_from_the_modules_records(tmp_path, variant):
    """Synthetic (no real file in the set records n != 3 or add): SPPF.cv1's pickled activation,
    SPPF.n and SPPF.add build the matching network, equal to the reference."""
    with ultralytics_stand_ins() as classes:
        dm, reference = stand_in_model(classes, **variant)
        path = write(tmp_path / "w.pt", released(dm, version="8.4.60"))
    model, info = convert.load_ultralytics(path)
    want = dict(dict(sppf_act=True, sppf_n=3, sppf_shortcut=False), **variant)
    assert info["variant"] == want and model.variant == Variant(**want)
    assert_equals_reference(model, reference)
    images = np.random.default_rng(0).random((1, 64, 96, 3), dtype=np.float32)
    reference.eval()
    with torch.no_grad():
        theirs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    for (c_j, _, r_j), (c_t, _, r_t) in zip(model(images), theirs):
        assert rel_err(np.asarray(c_j), c_t.permute(0, 2, 3, 1).numpy()) <= 1e-4
        assert rel_err(np.asarray(r_j), r_t.permute(0, 2, 3, 1).numpy()) <= 1e-4


@pytest.mark.parametrize("attr,value,message", [
    ("legacy", True, "record model.23.legacy is True"),
    ("end2end", True, "record model.23.end2end is True"),
    ("reg_max", 8, "the Detect record says reg_max=8"),
])
def test_detect_records_the_network_cannot_represent_are_refused(tmp_path, attr, value, message):
    """Synthetic: Detect attributes some Ultralytics versions record."""
    with ultralytics_stand_ins() as classes:
        dm, _ = stand_in_model(classes)
        setattr(dm.model[23], attr, value)
        path = write(tmp_path / "w.pt", released(dm))
    with pytest.raises(UltralyticsCheckpointError, match=re.escape(message)):
        convert.load_ultralytics(path)


def test_torch_size_is_read_as_a_tuple_of_ints(tmp_path):
    with ultralytics_stand_ins() as classes:
        dm, _ = stand_in_model(classes)
        path = write(tmp_path / "w.pt", released(dm))
    obj, names = load_pickle(path)
    assert "torch.Size" in names and obj["model"].get("_modules")["model"].get("_modules")["23"].get("shape") == \
        (1, 144, 8400)


def test_scale_is_read_from_the_file(tmp_path):
    with ultralytics_stand_ins() as classes:
        dm, reference = stand_in_model(classes, scale="m", nc=80)
        path = write(tmp_path / "yolo11m.pt", released(dm))
    state_dict, info = read_ultralytics(path)
    assert (info["scale"], info["num_classes"], info["class_names"][:2]) == ("m", 80, ["0", "1"])
    assert state_dict.keys() == reference.state_dict().keys()
    assert {a.dtype for a in state_dict.values()} == {np.dtype("float32"), np.dtype("int64")}


def test_convert_command_works_without_torch_or_ultralytics(tmp_path):
    """``python -m yolo11_jax.convert`` in a process where importing torch or ultralytics fails."""
    with ultralytics_stand_ins() as classes:
        dm, reference = stand_in_model(classes)
        path = write(tmp_path / "yolo11n.pt", training(dm, classes))
    out = tmp_path / "yolo11n.safetensors"
    script = ("import runpy, sys\n"
              "sys.modules['torch'] = None; sys.modules['ultralytics'] = None  # any import of them fails\n"
              f"sys.argv = ['convert', {str(path)!r}, '--out', {str(out)!r}]\n"
              "try:\n"
              "    runpy.run_module('yolo11_jax.convert', run_name='__main__')\n"
              "finally:\n"
              "    assert sys.modules['torch'] is None and sys.modules['ultralytics'] is None\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "yolo11n, 5 classes" in result.stdout and "'ema'" in result.stdout
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["model"] == "yolo11n" and meta["num_classes"] == "5"
    assert json.loads(meta["class_names"]) == NAMES
    loaded = Ry.YOLO11("n", 5)
    loaded.load_state_dict(load_file(str(out)), strict=True)
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_convert_command_help_describes_every_option(capsys):
    parser = convert.build_parser()
    for action in parser._actions:
        assert action.help, action.dest
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("checkpoint", "--out", "--force"))


def test_convert_command_does_not_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    assert convert.main([str(tmp_path / "any.pt"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- security


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


# Pickle protocol 2 (torch.save's) writes the builtins module as __builtin__.
@pytest.mark.parametrize("payload,named", [(_SystemCall, f"{os.system.__module__}.system"),
                                           (_EvalCall, "__builtin__.eval")])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, payload, named):
    marker = tmp_path / "payload_ran"
    path = write(tmp_path / "evil.pt", {"model": payload(marker)})
    with pytest.raises(UltralyticsCheckpointError, match=f"names {named}, which is not on the list"):
        convert.load_ultralytics(path)
    assert not marker.exists()
    # The same bytes through plain pickle do run the payload: the refusal is what prevented it.
    with zipfile.ZipFile(path) as zf:
        pickle.loads(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()


def test_code_hidden_inside_a_valid_model_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    with ultralytics_stand_ins() as classes:
        dm, _ = stand_in_model(classes)
        dm.model[23].cv3[0][0][1].extra = _EvalCall(marker)  # deep inside the Detect head
        path = write(tmp_path / "w.pt", released(dm))
    with pytest.raises(UltralyticsCheckpointError, match="names __builtin__.eval"):
        read_ultralytics(path)
    assert not marker.exists()


def _with_class(name, select):
    """Builder: the stand-in model with the modules ``select(dm)`` re-classed as ``name``."""
    def build(classes):
        dm, _ = stand_in_model(classes)
        for m in select(dm):
            m.__class__ = classes[name]
        return released(dm)
    return build


def _with_yaml(**changes):
    def build(classes):
        dm, _ = stand_in_model(classes)
        dm.yaml.update(changes)
        return released(dm)
    return build


def _with_model_class(name):
    def build(classes):
        dm, _ = stand_in_model(classes, model_class=name)
        return released(dm)
    return build


def _without_c3k2_and_c2psa(classes):
    dm, _ = stand_in_model(classes)
    for m in dm.model.modules():
        if type(m).__name__ in ("C3k2", "C2PSA"):
            m.__class__ = classes["Bottleneck"]
    dm.yaml["yaml_file"] = "custom.yaml"
    return released(dm)


def _with_extra(**entries):
    def build(classes):
        dm, _ = stand_in_model(classes)
        return {**released(dm), **entries}
    return build


NOT_YOLO11_DETECTION = {
    "segmentation": (_with_model_class("SegmentationModel"), "a segmentation model"),
    "classification": (_with_model_class("ClassificationModel"), "a classification model"),
    "pose": (_with_class("Pose", lambda dm: [dm.model[23]]), r"a pose \(keypoint\) model"),
    "obb": (_with_class("OBB", lambda dm: [dm.model[23]]), r"an oriented-box \(OBB\) model"),
    "yolov8": (_with_class("C2f", lambda dm: [dm.model[2]]), "a YOLOv8-family model"),
    "yolov10": (_with_class("v10Detect", lambda dm: [dm.model[23]]), "a YOLOv10 model"),
    "yolo12": (_with_class("A2C2f", lambda dm: [dm.model[6]]), "a YOLO12 model"),
    "yolo26": (_with_yaml(end2end=True, reg_max=1, yaml_file="yolo26n.yaml"), "end-to-end model such as YOLO26"),
    "yolov8_by_config": (_with_yaml(yaml_file="yolov8n.yaml"), r"built from yolov8n.yaml \(YOLO8\)"),
    "other_blocks": (_without_c3k2_and_c2psa, "another YOLO version: YOLO11 has C3k2 and C2PSA blocks"),
    "plain_state_dict": (lambda classes: stand_in_model(classes)[0].state_dict(), "a plain state dict"),
    "unlisted_class": (_with_extra(save_dir=pathlib.PurePosixPath("/runs")), "names pathlib.PurePosixPath"),
    "no_model": (lambda classes: {"model": None, "ema": None, "epoch": 3}, "no model in the checkpoint"),
    "class_count_disagrees": (_with_yaml(nc=80), "the class-output layer has 5 classes but the config's nc is 80"),
    "scale_disagrees": (_with_yaml(scale="s"), "config says scale 's' but the tensors are those of scale 'n'"),
}


@pytest.mark.parametrize("case", sorted(NOT_YOLO11_DETECTION))
def test_files_that_are_not_yolo11_detection_checkpoints_get_one_clear_message(tmp_path, case):
    build, message = NOT_YOLO11_DETECTION[case]
    with ultralytics_stand_ins() as classes:
        path = write(tmp_path / f"{case}.pt", build(classes))
    with pytest.raises(UltralyticsCheckpointError, match=message) as info:
        convert.load_ultralytics(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content,message", [(b"not a checkpoint at all", "not a PyTorch checkpoint"),
                                             (None, "not a torch.save archive")])
def test_files_that_are_not_torch_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content is None:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(UltralyticsCheckpointError, match=message):
        read_ultralytics(path)


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
    """A tensor whose size and stride reach beyond its storage would read foreign memory."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    data = bytearray(buf.getvalue())
    # Rewrite the pickled size (4,) of the tensor as (5,): the first 4 after the storage's
    # persistent id (offset 0, size (4,), stride (1,)). Same byte length; the zip is stored.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        pkl_name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        pkl = zf.read(pkl_name)
    ops = list(pickletools.genops(pkl))
    persid = next(pos for op, _, pos in ops if op.name == "BINPERSID")
    size_pos = next(pos for op, arg, pos in ops if op.name == "BININT1" and arg == 4 and pos > persid)
    patched = pkl[:size_pos + 1] + bytes([5]) + pkl[size_pos + 2:]
    path = tmp_path / "bad.pt"
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, patched if item.filename == pkl_name else src.read(item))
    with pytest.raises(UltralyticsCheckpointError, match="reads past its storage"):
        read_ultralytics(path)


def test_predict_and_evaluate_take_a_pt_file(tmp_path, capsys):
    """``--weights yolo11n.pt``: predict names the file's classes, evaluate scores a split with the
    file's network; both read the .pt with the restricted unpickler."""
    from PIL import Image

    from yolo11_jax import evaluate, predict

    with ultralytics_stand_ins() as classes:
        dm, _ = stand_in_model(classes)
        pt = write(tmp_path / "yolo11n.pt", released(dm))
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "pred"
    assert predict.main(["--weights", str(pt), str(img), "--out", str(out), "--img-size", "64",
                         "--conf-threshold", "0.0", "--max-det", "3"]) == 0, capsys.readouterr().err
    (record,) = json.loads((out / "detections.json").read_text())
    assert record["detections"] and all(d["class_name"] == NAMES[d["class_id"]] for d in record["detections"])
    # (the shapes' class names are not the file's: score data label i as model class i)
    assert evaluate.main(["--weights", str(pt), "--data", "shapes", "--img-size", "64", "--max-samples", "4",
                          "--batch-size", "4", "--class-map", "position"]) == 0, capsys.readouterr().err
    assert "mAP@[.5:.95]" in capsys.readouterr().out
    # a .pt fixes its own network: --model must agree
    assert predict.main(["--weights", str(pt), str(img), "--out", str(out), "--model", "yolo11s"]) == 2
    assert "holds a yolo11n network, not 'yolo11s'" in capsys.readouterr().err
