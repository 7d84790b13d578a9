"""benchmarks/trace_summary.py, the profile reader of ``train_step.py --profile``: it finds the
trace, sums operation times and groups them (checked on a CPU trace of a small jitted function)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trace_summary  # noqa: E402


def test_summary_of_a_cpu_trace(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(3):
            f(x).block_until_ready()
    s = trace_summary.summarize(str(tmp_path), top=10)
    assert s["device"] == "host XLA threads" and s["total_us"] > 0
    assert 0 < len(s["ops"]) <= 10 and all(us > 0 for _, us in s["ops"])
    assert not any(trace_summary._HOST_NOISE.search(name) for name, _ in s["ops"])
    assert s["groups"].get("conv/matmul", 0) > 0  # the dot
    assert sum(s["groups"].values()) == pytest.approx(s["total_us"])
    assert sum(us for _, us in s["families"]) <= s["total_us"] * (1 + 1e-9)
    assert s["n_events"] >= s["n_ops"] >= len(s["ops"])
    trace_summary.print_summary(s, steps=3)
    assert trace_summary.summarize(s["path"], top=10)["total_us"] == s["total_us"]  # the file itself


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no perfetto_trace.json.gz under"):
        trace_summary.summarize(str(tmp_path))


@pytest.mark.parametrize("name, group", [
    ("loop_convert_fusion.10", "other fusion"),  # a cast, not a convolution
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "conv/matmul"),
    ("nvjet_sm90_tst_128x160_64x5_2x1_v_ssched_bz_TNT", "conv/matmul"),
    ("convolution.43", "conv/matmul"),
    ("input_add_reduce_fusion.68", "reduce"),
    ("input_concatenate_fusion", "copy/transpose"),
    ("loop_multiply_fusion.9", "other fusion"),
])
def test_groups_of_gpu_and_cpu_names(name, group):
    assert trace_summary.group_of(name) == group
