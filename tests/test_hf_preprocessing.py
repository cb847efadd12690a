"""A foundation model's preprocessing: the settings read from the image processor transformers saves, navee_jax's
resize + centre crop against that processor's own pixels, and the converter's checkpoint (weights + settings)
against the transformers directory it came from."""

import json

import numpy as np
import pytest

from navee_jax.data.augment import resize
from navee_jax.errors import UserError
from navee_jax.models.hf_preprocessing import checkpoint_settings, processor_settings

transformers = pytest.importorskip("transformers", reason="the references are transformers' image processors")
torch = pytest.importorskip("torch", reason="transformers' models and image processors need PyTorch")


def _photo(h: int, w: int) -> np.ndarray:
    """A smooth uint8 RGB image (resampling differences stay at interpolation size, not at noise size)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * x * y + 1)]
    return np.round(127.5 + 120 * np.stack(channels, -1)).astype(np.uint8)


def _ours(image: np.ndarray, settings: dict) -> np.ndarray:
    out = resize(image, settings["image_size"], settings["resize"], 1.0, settings["crop_fraction"],
                 settings["interpolation"])
    return np.asarray(out).astype(np.float64)


@pytest.mark.parametrize("processor_class, kwargs, want", [
    ("CLIPImageProcessor", dict(size={"shortest_edge": 40}, crop_size={"height": 35, "width": 35}),
     {"image_size": 35, "resize": "crop", "crop_fraction": 0.875, "interpolation": "bicubic"}),
    ("BitImageProcessor", dict(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, resample=2),
     {"image_size": 48, "resize": "crop", "crop_fraction": 1.0, "interpolation": "bilinear"}),
    ("SiglipImageProcessor", dict(size={"height": 36, "width": 36}),
     {"image_size": 36, "resize": "squash", "crop_fraction": 1.0, "interpolation": "bicubic"}),
])
@pytest.mark.parametrize("shape", [(53, 71), (90, 61), (300, 400)])
def test_resize_and_crop_give_the_image_processors_pixels(processor_class, kwargs, want, shape, tmp_path):
    processor = getattr(transformers, processor_class)(**kwargs)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    settings = processor_settings(saved, "test")
    assert {k: settings[k] for k in want} == pytest.approx(want)
    assert settings["mean"] == pytest.approx(tuple(processor.image_mean))

    image = _photo(*shape)
    theirs = processor(images=image, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    theirs = np.asarray(theirs, np.float64).transpose(1, 2, 0)
    ours = _ours(image, settings)
    assert ours.shape == theirs.shape
    # Same geometry and kernel: measured within 1 grey level (rounding), mean under 0.2.
    assert np.abs(ours - theirs).mean() < 0.5 and np.abs(ours - theirs).max() <= 2


def test_the_family_defaults_apply_without_a_processor_file(tmp_path):
    dinov2 = checkpoint_settings(str(tmp_path), "dinov2")
    assert (dinov2["image_size"], dinov2["resize"], dinov2["crop_fraction"]) == (224, "crop", 0.875)
    assert checkpoint_settings(str(tmp_path), "siglip")["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(UserError, match="resample 0 is not bilinear"):
        processor_settings({"resample": 0, "image_mean": [0] * 3, "image_std": [1] * 3}, "x")


def test_the_converted_checkpoint_embeds_as_the_transformers_directory_and_keeps_its_settings(tmp_path, capsys):
    import jax.numpy as jnp

    from configs import triplet
    from navee_jax.launcher.config_check import check_config
    from navee_jax.models.convert import load_pretrained_vit, main
    from navee_jax.models.hf_vit import load_hf_vit, pretrained_settings

    torch.manual_seed(0)
    src, out = tmp_path / "dinov2", tmp_path / "converted"
    reference = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8)).eval()
    reference.save_pretrained(src, safe_serialization=True)
    main(["--arch=hf_vit", f"--src={src}", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "wrote dinov2" in printed and "--config.data.crop_fraction=0.875" in printed
    family, converted = load_pretrained_vit(str(out))
    images = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(converted(jnp.asarray(images))), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(np.asarray(converted(jnp.asarray(images))),
                                  np.asarray(load_hf_vit(str(src))[1](jnp.asarray(images))))
    assert family == "dinov2" and pretrained_settings(str(out)) == pretrained_settings(str(src))

    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.pretrained = "vit_s16", str(out)
    with pytest.raises(UserError, match="holds a dinov2 model"):
        check_config(cfg)  # the converted directory's vit.json says how its images were made
    with pytest.raises(SystemExit):
        main(["--arch=hf_vit", f"--src={src}", f"--out={out}"])  # never over an existing checkpoint
    assert "already exists" in capsys.readouterr().err


def test_the_resize_and_crop_settings_go_into_the_gallery_fingerprint(tmp_path):
    from flax import nnx

    from configs import triplet
    from navee_jax.models import build_model
    from navee_jax.recognize import Recognizer

    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = "conv4", 8, 8, 16
    plain = Recognizer(cfg, build_model(cfg.model, nnx.Rngs(0), 16), "test")
    assert not {"crop_fraction", "interpolation"} & set(plain.fingerprint["preprocessing"])  # older galleries match
    plain.enroll(list(_photo(40, 30)[None].repeat(2, 0)), ["a", "b"])
    plain.save_gallery(str(tmp_path / "gallery"))

    cfg.data.resize, cfg.data.crop_fraction, cfg.data.interpolation = "crop", 0.875, "bicubic"
    cropped = Recognizer(cfg, build_model(cfg.model, nnx.Rngs(0), 16), "test")
    assert cropped.fingerprint["preprocessing"] | {"crop_fraction": 0.875, "interpolation": "bicubic"} == \
        cropped.fingerprint["preprocessing"]
    with pytest.raises(UserError, match="preprocessing.crop_fraction"):
        cropped.load_gallery(str(tmp_path / "gallery"))
