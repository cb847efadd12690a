"""TensorFlow, imported once and kept off the accelerators (they belong to JAX)."""

import functools


@functools.cache
def tf_module():
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf
