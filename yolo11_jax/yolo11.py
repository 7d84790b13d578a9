"""The official Ultralytics YOLO11 detection family (scales n, s, m, l, x) in Flax NNX, NHWC.

The module tree mirrors the state-dict keys of an Ultralytics ``DetectionModel`` name for
name: ``YOLO11.model`` is an ``nnx.List`` of the 24 layers of Ultralytics' ``yolo11.yaml``, so
``model.23.cv3.0.0.0.conv.weight`` is the NNX path ``model/23/cv3/0/0/0/conv/kernel``, and
weight conversion is the same short table of leaf rules as for the notebook's network (see
``convert.py``). The building blocks (``ConvBNSiLU``, ``BatchNorm``, ``Bottleneck``, ``SPPF``,
the C3k2 data flow, upsampling, the DFL decoding) are the notebook network's, from
``model.py``; this file adds what YOLO11 has and the notebook does not: ``C3k``, the
convolutional ``Attention`` / ``PSABlock`` / ``C2PSA`` and the ``Detect`` head.

Architecture facts (Ultralytics 8.2, 8.3 and 8.4.190+ build the same network; see
``Variant`` for the one place some 8.4 releases differ):

* Scaling ``(depth, width, max_channels)``: n (0.50, 0.25, 1024), s (0.50, 0.50, 1024),
  m (0.50, 1.00, 512), l (1.00, 1.00, 512), x (1.00, 1.50, 512). A layer's channels are
  ``make_divisible(min(c, max_channels) * width, 8)``, its repeats ``max(round(n * depth), 1)``
  for rows with n > 1.
* At scales m, l and x every ``C3k2`` uses ``C3k`` blocks, whatever its row says.
* BatchNorm: eps 1e-3, momentum 0.03 (PyTorch's 0.1 convention: ``running <- 0.97 running +
  0.03 batch``), running variance unbiased as in ``model.BatchNorm``.
* ``Attention``: a 1x1 ``qkv`` convolution whose output channels are head-major,
  ``[q (key_dim) | k (key_dim) | v (head_dim)]`` per head, ``head_dim = 64`` and
  ``key_dim = head_dim / 2``; logits ``q^T k / sqrt(key_dim)``, softmax over the keys; a
  depthwise 3x3 positional convolution ``pe`` on ``v`` (channels in the same head-major order)
  is added to the attention output before the 1x1 ``proj``.
* ``Detect``: box branch ``cv2`` = 3x3, 3x3, 1x1 to ``4 * reg_max`` (with bias); class branch
  ``cv3`` = (depthwise 3x3, 1x1), (depthwise 3x3, 1x1), 1x1 to ``nc`` (with bias); widths
  ``c2 = max(16, ch0 // 4, 4 * reg_max)``, ``c3 = max(ch0, min(nc, 100))`` with ``ch0`` the
  stride-8 feature width. So yolo11n's class branch is ``max(64, min(nc, 100))`` wide: its
  hidden layers change shape with the class count (``Variant.cls_hidden`` can fix the width).
* The DFL's 1x1 convolution is frozen at ``arange(reg_max)``. Ultralytics keeps it as a
  parameter (``requires_grad=False``), in the state dict and in its parameter count; here it
  is a constant (``DFL.torch_constants``), counted by ``count_parameters``.

Initialisation follows Ultralytics: PyTorch's default convolution init (uniform,
``+-1 / sqrt(fan_in)`` for kernels and biases, ``fan_in`` per group), BatchNorm scale 1,
bias 0, and ``Detect.bias_init`` (see ``BOX_BIAS_INIT`` and ``class_bias_init``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yolo11_jax.anchors import STRIDES  # noqa: F401  (also importable from here)
from yolo11_jax.model import (
    BatchNorm,
    Bottleneck,
    ConvBNSiLU,
    LevelOutput,
    _torch_bias_init,
    _torch_kernel_init,
    check_nhwc_images,
    conv_general_dilated,
    dfl_expectation,
    max_pool_same,
    set_compute_dtype,
    split_chain,
    upsample2x,
)

# scale -> (depth multiple, width multiple, max channels), from Ultralytics' yolo11.yaml.
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
    "m": (0.50, 1.00, 512),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.50, 512),
}
# Scales at which every C3k2 uses C3k blocks.
C3K_SCALES = frozenset("mlx")
BN_EPS = 1e-3
BN_MOMENTUM = 0.03
DETECT_INDEX = 23
# Detect.bias_init sets every box-branch output bias to this value. Ultralytics 8.4 uses 2.0;
# 8.3 (the release YOLO11 came out with) used 1.0. Only the initialisation differs.
BOX_BIAS_INIT = 2.0

# The rows of Ultralytics' yolo11.yaml: (source layers, repeats, layer kind, arguments).
# Source -1 is the previous layer. Arguments: Conv (channels, kernel, stride),
# C3k2 (channels, c3k, e=0.5), SPPF (channels, pool kernel), C2PSA (channels,).
LAYERS: tuple[tuple[int | tuple[int, ...], int, str, tuple], ...] = (
    (-1, 1, "Conv", (64, 3, 2)),            # 0  P1/2
    (-1, 1, "Conv", (128, 3, 2)),           # 1  P2/4
    (-1, 2, "C3k2", (256, False, 0.25)),    # 2
    (-1, 1, "Conv", (256, 3, 2)),           # 3  P3/8
    (-1, 2, "C3k2", (512, False, 0.25)),    # 4
    (-1, 1, "Conv", (512, 3, 2)),           # 5  P4/16
    (-1, 2, "C3k2", (512, True)),           # 6
    (-1, 1, "Conv", (1024, 3, 2)),          # 7  P5/32
    (-1, 2, "C3k2", (1024, True)),          # 8
    (-1, 1, "SPPF", (1024, 5)),             # 9
    (-1, 2, "C2PSA", (1024,)),              # 10
    (-1, 1, "Upsample", ()),                # 11
    ((-1, 6), 1, "Concat", ()),             # 12 cat backbone P4
    (-1, 2, "C3k2", (512, False)),          # 13
    (-1, 1, "Upsample", ()),                # 14
    ((-1, 4), 1, "Concat", ()),             # 15 cat backbone P3
    (-1, 2, "C3k2", (256, False)),          # 16 P3/8 output
    (-1, 1, "Conv", (256, 3, 2)),           # 17
    ((-1, 13), 1, "Concat", ()),            # 18 cat head P4
    (-1, 2, "C3k2", (512, False)),          # 19 P4/16 output
    (-1, 1, "Conv", (512, 3, 2)),           # 20
    ((-1, 10), 1, "Concat", ()),            # 21 cat head P5
    (-1, 2, "C3k2", (1024, True)),          # 22 P5/32 output
    ((16, 19, 22), 1, "Detect", ()),        # 23
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """The architecture choices in which Ultralytics releases differ for the same YOLO11 yaml.

    ``sppf_act``: whether SPPF's first convolution (``model.9.cv1``) has its SiLU. Ultralytics
    8.2, 8.3 and 8.4.190+ build it with SiLU (the released ``yolo11*.pt`` weights); for a while
    in the 8.4 series (seen in files written by 8.4.30 to 8.4.60) Ultralytics built SPPF with
    ``Conv(..., act=False)`` for cv1, which its files record as an ``Identity`` activation.
    ``sppf_n``: max-pool iterations (``cv2`` then takes ``(n + 1) * c_hidden`` channels).
    ``sppf_shortcut``: add SPPF's input to its output (8.4's ``SPPF.add``; only when
    ``c_in == c_out``, as there).
    ``cls_hidden``: the width of the Detect class branch's hidden layers (``cv3.*.0.1`` and
    ``cv3.*.1``); ``None`` is Ultralytics' rule ``max(ch0, min(nc, 100))`` (``ch0`` the stride-8
    feature width), which every Ultralytics file follows. Set only by ``train --keep-class-rows``
    (``convert.build_for_init_weights``): fine-tuning yolo11n (ch0 = 64) from 80 COCO classes
    onto fewer, the branch keeps the checkpoint's width (80) so its hidden layers load from the
    file and only the last 1x1 class layer is new; Ultralytics re-initialises the whole branch.

    The default, ``Variant()``, is the released weights' architecture and what ``--model
    yolo11n`` builds from scratch. A checkpoint's variant is read from the file
    (``ultralytics_pt.read_ultralytics``), stored with converted and trained weights
    (``to_json``; the ``.safetensors`` metadata key ``yolo11_variant``) and read back
    (``from_json``), so reloading builds the same network.
    """

    sppf_act: bool = True
    sppf_n: int = 3
    sppf_shortcut: bool = False
    cls_hidden: int | None = None

    def __post_init__(self):
        if not (isinstance(self.sppf_n, int) and self.sppf_n >= 1):
            raise ValueError(f"sppf_n must be a positive int; got {self.sppf_n!r}")
        if not (self.cls_hidden is None or (type(self.cls_hidden) is int and self.cls_hidden >= 1)):
            raise ValueError(f"cls_hidden must be a positive int or None; got {self.cls_hidden!r}")

    @property
    def name(self) -> str:
        """'yolo11' for the default, else the differences, e.g. 'yolo11[sppf_act=False]'."""
        diff = {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(DEFAULT_VARIANT, k)}
        return "yolo11" if not diff else "yolo11[" + ",".join(f"{k}={v}" for k, v in diff.items()) + "]"

    def to_json(self) -> str:
        """The fields as a JSON object; ``cls_hidden`` only when set (so the text of every other
        variant is what it was before the field existed, and older readers still read it)."""
        fields = dataclasses.asdict(self)
        if fields["cls_hidden"] is None:
            del fields["cls_hidden"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict | None) -> "Variant":
        """Parse ``to_json``'s text (or its dict). ``None`` gives the default. Raises
        ``ValueError`` naming an unknown or malformed field."""
        if text is None:
            return cls()
        data = json.loads(text) if isinstance(text, str) else dict(text)
        if not isinstance(data, dict):
            raise ValueError(f"YOLO11 variant: expected a JSON object, got {text!r}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"YOLO11 variant: unknown field(s) {unknown}; known: {sorted(fields)}")
        for k, v in data.items():
            want = {"sppf_n": int, "cls_hidden": int}.get(k, bool)
            if type(v) is not want and not (k == "cls_hidden" and v is None):
                raise ValueError(f"YOLO11 variant: {k} must be a {want.__name__}"
                                 f"{' or null' if k == 'cls_hidden' else ''}; got {v!r}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"YOLO11 variant: {e}") from None


DEFAULT_VARIANT = Variant()


def make_divisible(x: float, divisor: int = 8) -> int:
    """The smallest multiple of ``divisor`` that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


