"""``compile_cache.enable``: a second process compiles a jitted function from the persistent
cache that a first process wrote; ``enable(None)`` switches the cache off."""

import json
import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import subprocess_env
from yolo11_jax import compile_cache

# Prints {"hits": cache hits, "misses": programs compiled and written} for one small jitted function.
CHILD = r"""
import json, sys
import jax, jax.numpy as jnp
from yolo11_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
compile_cache.enable(sys.argv[1])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + 1.25)
f(jnp.ones((7, 5), jnp.float32)).block_until_ready()
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run_child(cache_dir) -> dict:
    env = subprocess_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_second_process_compiles_from_the_cache(tmp_path):
    first = _run_child(tmp_path)
    assert first["hits"] == 0 and first["misses"] >= 1
    assert os.listdir(tmp_path), "the first process wrote nothing to the cache"
    second = _run_child(tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0


SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")


def test_enable_and_switch_off(tmp_path, monkeypatch):
    before = {name: getattr(jax.config, name) for name in SETTINGS}
    try:
        assert compile_cache.enable(tmp_path / "c") == str(tmp_path / "c")
        assert os.path.isdir(tmp_path / "c") and compile_cache.cache_dir_in_use() == str(tmp_path / "c")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        assert compile_cache.enable("") is None and compile_cache.cache_dir_in_use() is None
    finally:  # the session's own cache (conftest.py) back
        for name, value in before.items():
            jax.config.update(name, value)
        compile_cache._cc.reset_cache()
    monkeypatch.setenv("YOLO11_JAX_COMPILE_CACHE", "/x/y")
    assert compile_cache.default_cache_dir() == "/x/y"
    monkeypatch.delenv("YOLO11_JAX_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == os.path.join(str(tmp_path), "yolo11_jax", "xla")
