"""The CPU convolutions of ``conv_impl="cpu_taps"`` (``kernels.cpu_taps_conv_general_dilated``):
plain convolutions with their kernel gradient as one matmul per tap, and depthwise convolutions
as a sum over taps; and their selection, an explicit model setting.

Tolerances: plain convolutions: values equal to ``lax.conv_general_dilated`` exactly (same
forward op); input gradients exactly (same transpose); kernel gradients to a relative error of
1e-5 (float32 sums in another order). Depthwise: values to 1e-6 of the largest output, input
and kernel gradients to a relative error of 1e-5 (9 products summed in another order).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from yolo11_jax import kernels as K
from yolo11_jax import model as M
from yolo11_jax.presets import build_model
from tests.helpers import rel_err

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("k,stride,hw,cin,cout", [(3, 1, 12, 5, 7), (3, 2, 12, 4, 6), (1, 1, 8, 6, 3),
                                                  (3, 2, 13, 3, 4), (5, 1, 9, 2, 3)])
def test_kernel_gradient_matches_lax(k, stride, hw, cin, cout):
    rng = np.random.default_rng(k * 100 + stride * 10 + hw)
    x = jnp.asarray(rng.standard_normal((2, hw, hw + 3, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)

    def ours(x, w):
        return jnp.sum(jnp.sin(K.cpu_taps_conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)))

    def theirs(x, w):
        return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)))

    assert "custom_vjp" in str(jax.make_jaxpr(ours)(x, w))  # the fast path is really taken
    np.testing.assert_array_equal(jax.jit(ours)(x, w), jax.jit(theirs)(x, w))
    (gx, gw), (rx, rw) = jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.jit(jax.grad(theirs, (0, 1)))(x, w)
    np.testing.assert_array_equal(gx, rx)
    assert rel_err(gw, rw) <= 1e-5


def test_cpu_depthwise_leaves_plain_convolutions_to_lax():
    x, w = jnp.ones((1, 8, 8, 4), jnp.float32), jnp.ones((3, 3, 4, 4), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)
    jaxpr = str(jax.make_jaxpr(lambda x: K.conv_function("cpu_depthwise")(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                          dimension_numbers=dn))(x))
    assert "custom_vjp" not in jaxpr and "conv_general_dilated" in jaxpr


def test_other_convolutions_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    w = jnp.ones((3, 3, 4, 4), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)
    grouped = jax.make_jaxpr(lambda x: K.cpu_taps_conv_general_dilated(x, w[:, :, :2], (1, 1), ((1, 1), (1, 1)),
                                                              dimension_numbers=dn, feature_group_count=2))(x)
    dilated = jax.make_jaxpr(lambda x: K.cpu_taps_conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                                              dimension_numbers=dn))(x)
    same = jax.make_jaxpr(lambda x: K.cpu_taps_conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))(x)
    xb, wb = x.astype(jnp.bfloat16), w[:, :, :1].astype(jnp.bfloat16)
    depthwise_bf16 = jax.make_jaxpr(lambda x: K.cpu_taps_conv_general_dilated(x, wb, (1, 1), ((1, 1), (1, 1)),
                                                                     dimension_numbers=dn, feature_group_count=4))(xb)
    lax_impl = jax.make_jaxpr(lambda x: K.conv_function("lax")(x, w[:, :, :1], (1, 1), ((1, 1), (1, 1)),
                                                               dimension_numbers=dn, feature_group_count=4))(x)
    for jaxpr in (grouped, dilated, same, depthwise_bf16, lax_impl):
        assert "custom_vjp" not in str(jaxpr) and "conv_general_dilated" in str(jaxpr)


@pytest.mark.parametrize("k,stride,hw,c", [(3, 1, 12, 5), (3, 2, 12, 4), (3, 2, 13, 6), (5, 1, 9, 3)])
def test_depthwise_convolution_by_taps_matches_lax(k, stride, hw, c):
    """Depthwise (one input channel per group) float32 convolutions on the CPU run as a sum over
    the kernel taps (no convolution op left), equal to lax's to float summation order."""
    rng = np.random.default_rng(k * 100 + stride * 10 + hw + c)
    x = jnp.asarray(rng.standard_normal((2, hw, hw + 3, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)

    def ours(x, w):
        return K.cpu_taps_conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn, feature_group_count=c)

    def theirs(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn,
                                            feature_group_count=c)

    assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(x, w))  # the taps path is really taken
    cpu_depthwise = K.conv_function("cpu_depthwise")
    dw_jaxpr = str(jax.make_jaxpr(lambda x, w: cpu_depthwise(x, w, (stride, stride), pad, dimension_numbers=dn,
                                                             feature_group_count=c))(x, w))
    assert "conv_general_dilated" not in dw_jaxpr and "custom_vjp" not in dw_jaxpr  # the same taps, plain jnp
    got, want = jax.jit(ours)(x, w), jax.jit(theirs)(x, w)
    assert got.shape == want.shape
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-6 * float(jnp.max(jnp.abs(want)))
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    (gx, gw), (rx, rw) = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w), jax.jit(jax.grad(loss(theirs), (0, 1)))(x, w)
    assert rel_err(gx, rx) <= 1e-5 and rel_err(gw, rw) <= 1e-5


