"""Ultralytics' YOLO11 family in NNX (``yolo11_jax.yolo11``) against ``reference_torch.yolo11``
and against the layouts Ultralytics itself produces (``tests/data/ultralytics_state_dict_keys``).

Tolerances: ``max|jax - torch| / max(1, max|torch|) <= 1e-4`` per output in float32 (measured on
2x64x96 images: eval mode 8e-7 (n) .. 3e-6 (x); train mode 3e-5 (n), 4e-5 (s), 7e-5 (m)).
Train mode at scales l and x is compared in float64 on both sides instead, at 1e-9 (measured
2e-12 (l), 3e-12 (x)): there torch's own float32 result is 3.6e-4 (l) and 3.0e-4 (x) away from its float64
result, and JAX's float32 result 5.0e-4 and 6.0e-4 (the deeper networks' train-mode
BatchNorms, over 12 values per channel at stride 32, amplify float32 rounding). No float32
implementation, torch's included, meets 1e-4 against torch float32 there, while any difference
in the computation itself shows in float64.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import reference_torch as R
from reference_torch.yolo11 import YOLO11 as RefYOLO11
from yolo11_jax import build_model, convert, count_parameters
from yolo11_jax.model import BatchNorm, ConvBNSiLU, jit_forward, set_compute_dtype
from yolo11_jax.yolo11 import DEFAULT_VARIANT, YOLO11, Detect, Variant, class_bias_init
from tests.helpers import ROOT, nchw, randomize_batchnorm, rel_err, rel_l2, to_nhwc

TOL = 1e-4
TOL_FLOAT64 = 1e-9
SCALES = "nsmlx"
OFFICIAL_PARAMETERS = {"n": 2_624_080, "s": 9_458_752, "m": 20_114_688, "l": 25_372_160, "x": 56_966_176}
IMAGE_HW = (64, 96)  # levels 8x12, 4x6, 2x3
NUM_CLASSES = 7


def ultralytics_layout(scale):
    """[(key, shape, dtype)] of Ultralytics' DetectionModel at 80 classes, in state-dict order."""
    path = os.path.join(ROOT, "tests", "data", "ultralytics_state_dict_keys", f"yolo11{scale}.tsv")
    rows = []
    with open(path) as f:
        for line in f:
            key, shape, dtype = line.rstrip("\n").split("\t")
            rows.append((key, tuple(int(d) for d in shape.strip("[]").split(",") if d.strip()), dtype))
    return rows


def abstract_model(scale, num_classes=NUM_CLASSES, **kw):
    return nnx.eval_shape(lambda: build_model(f"yolo11{scale}", num_classes=num_classes, rngs=nnx.Rngs(0), **kw))


