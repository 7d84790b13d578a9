"""Data parallelism on JAX's own sharding: one ``Mesh`` with a ``data`` axis, multi-host setup.

The training step is written for the *global* batch. ``make_train_step(..., mesh=mesh)``
jit-compiles it with ``in_shardings`` / ``out_shardings``: the batch is split along its first
axis over the mesh's ``data`` axis, the parameters, BatchNorm statistics and optimizer state
are replicated. XLA's SPMD partitioner inserts the all-reduces, so every reduction over the
batch -- the BatchNorm mean and variance, the number of positives that normalises the loss,
the gradient -- is taken over the global batch, and the result does not depend on the
number of devices (up to float32 summation order). One device is the same code path with a
mesh of size one.

Multi-host: every process runs the same program. :func:`initialize_distributed` calls
``jax.distributed.initialize``; ``jax.devices()`` then lists the devices of all processes
and the mesh spans them. Each process prepares only its rows of every global batch
(``data.TrainPipeline``, sharded with ``grain.sharding.ShardByJaxProcess``), and :func:`global_batch` assembles the
global array from the process-local rows with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
    """Call ``jax.distributed.initialize`` when multi-process settings are given.

    Each argument falls back to its environment variable (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Nothing is done (and ``False`` returned) when
    none is set, or when ``num_processes`` is 1. Must run before anything touches a JAX
    device. On CPU the cross-process collectives are gloo's (JAX's default).

    Returns whether JAX was initialised for several processes.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator_address is None and num_processes is None and process_id is None:
        return False
    if num_processes == 1 and coordinator_address is None:
        return False
    missing = [name for name, v in (("--coordinator-address", coordinator_address),
                                    ("--num-processes", num_processes), ("--process-id", process_id))
               if v is None]
    if missing:
        raise ValueError(f"multi-process training needs --coordinator-address, --num-processes and "
                         f"--process-id (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); "
                         f"missing: {', '.join(missing)}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return num_processes > 1


def make_mesh(num_devices: Optional[int] = None, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D ``Mesh`` over ``devices`` (default: all devices of all processes) named ``data``.

    ``num_devices`` takes the first N of them (a benchmark knob; with several processes it
    must be all of them).
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, but {len(devices)} are visible "
                             f"({devices[0].platform}); on CPU, simulate more with "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count=N")
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("with several processes the mesh must span all devices")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, statistics, optimizer state, metrics)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "--batch-size") -> None:
    """Raise ``ValueError`` unless the global batch splits evenly over the devices and processes."""
    n = mesh.devices.size
    if global_batch % n:
        lo, hi = (global_batch // n) * n, (global_batch // n + 1) * n
        raise ValueError(f"{what} {global_batch} is not divisible by the {n} devices of the data-parallel "
                         f"mesh; use a multiple of {n}, e.g. {lo or hi} or {hi}")
    if global_batch % jax.process_count():
        raise ValueError(f"{what} {global_batch} is not divisible by the {jax.process_count()} processes")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global ``jax.Array`` s, batch-sharded over ``mesh``, from this process's rows.

    With one process ``local`` is the whole batch and this is a sharded ``device_put``.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a pytree of arrays on every device of ``mesh``."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # Every process holds the same host values; each provides its addressable copies.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(tree: Any) -> Any:
    """NumPy copies of replicated (or single-device) arrays, readable on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(get, tree)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process gets here (no-op with one process).

    Through the distributed runtime's coordination service, not a device collective: a
    process that is still compiling, or process 0 evaluating alone, would otherwise leave the
    others waiting in a gloo collective, whose timeout is short (Orbax's own barriers are
    such collectives on this JAX version, so one of these goes before every Orbax call).
    ``name`` must be unique per call site and step.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost  # the client that jax.distributed.initialize created

    client = multihost.get_jax_distributed_client()
    if client is None:
        raise RuntimeError("parallel.barrier: jax.distributed is not initialized")
    client.wait_at_barrier(f"yolo11_jax:{name}", timeout_in_ms=timeout_s * 1000)


def is_primary() -> bool:
    """True on the process that writes logs, plots, exports (process 0)."""
    return jax.process_index() == 0