def test_networks_use_the_kernels_they_are_built_with():
    """lax by default, whatever the backend; the CPU kernels only when asked for, recorded on the model."""
    default = M.YOLOv11(3, base=8, depth=1, rngs=nnx.Rngs(0))
    chosen = M.YOLOv11(3, base=8, depth=1, conv_impl="cpu_taps", rngs=nnx.Rngs(0))
    yolo = build_model("yolo11n", num_classes=3, conv_impl="cpu_taps", rngs=nnx.Rngs(0))
    for model, impl in ((default, "lax"), (chosen, "cpu_taps"), (yolo, "cpu_taps")):
        convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
        assert convs and all(c.conv_general_dilated is K.CONV_IMPLS[impl] for c in convs)
        assert model.conv_impl == impl and K.conv_impl_of(model) == impl
    assert K.conv_impl_of(K.set_conv_impl(yolo, "lax")) == "lax"
    assert K.conv_impl_of(K.set_conv_impl(yolo, "cpu_depthwise")) == "cpu_depthwise"
    with pytest.raises(ValueError, match="unknown conv_impl 'taps'"):
        build_model("tiny", conv_impl="taps", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_network_with_cpu_kernels_matches_lax():
    """The tiny network in train mode: the same outputs and gradients with either kernel set
    (outputs to 1e-5, gradients to a relative error of 1e-4 per leaf: float32 sums in another
    order through a dozen layers)."""
    model = build_model("yolo11n", num_classes=3, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)), jnp.float32)

    def loss_and_grads(impl):
        graphdef, params, rest = nnx.split(K.set_conv_impl(model, impl), nnx.Param, ...)

        def loss(p, rest):
            outs = nnx.merge(graphdef, p, rest, copy=True)(images)  # Variables at this trace level
            return sum(jnp.sum(jnp.sin(o)) for level in outs for o in level), outs
        (value, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
        return outs, jax.tree.leaves(grads)

    (outs_l, grads_l), (outs_t, grads_t) = loss_and_grads("lax"), loss_and_grads("cpu_taps")
    for a, b in zip(jax.tree.leaves(outs_t), jax.tree.leaves(outs_l)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert len(grads_t) == len(grads_l)
    assert max(rel_err(a, b) for a, b in zip(grads_t, grads_l)) <= 1e-4


def test_auto_kernels_follow_the_backend_and_the_family():
    """'auto' picks lax off a CPU, and on a CPU each family's fastest kernels; explicit names pass
    through; unknown names and families are refused by name."""
    assert K.resolve_conv_impl("auto", "yolo11", backend="cpu") == "cpu_depthwise"
    assert K.resolve_conv_impl("auto", "notebook", backend="cpu") == "cpu_taps"
    assert K.resolve_conv_impl("auto", "yolo11", backend="gpu") == "lax"
    assert K.resolve_conv_impl("auto", "notebook", backend="tpu") == "lax"
    assert K.resolve_conv_impl("cpu_taps", "yolo11", backend="gpu") == "cpu_taps"
    with pytest.raises(ValueError, match="bogus"):
        K.resolve_conv_impl("bogus", "yolo11", backend="cpu")
    with pytest.raises(ValueError, match="'other'"):
        K.resolve_conv_impl("auto", "other", backend="cpu")
    # build_model resolves it (this suite runs on a CPU) and records what it chose.
    assert jax.default_backend() == "cpu"
    assert K.conv_impl_of(build_model("tiny", conv_impl="auto", rngs=nnx.Rngs(0))) == "cpu_taps"
    model = build_model("yolo11n", num_classes=2, conv_impl="auto", rngs=nnx.Rngs(0))
    assert K.conv_impl_of(model) == model.conv_impl == "cpu_depthwise"
