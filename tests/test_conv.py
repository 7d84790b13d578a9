"""The CPU convolution with its kernel gradient as one matmul per tap (``model.conv_general_dilated``).

Tolerance: values equal to ``lax.conv_general_dilated`` exactly (same forward op); input
gradients exactly (same transpose); kernel gradients to a relative error of 1e-5 (float32
sums in another order).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from yolo11_jax import model as M
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
        return jnp.sum(jnp.sin(M.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)))

    def theirs(x, w):
        return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)))

    assert "custom_vjp" in str(jax.make_jaxpr(ours)(x, w))  # the fast path is really taken
    np.testing.assert_array_equal(jax.jit(ours)(x, w), jax.jit(theirs)(x, w))
    (gx, gw), (rx, rw) = jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.jit(jax.grad(theirs, (0, 1)))(x, w)
    np.testing.assert_array_equal(gx, rx)
    assert rel_err(gw, rw) <= 1e-5


def test_other_convolutions_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    w = jnp.ones((3, 3, 4, 4), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)
    grouped = jax.make_jaxpr(lambda x: M.conv_general_dilated(x, w[:, :, :1], (1, 1), ((1, 1), (1, 1)),
                                                              dimension_numbers=dn, feature_group_count=4))(x)
    dilated = jax.make_jaxpr(lambda x: M.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                                              dimension_numbers=dn))(x)
    same = jax.make_jaxpr(lambda x: M.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))(x)
    for jaxpr in (grouped, dilated, same):
        assert "custom_vjp" not in str(jaxpr)


def test_network_convolutions_use_it_on_cpu():
    model = M.YOLOv11(3, base=8, depth=1, rngs=nnx.Rngs(0))
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    assert convs and all(c.conv_general_dilated is M.conv_general_dilated for c in convs)
