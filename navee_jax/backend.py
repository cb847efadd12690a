"""What navee_jax does differently on XLA:CPU, and the one gate deciding it: `cpu_tuned(mesh)`.

Three things are tuned for XLA:CPU only (docs/train_step.md, docs/maml.md): the compile options of the
jitted steps (`compiler_options`), ResNet's hand-written backward passes (navee_jax.models.cpu_tuned,
installed by `build_model(..., cpu_tuned=True)`), and MAML's meta-step, which scans a meta-batch's tasks one
at a time instead of vmapping them (navee_jax.meta.train.make_meta_step). GPU / TPU meshes get none: cuDNN,
XLA's own fusions and batched kernels are better served by the plain ops.

Environment:
  NAVEE_PLAIN_MODELS=1  the plain path on a CPU mesh too (plain ResNet backward passes, jaxlib's default
                        compile options, vmapped MAML tasks), e.g. to compare against or to rule the tuning out.

A core module: it imports only jax, numpy and the standard library (and navee_jax.errors).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

PLAIN_MODELS_ENV = "NAVEE_PLAIN_MODELS"

# XLA:CPU: convolutions on XLA's own (Eigen) path instead of YNNPACK, jaxlib 0.10's default; dots and
# reductions stay on YNNPACK. YNNPACK's kernel-gradient convolutions are 2-4x slower here, so a ResNet-18
# train step takes about 0.6x the time (docs/train_step.md). GPU and TPU compilers never see it.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def cpu_tuned(mesh: Any) -> bool:
    """Whether `mesh` (a jax.sharding.Mesh, or anything with `.devices`) gets the XLA:CPU tuning: its
    devices are CPUs and NAVEE_PLAIN_MODELS is not "1"."""
    return mesh.devices.flat[0].platform == "cpu" and os.environ.get(PLAIN_MODELS_ENV, "") != "1"


@functools.cache
def _cpu_options_supported() -> bool:
    try:  # a jaxlib that does not know the option refuses it at compile time; it then keeps its defaults
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception:
        return False
    return True


def compiler_options(mesh: Any) -> dict[str, str]:
    """`CPU_COMPILER_OPTIONS` for a CPU mesh (`cpu_tuned`), unless XLA_FLAGS already chooses the fusion
    types; {} (the compiler's defaults) otherwise."""
    chosen_by_user = "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")
    if not cpu_tuned(mesh) or chosen_by_user or not _cpu_options_supported():
        return {}
    return dict(CPU_COMPILER_OPTIONS)
