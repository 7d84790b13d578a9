"""Forward parity of the Flax NNX network with reference_torch, and weight interop.

Tolerance: max|jax - torch| / max(1, max|torch|) <= 1e-4 per output, float32.
"""

import numpy as np
import pytest
import torch
from flax import nnx
import jax.numpy as jnp

import reference_torch as R
from yolo11_jax import YOLOv11, build_model, count_parameters, convert
from yolo11_jax.model import jit_forward
from tests.helpers import nchw, randomize_batchnorm, rel_err, to_nhwc

TOL = 1e-4
OUTPUT_KINDS = ("cls_logits", "box_ltrb", "box_raw")


def make_pair(num_classes=7, base=8, depth=1, seed=0):
    torch.manual_seed(seed)
    ref = R.YOLOv11(num_classes=num_classes, base=base, depth=depth)
    randomize_batchnorm(ref, seed)
    model = YOLOv11(num_classes, base=base, depth=depth, rngs=nnx.Rngs(seed + 1))
    convert.load_state_dict(model, ref.state_dict())
    return ref, model


def forward_errors(ref, model, images, mode):
    getattr(ref, mode)()
    getattr(model, mode)()
    with torch.no_grad():
        out_ref = ref(nchw(images))
    out_jax = jit_forward(model, jnp.asarray(images))
    errors = {}
    for level, (lt, lj) in enumerate(zip(out_ref, out_jax)):
        for kind, t, j in zip(OUTPUT_KINDS, lt, lj):
            errors[(level, kind)] = rel_err(np.asarray(j), to_nhwc(t))
    return errors


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("base,depth,hw", [(8, 1, (128, 96)), (16, 2, (64, 128))])
def test_forward_matches_reference(mode, base, depth, hw):
    ref, model = make_pair(base=base, depth=depth)
    images = np.random.default_rng(1).random((2, *hw, 3), dtype=np.float32)
    errors = forward_errors(ref, model, images, mode)
    assert len(errors) == 9
    worst = max(errors.values())
    assert worst <= TOL, errors


def test_outputs_have_documented_shapes():
    _, model = make_pair(num_classes=5, base=8, depth=1)
    out = jit_forward(model, jnp.zeros((2, 96, 64, 3)))
    assert [tuple(o.shape) for lvl in out for o in lvl] == [
        (2, 12, 8, 5), (2, 12, 8, 4), (2, 12, 8, 64),
        (2, 6, 4, 5), (2, 6, 4, 4), (2, 6, 4, 64),
        (2, 3, 2, 5), (2, 3, 2, 4), (2, 3, 2, 64),
    ]


def test_batchnorm_running_statistics_match_after_train_forward():
    ref, model = make_pair(base=8, depth=1)
    images = np.random.default_rng(2).random((2, 64, 64, 3), dtype=np.float32)
    forward_errors(ref, model, images, "train")
    ours, theirs = convert.to_state_dict(model), ref.state_dict()
    stat_keys = [k for k in theirs if "running_" in k]
    assert len(stat_keys) > 50
    for k in stat_keys:
        assert rel_err(ours[k], theirs[k].numpy()) <= 1e-5, k
    # Both ran exactly one train-mode batch.
    assert all(int(ours[k]) == int(theirs[k]) == 1 for k in theirs if k.endswith("num_batches_tracked"))
    # The stored variance is the unbiased one: a model that stored the biased variance would
    # differ from torch by factor n / (n - 1) at the 4x4 level (n = 2 * 2 * 2 = 8 at 64 px).
    k = "c2psa.cv2.bn.running_var"
    assert rel_err(ours[k], theirs[k].numpy()) <= 1e-5


