"""The notebook's YOLOv11 network in Flax NNX, NHWC, and the building blocks it shares with
Ultralytics' YOLO11 family (``yolo11.py``): ``ConvBNSiLU``, ``BatchNorm``, ``Bottleneck``,
``split_chain`` (the C3k2 data flow), ``SPPF``, ``upsample2x`` and ``dfl_expectation``.

The module tree mirrors ``reference_torch.YOLOv11`` attribute for attribute
(``backbone.s1_c3k2.bottlenecks.0.cv1.conv``, ``head.heads.2.cls_convs.1.bn``,
...), so converting weights is a short table of leaf rules (see ``convert.py``):

=====================  ==========================  ===========================
PyTorch leaf           NNX leaf                    rule
=====================  ==========================  ===========================
``conv.weight``        ``conv.kernel``             OIHW -> HWIO
``*_pred.bias``        ``*_pred.bias``             as is
``bn.weight / bias``   ``bn.scale / bias``         as is
``bn.running_mean``    ``bn.mean``                 as is
``bn.running_var``     ``bn.var``                  as is (both unbiased)
``attn.in_proj_*``     ``attn.query/key/value``    split in 3, (c, heads, hd)
``attn.out_proj.*``    ``attn.out``                (heads, hd, c)
``heads.i.proj``       (constant)                  must equal ``arange(reg_max)``
=====================  ==========================  ===========================

Differences from PyTorch that matter for parity (see docs/parity.md):

* Convolutions pad ``k // 2`` on every side explicitly; Flax's ``'SAME'`` pads
  stride-2 convolutions asymmetrically.
* ``BatchNorm`` is our own module with PyTorch's semantics: momentum 0.1 on
  the running statistics, normalisation by the biased batch variance, and the
  *unbiased* variance (times n / (n - 1)) stored in ``var``. Flax's
  ``nnx.BatchNorm`` stores the biased one.
* The DFL projection ``proj`` is a frozen ``nn.Parameter`` in the notebook;
  here it is a constant, so it is not a trainable ``nnx.Param``.

The convolutions are lax's unless the network is built with ``conv_impl="cpu_depthwise"`` or
``"cpu_taps"`` (``kernels.py``: faster on XLA's CPU backend, the same values up to summation
order).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from yolo11_jax import kernels
from yolo11_jax.anchors import STRIDES
from yolo11_jax.kernels import depthwise_conv_by_taps  # noqa: F401  (its old import path)

# One (cls_logits (B,H,W,C), box_ltrb (B,H,W,4), box_raw (B,H,W,4*reg_max)) per level.
LevelOutput = tuple[jax.Array, jax.Array, jax.Array]

# PyTorch's default Conv2d / Linear init: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
_torch_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# The convolution every nnx.Conv of a network is built with: lax's (``conv_impl="lax"``, the
# library default, through which every JAX transformation works). ``kernels.set_conv_impl``
# (``presets.build_model(..., conv_impl=...)``) swaps in the CPU kernels.
conv_general_dilated = kernels.conv_function(kernels.DEFAULT_CONV_IMPL)


class BatchNorm(nnx.Module):
    """``nn.BatchNorm2d`` semantics over the channel (last) axis of NHWC inputs.

    Train mode normalises with the biased batch variance and updates
    ``mean <- (1 - m) mean + m batch_mean`` and
    ``var <- (1 - m) var + m batch_var * n / (n - 1)`` with ``n = B * H * W``.
    Eval mode normalises with the running statistics.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        # Carried for exact state-dict round trips; with a fixed momentum it has no effect.
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.momentum = momentum
        self.eps = eps
        self.use_running_average = False

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C) -> (B, H, W, C)."""
        # Statistics in at least float32, whatever the activation dtype (float64 under x64).
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = int(np.prod([x.shape[a] for a in axes]))
            m = self.momentum
            # set_value, not `v[...] = new`: the same whole replacement, but flax's `[...] =` asks
            # the traced value for its `.sharding`, and jax answers a tracer's with an error
            # message it builds by walking the whole jaxpr so far: ~2 s of tracing the yolo11n
            # train step (81 BatchNorms; benchmarks/RESULTS.md)
            self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
            unbiased = var * (n / max(n - 1, 1))
            self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return ((xf - mean) * inv + self.bias[...]).astype(x.dtype)


class ConvBNSiLU(nnx.Module):
    """Conv (no bias, pad k // 2) -> BatchNorm -> SiLU; x (B, H, W, c_in) -> (B, H / s, W / s, c_out).

    ``groups`` splits the channels as ``nn.Conv2d(groups=...)`` does (``groups = c_in = c_out`` is
    depthwise; the kernel is then (k, k, 1, c_out)); ``act=False`` leaves out the SiLU. The
    BatchNorm has PyTorch's defaults (eps 1e-5, momentum 0.1); a network with other settings
    changes them on its ``BatchNorm`` modules after construction.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, *, groups: int = 1, act: bool = True,
                 rngs: nnx.Rngs):
        p = k // 2
        self.conv = nnx.Conv(
            c_in, c_out, kernel_size=(k, k), strides=(s, s), padding=((p, p), (p, p)),
            feature_group_count=groups, use_bias=False, kernel_init=_torch_kernel_init,
            conv_general_dilated=conv_general_dilated, rngs=rngs,
        )
        self.bn = BatchNorm(c_out)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn(self.conv(x))
        return jax.nn.silu(y) if self.act else y


