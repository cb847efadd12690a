import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Dozens of tests run launch.py on the same tiny configs: JAX's persistent compilation cache, shared by the
# pytest workers and their launch.py subprocesses (which inherit the environment), compiles each step once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                                f"navee_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

try:  # before anything imports TensorFlow: `import tensorflow` then `import triton` (torchvision pulls it in
    import torchvision  # noqa: F401  through torch._dynamo) segfaults with tensorflow-cpu 2.21 and triton 3.8
except ImportError:
    pass

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real data sets live beside the repository, never in it; tests using them skip where absent.
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
OMNIGLOT = os.path.join(SHARED_DATA, "omniglot")

# Small enough for a 2-core CI machine: the ResNet-18 topology at 1/8 width (about 20 s a run).
TINY = ["--config.model.width=8", "--config.model.embed_dim=32", "--config.eval.episodes=10"]


def run_launch(args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Runs launch.py as a user would, capturing output."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=timeout, **kwargs)


def write_image(path: str, seed: int, size: int = 12) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """root/<class>/*.png|jpg: 3 classes x 4 images of random pixels."""
    root = tmp_path / "images"
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            write_image(str(root / f"class{c}" / f"{i}.{'png' if i % 2 else 'jpg'}"), seed=10 * c + i)
    return root