def signal_carrying_weights(ref, seed):
    """Redraw every trainable convolution kernel from N(0, 1.5 / fan_in). With PyTorch's default
    init (variance 1 / (3 fan_in)) the signal fades layer by layer and eval-mode outputs are
    nearly the head's biases, so a wrong BatchNorm eps stays below 1e-4 (measured: undetected);
    with 2 / fan_in the residual blocks grow the outputs to 1e4 at scales l and x, where float32
    rounding inside the DFL softmax alone exceeds 1e-4. 1.5 keeps every output around 10 and a
    wrong eps shows at 3e-3."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # not the frozen DFL
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(1.5 / m.weight[0].numel()))


def make_pair(scale, num_classes=NUM_CLASSES, seed=0):
    """Reference with signal-carrying weights and randomised BatchNorms, and the NNX model
    holding the same weights."""
    torch.manual_seed(seed)
    ref = RefYOLO11(scale, num_classes)
    signal_carrying_weights(ref, seed)
    randomize_batchnorm(ref, seed)
    model = abstract_model(scale, num_classes)
    convert.load_state_dict(model, ref.state_dict())
    return ref, model


def output_errors(out_ref, out_jax):
    errors = {}
    for level, (lt, lj) in enumerate(zip(out_ref, out_jax)):
        for kind, t, j in zip(("cls_logits", "box_ltrb", "box_raw"), lt, lj):
            errors[(level, kind)] = rel_err(np.asarray(j), to_nhwc(t))
    return errors


def stat_errors(model, ref):
    ours, theirs = convert.to_state_dict(model), ref.state_dict()
    stat_keys = [k for k in theirs if "running_" in k]
    assert len(stat_keys) > 100
    counts = {(int(ours[k]), int(theirs[k])) for k in theirs if k.endswith("num_batches_tracked")}
    assert counts == {(1, 1)}, counts  # both ran exactly one train-mode batch
    return max(rel_err(ours[k], theirs[k].numpy()) for k in stat_keys)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("scale", SCALES)
def test_parameter_counts_equal_ultralytics(scale):
    model = abstract_model(scale, 80)
    assert count_parameters(model) == OFFICIAL_PARAMETERS[scale]
    # Ultralytics counts the frozen DFL weight (16 values) as a parameter, not as a gradient.
    assert count_parameters(model, notebook_style=False) == OFFICIAL_PARAMETERS[scale] - 16
    assert sum(p.numel() for p in RefYOLO11(scale, 80).parameters()) == OFFICIAL_PARAMETERS[scale]


@pytest.mark.parametrize("scale", SCALES)
def test_reference_state_dict_is_ultralytics_layout(scale):
    """Same keys, in the same order, with the same shapes and dtypes."""
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in RefYOLO11(scale, 80).state_dict().items()]
    assert got == ultralytics_layout(scale)


@pytest.mark.parametrize("scale", SCALES)
def test_nnx_tree_converts_to_ultralytics_layout(scale):
    want = {k: shape for k, shape, _ in ultralytics_layout(scale)}
    assert convert.torch_shapes(abstract_model(scale, 80)) == want


def test_nnx_paths_mirror_ultralytics_keys():
    model = abstract_model("n", 80)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
    assert "model/23/cv3/0/0/0/conv/kernel" in paths      # model.23.cv3.0.0.0.conv.weight
    assert "model/10/m/0/attn/qkv/bn/mean" in paths        # model.10.m.0.attn.qkv.bn.running_mean
    assert "model/23/cv2/2/2/bias" in paths                 # model.23.cv2.2.2.bias
    assert len(model.model) == 24


def test_batchnorm_uses_ultralytics_eps_and_momentum():
    count = sum(k.endswith(".bn.running_mean") for k, _, _ in ultralytics_layout("n"))
    model = abstract_model("n")
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    assert len(norms) == count and {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.03)}
    ref_norms = [m for m in RefYOLO11("n").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(ref_norms) == count and {(m.eps, m.momentum) for m in ref_norms} == {(1e-3, 0.03)}
    # The notebook's network keeps PyTorch's defaults.
    notebook = nnx.eval_shape(lambda: build_model("tiny", rngs=nnx.Rngs(0)))
    assert {(m.eps, m.momentum) for _, m in nnx.iter_modules(notebook) if isinstance(m, BatchNorm)} == {(1e-5, 0.1)}


def test_initialisation_follows_ultralytics():
    """NNX's own initialisation (the head and a stem convolution, initialised for real; the
    full networks elsewhere are built abstractly or loaded, which is much cheaper on the CPU)."""
    nc = 3
    detect = Detect(nc, (64, 128, 256), rngs=nnx.Rngs(0))  # yolo11n's head
    stem = ConvBNSiLU(3, 16, 3, 2, rngs=nnx.Rngs(1))
    for level, stride in enumerate((8, 16, 32)):
        # Ultralytics 8.4's box bias (8.3 used 1.0).
        np.testing.assert_array_equal(np.asarray(detect.cv2[level][2].bias[...]), np.full(64, 2.0, np.float32))
        want = np.float32(math.log(5 / nc / (640 / stride) ** 2))
        np.testing.assert_allclose(np.asarray(detect.cv3[level][2].bias[...]), np.full(nc, want), rtol=1e-6)
        assert class_bias_init(80, stride) == pytest.approx((-11.53664, -10.15035, -8.76405)[level], abs=1e-5)
    # PyTorch's default kernel init, U(+-1/sqrt(fan_in)) with fan_in per group: the depthwise 3x3
    # (64 groups) has fan_in 9, the 3x3 after it fan_in 9 * 64.
    for kernel, fan_in in [(detect.cv3[0][0][0].conv.kernel, 9), (detect.cv2[0][0].conv.kernel, 9 * 64),
                           (stem.conv.kernel, 27)]:
        k = np.abs(np.asarray(kernel[...]))
        assert 0.9 / math.sqrt(fan_in) < k.max() <= 1 / math.sqrt(fan_in)
    ref = RefYOLO11("n", nc)
    assert torch.equal(ref.model[23].cv2[1][2].bias, torch.full((64,), 2.0))
    assert ref.model[23].cv3[2][2].bias[0].item() == pytest.approx(class_bias_init(nc, 32), rel=1e-6)


def test_class_bias_prior_is_a_network_method():
    """``init_class_bias(prior_fn)`` sets level i's class biases to ``prior_fn(nc, stride_i)`` on
    both networks; the Ultralytics recipe's ``class_bias_prior`` gives the notebook's network
    Ultralytics' prior through it (YOLO11's ``Detect`` starts there)."""
    from yolo11_jax.model import YOLOv11
    from yolo11_jax.recipes.ultralytics import class_bias_prior

    nc = 3
    notebook = YOLOv11(nc, base=8, depth=1, rngs=nnx.Rngs(0))
    before = np.asarray(notebook.head.heads[0].cls_pred.bias[...])
    assert np.ptp(before) > 0  # PyTorch's default init, not a constant
    assert "Ultralytics' prior" in class_bias_prior(notebook, nc)
    detect = Detect(nc, (64, 128, 256), rngs=nnx.Rngs(0))
    detect.init_class_bias(lambda classes, stride: classes * 1000 + stride)
    for level, stride in enumerate((8, 16, 32)):
        np.testing.assert_allclose(np.asarray(notebook.head.heads[level].cls_pred.bias[...]),
                                   np.full(nc, class_bias_init(nc, stride), np.float32), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(detect.cv3[level][2].bias[...]), np.full(nc, nc * 1000 + stride))
    with pytest.raises(ValueError, match="3 classes"):
        class_bias_prior(notebook, 80)


def test_outputs_have_documented_shapes_and_match_notebook_form():
    _, model = make_pair("n", 5)
    model.eval()
    out = jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32))
    assert [tuple(o.shape) for lvl in out for o in lvl] == [
        (2, 8, 12, 5), (2, 8, 12, 4), (2, 8, 12, 64),
        (2, 4, 6, 5), (2, 4, 6, 4), (2, 4, 6, 64),
        (2, 2, 3, 5), (2, 2, 3, 4), (2, 2, 3, 64),
    ]
    assert (model.num_classes, model.reg_max, model.in_channels) == (5, 16, 3)


@pytest.mark.parametrize("shape,needle", [((64, 64, 3), "rank 4"), ((1, 3, 64, 64), "channels"),
                                          ((1, 64, 80, 3), "multiples of 32")])
def test_bad_input_shapes_raise_clear_errors(shape, needle):
    with pytest.raises(ValueError, match=needle):
        abstract_model("n").check_input(jnp.zeros(shape))


# ----------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("scale", SCALES)
def test_forward_matches_reference_in_eval_mode(scale):
    ref, model = make_pair(scale)
    images = np.random.default_rng(1).random((2, *IMAGE_HW, 3), dtype=np.float32)
    ref.eval()
    model.eval()
    with torch.no_grad():
        out_ref = ref(nchw(images))
    errors = output_errors(out_ref, jit_forward(model, jnp.asarray(images)))
    assert len(errors) == 9
    assert max(errors.values()) <= TOL, errors


@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    Variant(sppf_act=False),                                    # Ultralytics 8.4.30 .. 8.4.60 files
    Variant(sppf_act=False, sppf_n=2, sppf_shortcut=True),      # SPPF's n and add, as 8.4 can record them
])
def test_variant_forward_matches_reference_built_with_the_same_variant(variant):
    """Synthetic weights: the NNX network and the reference built with the same ``Variant`` agree
    to TOL in eval and train mode, and the default reference (other SPPF) does not."""
    fields = dict(sppf_act=variant.sppf_act, sppf_n=variant.sppf_n, sppf_shortcut=variant.sppf_shortcut)
    torch.manual_seed(0)
    ref = RefYOLO11("n", NUM_CLASSES, **fields)
    signal_carrying_weights(ref, 0)
    randomize_batchnorm(ref, 0)
    model = nnx.eval_shape(lambda: YOLO11("n", NUM_CLASSES, variant=variant, rngs=nnx.Rngs(0)))
    assert model.variant == variant and model.model[9].cv1.act is variant.sppf_act
    convert.load_state_dict(model, ref.state_dict())
    images = np.random.default_rng(3).random((2, *IMAGE_HW, 3), dtype=np.float32)
    for train, errors in _errors_in_eval_then_train_mode(model, ref, images).items():
        assert max(errors.values()) <= TOL, (train, errors)
    if variant.sppf_n == 3:  # same tensors, the default network: far off
        default = RefYOLO11("n", NUM_CLASSES).eval()
        default.load_state_dict(ref.state_dict())
        model.eval()
        with torch.no_grad():
            out_default = default(nchw(images))
        assert max(output_errors(out_default, jit_forward(model, jnp.asarray(images))).values()) > 1e-2


def _errors_in_eval_then_train_mode(model, ref, images: np.ndarray) -> dict:
    """``{train: output_errors}`` of the NNX network against the reference on ``images`` (B, H, W, 3),
    in eval mode, then in train mode (which leaves both sides' BatchNorm statistics updated)."""
    out = {}
    for train in (False, True):
        ref.train(train)
        model.train() if train else model.eval()
        with torch.no_grad():
            out_ref = ref(nchw(images))
        out[train] = output_errors(out_ref, jit_forward(model, jnp.asarray(images)))
    return out


@pytest.mark.parametrize("cls_hidden", [
    80,   # yolo11n fine-tuned from 80 COCO classes with --keep-class-rows (the rule gives 64 at 7)
    pytest.param(48, marks=pytest.mark.slow),   # narrower than the rule's floor ch0 = 64
])
def test_cls_hidden_variant_forward_matches_reference_built_with_the_same_width(cls_hidden):
    """Synthetic weights: the NNX network and the reference built with the same class-branch
    width (``Variant.cls_hidden``) agree to TOL on every output, in eval and train mode (train
    mode also on every BatchNorm statistic); the default network (the rule's 64) cannot take
    these tensors."""
    variant = Variant(cls_hidden=cls_hidden)
    torch.manual_seed(0)
    ref = RefYOLO11("n", NUM_CLASSES, cls_hidden=cls_hidden)
    signal_carrying_weights(ref, 0)
    randomize_batchnorm(ref, 0)
    assert tuple(ref.state_dict()["model.23.cv3.0.1.1.conv.weight"].shape) == (cls_hidden, cls_hidden, 1, 1)
    model = nnx.eval_shape(lambda: YOLO11("n", NUM_CLASSES, variant=variant, rngs=nnx.Rngs(0)))
    assert model.variant == variant and model.model[23].cls_hidden == cls_hidden
    convert.load_state_dict(model, ref.state_dict())
    images = np.random.default_rng(3).random((2, *IMAGE_HW, 3), dtype=np.float32)
    for train, errors in _errors_in_eval_then_train_mode(model, ref, images).items():
        assert len(errors) == 9 and max(errors.values()) <= TOL, (train, errors)
    assert stat_errors(model, ref) <= TOL
    # the parity test can fail: the default width (64 at 7 classes) does not fit these tensors
    with pytest.raises(ValueError, match=r"shape mismatch: model\.23\.cv3\.0\.0\.1\.conv\.weight"):
        convert.load_state_dict(abstract_model("n", NUM_CLASSES), ref.state_dict())
    assert RefYOLO11("n", NUM_CLASSES).state_dict()["model.23.cv3.0.1.1.conv.weight"].shape[0] == 64


def test_cls_hidden_none_is_ultralytics_rule_at_every_scale():
    """``cls_hidden=None`` builds Ultralytics' ``max(ch0, min(nc, 100))`` (the reference's rule,
    unchanged): yolo11n 64 / 80 / 100 at 5 / 80 / 120 classes, yolo11s 128 at 80."""
    from yolo11_jax.yolo11 import class_hidden_width

    for scale, nc, want in (("n", 5, 64), ("n", 80, 80), ("n", 120, 100), ("s", 80, 128)):
        model = abstract_model(scale, nc)
        assert model.model[23].cls_hidden == want == class_hidden_width(scale, nc)
        assert torch_shape(scale, nc, "model.23.cv3.1.1.1.conv.weight")[0] == want
    assert class_hidden_width("n", 5, Variant(cls_hidden=80)) == 80


def torch_shape(scale, nc, key, **kw):
    return tuple(RefYOLO11(scale, nc, **kw).state_dict()[key].shape)


def test_cls_hidden_json_round_trip_old_json_and_errors():
    v = Variant(cls_hidden=80)
    assert v.name == "yolo11[cls_hidden=80]" and Variant.from_json(v.to_json()) == v
    assert json.loads(v.to_json())["cls_hidden"] == 80
    both = Variant(sppf_act=False, cls_hidden=48)
    assert Variant.from_json(both.to_json()) == both and both.name == "yolo11[sppf_act=False,cls_hidden=48]"
    # JSON written before the field existed (and the default's JSON, which leaves it out) loads as the rule
    old = '{"sppf_act": true, "sppf_n": 3, "sppf_shortcut": false}'
    assert DEFAULT_VARIANT.to_json() == old and Variant.from_json(old) == DEFAULT_VARIANT
    assert Variant.from_json(old).cls_hidden is None
    assert Variant.from_json('{"cls_hidden": null}') == DEFAULT_VARIANT
    assert Variant.from_json({"cls_hidden": 64}) == Variant(cls_hidden=64)
    for bad in ('{"cls_hidden": 0}', '{"cls_hidden": -8}'):
        with pytest.raises(ValueError, match="cls_hidden must be a positive int"):
            Variant.from_json(bad)
    for bad in ('{"cls_hidden": 80.0}', '{"cls_hidden": true}', '{"cls_hidden": "80"}'):
        with pytest.raises(ValueError, match="cls_hidden must be a int or null"):
            Variant.from_json(bad)
    for bad in (0, -1, 1.5, True, "80"):
        with pytest.raises(ValueError, match="cls_hidden must be a positive int or None"):
            Variant(cls_hidden=bad)


def test_variant_json_round_trip_and_errors():
    v = Variant(sppf_act=False, sppf_n=2, sppf_shortcut=True)
    assert Variant.from_json(v.to_json()) == v and Variant.from_json(None) == DEFAULT_VARIANT
    assert DEFAULT_VARIANT.name == "yolo11" and Variant(sppf_act=False).name == "yolo11[sppf_act=False]"
    with pytest.raises(ValueError, match="unknown field"):
        Variant.from_json('{"sppf_act": true, "colour": 1}')
    with pytest.raises(ValueError, match="sppf_act must be a bool"):
        Variant.from_json('{"sppf_act": 1}')


@pytest.mark.parametrize("scale", "nsm")
def test_forward_and_batchnorm_statistics_match_reference_in_train_mode(scale):
    ref, model = make_pair(scale)
    images = np.random.default_rng(2).random((2, *IMAGE_HW, 3), dtype=np.float32)
    ref.train()
    model.train()
    with torch.no_grad():
        out_ref = ref(nchw(images))
    errors = output_errors(out_ref, jit_forward(model, jnp.asarray(images)))
    assert len(errors) == 9
    assert max(errors.values()) <= TOL, errors
    # The stored variance is the unbiased one (n / (n - 1) with n = 2 * 2 * 3 = 12 at stride 32,
    # a 9% difference a biased store would show).
    assert stat_errors(model, ref) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("scale", "lx")
def test_forward_and_batchnorm_statistics_match_reference_in_train_mode_float64(scale):
    """Scales l and x in train mode, float64 on both sides (see the module docstring)."""
    ref, model = make_pair(scale)
    images = np.random.default_rng(2).random((2, *IMAGE_HW, 3), dtype=np.float32).astype(np.float64)
    with jax.enable_x64(True):
        state = nnx.state(model)
        nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                                       else a, state))
        ref = ref.double().train()
        model.train()
        with torch.no_grad():
            out_ref = ref(nchw(images))
        out_jax = jit_forward(model, jnp.asarray(images))
        assert {str(a.dtype) for lvl in out_jax for a in lvl} == {"float64"}
        errors = output_errors(out_ref, out_jax)
        assert len(errors) == 9
        assert max(errors.values()) <= TOL_FLOAT64, errors
        assert stat_errors(model, ref) <= TOL_FLOAT64


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attention_block_matches_reference(mode):
    """Layer 10 (C2PSA, 4 heads at yolo11s) on its own, fed O(1) inputs: the qkv channel layout
    per head, the key_dim scaling, the positional depthwise conv on v."""
    ref, model = make_pair("s")
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 512)).astype(np.float32)
    getattr(ref, mode)()
    getattr(model, mode)()
    assert model.model[10].m[0].attn.num_heads == 4 and model.model[10].m[0].attn.key_dim == 32
    with torch.no_grad():
        want = to_nhwc(ref.model[10](nchw(x)))
    assert rel_err(np.asarray(model.model[10](jnp.asarray(x))), want) <= TOL