class Bottleneck(nnx.Module):
    """Two ConvBNSiLU (kernels ``k``, hidden width ``int(c_out * e)``), plus the input when
    ``shortcut`` and ``c_in == c_out``."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, e: float = 0.5, *,
                 k: tuple[int, int] = (3, 3), rngs: nnx.Rngs):
        c_hid = int(c_out * e)
        self.cv1 = ConvBNSiLU(c_in, c_hid, k[0], rngs=rngs)
        self.cv2 = ConvBNSiLU(c_hid, c_out, k[1], rngs=rngs)
        self.add = shortcut and c_in == c_out

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k2(nnx.Module):
    """Split the 1x1 conv output in two, chain ``n`` bottlenecks on the second half."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, e: float = 0.5,
                 *, rngs: nnx.Rngs):
        self.c = int(c_out * e)
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c, 1, rngs=rngs)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c_out, 1, rngs=rngs)
        self.bottlenecks = nnx.List(
            [Bottleneck(self.c, self.c, shortcut, 1.0, rngs=rngs) for _ in range(n)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return split_chain(self.cv1, self.bottlenecks, self.cv2, x)


def split_chain(cv1, blocks, cv2, x: jax.Array) -> jax.Array:
    """The C2f / C3k2 data flow: split ``cv1(x)`` into two channel halves ``[a, b]``, apply the
    blocks one after another starting from ``b``, keep every output, and return
    ``cv2(concat([a, b, block_1(b), block_2(block_1(b)), ...]))``. x (B, H, W, C)."""
    y = list(jnp.split(cv1(x), 2, axis=-1))
    for block in blocks:
        y.append(block(y[-1]))
    return cv2(jnp.concatenate(y, axis=-1))


def max_pool_same(x: jax.Array, k: int) -> jax.Array:
    """``nn.MaxPool2d(k, stride=1, padding=k // 2)``: pads with -inf. x (B, H, W, C)."""
    p = k // 2
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 1, 1, 1), ((0, 0), (p, p), (p, p), (0, 0))
    )


class SPPF(nnx.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 5, *, rngs: nnx.Rngs):
        c_hid = c_in // 2
        self.cv1 = ConvBNSiLU(c_in, c_hid, 1, rngs=rngs)
        self.cv2 = ConvBNSiLU(c_hid * 4, c_out, 1, rngs=rngs)
        self.k = k

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.cv1(x)
        y1 = max_pool_same(x, self.k)
        y2 = max_pool_same(y1, self.k)
        y3 = max_pool_same(y2, self.k)
        return self.cv2(jnp.concatenate([x, y1, y2, y3], axis=-1))


