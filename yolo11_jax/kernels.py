"""Convolution kernels for ``nnx.Conv``, selected explicitly per model with ``conv_impl``.

``conv_impl`` names the function every ``nnx.Conv`` of a network calls in place of
``lax.conv_general_dilated``:

``"lax"`` (the library default)
    ``jax.lax.conv_general_dilated`` itself. Every JAX transformation works through it:
    ``grad``, ``vjp``, ``jvp``, ``linearize``, ``jacfwd``, ``hessian``.
``"cpu_depthwise"``
    :func:`cpu_depthwise_conv_general_dilated`: depthwise convolutions (YOLO11's ``DWConv`` and
    attention ``pe``) run as a sum over taps (:func:`depthwise_conv_by_taps`, plain ``jnp``, so
    every transformation works, ``jvp`` included); every other convolution is lax's. XLA's CPU
    backend runs depthwise convolutions an order of magnitude slower than this form; its plain
    convolutions, kernel gradients included, are fastest as they are at YOLO11's sizes.
``"cpu_taps"``
    :func:`cpu_taps_conv_general_dilated`: as ``"cpu_depthwise"``, and plain convolutions keep
    lax's forward pass and input gradient but take their kernel gradient as one matmul per
    kernel tap (a ``jax.custom_vjp``, so forward-mode autodiff, ``jvp`` / ``jacfwd`` /
    ``hessian``, does not go through it). Faster than lax's kernel gradient for the notebook's
    wide layers, 3x slower for YOLO11n's narrow ones (figures in ``benchmarks/RESULTS.md``).

The values of both equal lax's up to float summation order (tests/test_conv.py).

A model runs the kernels it was built with (``presets.build_model(..., conv_impl=...)``, or
:func:`set_conv_impl` on any network), and :func:`conv_impl_of` reads the choice back from the
network's convolutions. The one place that looks at the backend is :func:`resolve_conv_impl`,
which turns ``"auto"`` (the named training configs' choice) into a kernel set when the network
is built: ``"lax"`` on a GPU or TPU, and on a CPU ``"cpu_depthwise"`` for the YOLO11 family and
``"cpu_taps"`` for the notebook's networks (the fastest of each on a CPU, and the quickest to
compile: see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Padding = tuple[tuple[int, int], tuple[int, int]]


def weight_grad_by_shifted_dots(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, int, int, int],
                                strides: tuple[int, int], padding: Padding) -> jax.Array:
    """d(conv)/d(kernel) of an NHWC x HWIO convolution as one matmul per kernel tap:
    ``dW[i, j] = x_pad[:, i::s, j::s, :]^T @ dy`` over the (B * Ho * Wo) positions.
    x (B, H, W, ci), dy (B, Ho, Wo, co) -> (kh, kw, ci, co), accumulated in at least float32.

    On XLA's CPU backend this runs 1.3-3.9x faster than the convolution's own transpose
    (measured at the notebook's layer sizes; see benchmarks/RESULTS.md).
    """
    kh, kw, ci, co = kernel_shape
    (plo_h, phi_h), (plo_w, phi_w) = padding
    sh, sw = strides
    b, ho, wo, _ = dy.shape
    acc = jnp.promote_types(jnp.result_type(x, dy), jnp.float32)  # float32, float64 under x64
    xp = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)))
    dy2 = dy.reshape(b * ho * wo, co)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = jax.lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, ci),
                               (1, sh, sw, 1))
            taps.append(jnp.matmul(xs.reshape(b * ho * wo, ci).T, dy2, preferred_element_type=acc))
    return jnp.stack(taps).reshape(kh, kw, ci, co)


def _lax_nhwc(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc_taps_wgrad(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """lax's NHWC x HWIO convolution (x (B, H, W, ci), kernel (kh, kw, ci, co) -> (B, Ho, Wo, co)),
    whose kernel gradient is :func:`weight_grad_by_shifted_dots`; the input gradient is lax's."""
    return _lax_nhwc(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _lax_nhwc(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _lax_nhwc(x_, kernel, strides, padding), x)
    dkernel = weight_grad_by_shifted_dots(x, dy, kernel.shape, strides, padding)
    return input_vjp(dy)[0], dkernel.astype(kernel.dtype)


conv_nhwc_taps_wgrad.defvjp(_conv_fwd, _conv_bwd)


def depthwise_conv_by_taps(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """A depthwise convolution written as a sum over its kernel taps of shifted, strided slices
    of ``x`` times one row of the kernel: ``x (B, H, W, C)`` NHWC, ``kernel (kh, kw, 1, C)`` HWIO,
    explicit ``padding ((top, bottom), (left, right))`` -> ``(B, H', W', C)``.

    Equal to ``lax.conv_general_dilated(..., feature_group_count=C)`` up to float summation
    order (tested in tests/test_conv.py). XLA's CPU backend runs depthwise convolutions
    an order of magnitude slower than this elementwise form, which it fuses into one loop;
    autodiff (forward and reverse) goes through the slices."""
    kh, kw, _, c = kernel.shape
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    b, hp, wp, _ = x.shape
    h_out, w_out = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(x, (0, i, j, 0), (b, i + (h_out - 1) * sh + 1, j + (w_out - 1) * sw + 1, c),
                                (1, sh, sw, 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def cpu_taps_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                  dimension_numbers=None, feature_group_count=1, precision=None, *,
                                  plain_taps_wgrad: bool = True, **kwargs):
    """``lax.conv_general_dilated``'s signature, for ``nnx.Conv(conv_general_dilated=...)``
    (``conv_impl="cpu_taps"``). For NHWC inputs with explicit padding and no dilation:

    * plain convolutions run as :func:`conv_nhwc_taps_wgrad` (kernel gradient by shifted dots);
    * float32 / float64 depthwise convolutions (one input channel per group, YOLO11's ``DWConv``
      and attention ``pe``) run as :func:`depthwise_conv_by_taps`.

    Every other convolution (grouped, dilated, string padding, bfloat16 depthwise, a precision
    or extra option) is lax's, unchanged. ``plain_taps_wgrad=False`` leaves plain convolutions to
    lax too (``conv_impl="cpu_depthwise"``)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # nnx.Conv passes out_sharding=None
    plain_nhwc = (not kwargs and precision is None
                  and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
                  and not isinstance(padding, str) and lhs.ndim == 4
                  and _is_nhwc(dimension_numbers, lhs.ndim))
    if plain_nhwc:
        strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
        if feature_group_count == 1 and plain_taps_wgrad:
            return conv_nhwc_taps_wgrad(lhs, rhs, strides, pads)
        depthwise = (rhs.shape[2] == 1 and rhs.shape[3] == feature_group_count == lhs.shape[3]
                     and lhs.dtype in (jnp.float32, jnp.float64) and rhs.dtype == lhs.dtype)
        if depthwise:
            return depthwise_conv_by_taps(lhs, rhs, strides, pads)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)


def cpu_depthwise_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                       dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated``'s signature (``conv_impl="cpu_depthwise"``): float32 / float64
    NHWC depthwise convolutions as :func:`depthwise_conv_by_taps`, every other one lax's."""
    return cpu_taps_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                         dimension_numbers, feature_group_count, precision,
                                         plain_taps_wgrad=False, **kwargs)


def _is_nhwc(dimension_numbers, ndim) -> bool:
    want = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, ("NHWC", "HWIO", "NHWC"))
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return dimension_numbers == want
    return jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers) == want


# conv_impl name -> the function nnx.Conv calls.
CONV_IMPLS: dict[str, Callable] = {
    "lax": jax.lax.conv_general_dilated,
    "cpu_depthwise": cpu_depthwise_conv_general_dilated,
    "cpu_taps": cpu_taps_conv_general_dilated,
}
DEFAULT_CONV_IMPL = "lax"
AUTO = "auto"
# What "auto" picks on a CPU, by network family (presets.ModelPreset.family).
CPU_AUTO_BY_FAMILY: dict[str, str] = {"yolo11": "cpu_depthwise", "notebook": "cpu_taps"}


def resolve_conv_impl(conv_impl: str, family: str, backend: str | None = None) -> str:
    """``conv_impl`` itself, or for ``"auto"``: ``"lax"`` when ``backend`` (default: JAX's
    default backend) is not ``"cpu"``, else ``CPU_AUTO_BY_FAMILY[family]``.

    Raises ``ValueError`` naming the unknown kernel set or family."""
    if conv_impl != AUTO:
        conv_function(conv_impl)  # validates the name
        return conv_impl
    if (backend or jax.default_backend()) != "cpu":
        return "lax"
    try:
        return CPU_AUTO_BY_FAMILY[family]
    except KeyError:
        raise ValueError(f"conv_impl 'auto': no CPU choice for network family {family!r}; "
                         f"known: {sorted(CPU_AUTO_BY_FAMILY)}") from None


def conv_function(conv_impl: str) -> Callable:
    """The convolution function of ``conv_impl`` ("lax", "cpu_depthwise" or "cpu_taps")."""
    try:
        return CONV_IMPLS[conv_impl]
    except KeyError:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; choose one of {sorted(CONV_IMPLS)}") from None


def set_conv_impl(model: nnx.Module, conv_impl: str) -> nnx.Module:
    """Make every ``nnx.Conv`` of ``model`` call ``conv_impl``'s function (in place; returns
    ``model``) and record the choice as ``model.conv_impl``. A jitted function retraces for the
    new kernels: the function is part of the module's static structure."""
    fn = conv_function(conv_impl)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = fn
    model.conv_impl = conv_impl
    return model


def conv_impl_of(model: nnx.Module) -> str:
    """The ``conv_impl`` that every ``nnx.Conv`` of ``model`` runs, read from the convolutions
    themselves. Raises ``ValueError`` when they differ or one runs a function not in
    ``CONV_IMPLS``."""
    names = {fn: name for name, fn in CONV_IMPLS.items()}
    found = set()
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv):
            fn = module.conv_general_dilated
            if fn not in names:
                raise ValueError(f"convolution {'/'.join(map(str, path))} runs {fn!r}, not one of {sorted(CONV_IMPLS)}")
            found.add(names[fn])
    if len(found) > 1:
        raise ValueError(f"the network's convolutions mix conv_impl {sorted(found)}")
    return found.pop() if found else DEFAULT_CONV_IMPL
