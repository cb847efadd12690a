"""navee-jax: few-shot recognition of fashion products with JAX and Flax NNX."""

import os

# TensorFlow is used for tf.data only; keep it quiet and off accelerators. These must be set
# before TensorFlow is first imported, which happens inside this package.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"


def __getattr__(name: str):
    # `navee_jax.Recognizer` without importing JAX / TensorFlow for every `import navee_jax` (launch.py, CLIs).
    if name == "Recognizer":
        from navee_jax.recognize import Recognizer

        return Recognizer
    raise AttributeError(f"module 'navee_jax' has no attribute {name!r}")