class YOLOv11Backbone(nnx.Module):
    def __init__(self, c_in: int = 3, base: int = 64, depth: int = 2, *, rngs: nnx.Rngs):
        c1, c2, c3, c4, c5 = base, base * 2, base * 4, base * 8, base * 16
        self.stem = ConvBNSiLU(c_in, c1, 3, 2, rngs=rngs)
        self.s1_down = ConvBNSiLU(c1, c2, 3, 2, rngs=rngs)
        self.s1_c3k2 = C3k2(c2, c2, n=depth, rngs=rngs)
        self.s2_down = ConvBNSiLU(c2, c3, 3, 2, rngs=rngs)
        self.s2_c3k2 = C3k2(c3, c3, n=depth, rngs=rngs)
        self.s3_down = ConvBNSiLU(c3, c4, 3, 2, rngs=rngs)
        self.s3_c3k2 = C3k2(c4, c4, n=depth, rngs=rngs)
        self.s4_down = ConvBNSiLU(c4, c5, 3, 2, rngs=rngs)
        self.s4_c3k2 = C3k2(c5, c5, n=depth, rngs=rngs)
        self.sppf = SPPF(c5, c5, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        x = self.s1_c3k2(self.s1_down(x))
        p3 = self.s2_c3k2(self.s2_down(x))
        p4 = self.s3_c3k2(self.s3_down(p3))
        p5 = self.sppf(self.s4_c3k2(self.s4_down(p4)))
        return p3, p4, p5


def upsample2x(x: jax.Array) -> jax.Array:
    """``nn.Upsample(scale_factor=2, mode='nearest')``: each pixel becomes 2x2. x (B, H, W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FPN(nnx.Module):
    def __init__(self, c3: int = 256, c4: int = 512, c5: int = 1024, depth: int = 2, *, rngs: nnx.Rngs):
        self.lateral5 = ConvBNSiLU(c5, c4, 1, rngs=rngs)
        self.lateral4 = ConvBNSiLU(c4, c3, 1, rngs=rngs)
        self.fuse4 = C3k2(c4 * 2, c4, n=depth, rngs=rngs)
        self.fuse3 = C3k2(c3 * 2, c3, n=depth, rngs=rngs)

    def __call__(self, p3, p4, p5):
        p4 = self.fuse4(jnp.concatenate([p4, upsample2x(self.lateral5(p5))], axis=-1))
        p3 = self.fuse3(jnp.concatenate([p3, upsample2x(self.lateral4(p4))], axis=-1))
        return p3, p4, p5


class PAN(nnx.Module):
    def __init__(self, c3: int = 256, c4: int = 512, c5: int = 1024, depth: int = 2, *, rngs: nnx.Rngs):
        self.down3 = ConvBNSiLU(c3, c3, 3, 2, rngs=rngs)
        self.fuse4 = C3k2(c3 + c4, c4, n=depth, rngs=rngs)
        self.down4 = ConvBNSiLU(c4, c4, 3, 2, rngs=rngs)
        self.fuse5 = C3k2(c4 + c5, c5, n=depth, rngs=rngs)

    def __call__(self, p3, p4, p5):
        p4 = self.fuse4(jnp.concatenate([self.down3(p3), p4], axis=-1))
        p5 = self.fuse5(jnp.concatenate([self.down4(p4), p5], axis=-1))
        return p3, p4, p5


def _attention(query: jax.Array, key: jax.Array, value: jax.Array, **kwargs) -> jax.Array:
    """``nnx.dot_product_attention``, except for float64 inputs (JAX x64): its fused path,
    ``jax.nn.dot_product_attention``, always takes the softmax in float32, so float64 takes
    Flax's unfused path (``dot_product_attention_weights``, then the weighted sum) instead."""
    if query.dtype != jnp.float64:
        return nnx.dot_product_attention(query, key, value, **kwargs)
    weights = dot_product_attention_weights(query, key, **kwargs)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=kwargs.get("precision"))


