"""Data parallelism on a 1-D device Mesh: batch sharded on `data`, parameters replicated.

This is the current JAX form of a pmap'd trainer: the step is jitted over global arrays and XLA
inserts the gradient all-reduce; losses see the global batch, so mining crosses devices.
"""

from __future__ import annotations

from typing import Any, Sequence

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


def shard_step_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A train step's batch: `images` and every array of the same length sharded on `data` (this
    process's share), arrays of another length (an episode's support labels) replicated."""
    n = len(batch["images"])
    return {k: jax.make_array_from_process_local_data(batch_sharded(mesh) if len(v) == n else replicated(mesh), v)
            for k, v in batch.items()}
