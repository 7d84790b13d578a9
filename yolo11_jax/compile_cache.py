"""JAX's persistent compilation cache for training, evaluation and prediction.

XLA compiles every jitted function on its first call: a YOLO11 train step on a 2-core CPU takes
tens of seconds. With the persistent cache on, the compiled executables are written to a folder
and a later process that compiles the same program (same function, shapes, options, jax and
jaxlib versions, backend) loads it from there instead.

``enable(cache_dir)`` turns it on in ``cache_dir``; ``enable(None)`` or ``enable("")`` turns it
off. :func:`default_cache_dir` is the documented user folder: ``$YOLO11_JAX_COMPILE_CACHE`` if
set, else ``$XDG_CACHE_HOME/yolo11_jax/xla``, else ``~/.cache/yolo11_jax/xla``. The cache only
ever grows; delete the folder to reclaim the space.

JAX's own defaults cache only programs that took at least 1 s to compile. Here every program is
cached (``min_compile_time_secs=0``): a model's eager initialisation compiles hundreds of small
programs of ~0.1-0.3 s each, which together are a large part of the time to the first step.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache as _cc

ENV_VAR = "YOLO11_JAX_COMPILE_CACHE"


def user_cache_dir(name: str) -> str:
    """``$XDG_CACHE_HOME/yolo11_jax/<name>``, else ``~/.cache/yolo11_jax/<name>``: the user
    folders of the project's caches (``xla`` here, ``shapes`` for the shapes data's boxes)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "yolo11_jax", name)


def default_cache_dir() -> str:
    """``$YOLO11_JAX_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/yolo11_jax/xla``, else
    ``~/.cache/yolo11_jax/xla``."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    return user_cache_dir("xla")


def enable(cache_dir: str | os.PathLike | None, *, min_compile_time_secs: float = 0.0,
           min_entry_size_bytes: int = 0) -> str | None:
    """Turn JAX's persistent compilation cache on in ``cache_dir`` (created if missing), or off
    when ``cache_dir`` is ``None`` or ``""``. Returns the folder in use, or ``None``.

    ``min_compile_time_secs`` and ``min_entry_size_bytes``: programs that compiled faster, or
    whose executable is smaller, are not written (JAX's
    ``jax_persistent_cache_min_compile_time_secs`` / ``..._min_entry_size_bytes``). Call it
    before the first compilation you want cached; calling it again with another folder (or off)
    takes effect for the compilations after it."""
    if cache_dir is None or str(cache_dir) == "":
        jax.config.update("jax_enable_compilation_cache", False)
        _cc.reset_cache()
        return None
    cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    os.makedirs(cache_dir, exist_ok=True)
    changed = jax.config.jax_compilation_cache_dir != cache_dir or not jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    if changed:
        _cc.reset_cache()  # the next compilation opens the cache in the new folder
    return cache_dir


def cache_dir_in_use() -> str | None:
    """The folder of the persistent cache, or ``None`` when it is off."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir
