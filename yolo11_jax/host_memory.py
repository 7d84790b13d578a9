"""Host memory on a CPU backend: let XLA:CPU reuse its step's scratch memory instead of
page-faulting it in afresh on every call.

XLA:CPU runs a compiled program with all of its temporaries in one block that it allocates
per call and frees at the end of it: 220 MiB for the YOLO11n Ultralytics-recipe step at
128 px, batch 16. The block is allocated from one of XLA's worker threads. With glibc's
default settings such a block never stays in the process:

* a worker thread allocates from its own arena, whose heaps are at most 64 MiB, so glibc
  serves the block with ``mmap`` and returns it with ``munmap`` when the call ends. Raising
  ``M_MMAP_THRESHOLD`` (``MALLOC_MMAP_THRESHOLD_``) does not change this: a thread's arena
  falls back to ``mmap`` for any block larger than its heap, whatever the threshold;
* so every page of the block is faulted in, and zeroed by the kernel, again on every step:
  about 56,500 minor faults and 105 ms of system time per yolo11n step at 128 px on a 2-core
  machine, against 340 ms of user time (``benchmarks/RESULTS.md``).

:func:`configure` with ``"reuse"`` asks glibc (``mallopt``) for one arena (``M_ARENA_MAX=1``),
no ``mmap`` (``M_MMAP_MAX=0``) and no trimming (``M_TRIM_THRESHOLD`` at its maximum). The block
then comes from the main heap, which keeps what is freed: no faults in steady state. Over the
first calls the heap grows a few times by a block, until its free space has a layout that fits
the block (small allocations made between calls can split it). The costs: the process keeps
that heap until it exits (its peak RSS was nevertheless lower than with the defaults in
``benchmarks/RESULTS.md``, where compilation sets the peak), and every thread allocates from one
arena (one lock), which matters little on the few cores where the CPU backend runs.

The settings must be made **before JAX starts its CPU client**: a thread keeps the arena it
first allocated from, and glibc fixes its arena limit once more than eight exist. So the
command-line tools call :func:`configure` before anything initialises a JAX backend, and it
reports when it comes too late. Only glibc (Linux) has ``mallopt``; elsewhere it does
nothing and says so.

The same settings can be made from outside the process, before it starts, with
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os

POLICIES = ("auto", "reuse", "default")
OPTION_HELP = ("host memory (yolo11_jax/host_memory.py): reuse (glibc keeps freed memory in one arena, so XLA:CPU's "
               "per-call scratch block is not page-faulted in afresh every step; the process keeps its peak heap), "
               "default (glibc as it is), or auto (reuse when JAX runs on its CPU backend); train's log and "
               "config.json name what was applied")
"""``--host-malloc``'s help text (train, evaluate, predict)."""

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2 ** 31 - 1

_applied: str | None = None  # what configure() did in this process, once it has acted


def _backend_started() -> bool:
    """Whether JAX has already created its backends (clients) in this process."""
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def accelerator_expected(platforms: str | None = None) -> bool:
    """Whether JAX will pick an accelerator rather than the CPU, judged without starting a
    backend: the first entry of ``platforms`` (default: ``jax.config.jax_platforms``, i.e.
    ``JAX_PLATFORMS``) when set, else whether an accelerator plugin (``jax_plugins`` entry points
    or namespace modules) or ``libtpu`` is installed."""
    if platforms is None:
        import jax
        platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins  # namespace package of the PJRT plugins (jax-cuda12-plugin, ...)
        if list(getattr(jax_plugins, "__path__", [])):
            import pkgutil
            if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
                return True
    except ImportError:
        pass
    return importlib.util.find_spec("libtpu") is not None


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc's ``libc`` through ctypes, or ``None`` on another C library."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc


def arena_count() -> int | None:
    """How many malloc arenas glibc has made in this process (``malloc_info``), or ``None``
    without glibc. One (the main heap) until a second thread allocates."""
    libc = _glibc()
    if libc is None:
        return None
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return None
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    xml = ctypes.string_at(buf, size.value).decode()
    libc.free(buf)
    return xml.count("<heap nr=")


def configure(policy: str = "auto") -> str:
    """Apply the host-memory ``policy`` and return a one-line description for the log.

    ``"reuse"``: glibc keeps freed memory in one arena (see the module docstring);
    ``"default"``: leave the C library alone; ``"auto"``: ``"reuse"`` when JAX will run on its
    CPU backend (:func:`accelerator_expected` is false), else ``"default"``. Calling it again
    after it has acted returns the first description (the settings are process-wide)."""
    global _applied
    if policy not in POLICIES:
        raise ValueError(f"host memory policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    if _applied is not None:
        return _applied
    if policy == "auto":
        if accelerator_expected():
            return "default (auto: an accelerator backend is expected)"
        policy = "reuse"
    if policy == "default":
        return "default"
    libc = _glibc()
    if libc is None:
        return "default (reuse asked for, but the C library is not glibc: no mallopt)"
    if _backend_started():
        return ("default (reuse asked for too late: JAX's backend had already started in this process, "
                "so its threads keep their arenas)")
    arenas = arena_count()
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))
    if not ok:
        _applied = "partly applied: glibc refused one of the mallopt settings"
    elif arenas is not None and arenas > 1:
        # glibc hands new threads the existing arenas in turn: XLA's threads that get a thread
        # arena still mmap their large blocks
        _applied = (f"reuse (glibc: one arena, no mmap, no trimming), but {arenas} arenas existed already: "
                    f"some of XLA's threads may still page-fault their blocks")
    else:
        _applied = "reuse (glibc: one arena, no mmap, no trimming)"
    return _applied
