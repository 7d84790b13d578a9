"""Forward-mode and second-order autodiff through the networks built with the default kernels
(``conv_impl="lax"``): ``jax.jvp`` and ``jax.hessian``, the tools of influence functions,
curvature and NTK studies.

Checks: a jvp agrees with the vjp of the same function (``<u, J v> = <J^T u, v>``, to 1e-4
relative: two float32 products in another order); the forward-over-reverse Hessian of a
scalar loss in two variables equals the reverse-over-reverse one (to 1e-4 relative) and is
symmetric. Networks in train mode (BatchNorm on batch statistics), so the statistics are part
of the differentiated graph.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from yolo11_jax import model as M
from yolo11_jax.presets import build_model


class _Mini(nnx.Module):
    """The shared layers in a few lines: a strided ConvBNSiLU, a depthwise one, a C3k2, the
    attention block and a DFL head. x (B, 32, 32, 3) -> one level of outputs at 16 x 16."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = M.ConvBNSiLU(3, 8, 3, 2, rngs=rngs)
        self.dw = M.ConvBNSiLU(8, 8, 3, groups=8, rngs=rngs)
        self.c3k2 = M.C3k2(8, 8, n=1, rngs=rngs)
        self.psa = M.C2PSA(8, n_heads=2, rngs=rngs)
        self.head = M.DFLHead(8, num_classes=3, reg_max=4, rngs=rngs)

    def __call__(self, x):
        return [self.head(self.psa(self.c3k2(self.dw(self.stem(x)))))]


def _outputs_fn(preset: str, images: jax.Array, conv_impl: str = "lax"):
    """(f, state): f(x, state), x (2,) -> the network's outputs for ``images * x[0] + x[1]``,
    flattened and concatenated. The state is an argument, so the BatchNorm updates stay inside
    the traced function."""
    if preset == "mini":
        model = M.kernels.set_conv_impl(_Mini(nnx.Rngs(0)), conv_impl)
    else:
        model = build_model(preset, num_classes=3, conv_impl=conv_impl, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def f(x, state):
        outs = nnx.merge(graphdef, state, copy=True)(images * x[0] + x[1])  # Variables at this trace level
        return jnp.concatenate([o.reshape(-1) for level in outs for o in level])

    return f, state


@pytest.mark.parametrize("preset,conv_impl", [("tiny", "lax"), ("mini", "cpu_depthwise"),
                                               pytest.param("yolo11n", "lax", marks=pytest.mark.slow)])
def test_jvp_agrees_with_vjp(preset, conv_impl):
    """Also through ``conv_impl="cpu_depthwise"``, whose depthwise taps are plain ``jnp``."""
    images = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
    f, state = _outputs_fn(preset, images, conv_impl)
    x, v = jnp.array([1.0, 0.0]), jnp.array([0.3, -0.7])
    y, jv = jax.jit(lambda x, v, s: jax.jvp(lambda x_: f(x_, s), (x,), (v,)))(x, v, state)
    u = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape), jnp.float32)
    (jtu,) = jax.jit(lambda x, u, s: jax.vjp(lambda x_: f(x_, s), x)[1](u))(x, u, state)
    lhs, rhs = float(jnp.vdot(u, jv)), float(jnp.vdot(jtu, v))
    assert np.isfinite(lhs) and abs(lhs) > 0
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("preset", ["mini", pytest.param("tiny", marks=pytest.mark.slow)])
def test_hessian_through_the_network(preset):
    images = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
    f, state = _outputs_fn(preset, images)
    loss = lambda x, s: jnp.mean(jnp.square(f(x, s)))  # noqa: E731
    x = jnp.array([1.0, 0.1])
    fwd_over_rev = np.asarray(jax.jit(jax.hessian(loss))(x, state))
    rev_over_rev = np.asarray(jax.jit(jax.jacrev(jax.grad(loss)))(x, state))
    assert fwd_over_rev.shape == (2, 2) and np.all(np.isfinite(fwd_over_rev))
    scale = np.max(np.abs(rev_over_rev))
    assert scale > 0
    np.testing.assert_allclose(fwd_over_rev, rev_over_rev, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(fwd_over_rev, fwd_over_rev.T, rtol=0, atol=1e-4 * scale)


def test_cpu_kernels_are_reverse_mode_only():
    """The documented limit of ``conv_impl="cpu_taps"``: its kernel-gradient rule is a
    ``custom_vjp``, which forward-mode autodiff refuses; the default has no such limit."""
    images = jnp.ones((1, 32, 32, 3), jnp.float32)
    f, state = _outputs_fn("mini", images, conv_impl="cpu_taps")
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jit(lambda x, s: jax.jvp(lambda x_: f(x_, s), (x,), (x,)))(jnp.array([1.0, 0.0]), state)
