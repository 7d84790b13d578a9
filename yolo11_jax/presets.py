"""Named network sizes. ``notebook`` is the notebook's exact network.

Parameter counts (notebook-style, DFL ``proj`` included) and forward GFLOPs
at 640x640, batch 1 (XLA cost analysis; a multiply-add counts as 2 FLOPs),
as printed by ``python benchmarks/model_stats.py``:

==========  =====  =====  ==============  ==============
preset      base   depth  parameters      GFLOPs @ 640
==========  =====  =====  ==============  ==============
notebook    64     2      110,212,128     see README
small       16     2      6,897,488       see README
tiny        8      1      see README      see README
==========  =====  =====  ==============  ==============
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from yolo11_jax.model import YOLOv11


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    name: str
    base: int
    depth: int
    num_classes: int = 80
    reg_max: int = 16
    description: str = ""


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("notebook", 64, 2, description="the notebook's network (110.2M parameters)"),
        ModelPreset("small", 16, 2, description="notebook architecture at base width 16, for CPU training"),
        ModelPreset("tiny", 8, 1, description="base 8, one bottleneck per C3k2; for tests"),
    ]
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_model(preset: str | ModelPreset, *, num_classes: int | None = None, reg_max: int | None = None,
                dtype=None, rngs: nnx.Rngs) -> YOLOv11:
    """A ``YOLOv11`` of the preset's size, optionally with another class count and a compute
    dtype (``jnp.bfloat16`` for mixed precision; see ``model.set_compute_dtype``)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return YOLOv11(num_classes if num_classes is not None else p.num_classes,
                   reg_max if reg_max is not None else p.reg_max,
                   base=p.base, depth=p.depth, dtype=dtype, rngs=rngs)