def test_attention_block_matches_reference():
    torch.manual_seed(3)
    ref = R.C2PSA(64)
    randomize_batchnorm(ref, 3)
    model = YOLOv11(3, base=4, depth=1, rngs=nnx.Rngs(0))  # c2psa has 4 * 16 = 64 channels
    sd = {f"c2psa.{k}": v for k, v in ref.state_dict().items()}
    full = convert.to_state_dict(model)
    full.update({k: v.numpy() for k, v in sd.items()})
    convert.load_state_dict(model, full)
    x = np.random.default_rng(3).standard_normal((2, 5, 3, 64)).astype(np.float32)
    for mode in ("eval", "train"):
        getattr(ref, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            want = to_nhwc(ref(nchw(x)))
        got = np.asarray(model.c2psa(jnp.asarray(x)))
        assert rel_err(got, want) <= TOL, mode


@pytest.mark.slow
def test_notebook_network_matches_reference_in_both_modes():
    """The full 110M-parameter network; 640 px in train mode, 320 px in eval mode.

    Train mode at 640 is compared with the reference evaluated in float64: at this depth and
    size, torch's own float32 result differs from its float64 result by up to 1.5e-4
    (measured: 8e-5..1.5e-4 per output), i.e. by more than the 1e-4 tolerance, while the JAX
    float32 result stays within 6e-5 of it. Holding JAX to 1e-4 of the float64 reference is
    the stricter statement; eval mode is compared with torch in float32 as everywhere else.
    """
    ref, model = make_pair(num_classes=80, base=64, depth=2)
    assert count_parameters(model) == 110_212_128
    assert count_parameters(model, notebook_style=False) == 110_212_080
    assert sum(p.numel() for p in ref.parameters()) == 110_212_128
    rng = np.random.default_rng(4)
    errors_eval = forward_errors(ref, model, rng.random((2, 320, 320, 3), dtype=np.float32), "eval")
    assert max(errors_eval.values()) <= TOL, errors_eval

    images = rng.random((1, 640, 640, 3), dtype=np.float32)
    ref64 = ref.double().train()
    model.train()
    with torch.no_grad():
        out_ref = ref64(nchw(images).double())
    out_jax = jit_forward(model, jnp.asarray(images))
    errors_train = {(level, kind): rel_err(np.asarray(j), to_nhwc(t))
                    for level, (lt, lj) in enumerate(zip(out_ref, out_jax))
                    for kind, t, j in zip(OUTPUT_KINDS, lt, lj)}
    assert len(errors_train) == 9
    assert max(errors_train.values()) <= TOL, errors_train


def test_notebook_preset_has_notebook_parameter_count():
    model = build_model("notebook", rngs=nnx.Rngs(0))
    assert count_parameters(model) == 110_212_128


def test_state_dict_round_trip_is_exact():
    ref, model = make_pair(base=8, depth=1)
    with torch.no_grad():  # make num_batches_tracked and stats non-default
        ref.train()
        ref(torch.rand(2, 3, 64, 64))
    convert.load_state_dict(model, ref.state_dict())
    back = convert.to_state_dict(model)
    ref2 = R.YOLOv11(num_classes=7, base=8, depth=1)
    ref2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    original = ref.state_dict()
    assert back.keys() == original.keys()
    for k, v in ref2.state_dict().items():
        assert v.dtype == original[k].dtype, k
        assert torch.equal(v, original[k]), k


def test_bfloat16_state_dict_loads_as_its_float32_values():
    """A state dict saved in bfloat16 (``ref.bfloat16()``) loads; NumPy has no bfloat16, so
    each tensor arrives as float32 holding exactly the bfloat16 values."""
    ref, model = make_pair(base=8, depth=1)
    sd = ref.bfloat16().state_dict()
    convert.load_state_dict(model, sd)
    back = convert.to_state_dict(model)
    for k, v in sd.items():
        expected = v.float() if v.is_floating_point() else v
        assert torch.equal(torch.from_numpy(back[k]).to(expected.dtype), expected), k


def test_safetensors_round_trip_is_exact(tmp_path):
    ref, model = make_pair(base=8, depth=1)
    path = tmp_path / "w.safetensors"
    convert.save_safetensors(model, path)
    model2 = YOLOv11(7, base=8, depth=1, rngs=nnx.Rngs(99))
    convert.load_safetensors(path, model2)
    a, b = convert.to_state_dict(model), convert.to_state_dict(model2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    from safetensors.torch import load_file
    ref2 = R.YOLOv11(num_classes=7, base=8, depth=1)
    ref2.load_state_dict(load_file(str(path)), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k


def test_load_state_dict_lists_every_problem_at_once():
    ref, model = make_pair(base=8, depth=1)
    sd = dict(ref.state_dict())
    del sd["backbone.stem.conv.weight"]
    del sd["c2psa.attn.in_proj_bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["head.heads.0.cls_pred.bias"] = torch.zeros(8)  # 7 classes expected
    with pytest.raises(ValueError) as info:
        convert.load_state_dict(model, sd)
    msg = str(info.value)
    assert "4 problems" in msg
    for needle in ["missing key: backbone.stem.conv.weight", "missing key: c2psa.attn.in_proj_bias",
                   "unexpected key: extra.weight", "shape mismatch: head.heads.0.cls_pred.bias"]:
        assert needle in msg


def test_load_state_dict_rejects_a_changed_dfl_projection():
    ref, model = make_pair(base=8, depth=1)
    sd = dict(ref.state_dict())
    sd["head.heads.1.proj"] = torch.arange(16.0) * 2
    with pytest.raises(ValueError, match="head.heads.1.proj"):
        convert.load_state_dict(model, sd)


@pytest.mark.parametrize("shape,needle", [
    ((64, 64, 3), "rank 4"),
    ((1, 3, 64, 64), "channels"),
    ((1, 64, 64, 1), "channels"),
    ((1, 64, 80, 3), "multiples of 32"),
])
def test_bad_input_shapes_raise_clear_errors(shape, needle):
    model = YOLOv11(3, base=4, depth=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=needle):
        model(jnp.zeros(shape))