class C2PSA(nnx.Module):
    """1x1 conv, multi-head self-attention over the H*W tokens (residual), FFN (residual), 1x1 conv."""

    def __init__(self, c: int, n_heads: int = 8, *, rngs: nnx.Rngs):
        if c % n_heads:
            raise ValueError(f"C2PSA channels ({c}) must be divisible by n_heads ({n_heads})")
        self.cv1 = ConvBNSiLU(c, c, 1, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=n_heads, in_features=c, qkv_features=c, out_features=c,
            decode=False, deterministic=True, attention_fn=_attention, rngs=rngs,
        )
        self.ffn = nnx.List([ConvBNSiLU(c, c * 2, 1, rngs=rngs), ConvBNSiLU(c * 2, c, 1, rngs=rngs)])
        self.cv2 = ConvBNSiLU(c, c, 1, rngs=rngs)

    def __call__(self, x):
        y = self.cv1(x)
        b, h, w, c = y.shape
        tokens = y.reshape(b, h * w, c)  # row-major over (H, W), as flatten(2).permute(0, 2, 1)
        tokens = tokens + self.attn(tokens, tokens, tokens, deterministic=True)
        y = tokens.reshape(b, h, w, c)
        z = y
        for layer in self.ffn:
            z = layer(z)
        return self.cv2(y + z)


class DFLHead(nnx.Module):
    """Two 3x3 conv branches; class logits and a 4 x reg_max distribution per anchor."""

    def __init__(self, c_in: int, num_classes: int = 80, reg_max: int = 16, *, rngs: nnx.Rngs):
        self.reg_max = reg_max
        self.num_classes = num_classes
        self.cls_convs = nnx.List([ConvBNSiLU(c_in, c_in, 3, rngs=rngs), ConvBNSiLU(c_in, c_in, 3, rngs=rngs)])
        self.reg_convs = nnx.List([ConvBNSiLU(c_in, c_in, 3, rngs=rngs), ConvBNSiLU(c_in, c_in, 3, rngs=rngs)])
        self.cls_pred = nnx.Conv(c_in, num_classes, (1, 1), kernel_init=_torch_kernel_init,
                                 bias_init=_torch_bias_init(c_in), conv_general_dilated=conv_general_dilated,
                                 rngs=rngs)
        self.reg_pred = nnx.Conv(c_in, 4 * reg_max, (1, 1), kernel_init=_torch_kernel_init,
                                 bias_init=_torch_bias_init(c_in), conv_general_dilated=conv_general_dilated,
                                 rngs=rngs)

    def __call__(self, x) -> LevelOutput:
        c, r = x, x
        for layer in self.cls_convs:
            c = layer(c)
        for layer in self.reg_convs:
            r = layer(r)
        # The outputs leave the network in at least float32 (bfloat16 compute: see set_compute_dtype).
        dtype = jnp.promote_types(c.dtype, jnp.float32)
        cls_logits = self.cls_pred(c).astype(dtype)
        box_raw = self.reg_pred(r).astype(dtype)
        return cls_logits, dfl_expectation(box_raw, self.reg_max), box_raw

    def torch_constants(self) -> dict[str, np.ndarray]:
        """The frozen values the PyTorch module holds as a parameter and this one computes:
        ``{"proj": arange(reg_max)}`` (keys relative to this module)."""
        return {"proj": np.arange(self.reg_max, dtype=np.float32)}


def dfl_expectation(box_raw: jax.Array, reg_max: int) -> jax.Array:
    """Distribution Focal Loss decoding: box_raw (B, H, W, 4 * reg_max) -> box_ltrb (B, H, W, 4),
    the expected bin index (grid units) of the softmax over each side's ``reg_max`` bins.

    The channel index is ``side * reg_max + bin``, as torch's ``view(B, 4, reg_max, H, W)``;
    sides are (left, top, right, bottom)."""
    b, h, w, _ = box_raw.shape
    dist = jax.nn.softmax(box_raw.reshape(b, h, w, 4, reg_max), axis=-1)
    proj = jnp.arange(reg_max, dtype=box_raw.dtype)
    return jnp.sum(dist * proj, axis=-1)


