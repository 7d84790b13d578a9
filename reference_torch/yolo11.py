"""Ultralytics' YOLO11 detection network (scales n, s, m, l, x) in plain PyTorch, NCHW.

Written from the published architecture (``yolo11.yaml`` and the module definitions it names),
without Ultralytics' code. Module classes carry Ultralytics' class names and attribute names,
so ``YOLO11(scale, nc).state_dict()`` has exactly the keys, shapes and order of an Ultralytics
``DetectionModel`` (``model.0.conv.weight`` ... ``model.23.dfl.conv.weight``), and a state dict
taken from one loads here with ``strict=True``.

``forward`` returns the same per-level triple as the notebook's reference, so the same parity
code serves both: ``[(cls_logits (B,C,h,w), box_ltrb (B,4,h,w), box_raw (B,4*reg_max,h,w))]``
for strides 8, 16, 32, ``box_ltrb`` the DFL expectation in grid units. (Ultralytics' own
``Detect`` returns the raw maps in training and decoded, concatenated boxes in inference; the
layers and weights are the same.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

SCALES = {  # scale -> (depth, width, max_channels)
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
    "m": (0.50, 1.00, 512),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.50, 512),
}
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
# Box-branch output bias after Detect.bias_init: 2.0 in Ultralytics 8.4, 1.0 in 8.3.
BOX_BIAS_INIT = 2.0

# yolo11.yaml, backbone then head: [from, repeats, module, args].
YAML_ROWS = [
    [-1, 1, "Conv", [64, 3, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 2, "C3k2", [256, False, 0.25]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 2, "C3k2", [512, False, 0.25]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 2, "C3k2", [512, True]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 2, "C3k2", [1024, True]],
    [-1, 1, "SPPF", [1024, 5]],
    [-1, 2, "C2PSA", [1024]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 2, "C3k2", [512, False]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 2, "C3k2", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 13], 1, "Concat", [1]],
    [-1, 2, "C3k2", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],
    [-1, 2, "C3k2", [1024, True]],
    [[16, 19, 22], 1, "Detect", ["nc"]],
]


class Conv(nn.Module):
    """Conv2d (no bias, padding k // 2, groups g) -> BatchNorm2d -> SiLU (or Identity)."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depthwise-style Conv with groups = gcd(c1, c2)."""

    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, xs):
        return torch.cat(xs, self.d)


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, k=(3, 3), e=0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0])
        self.cv2 = Conv(hidden, c2, k[1])
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, e=0.5, k=3):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(c1, hidden, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, (k, k), 1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class C3k2(nn.Module):
    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, shortcut=True):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut) if c3k else Bottleneck(self.c, self.c, shortcut)
                               for _ in range(n))

    def forward(self, x):
        ys = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """``n`` chained max-pools after ``cv1``, concatenated into ``cv2``; ``shortcut`` adds the
    input (when c1 == c2); ``act`` is cv1's SiLU (Ultralytics 8.4 before 8.4.190 built it with
    ``act=False``: an ``Identity``)."""

    def __init__(self, c1, c2, k=5, n=3, shortcut=False, act=True):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, act=act)
        self.cv2 = Conv((n + 1) * hidden, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)
        self.n = n
        self.add = shortcut and c1 == c2

    def forward(self, x):
        ys = [self.cv1(x)]
        for _ in range(self.n):
            ys.append(self.m(ys[-1]))
        y = self.cv2(torch.cat(ys, 1))
        return y + x if self.add else y


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        b, c, h, w = x.shape
        per_head = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = per_head.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # (B, heads, N, N)
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w)
        return self.proj(out + self.pe(v.reshape(b, c, h, w)))


class PSABlock(nn.Module):
    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = Attention(c, num_heads, attn_ratio)
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))
        self.add = shortcut

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        assert c1 == c2, (c1, c2)
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, 0.5, max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), 1)
        return self.cv2(torch.cat([a, self.m(b)], 1))