def ultralytics_class_hidden(ch0: int, num_classes: int) -> int:
    """Ultralytics' Detect class-branch width ``max(ch0, min(num_classes, 100))``."""
    return max(ch0, min(num_classes, 100))


def detect_channels(scale: str) -> tuple[int, int, int]:
    """The Detect head's input widths (layers 16, 19, 22: strides 8, 16, 32) at ``scale``,
    e.g. ``(64, 128, 256)`` for n."""
    _, width, max_channels = SCALES[scale]
    return tuple(make_divisible(min(LAYERS[i][3][0], max_channels) * width) for i in (16, 19, 22))


def class_hidden_width(scale: str, num_classes: int, variant: "Variant | None" = None) -> int:
    """The class-branch hidden width of a YOLO11 at ``scale`` with ``num_classes`` classes:
    ``variant.cls_hidden``, else Ultralytics' rule (yolo11n: 64 up to 64 classes, 80 at 80)."""
    if variant is not None and variant.cls_hidden is not None:
        return variant.cls_hidden
    return ultralytics_class_hidden(detect_channels(scale)[0], num_classes)


def class_bias_init(num_classes: int, stride: int) -> float:
    """Ultralytics' initial class-logit bias at one stride: ``log(5 / nc / (640 / stride)^2)``,
    a prior of about 5 objects per 640x640 image spread over the classes and cells."""
    return math.log(5 / num_classes / (640 / stride) ** 2)


