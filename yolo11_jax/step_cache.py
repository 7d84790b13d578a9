"""A cache of the traced train step, so that a second run of a configuration skips Python tracing.

JAX's persistent compilation cache (``compile_cache``) saves the *compiled* program, but finding
it needs the program's HLO, so every run still traces the step in Python and lowers it: about
5 s for a YOLO11n step on a 2-core CPU, the largest part of a second run's time to its first
step. This module saves the *traced* step as well: the lowered program, serialized with
``jax.export``, in ``<compile cache>/steps/<key>.jaxexport``. A later run with the same key
loads it (milliseconds), lowers a call of it (a fraction of a second) and compiles that, which
the persistent cache then answers.

The key stands for everything the traced program depends on:

* the source of every module of this package (``yolo11_jax/**.py``);
* the versions of Python, jax, jaxlib, flax, optax and numpy, jax's configuration values, the
  ``XLA_FLAGS`` environment variable and the backend (platform, device kind, device count);
* the network's graph definition (its modules and their static attributes, e.g. ``conv_impl``);
* the tree structure, shapes and dtypes of the state and of the batch;
* ``material``: what the caller built the step from (the trainer passes every option of the run
  and the run's length, from which the schedules are made).

What the key cannot see is code outside this package that changes how the step traces: a loss
or optimizer registered from another module (the trainer does not use the cache then, see
:func:`eligible`), or the package patched at run time. Code that does that must switch the
cache off (``--trace-cache off``).

The program that runs is the one ``jax.export`` lowered from the jitted step: the same HLO,
compiled by the same XLA, so its results equal the jitted step's bit for bit
(``tests/test_step_cache.py``). The state is donated as with the jitted step.

Single device, single process only: a sharded step is traced as before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

FORMAT_VERSION = 1
SUBDIR = "steps"
SUFFIX = ".jaxexport"

# jax configuration values that name where caches live, not what a program computes.
_CONFIG_IGNORED = re.compile(r"compilation_cache|persistent_cache|pgle")
# Static attributes of a graph definition that hold functions print their address.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the path and text of every ``.py`` file of this package, in path order."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _versions() -> dict:
    import flax
    import jaxlib
    import optax
    return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                flax=flax.__version__, optax=optax.__version__, numpy=np.__version__)


def _backend() -> dict:
    devices = jax.devices()
    return dict(platform=devices[0].platform, device_kind=devices[0].device_kind, device_count=len(devices),
                xla_flags=os.environ.get("XLA_FLAGS", ""))


def _jax_config() -> dict:
    return {k: repr(v) for k, v in sorted(jax.config.values.items()) if not _CONFIG_IGNORED.search(k)}


def _avals(tree) -> list:
    return [[list(np.shape(x)), str(jax.numpy.result_type(x)), bool(getattr(x, "weak_type", False))]
            for x in jax.tree.leaves(tree)]


def key_parts(graphdef, state, batch, material: Mapping[str, Any]) -> dict[str, str]:
    """The texts :func:`cache_key` hashes, by name (to see why two keys differ)."""
    return dict(format=str(FORMAT_VERSION), sources=source_digest(), versions=json.dumps(_versions(), sort_keys=True),
                backend=json.dumps(_backend(), sort_keys=True), jax_config=json.dumps(_jax_config(), sort_keys=True),
                graphdef=_ADDRESS.sub("", repr(graphdef)), state_tree=str(jax.tree.structure(state)),
                batch_tree=str(jax.tree.structure(batch)), state_avals=json.dumps(_avals(state)),
                batch_avals=json.dumps(_avals(batch)), material=json.dumps(material, sort_keys=True, default=str))


def cache_key(graphdef, state, batch, material: Mapping[str, Any]) -> str:
    """A hex sha256 naming the traced step for ``graphdef`` (the network's ``nnx.GraphDef``),
    ``state`` / ``batch`` (their trees, shapes and dtypes) and ``material`` (JSON-serialisable
    with ``default=str``: what the step was built from), with this package's sources, the library
    versions, jax's configuration and the backend (see the module docstring)."""
    h = hashlib.sha256()
    for name, text in key_parts(graphdef, state, batch, material).items():
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def eligible(*, devices: int, processes: int, builders: Mapping[str, Callable]) -> str | None:
    """``None`` when the step can come from the cache, else the reason it cannot: several
    devices or processes, or a builder (the loss's, the optimizer's) defined outside this
    package, whose source the key does not cover."""
    if devices != 1 or processes != 1:
        return f"{devices} devices in {processes} processes (the cache holds single-device steps)"
    for what, fn in builders.items():
        module = getattr(fn, "__module__", None) or ""
        if not (module == "yolo11_jax" or module.startswith("yolo11_jax.")):
            return f"the {what} is built by {module or 'unknown code'}, outside yolo11_jax (its source is not in the key)"
    return None


class CachedStep:
    """A compiled train step from the cache: ``step(state, batch) -> (state, metrics)``, with
    ``state`` donated. ``outcome``: ``"loaded"`` (from the cache) or ``"saved"`` (traced now and
    written); ``path``: the ``.jaxexport`` file."""

    def __init__(self, compiled, outcome: str, path: Path):
        self._compiled, self.outcome, self.path = compiled, outcome, path

    def __call__(self, state, batch):
        return self._compiled(state, batch)


def _export(train_step: Callable, state_treedef, batch_treedef, n_state: int, leaves) -> jax.export.Exported:
    def flat_step(*flat):
        state = jax.tree.unflatten(state_treedef, flat[:n_state])
        batch = jax.tree.unflatten(batch_treedef, flat[n_state:])
        new_state, metrics = train_step(state, batch)
        if jax.tree.structure(new_state) != state_treedef:
            raise ValueError("the train step returns a state of another structure than it takes; it cannot be "
                             "cached (switch the trace cache off)")
        return jax.tree.leaves(new_state), metrics

    specs = [jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x)) for x in leaves]
    return jax.export.export(jax.jit(flat_step))(*specs)


def compile_step(train_step: Callable, state, batch, *, folder: str | os.PathLike, key: str,
                 log: Callable[[str], None] = lambda s: None) -> CachedStep:
    """The compiled ``train_step`` (a jitted ``(state, batch) -> (state, metrics)`` that donates
    ``state``) for these ``state`` / ``batch`` shapes: loaded from ``folder/<key>.jaxexport``
    when it is there, else traced, written there, and compiled. An unreadable file is reported
    through ``log`` and replaced."""
    folder = Path(folder)
    path = folder / f"{key}{SUFFIX}"
    state_leaves, state_treedef = jax.tree.flatten(state)
    batch_leaves, batch_treedef = jax.tree.flatten(batch)
    leaves = state_leaves + batch_leaves
    n_state = len(state_leaves)
    exported, outcome = None, "loaded"
    if path.exists():
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
        except Exception as e:  # a truncated or foreign file: trace again and overwrite it
            log(f"trace cache: {path} could not be read ({type(e).__name__}: {e}); tracing the step again")
    if exported is None:
        exported, outcome = _export(train_step, state_treedef, batch_treedef, n_state, leaves), "saved"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(exported.serialize())
        os.replace(tmp, path)  # atomic: a concurrent run reads the old file or the new one

    def call_exported(state, batch):  # traces to one call of the exported program
        new_leaves, metrics = exported.call(*jax.tree.leaves(state), *jax.tree.leaves(batch))
        return jax.tree.unflatten(state_treedef, new_leaves), metrics

    compiled = jax.jit(call_exported, donate_argnums=(0,)).lower(state, batch).compile()
    return CachedStep(compiled, outcome, path)
