import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.resnet import resnet18

# torchvision.models.resnet18(): 11,689,512 parameters, of which fc holds 512*1000 + 1000.
TORCHVISION_RESNET18_WITHOUT_FC = 11_689_512 - 513_000


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_resnet18_has_torchvision_parameter_count_and_shapes():
    model = resnet18(rngs=nnx.Rngs(0))
    assert _count(nnx.state(model, nnx.Param)) == TORCHVISION_RESNET18_WITHOUT_FC
    # torchvision names: layer2.0.downsample.{0: conv, 1: bn}; the 3x3 conv carries the stride.
    assert model.layer2[0].downsample.conv.kernel.shape == (1, 1, 64, 128)
    assert model.layer2[0].conv1.strides == (2, 2) and model.layer1[0].downsample is None
    assert model.conv1.kernel.shape == (7, 7, 3, 64)


def test_embedding_shapes_and_l2_normalisation():
    net = EmbeddingNet(resnet18(width=8, rngs=nnx.Rngs(0)), 16, normalize=True, rngs=nnx.Rngs(1))
    net.eval()
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    z = net(x)
    assert z.shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    # Spatial resolution: 32 -> 16 (conv1) -> 8 (pool) -> 8, 4, 2, 1 through the stages.
    feats = net.backbone.conv1(x)
    assert feats.shape == (3, 16, 16, 8)
