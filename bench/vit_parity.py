"""The ViT import at full size: each family's real base configuration (CLIP ViT-B/16, DINOv2 ViT-B/14, SigLIP
ViT-B/16 at 224), randomly initialised in transformers, saved as safetensors, read by navee_jax.models.hf_vit,
and both embeddings compared at the tower's own input size and at another one (tests/test_hf_vit.py does the
same on tiny towers in CI).

    python bench/vit_parity.py [--families clip,dinov2,siglip] [--images 2]

Prints, per family and input size, the largest absolute difference relative to the largest embedding value.
Needs torch and transformers (no download: the configurations are written out here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torchvision  # noqa: F401  before TensorFlow (DEVELOPERS.md); transformers pulls in torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# family -> (model, the input sizes compared: its own, then another)
FAMILIES = {
    "clip": (lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        **BASE, image_size=224, patch_size=16, projection_dim=512)), (224, 256)),
    "dinov2": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(
        **{k: v for k, v in BASE.items() if k != "intermediate_size"}, mlp_ratio=4, image_size=518, patch_size=14)),
        (518, 224)),
    "siglip": (lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        **BASE, image_size=224, patch_size=16)), (224, 256)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--images", type=int, default=2)
    a = p.parse_args()
    import jax.numpy as jnp

    from navee_jax.models.hf_vit import load_hf_vit

    for family in a.families.split(","):
        build, sizes = FAMILIES[family]
        torch.manual_seed(0)
        reference = build().eval()
        with tempfile.TemporaryDirectory() as directory:
            reference.save_pretrained(directory, safe_serialization=True)
            _, model = load_hf_vit(directory)
        params = sum(p.numel() for p in reference.parameters())
        for size in sizes:
            images = np.random.default_rng(size).normal(size=(a.images, size, size, 3)).astype(np.float32)
            pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
            with torch.no_grad():
                kwargs = {} if family == "dinov2" else {"interpolate_pos_encoding": size != sizes[0]}
                out = reference(pixel_values=pixels, **kwargs)
            want = (out.image_embeds if family == "clip" else out.pooler_output).numpy()
            got = np.asarray(model(jnp.asarray(images)))
            error = np.abs(got - want).max() / np.abs(want).max()
            print(f"{family}: {params / 1e6:.1f} M parameters, {size}x{size}: max |difference| / max |embedding| "
                  f"= {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
