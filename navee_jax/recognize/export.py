"""The embedding function for serving: uint8 images (b, S, S, 3), already decoded and resized as in
evaluation (`preprocessing.json` says how), -> float32 embeddings (b, D), any batch size b.

Two forms, both with the weights inside:
* `embed.jax_export`: `jax.export` serialised StableHLO; `load_stablehlo(path)` gives a callable
  (jax.export.deserialize(...).call), usable from any JAX >= the exporting version.
* `saved_model/`: a TensorFlow SavedModel (jax2tf), signature `serving_default(images: uint8[b, S, S, 3])`
  returning `{"embeddings": float32[b, D]}`, for TF Serving and the TF runtimes.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
from flax import nnx

from navee_jax.data.tf_import import tf_module
from navee_jax.embed import embed_images
from navee_jax.errors import UserError
from navee_jax.recognize.api import Recognizer

STABLEHLO_NAME = "embed.jax_export"
SAVED_MODEL_NAME = "saved_model"


def embedding_function(rec: Recognizer) -> Callable[[jax.Array], jax.Array]:
    """uint8 images -> embeddings, the weights closed over (so they are constants of the export)."""
    graphdef, params, rest, prepare, shifts = rec.graphdef, rec.params, rec.rest, rec.prepare, rec.shifts

    def embed(images: jax.Array) -> jax.Array:
        return embed_images(nnx.merge(graphdef, params, rest), images, prepare, shifts=shifts)

    return embed


def export_embedding(rec: Recognizer, out_dir: str) -> dict[str, str]:
    """Writes out_dir/{embed.jax_export, saved_model/, preprocessing.json}; returns what was written."""
    if rec.distance is not None:
        raise UserError(f"loss.name={rec.config.loss.name!r} ranks by its learned score, not by the embedding's "
                        f"distance: an exported embedding alone would rank wrongly; use the Recognizer instead")
    from jax.experimental import jax2tf

    os.makedirs(out_dir, exist_ok=True)
    s = int(rec.config.data.image_size)
    fn = embedding_function(rec)
    shape = jax.export.symbolic_shape(f"b, {s}, {s}, 3")
    exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct(shape, np.uint8))
    stablehlo = os.path.join(out_dir, STABLEHLO_NAME)
    with open(stablehlo, "wb") as f:
        f.write(exported.serialize())

    tf = tf_module()
    module = tf.Module()
    converted = jax2tf.convert(fn, polymorphic_shapes=[f"(b, {s}, {s}, 3)"], with_gradient=False)
    module.embed_fn = tf.function(converted, autograph=False)

    @tf.function(input_signature=[tf.TensorSpec([None, s, s, 3], tf.uint8, name="images")], autograph=False)
    def serve(images):
        return {"embeddings": module.embed_fn(images)}

    module.serve = serve
    saved_model = os.path.join(out_dir, SAVED_MODEL_NAME)
    tf.saved_model.save(module, saved_model, signatures={"serving_default": serve})

    meta = os.path.join(out_dir, "preprocessing.json")
    with open(meta, "w") as f:
        json.dump({"input": f"uint8[b, {s}, {s}, 3]: images decoded, resized and converted as `preprocessing` "
                            f"says (navee_jax.data.pipeline.eval_batches)",
                   "output": f"float32[b, {rec.dim}]", **rec.fingerprint}, f, indent=1)
    return {"StableHLO (jax.export)": stablehlo, "TensorFlow SavedModel": saved_model, "preprocessing": meta}


def load_stablehlo(path: str) -> Callable[[np.ndarray], jax.Array]:
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read())).call
