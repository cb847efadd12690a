"""ViTs loaded from transformers checkpoints give transformers' own embeddings: randomly initialised tiny CLIP,
DINOv2 (with and without registers) and SigLIP vision towers saved as safetensors, read back without torch, at
their own input size and at another one (position embeddings resized as `interpolate_pos_encoding` does)."""

import json
import re

import numpy as np
import pytest

from navee_jax.errors import UserError
from navee_jax.models.resize import bicubic_matrix

torch = pytest.importorskip("torch", reason="the parity references need PyTorch (pip install 'navee-jax[torch]')")
transformers = pytest.importorskip("transformers", reason="the parity references need transformers")
pytest.importorskip("safetensors", reason="transformers checkpoints are read from safetensors")

import jax.numpy as jnp  # noqa: E402

from navee_jax.models.hf_vit import load_hf_vit  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("n_in, n_out", [(4, 6), (4, 9), (7, 5), (9, 4), (5, 5)])
def test_bicubic_matrices_resize_as_torch_interpolate_does(n_in, n_out, antialias):
    grid = np.random.default_rng(n_in * 10 + n_out).normal(size=(n_in, n_in)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(n_out, n_out), mode="bicubic",
                                           align_corners=False, antialias=antialias)[0, 0].numpy()
    w = bicubic_matrix(n_in, n_out, antialias)
    np.testing.assert_allclose(w @ grid.astype(np.float64) @ w.T, want, rtol=1e-5, atol=1e-5)


def _reference(family: str):
    torch.manual_seed(0)
    if family == "clip_projection":
        model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY, projection_dim=24))
    elif family == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY))
    elif family == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**{**TINY, "mlp_ratio": 2}))
    elif family == "dinov2_registers":
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**{**TINY, "mlp_ratio": 2}, num_register_tokens=2))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY))
    with torch.no_grad():  # every tensor away from its initial value (LayerScale ones, zero biases, ...)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _embedding(model, family: str, images: np.ndarray) -> np.ndarray:
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        if family.startswith("dinov2"):
            out = model(pixel_values=pixels)
        else:
            out = model(pixel_values=pixels, interpolate_pos_encoding=images.shape[1] != TINY["image_size"])
    return (out.image_embeds if family == "clip_projection" else out.pooler_output).numpy()


@pytest.mark.parametrize("family", ["clip", "clip_projection", "dinov2", "dinov2_registers", "siglip"])
def test_converted_towers_give_transformers_embeddings_at_their_size_and_another(family, tmp_path):
    reference = _reference(family)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    _, model = load_hf_vit(str(tmp_path))
    rng = np.random.default_rng(0)
    for size in (32, 48):
        images = rng.normal(size=(3, size, size, 3)).astype(np.float32)
        want = _embedding(reference, family, images)
        got = np.asarray(model(jnp.asarray(images)))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_checkpoint_that_does_not_fit_names_its_first_culprit(tmp_path):
    from safetensors.numpy import load_file, save_file

    _reference("siglip").save_pretrained(tmp_path, safe_serialization=True)
    (path,) = tmp_path.glob("*.safetensors")
    tensors = load_file(path)
    tensors.pop("encoder.layers.1.mlp.fc2.bias")
    save_file(tensors, path)
    with pytest.raises(UserError, match=r"missing tensor 'encoder\.layers\.1\.mlp\.fc2\.bias'"):
        load_hf_vit(str(tmp_path))

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "vit_mae"}))
    with pytest.raises(UserError, match="model_type 'vit_mae' is not a supported vision tower"):
        load_hf_vit(str(tmp_path))


def test_model_pretrained_loads_a_tower_of_the_backbones_size_and_refuses_another(tmp_path):
    from flax import nnx

    from configs import triplet
    from navee_jax.models import build_model

    torch.manual_seed(0)  # ViT-S/16's sizes, at 32x32 (2x2 patches) to stay quick
    reference = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=32,
        patch_size=16)).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    cfg = triplet.get_config("digits").model
    cfg.backbone, cfg.pretrained, cfg.embed_dim, cfg.normalize = "vit_s16", str(tmp_path), 0, False
    model = build_model(cfg, nnx.Rngs(0), image_size=64)  # another input size: positions resized
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
                         interpolate_pos_encoding=True).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(images))), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    cfg.backbone = "vit_b16"
    with pytest.raises(UserError, match="is a clip ViT of patch 16, width 384 and depth 12, not a vit_b16"):
        build_model(cfg, nnx.Rngs(0), image_size=64)


def test_a_pretrained_towers_preprocessing_is_required_of_the_config(tmp_path):
    from configs import triplet
    from navee_jax.launcher.config_check import check_config

    _reference("clip").save_pretrained(tmp_path, safe_serialization=True)
    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.pretrained, cfg.data.image_size = "vit_s16", str(tmp_path), 32
    with pytest.raises(UserError, match=re.escape("resized to a shorter side of 224 and centre-cropped to 224 "
                                                  "(bicubic), normalised with mean (0.48145466, 0.4578275, "
                                                  "0.40821073)")):
        check_config(cfg)  # squash, bilinear, ImageNet's: the config's defaults
    cfg.data.resize, cfg.data.interpolation = "crop", "bicubic"
    cfg.data.mean, cfg.data.std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    check_config(cfg)
    # The directory's own image processor, when it has one, says which: transformers writes it.
    transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 35, "width": 35},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=re.escape("set --config.data.crop_fraction=0.875 "
                                                  "--config.data.mean='(0.5, 0.5, 0.5)' "
                                                  "--config.data.std='(0.5, 0.5, 0.5)'")):
        check_config(cfg)