class DFL(nn.Module):
    """Expectation over reg_max bins as a frozen 1x1 conv with weight arange(reg_max)."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, box_raw):
        """box_raw (B, 4 * c1, h, w) -> box_ltrb (B, 4, h, w)."""
        b, _, h, w = box_raw.shape
        dist = box_raw.view(b, 4, self.c1, h, w).softmax(2)
        return (dist * self.conv.weight.view(1, 1, self.c1, 1, 1)).sum(2)


class Detect(nn.Module):
    def __init__(self, nc=80, ch=(), reg_max=16, cls_hidden=None):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        c2 = max(16, ch[0] // 4, 4 * reg_max)
        c3 = max(ch[0], min(nc, 100)) if cls_hidden is None else cls_hidden  # cls_hidden: not in Ultralytics
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                          nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                          nn.Conv2d(c3, nc, 1))
            for x in ch)
        self.dfl = DFL(reg_max)

    def bias_init(self):
        with torch.no_grad():
            for box, cls, s in zip(self.cv2, self.cv3, self.stride.tolist()):
                box[-1].bias.fill_(BOX_BIAS_INIT)
                cls[-1].bias[:self.nc] = math.log(5 / self.nc / (640 / s) ** 2)

    def forward(self, xs):
        out = []
        for x, box, cls in zip(xs, self.cv2, self.cv3):
            box_raw = box(x)
            out.append((cls(x), self.dfl(box_raw), box_raw))
        return out


def _make_divisible(x, divisor=8):
    return math.ceil(x / divisor) * divisor


def parse_rows(scale, nc, ch_in=3, reg_max=16, sppf_act=True, sppf_n=3, sppf_shortcut=False, cls_hidden=None):
    """Build the 24 layers of ``YAML_ROWS`` at ``scale``; each layer gets ``f`` (its sources)
    and ``i`` (its index) attributes, as Ultralytics' layers do. ``sppf_*``: the SPPF variant
    (see ``SPPF``); ``cls_hidden``: Detect's class-branch hidden width (None: Ultralytics' rule)."""
    depth, width, max_channels = SCALES[scale]
    ch, layers = [], []
    for i, (f, n, name, args) in enumerate(YAML_ROWS):
        c1 = ch_in if i == 0 else ch[-1]
        n = max(round(n * depth), 1) if n > 1 else n
        if name in ("Conv", "C3k2", "SPPF", "C2PSA"):
            c2 = _make_divisible(min(args[0], max_channels) * width)
        if name == "Conv":
            m = Conv(c1, c2, *args[1:])
        elif name == "C3k2":
            m = C3k2(c1, c2, n, args[1] or scale in "mlx", *args[2:])
        elif name == "SPPF":
            m = SPPF(c1, c2, *args[1:], n=sppf_n, shortcut=sppf_shortcut, act=sppf_act)
        elif name == "C2PSA":
            m = C2PSA(c1, c2, n)
        elif name == "nn.Upsample":
            m, c2 = nn.Upsample(*args), c1
        elif name == "Concat":
            m, c2 = Concat(*args), sum(ch[j] for j in f)
        else:  # Detect
            m, c2 = Detect(nc, [ch[j] for j in f], reg_max, cls_hidden), None
        m.f, m.i = f, i
        layers.append(m)
        ch.append(c2)
    return layers


class YOLO11(nn.Module):
    """YOLO11 detector; ``state_dict()`` keys are those of Ultralytics' ``DetectionModel``.

    Initialised as Ultralytics does: PyTorch's default layer init, ``Detect.bias_init``, then
    every BatchNorm2d set to eps 1e-3 and momentum 0.03. ``sppf_act``, ``sppf_n`` and
    ``sppf_shortcut`` choose the SPPF variant, ``cls_hidden`` the Detect class branch's hidden
    width (``None``: Ultralytics' ``max(ch0, min(nc, 100))``) (defaults: the released weights'
    architecture).
    """

    def __init__(self, scale="n", nc=80, reg_max=16, ch=3, *, sppf_act=True, sppf_n=3, sppf_shortcut=False,
                 cls_hidden=None):
        super().__init__()
        self.scale = scale
        self.nc = nc
        self.model = nn.Sequential(*parse_rows(scale, nc, ch, reg_max, sppf_act, sppf_n, sppf_shortcut, cls_hidden))
        self.model[-1].bias_init()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM

    def forward(self, x):
        outputs = []
        for layer in self.model:
            if layer.f != -1:
                x = [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x)
        return x
