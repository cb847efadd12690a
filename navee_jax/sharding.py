"""Data parallelism on a 1-D device Mesh: batch sharded on `data`, parameters replicated.

This is the current JAX form of a pmap'd trainer: the step is jitted over global arrays and XLA
inserts the gradient all-reduce; losses see the global batch, so mining crosses devices.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from navee_jax.errors import UserError


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def check_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
    if batch_size % mesh.size:
        raise UserError(f"{what}={batch_size} is not divisible by the {mesh.size} devices of the mesh; "
                        f"pick a multiple of {mesh.size}")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host arrays (this process's share of the global batch) -> global arrays sharded on `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def shard_step_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                     replicated_keys: Collection[str] = ()) -> dict[str, jax.Array]:
    """A train step's batch (this process's share of it) as global arrays: every array sharded on `data`
    along its leading axis, except `replicated_keys` (e.g. an episode's labels, whole on every process)."""
    return {k: jax.make_array_from_process_local_data(replicated(mesh) if k in replicated_keys
                                                      else batch_sharded(mesh), v)
            for k, v in batch.items()}


def process_share(batch: np.ndarray, process_index: int, process_count: int, axis: int = 0) -> np.ndarray:
    """This process's contiguous share of a global batch laid out along `axis`, as
    jax.make_array_from_process_local_data expects for a batch sharded on its leading axis."""
    width = batch.shape[axis]
    if width % process_count:
        raise UserError(f"global batch {width} is not divisible by {process_count} processes")
    per = width // process_count
    return np.take(batch, np.arange(process_index * per, (process_index + 1) * per), axis=axis)