def test_bfloat16_compute_keeps_outputs_and_statistics_in_float32():
    """Mixed precision as in the notebook's network: bfloat16 convolutions, float32 BatchNorm
    statistics and outputs. Tolerance 5e-2 (relative L2 per output): bfloat16 keeps 8 mantissa
    bits (2e-3 relative rounding per operation) through about 90 layers; measured about 1e-2."""
    _, model = make_pair("n")
    images = jnp.asarray(np.random.default_rng(3).random((2, *IMAGE_HW, 3), dtype=np.float32))
    model.eval()
    full = jit_forward(model, images)
    set_compute_dtype(model, jnp.bfloat16)
    mixed = jit_forward(model, images)
    for lf, lm in zip(full, mixed):
        for f, m in zip(lf, lm):
            assert m.dtype == jnp.float32
            assert rel_l2(m, f) <= 5e-2
    # Train mode, traced only: bfloat16 convolutions, float32 statistics.
    model.train()
    graphdef, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m, nnx.BatchStat)

    assert "bf16[" in str(jax.make_jaxpr(forward)(state, images))
    out, stats = jax.eval_shape(forward, state, images)
    assert {str(a.dtype) for lvl in out for a in lvl} == {"float32"}
    assert {str(v.dtype) for v in jax.tree.leaves(stats)} == {"float32", "int32"}