class DetectionHead(nnx.Module):
    def __init__(self, channels: Sequence[int] = (256, 512, 1024), num_classes: int = 80,
                 reg_max: int = 16, *, rngs: nnx.Rngs):
        self.heads = nnx.List([DFLHead(c, num_classes, reg_max, rngs=rngs) for c in channels])

    def __call__(self, features) -> list[LevelOutput]:
        return [head(f) for head, f in zip(self.heads, features)]

    def init_class_bias(self, prior_fn: Callable[[int, int], float], strides: Sequence[int] = STRIDES) -> None:
        """Set every class-logit bias of level i to ``prior_fn(num_classes, strides[i])``."""
        for head, stride in zip(self.heads, strides, strict=True):
            bias = head.cls_pred.bias
            bias[...] = jnp.full_like(bias[...], prior_fn(bias.shape[-1], stride))


class YOLOv11(nnx.Module):
    """YOLOv11 detector (the notebook's architecture) for NHWC float32 images.

    Args:
      num_classes: number of classes C.
      reg_max: DFL bins per box side.
      base: stem width; channels are base x (1, 2, 4, 8, 16). The notebook's is 64.
      depth: bottlenecks per C3k2 block. The notebook's is 2.
      in_channels: image channels (3).
      dtype: compute dtype of the convolutions and the attention (``None``: the inputs'
        dtype, i.e. float32). ``jnp.bfloat16`` is mixed precision: see ``set_compute_dtype``.
      conv_impl: the convolution kernels, ``"lax"`` (default), ``"cpu_depthwise"`` or
        ``"cpu_taps"`` (faster on CPU; see ``kernels.py``).
      rngs: parameter initialisation keys.

    Call ``model(images)`` with images ``(B, H, W, in_channels)``, H and W
    multiples of 32. Returns ``[(cls_logits (B,h,w,C), box_ltrb (B,h,w,4),
    box_raw (B,h,w,4*reg_max))]`` for strides 8, 16, 32, where ``box_ltrb`` is
    the DFL expectation in grid units (multiply by the stride for pixels).
    ``model.train()`` (the default) uses and updates batch statistics;
    ``model.eval()`` uses the running statistics. With JAX x64 enabled and the
    state cast to float64, float64 images run in float64 throughout.
    """

    def __init__(self, num_classes: int = 80, reg_max: int = 16, *, base: int = 64, depth: int = 2,
                 in_channels: int = 3, dtype=None, conv_impl: str = kernels.DEFAULT_CONV_IMPL,
                 rngs: nnx.Rngs):
        c3, c4, c5 = base * 4, base * 8, base * 16
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.in_channels = in_channels
        self.backbone = YOLOv11Backbone(in_channels, base, depth, rngs=rngs)
        self.fpn = FPN(c3, c4, c5, depth, rngs=rngs)
        self.pan = PAN(c3, c4, c5, depth, rngs=rngs)
        self.c2psa = C2PSA(c5, rngs=rngs)
        self.head = DetectionHead((c3, c4, c5), num_classes, reg_max, rngs=rngs)
        set_compute_dtype(self, dtype)
        kernels.set_conv_impl(self, conv_impl)

    def check_input(self, images) -> None:
        """Raise ``ValueError`` unless images are (B, H, W, in_channels) with H, W multiples of 32."""
        check_nhwc_images(images, self.in_channels, "YOLOv11")

    def class_output_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the class-output layers, one per level."""
        return tuple(f"head.heads.{i}.cls_pred." for i in range(len(self.head.heads)))

    def class_branch_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the layers whose shapes may depend on the class count."""
        return self.class_output_prefixes()

    def init_class_bias(self, prior_fn: Callable[[int, int], float]) -> None:
        """Set the class-logit biases of the level at stride s to ``prior_fn(num_classes, s)``
        (e.g. ``yolo11.class_bias_init``, Ultralytics' prior); the head's init leaves them at
        PyTorch's default."""
        self.head.init_class_bias(prior_fn)

    def __call__(self, images: jax.Array) -> list[LevelOutput]:
        self.check_input(images)
        p3, p4, p5 = self.backbone(images)
        p5 = self.c2psa(p5)
        p3, p4, p5 = self.fpn(p3, p4, p5)
        p3, p4, p5 = self.pan(p3, p4, p5)
        return self.head([p3, p4, p5])