def _conv1x1_with_bias(c_in: int, c_out: int, rngs: nnx.Rngs) -> nnx.Conv:
    """``nn.Conv2d(c_in, c_out, 1)`` with PyTorch's default init."""
    return nnx.Conv(c_in, c_out, (1, 1), kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(c_in),
                    conv_general_dilated=conv_general_dilated, rngs=rngs)


class SPPF(nnx.Module):
    """Spatial pyramid pooling, fast: ``y0 = cv1(x)``, ``y_i = maxpool_k(y_{i-1})`` for i = 1..n,
    ``cv2(concat(y_0..y_n))``, plus x when ``shortcut`` (and c_in == c_out). ``act`` is cv1's
    SiLU (see ``Variant``). x (B, H, W, c_in) -> (B, H, W, c_out)."""

    def __init__(self, c_in: int, c_out: int, k: int = 5, n: int = 3, shortcut: bool = False, act: bool = True,
                 *, rngs: nnx.Rngs):
        c_hid = c_in // 2
        self.cv1 = ConvBNSiLU(c_in, c_hid, 1, act=act, rngs=rngs)
        self.cv2 = ConvBNSiLU(c_hid * (n + 1), c_out, 1, rngs=rngs)
        self.k = k
        self.n = n
        self.add = bool(shortcut and c_in == c_out)

    def __call__(self, x: jax.Array) -> jax.Array:
        ys = [self.cv1(x)]
        for _ in range(self.n):
            ys.append(max_pool_same(ys[-1], self.k))
        y = self.cv2(jnp.concatenate(ys, axis=-1))
        return y + x if self.add else y