# ----------------------------------------------------------------------------- conversion


# C3k2 of Bottlenecks (n) and of C3k (m); l and x only add repeated blocks, whose layout
# test_nnx_tree_converts_to_ultralytics_layout checks key by key.
@pytest.mark.parametrize("scale", "nm")
def test_state_dict_round_trip_is_exact(scale):
    torch.manual_seed(5)
    ref = RefYOLO11(scale, NUM_CLASSES)
    with torch.no_grad():  # non-default statistics and num_batches_tracked
        ref.train()
        ref(torch.rand(2, 3, 64, 32))
    model = abstract_model(scale)
    convert.load_state_dict(model, ref.state_dict())
    back = convert.to_state_dict(model)
    ref2 = RefYOLO11(scale, NUM_CLASSES)
    ref2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    original = ref.state_dict()
    assert back.keys() == original.keys()
    for k, v in ref2.state_dict().items():
        assert v.dtype == original[k].dtype, k
        assert torch.equal(v, original[k]), k


def test_safetensors_round_trip_is_exact(tmp_path):
    ref, model = make_pair("n")
    path = tmp_path / "w.safetensors"
    convert.save_safetensors(model, path)
    from safetensors.torch import load_file
    ref2 = RefYOLO11("n", NUM_CLASSES)
    ref2.load_state_dict(load_file(str(path)), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k


def test_load_state_dict_lists_every_problem_at_once():
    ref, model = make_pair("n")
    sd = dict(ref.state_dict())
    del sd["model.10.m.0.attn.pe.conv.weight"]
    sd["model.23.cv3.1.2.bias"] = torch.zeros(8)
    sd["model.23.dfl.conv.weight"] = sd["model.23.dfl.conv.weight"] * 2
    sd["model.24.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        convert.load_state_dict(model, sd)
    msg = str(info.value)
    assert "4 problems" in msg
    for needle in ["missing key: model.10.m.0.attn.pe.conv.weight", "shape mismatch: model.23.cv3.1.2.bias",
                   "model.23.dfl.conv.weight: the DFL projection is frozen", "unexpected key: model.24.weight"]:
        assert needle in msg


def test_grouped_convolution_kernels_convert_between_layouts():
    """Depthwise kernels are torch (C, 1, 3, 3) <-> NNX (3, 3, 1, C), like any other kernel."""
    ref, model = make_pair("n")
    w = ref.state_dict()["model.23.cv3.0.0.0.conv.weight"]
    assert tuple(w.shape) == (64, 1, 3, 3)
    kernel = np.asarray(model.model[23].cv3[0][0][0].conv.kernel[...])
    np.testing.assert_array_equal(kernel, w.numpy().transpose(2, 3, 1, 0))


# ----------------------------------------------------------------------------- fine-tuning loads


def _checkpoint(scale, num_classes, seed=7):
    torch.manual_seed(seed)
    ref = RefYOLO11(scale, num_classes)
    randomize_batchnorm(ref, seed)
    return {k: v.numpy() for k, v in ref.state_dict().items()}


def fresh_model(scale, num_classes):
    """A concrete NNX model holding a fresh Ultralytics-style initialisation (the reference's:
    the same distributions, and much cheaper on the CPU than NNX's per-shape random init)."""
    model = abstract_model(scale, num_classes)
    torch.manual_seed(11)
    convert.load_state_dict(model, RefYOLO11(scale, num_classes).state_dict())
    return model


def test_load_pretrained_reinitialises_exactly_the_class_outputs():
    """yolo11s's class branch is 128 wide whatever the class count: 80 -> 3 classes keeps only
    the three class-output convolutions (weight and bias) at the model's initialisation."""
    ckpt = _checkpoint("s", 80)
    model = fresh_model("s", 3)
    fresh = convert.to_state_dict(model)
    report = convert.load_pretrained(model, ckpt)
    kept = [f"model.23.cv3.{i}.2.{leaf}" for i in range(3) for leaf in ("bias", "weight")]
    assert report.reinitialized == kept
    assert (report.checkpoint_num_classes, report.model_num_classes) == (80, 3)
    after = convert.to_state_dict(model)
    assert sorted(report.loaded) == sorted(set(after) - set(kept))
    for k in kept:
        np.testing.assert_array_equal(after[k], fresh[k])
    for k in report.loaded:
        np.testing.assert_array_equal(after[k], ckpt[k].astype(after[k].dtype), err_msg=k)
    assert "re-initialised" in report.summary() and "model.23.cv3.2.2" in report.summary()


def test_load_pretrained_reinitialises_yolo11n_class_branch_whose_width_follows_the_class_count():
    """yolo11n's class branch is max(64, min(nc, 100)) wide: 80 classes -> 80, 3 -> 64, so its
    hidden layers after the first depthwise convolution change shape too (as in Ultralytics)."""
    ckpt = _checkpoint("n", 80)
    model = fresh_model("n", 3)
    report = convert.load_pretrained(model, ckpt)
    layers = sorted({k.rsplit(".", 1)[0] for k in report.reinitialized})
    want = sorted(f"model.23.cv3.{i}.{layer}" for i in range(3) for layer in
                  ("0.1.conv", "0.1.bn", "1.0.conv", "1.0.bn", "1.1.conv", "1.1.bn", "2"))
    assert layers == want
    assert all(k in report.loaded for k in ("model.23.cv3.0.0.0.conv.weight", "model.23.cv2.0.2.weight"))


def test_load_pretrained_with_same_class_count_loads_everything():
    ckpt = _checkpoint("n", 5)
    model = abstract_model("n", 5)  # every tensor is loaded, so an abstract model becomes concrete
    report = convert.load_pretrained(model, ckpt)
    assert report.reinitialized == [] and len(report.loaded) == 499
    after = convert.to_state_dict(model)
    for k, v in ckpt.items():
        np.testing.assert_array_equal(after[k], v.astype(after[k].dtype), err_msg=k)


def test_load_pretrained_refuses_mismatches_outside_the_class_branch():
    ckpt = _checkpoint("s", 80)  # another scale, and another class count
    with pytest.raises(ValueError, match="shape mismatch: model.0.conv.weight") as info:
        convert.load_pretrained(abstract_model("n", 3), ckpt)
    assert "model.23.cv3.0.2.weight" not in str(info.value)  # the class outputs alone would be fine


def test_load_pretrained_refuses_class_branch_mismatch_when_class_counts_agree():
    ckpt = _checkpoint("n", 80)
    ckpt["model.23.cv3.0.1.1.conv.weight"] = np.zeros((80, 80, 3, 3), np.float32)
    with pytest.raises(ValueError, match="shape mismatch: model.23.cv3.0.1.1.conv.weight"):
        convert.load_pretrained(abstract_model("n", 80), ckpt)


def test_load_pretrained_works_for_the_notebook_network():
    torch.manual_seed(0)
    ckpt = {k: v.numpy() for k, v in R.YOLOv11(num_classes=80, base=8, depth=1).state_dict().items()}
    model = nnx.eval_shape(lambda: build_model("tiny", num_classes=4, rngs=nnx.Rngs(0)))
    convert.load_state_dict(model, R.YOLOv11(num_classes=4, base=8, depth=1).state_dict())
    report = convert.load_pretrained(model, ckpt)
    assert report.reinitialized == [f"head.heads.{i}.cls_pred.{leaf}" for i in range(3) for leaf in ("bias", "weight")]