def check_nhwc_images(images, in_channels: int, name: str) -> None:
    """Raise ``ValueError`` unless images are (B, H, W, in_channels) with H, W positive multiples
    of 32 (the largest stride). ``name`` is the network's name in the message."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"{name} expects NHWC images of rank 4 (B, H, W, {in_channels}); got shape {shape}")
    b, h, w, c = shape
    if c != in_channels:
        hint = " (NCHW input? transpose to NHWC)" if h == in_channels else ""
        raise ValueError(f"{name} expects {in_channels} channels in the last axis; got shape {shape}{hint}")
    if h % 32 or w % 32 or h == 0 or w == 0:
        raise ValueError(f"image height and width must be positive multiples of 32; got {h}x{w}")


def set_compute_dtype(model: nnx.Module, dtype) -> nnx.Module:
    """Run every convolution and the attention of ``model`` in ``dtype`` (in place; returns it).

    ``dtype=jnp.bfloat16`` is mixed precision: the parameters stay float32 (each layer casts
    its kernel), the activations between layers are bfloat16, and the BatchNorm statistics and
    normalisation, the DFL softmax and the network's outputs are float32, so the loss and the
    assigner run in float32. ``None`` restores full precision (the inputs' dtype).
    """
    dtype = None if dtype is None else jnp.dtype(dtype)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (nnx.Conv, nnx.MultiHeadAttention)):
            module.dtype = dtype
        if isinstance(module, nnx.MultiHeadAttention):
            for proj in (module.query, module.key, module.value, module.out):
                proj.dtype = dtype
    return model


def torch_constants(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{torch key: value}`` of every frozen value that the PyTorch network holds as a
    parameter (``requires_grad=False``) and this one computes instead: the DFL projection
    ``arange(reg_max)``, one per head in the notebook's network (``head.heads.i.proj``), one in
    YOLO11 (``model.23.dfl.conv.weight``, shaped (1, reg_max, 1, 1))."""
    out = {}
    for path, module in nnx.iter_modules(model):
        if hasattr(module, "torch_constants"):
            prefix = "".join(f"{p}." for p in path)
            out.update({prefix + k: v for k, v in module.torch_constants().items()})
    return out


def count_parameters(model: nnx.Module, *, notebook_style: bool = True) -> int:
    """Number of parameters of ``YOLOv11`` or ``YOLO11``. ``notebook_style`` (the default) counts
    as torch's ``sum(p.numel() for p in model.parameters())`` does, which the notebook and
    Ultralytics report: the frozen DFL values (``torch_constants``) are included, 3 x reg_max
    in the notebook's network and reg_max in YOLO11. Works on ``nnx.eval_shape`` models too."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if notebook_style:
        n += sum(v.size for v in torch_constants(model).values())
    return n


@jax.jit(static_argnums=0)
def _pure_forward(graphdef, state, images):
    model = nnx.merge(graphdef, state)
    out = model(images)
    return out, nnx.state(model)


def jit_forward(model: nnx.Module, images: jax.Array) -> list[LevelOutput]:
    """``model(images)`` of a ``YOLOv11`` or ``YOLO11``, compiled with ``jax.jit`` (one
    compilation per shape and mode).

    In train mode the updated BatchNorm statistics are written back into ``model``,
    exactly as the eager call does.
    """
    graphdef, state = nnx.split(model)
    out, new_state = _pure_forward(graphdef, state, images)
    nnx.update(model, new_state)
    return out