class C3k(nnx.Module):
    """CSP block: ``cv3(concat([m(cv1(x)), cv2(x)]))``, ``m`` = n Bottlenecks (k x k, e=1) at
    width ``int(c_out * e)``. x (B, H, W, c_in) -> (B, H, W, c_out)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, e: float = 0.5, k: int = 3,
                 *, rngs: nnx.Rngs):
        c_hid = int(c_out * e)
        self.cv1 = ConvBNSiLU(c_in, c_hid, 1, rngs=rngs)
        self.cv2 = ConvBNSiLU(c_in, c_hid, 1, rngs=rngs)
        self.cv3 = ConvBNSiLU(2 * c_hid, c_out, 1, rngs=rngs)
        self.m = nnx.List([Bottleneck(c_hid, c_hid, shortcut, 1.0, k=(k, k), rngs=rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv1(x)
        for block in self.m:
            y = block(y)
        return self.cv3(jnp.concatenate([y, self.cv2(x)], axis=-1))


class C3k2(nnx.Module):
    """YOLO11's C3k2: the C2f data flow (``model.split_chain``) over n blocks of width
    ``c = int(c_out * e)``: ``C3k(c, c, 2)`` blocks when ``c3k``, else Bottlenecks with hidden
    width c / 2. x (B, H, W, c_in) -> (B, H, W, c_out)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, c3k: bool = False, e: float = 0.5,
                 shortcut: bool = True, *, rngs: nnx.Rngs):
        self.c = int(c_out * e)
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c, 1, rngs=rngs)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c_out, 1, rngs=rngs)
        self.m = nnx.List([C3k(self.c, self.c, 2, shortcut, rngs=rngs) if c3k
                           else Bottleneck(self.c, self.c, shortcut, 0.5, rngs=rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return split_chain(self.cv1, self.m, self.cv2, x)


class Attention(nnx.Module):
    """Multi-head self-attention over the H * W positions, built from convolutions.

    ``qkv`` (1x1, no activation) gives per head ``[q | k | v]`` = key_dim, key_dim, head_dim
    channels; ``out = softmax(q^T k / sqrt(key_dim)) v``, plus ``pe(v)`` (depthwise 3x3), then
    the 1x1 ``proj``. x (B, H, W, dim) -> (B, H, W, dim). The logits and softmax are computed in
    at least float32.
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        qkv_channels = dim + 2 * self.key_dim * num_heads
        self.qkv = ConvBNSiLU(dim, qkv_channels, 1, act=False, rngs=rngs)
        self.proj = ConvBNSiLU(dim, dim, 1, act=False, rngs=rngs)
        self.pe = ConvBNSiLU(dim, dim, 3, groups=dim, act=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kd, hd = self.key_dim, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, self.num_heads, 2 * kd + hd)  # tokens row-major over (H, W)
        q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
        acc = jnp.promote_types(qkv.dtype, jnp.float32)
        logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=acc) * self.scale
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhnm,bmhd->bnhd", weights, v, preferred_element_type=acc).astype(v.dtype)
        v_map = v.reshape(b, h, w, c)  # channel = head * head_dim + d, as torch's view(B, C, H, W)
        return self.proj(out.reshape(b, h, w, c) + self.pe(v_map))


class PSABlock(nnx.Module):
    """``x + attn(x)``, then ``+ ffn(x)`` with ffn = 1x1 to 2c (SiLU), 1x1 back to c (no
    activation). x (B, H, W, c) -> same."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True, *,
                 rngs: nnx.Rngs):
        self.attn = Attention(c, num_heads, attn_ratio, rngs=rngs)
        self.ffn = nnx.List([ConvBNSiLU(c, 2 * c, 1, rngs=rngs), ConvBNSiLU(2 * c, c, 1, act=False, rngs=rngs)])
        self.add = shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.attn(x)
        x = x + a if self.add else a
        f = x
        for layer in self.ffn:
            f = layer(f)
        return x + f if self.add else f


class C2PSA(nnx.Module):
    """``cv1`` (1x1 to 2c), split into (a, b), b through n PSABlocks (c // 64 heads, at least
    one), ``cv2(concat([a, b]))``; ``c = int(c_in * e)``. x (B, H, W, c_in) -> same shape."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, e: float = 0.5, *, rngs: nnx.Rngs):
        if c_in != c_out:
            raise ValueError(f"C2PSA needs c_in == c_out; got {c_in} and {c_out}")
        self.c = int(c_in * e)
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c, 1, rngs=rngs)
        self.cv2 = ConvBNSiLU(2 * self.c, c_in, 1, rngs=rngs)
        self.m = nnx.List([PSABlock(self.c, 0.5, max(self.c // 64, 1), rngs=rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        a, b = jnp.split(self.cv1(x), 2, axis=-1)
        for block in self.m:
            b = block(b)
        return self.cv2(jnp.concatenate([a, b], axis=-1))


class Upsample(nnx.Module):
    """``nn.Upsample(scale_factor=2, mode='nearest')``. No parameters."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample2x(x)


class Concat(nnx.Module):
    """Channel concatenation of a list of (B, H, W, C_i) maps. No parameters."""

    def __call__(self, xs: list[jax.Array]) -> jax.Array:
        return jnp.concatenate(xs, axis=-1)


class DFL(nnx.Module):
    """Distribution Focal Loss decoding, box_raw (B, H, W, 4 * reg_max) -> box_ltrb (B, H, W, 4).

    Ultralytics computes the expectation with a frozen 1x1 convolution whose weight is
    ``arange(reg_max)``; here it is ``model.dfl_expectation``, and the frozen weight appears
    only in state dicts and parameter counts (``torch_constants``)."""

    def __init__(self, reg_max: int = 16):
        self.reg_max = reg_max

    def __call__(self, box_raw: jax.Array) -> jax.Array:
        return dfl_expectation(box_raw, self.reg_max)

    def torch_constants(self) -> dict[str, np.ndarray]:
        return {"conv.weight": np.arange(self.reg_max, dtype=np.float32).reshape(1, self.reg_max, 1, 1)}


class Detect(nnx.Module):
    """YOLO11's detection head over the three levels (strides 8, 16, 32).

    Call with the three feature maps ``[(B, h_i, w_i, channels[i])]``; returns one
    ``(cls_logits (B,h,w,C), box_ltrb (B,h,w,4), box_raw (B,h,w,4*reg_max))`` per level, in at
    least float32.
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...], reg_max: int = 16, *,
                 cls_hidden: int | None = None, rngs: nnx.Rngs):
        if reg_max < 2:
            raise ValueError(f"reg_max must be at least 2 (DFL bins per box side); got {reg_max}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.channels = tuple(channels)
        c2 = max(16, channels[0] // 4, 4 * reg_max)
        c3 = cls_hidden if cls_hidden is not None else ultralytics_class_hidden(channels[0], num_classes)
        self.cls_hidden = c3  # the class branch's hidden width (see Variant.cls_hidden)
        self.cv2 = nnx.List([
            nnx.List([ConvBNSiLU(c, c2, 3, rngs=rngs), ConvBNSiLU(c2, c2, 3, rngs=rngs),
                      _conv1x1_with_bias(c2, 4 * reg_max, rngs)])
            for c in channels])
        self.cv3 = nnx.List([
            nnx.List([
                nnx.List([ConvBNSiLU(c, c, 3, groups=c, rngs=rngs), ConvBNSiLU(c, c3, 1, rngs=rngs)]),
                nnx.List([ConvBNSiLU(c3, c3, 3, groups=c3, rngs=rngs), ConvBNSiLU(c3, c3, 1, rngs=rngs)]),
                _conv1x1_with_bias(c3, num_classes, rngs),
            ])
            for c in channels])
        self.dfl = DFL(reg_max)
        self.bias_init()

    def bias_init(self) -> None:
        """Ultralytics' ``Detect.bias_init``: box outputs ``BOX_BIAS_INIT``, class logits
        ``class_bias_init(nc, stride)``."""
        for box in self.cv2:
            box[2].bias[...] = jnp.full_like(box[2].bias[...], BOX_BIAS_INIT)
        self.init_class_bias(class_bias_init)

    def init_class_bias(self, prior_fn: Callable[[int, int], float]) -> None:
        """Set the class-logit biases of the level at stride s to ``prior_fn(num_classes, s)``."""
        for cls, stride in zip(self.cv3, STRIDES, strict=True):
            cls[2].bias[...] = jnp.full_like(cls[2].bias[...], prior_fn(self.num_classes, stride))

    def __call__(self, features: list[jax.Array]) -> list[LevelOutput]:
        out = []
        for x, box, cls in zip(features, self.cv2, self.cv3):
            r = box[1](box[0](x))
            c = x
            for pair in (cls[0], cls[1]):
                c = pair[1](pair[0](c))
            dtype = jnp.promote_types(r.dtype, jnp.float32)  # outputs in float32 under bfloat16 compute
            box_raw = box[2](r).astype(dtype)
            cls_logits = cls[2](c).astype(dtype)
            out.append((cls_logits, self.dfl(box_raw), box_raw))
        return out


class YOLO11(nnx.Module):
    """Ultralytics' YOLO11 detector at one scale, for NHWC float images.

    Args:
      scale: 'n', 's', 'm', 'l' or 'x'.
      num_classes: number of classes C (80 for the released COCO weights).
      reg_max: DFL bins per box side (16).
      in_channels: image channels (3).
      variant: the ``Variant`` (default: the released weights' architecture).
      dtype: compute dtype of the convolutions (``None``: the inputs' dtype, i.e. float32);
        ``jnp.bfloat16`` is mixed precision, see ``model.set_compute_dtype``.
      rngs: parameter initialisation keys.

    Call ``model(images)`` with images ``(B, H, W, in_channels)``, H and W multiples of 32.
    Returns ``[(cls_logits (B,h,w,C), box_ltrb (B,h,w,4), box_raw (B,h,w,4*reg_max))]`` for
    strides 8, 16, 32 (h = H / stride), exactly like ``model.YOLOv11``: ``box_ltrb`` is the DFL
    expectation in grid units, and box_raw's channel index is ``side * reg_max + bin``.
    ``model.train()`` (the default) uses and updates batch statistics; ``model.eval()`` uses
    the running statistics. Ultralytics' image preprocessing is RGB scaled to [0, 1].
    """

    def __init__(self, scale: str = "n", num_classes: int = 80, reg_max: int = 16, *, in_channels: int = 3,
                 variant: Variant = DEFAULT_VARIANT, dtype=None, rngs: nnx.Rngs):
        if scale not in SCALES:
            raise ValueError(f"unknown YOLO11 scale {scale!r}; choose one of {sorted(SCALES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {num_classes}")
        self.scale = scale
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.in_channels = in_channels
        if not isinstance(variant, Variant):
            raise TypeError(f"variant must be a yolo11.Variant; got {type(variant).__name__}")
        self.variant = variant
        layers, sources = _build_layers(scale, num_classes, reg_max, in_channels, variant, rngs)
        self.model = nnx.List(layers)
        self.sources = sources
        for _, module in nnx.iter_modules(self):
            if isinstance(module, BatchNorm):
                module.eps = BN_EPS
                module.momentum = BN_MOMENTUM
        set_compute_dtype(self, dtype)

    def check_input(self, images) -> None:
        """Raise ``ValueError`` unless images are (B, H, W, in_channels) with H, W multiples of 32."""
        check_nhwc_images(images, self.in_channels, "YOLO11")

    def class_output_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the class-output layers (the last 1x1 of each level's
        class branch)."""
        return tuple(f"model.{DETECT_INDEX}.cv3.{i}.2." for i in range(len(STRIDES)))

    def class_branch_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the layers whose shapes may depend on the class count: the
        class branch ``cv3`` (its last 1x1 always, its hidden widths for yolo11n unless
        ``Variant.cls_hidden`` fixes them)."""
        return (f"model.{DETECT_INDEX}.cv3.",)

    def init_class_bias(self, prior_fn: Callable[[int, int], float]) -> None:
        """Set the class-logit biases of the level at stride s to ``prior_fn(num_classes, s)``
        (``Detect.bias_init`` already starts them at ``class_bias_init``, Ultralytics' prior)."""
        self.model[DETECT_INDEX].init_class_bias(prior_fn)

    def __call__(self, images: jax.Array) -> list[LevelOutput]:
        self.check_input(images)
        outputs: list[jax.Array] = []
        x = images
        for layer, source in zip(self.model, self.sources):
            if source != -1:
                x = [x if j == -1 else outputs[j] for j in source]
            x = layer(x)
            outputs.append(x)
        return x


def _build_layers(scale: str, num_classes: int, reg_max: int, in_channels: int, variant: Variant,
                  rngs: nnx.Rngs):
    """The 24 layers of ``LAYERS`` at one scale, and each layer's sources (-1 or a tuple)."""
    depth, width, max_channels = SCALES[scale]
    widths: list[int] = []  # output channels of each layer
    layers, sources = [], []
    for i, (source, repeats, kind, args) in enumerate(LAYERS):
        c_in = in_channels if i == 0 else widths[-1]
        n = max(round(repeats * depth), 1) if repeats > 1 else repeats
        if kind in ("Conv", "C3k2", "SPPF", "C2PSA"):
            c_out = make_divisible(min(args[0], max_channels) * width)
        if kind == "Conv":
            layer = ConvBNSiLU(c_in, c_out, args[1], args[2], rngs=rngs)
        elif kind == "C3k2":
            c3k = bool(args[1]) or scale in C3K_SCALES
            e = args[2] if len(args) > 2 else 0.5
            layer = C3k2(c_in, c_out, n, c3k, e, rngs=rngs)
        elif kind == "SPPF":
            layer = SPPF(c_in, c_out, args[1], variant.sppf_n, variant.sppf_shortcut, variant.sppf_act, rngs=rngs)
        elif kind == "C2PSA":
            layer = C2PSA(c_in, c_out, n, rngs=rngs)
        elif kind == "Upsample":
            layer, c_out = Upsample(), c_in
        elif kind == "Concat":
            layer, c_out = Concat(), sum(c_in if j == -1 else widths[j] for j in source)
        elif kind == "Detect":
            layer = Detect(num_classes, tuple(widths[j] for j in source), reg_max, cls_hidden=variant.cls_hidden,
                           rngs=rngs)
            c_out = 0
        else:
            raise AssertionError(f"unknown layer kind {kind}")
        layers.append(layer)
        sources.append(source)
        widths.append(c_out)
    return layers, tuple(sources)
