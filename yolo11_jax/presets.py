"""Named network sizes, for ``build_model`` and ``--model``.

Two families:

* the notebook's network (``model.YOLOv11``): ``notebook`` is the notebook's exact network,
  ``small`` and ``tiny`` are narrower and shallower versions of it for CPU training and tests;
* Ultralytics' YOLO11 detectors (``yolo11.YOLO11``): ``yolo11n`` ... ``yolo11x``, the
  architectures of the released ``yolo11{n,s,m,l,x}.pt`` weights (``convert.load_ultralytics``
  reads those).

Parameter counts and forward GFLOPs at 640x640 of every preset are printed by
``python benchmarks/model_stats.py``.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from yolo11_jax import kernels
from yolo11_jax.model import YOLOv11
from yolo11_jax.yolo11 import DEFAULT_VARIANT, YOLO11, Variant


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A named network size. The notebook family sets ``base`` (stem width) and ``depth``
    (bottlenecks per C3k2); the YOLO11 family sets ``scale`` ('n' ... 'x')."""

    name: str
    base: int | None = None
    depth: int | None = None
    scale: str | None = None
    num_classes: int = 80
    reg_max: int = 16
    description: str = ""

    @property
    def family(self) -> str:
        return "yolo11" if self.scale is not None else "notebook"


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("notebook", 64, 2, description="the notebook's network (110.2M parameters)"),
        ModelPreset("small", 16, 2, description="notebook architecture at base width 16, for CPU training"),
        ModelPreset("tiny", 8, 1, description="base 8, one bottleneck per C3k2; for tests"),
        ModelPreset("yolo11n", scale="n", description="Ultralytics YOLO11n (2.6M parameters at 80 classes)"),
        ModelPreset("yolo11s", scale="s", description="Ultralytics YOLO11s (9.5M parameters at 80 classes)"),
        ModelPreset("yolo11m", scale="m", description="Ultralytics YOLO11m (20.1M parameters at 80 classes)"),
        ModelPreset("yolo11l", scale="l", description="Ultralytics YOLO11l (25.4M parameters at 80 classes)"),
        ModelPreset("yolo11x", scale="x", description="Ultralytics YOLO11x (57.0M parameters at 80 classes)"),
    ]
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_model(preset: str | ModelPreset, *, num_classes: int | None = None, reg_max: int | None = None,
                dtype=None, conv_impl: str = kernels.DEFAULT_CONV_IMPL, variant: Variant = DEFAULT_VARIANT,
                rngs: nnx.Rngs) -> YOLOv11 | YOLO11:
    """The preset's network (``YOLOv11`` or ``YOLO11``), optionally with another class count, a
    compute dtype (``jnp.bfloat16`` for mixed precision; see ``model.set_compute_dtype``) and the
    convolution kernels ``conv_impl``: ``"lax"`` (default; every JAX transformation works),
    ``"cpu_depthwise"`` (depthwise convolutions as a sum over taps, the fastest for YOLO11 on a
    CPU; every transformation works) or ``"cpu_taps"`` (also the kernel gradients as per-tap
    matmuls, for the notebook's wide layers on a CPU; no forward mode), or ``"auto"`` (on a CPU
    the family's fastest of those two, elsewhere ``"lax"``: ``kernels.resolve_conv_impl``). See
    ``kernels.py``. The choice made is recorded as ``model.conv_impl``. ``variant``: a YOLO11 preset's architecture variant (``yolo11.Variant``;
    the default is the released weights' architecture)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    num_classes = num_classes if num_classes is not None else p.num_classes
    reg_max = reg_max if reg_max is not None else p.reg_max
    if p.family == "yolo11":
        model = YOLO11(p.scale, num_classes, reg_max, variant=variant, dtype=dtype, rngs=rngs)
    elif variant != DEFAULT_VARIANT:
        raise ValueError(f"{p.name!r} is not a YOLO11 preset; a YOLO11 variant does not apply to it")
    else:
        model = YOLOv11(num_classes, reg_max, base=p.base, depth=p.depth, dtype=dtype, rngs=rngs)
    return kernels.set_conv_impl(model, kernels.resolve_conv_impl(conv_impl, p.family))
