"""yolo11_jax.host_memory: glibc keeps XLA:CPU's freed memory, so a call's block of
temporaries is not page-faulted in afresh on every call."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from yolo11_jax import host_memory

# One process per policy: the settings are process-wide and must precede JAX's backend. The
# probe is a small training-like call: the gradient of three 3x3 convolutions on a (16, 96, 96,
# 16) batch, whose 75 MB of temporaries XLA:CPU allocates as one block per call. It counts the
# process's minor page faults (getrusage) of each of 20 calls after 8 warm-up calls. Under "reuse"
# glibc's heap grows by a block now and then while it settles on a layout that fits (a call that
# grows it faults the new pages in once; measured: 2-6 such calls in the first 30, then none), so
# the test holds the median call, not the mean.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    from yolo11_jax import host_memory
    described = host_memory.configure(sys.argv[1])
    import jax, jax.numpy as jnp

    def net(w, x):
        for i in range(3):
            x = jnp.tanh(jax.lax.conv_general_dilated(x, w[i], (1, 1), "SAME",
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return (x ** 2).mean()

    f = jax.jit(jax.grad(net))
    w = jnp.full((3, 3, 3, 16, 16), 0.05, jnp.float32)
    x = jnp.ones((16, 96, 96, 16), jnp.float32)
    temp_bytes = f.lower(w, x).compile().memory_analysis().temp_size_in_bytes
    for _ in range(8):
        f(w, x).block_until_ready()
    faults = []
    for _ in range(20):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(w, x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(json.dumps(dict(described=described, faults=faults, temp_bytes=temp_bytes)))
""")


def _probe(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, policy], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's; this C library has none")
def test_reuse_stops_the_per_call_page_faults():
    """With glibc's defaults every call faults its 75 MB block of temporaries in afresh (~18,400
    pages of 4 KiB); with "reuse" the freed block is served again: measured 0 faults in the
    median call."""
    default = _probe("default")
    reuse = _probe("reuse")
    assert default["described"] == "default"
    assert reuse["described"].startswith("reuse"), reuse
    pages = default["temp_bytes"] / 4096
    assert pages > 10_000, default  # the probe has the large block it is meant to have
    assert statistics.median(default["faults"]) > 0.5 * pages, default  # the cost being removed is there
    assert statistics.median(reuse["faults"]) < 0.05 * pages, reuse


def test_auto_follows_the_platform():
    assert host_memory.accelerator_expected("cpu") is False
    assert host_memory.accelerator_expected("cpu,cuda") is False
    assert host_memory.accelerator_expected("cuda") is True
    assert host_memory.accelerator_expected("tpu,cpu") is True


def test_too_late_is_reported_not_applied():
    """In this process JAX's backend is already up (the test suite used it), so "reuse" would
    not reach XLA's threads: it is refused with the reason, and glibc is left alone. (If a
    training test of this worker process ran first, before any backend, the settings were made
    then; a second call only repeats that description.)"""
    import jax
    jax.numpy.zeros(1).block_until_ready()
    if host_memory._applied is not None:
        assert host_memory.configure("reuse") == host_memory._applied
        return
    described = host_memory.configure("reuse")
    assert described.startswith("default (reuse asked for too late"), described
    assert host_memory._applied is None


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="host memory policy must be one of auto, reuse, default; got 'always'"):
        host_memory.configure("always")


def test_the_command_line_tools_import_no_arena_maker():
    """``configure`` only works while the main heap is glibc's only arena: a thread started at
    import time (pyarrow's, when ``datasets`` is imported) takes an arena of its own, which XLA's
    threads then share in turn. Importing train, evaluate and predict must start no such thread,
    so that their ``configure`` (before any backend) applies the settings whole."""
    code = textwrap.dedent("""
        import yolo11_jax.train, yolo11_jax.evaluate, yolo11_jax.predict
        from yolo11_jax import host_memory
        print(host_memory.arena_count())
        print(host_memory.configure("reuse"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    arenas, described = out.stdout.strip().splitlines()[-2:]
    if host_memory._glibc() is None:
        assert arenas == "None" and described.startswith("default (reuse asked for, but the C library is not glibc")
        return
    assert arenas == "1", out.stdout
    assert described == "reuse (glibc: one arena, no mmap, no trimming)", described
