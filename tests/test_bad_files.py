"""A corpus of odd and broken files, made by the test: every bad file is skipped exactly once with its
reason, every valid odd format decodes (through tf.data) to the array PIL gives, and the counts add up."""

import os

import numpy as np
import pytest
from PIL import Image

from configs import common
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.sources import folder_catalogue

SIZE = 16


def _gradient() -> np.ndarray:
    # Smooth, so that JPEG's loss stays small and comparable between decoders.
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 15, y * 15, (x + y) * 7], axis=-1).astype(np.uint8)


def _reference(path: str) -> np.ndarray:
    """What the pipeline should see: RGB uint8, 16-bit scaled to 8, transparency on white."""
    with Image.open(path) as im:
        if im.mode == "I;16":
            return np.repeat((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)[..., None], 3, axis=-1)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
            return np.round(rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)).astype(np.uint8)
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "catalogue"
    rgb = _gradient()
    good, bad = {}, {}

    def put(rel, kind, expected=None):
        (good if expected is None else bad)[str(root / rel)] = kind if expected is None else expected

    for d in ("odd", "solo", "été photos", "empty"):
        (root / d).mkdir(parents=True)
    Image.fromarray(rgb).save(root / "odd" / "plain.jpg", quality=95)
    put("odd/plain.jpg", "jpeg")
    Image.fromarray(rgb).convert("CMYK").save(root / "odd" / "cmyk.jpg", quality=95)
    put("odd/cmyk.jpg", "jpeg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + 3)).save(root / "odd" / "deep16.png")
    put("odd/deep16.png", "lossless")
    alpha = np.where(np.arange(SIZE)[None, :] < SIZE // 2, 0, 255).repeat(SIZE, 0).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / "odd" / "cutout.png")
    put("odd/cutout.png", "lossless")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "odd" / "palette.gif")
    put("odd/palette.gif", "lossless")
    Image.fromarray(rgb[..., 0] > 100).save(root / "odd" / "binary.png")  # mode "1", like Omniglot
    put("odd/binary.png", "lossless")
    Image.fromarray(rgb).save(root / "odd" / "bitmap.bmp")
    put("odd/bitmap.bmp", "lossless")
    Image.fromarray(rgb).save(root / "odd" / "lossless.webp", lossless=True)
    put("odd/lossless.webp", "lossless")
    Image.new("RGB", (6000, 4000), (200, 30, 30)).save(root / "odd" / "huge.png")  # 24 megapixels
    put("odd/huge.png", "large")
    Image.fromarray(rgb).save(root / "été photos" / "robe d'été n°1.png")
    put("été photos/robe d'été n°1.png", "lossless")
    Image.fromarray(rgb[::-1]).save(root / "solo" / "only one.png")
    put("solo/only one.png", "lossless")

    (root / "odd" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    put("odd/corrupt.jpg", None, "unreadable image")
    Image.fromarray(rgb).save(root / "odd" / "truncated.png")
    data = (root / "odd" / "truncated.png").read_bytes()
    (root / "odd" / "truncated.png").write_bytes(data[: len(data) // 2])
    put("odd/truncated.png", None, "unreadable image")
    (root / "odd" / "zero.jpg").write_bytes(b"")
    put("odd/zero.jpg", None, "unreadable image")
    (root / "odd" / "letter.jpg").write_text("Dear customer, this is not a photo.")
    put("odd/letter.jpg", None, "unreadable image")
    (root / "odd" / "notes.txt").write_text("shot list")
    put("odd/notes.txt", None, "unsupported file")
    bad[str(root / "empty")] = "empty class folder"
    return root, good, bad


def test_bad_files_skipped_once_with_reason_and_counts_add_up(corpus):
    root, good, bad = corpus
    cat = folder_catalogue(str(root))
    assert sorted(cat.paths) == sorted(good)
    skipped_paths = [s.path for s in cat.skipped]
    assert sorted(skipped_paths) == sorted(bad)  # each exactly once
    for s in cat.skipped:
        assert s.reason.startswith(bad[s.path]), (s.path, s.reason)
    files_on_disk = sum(len(files) for _, _, files in os.walk(root))
    assert len(cat) + sum(os.path.isfile(p) for p in skipped_paths) == files_on_disk
    assert "solo" in cat.class_names and "été photos" in cat.class_names


def test_valid_odd_formats_decode_to_the_right_rgb_array(corpus):
    root, good, _ = corpus
    cat = folder_catalogue(str(root))
    data = common.get_config("digits").data
    data.image_size = SIZE
    small = np.array([i for i, p in enumerate(cat.paths) if good[p] != "large"])
    decoded = np.concatenate(list(eval_batches(cat, small, data, batch_size=4)))
    for i, img in zip(small, decoded):
        path = cat.paths[i]
        want = _reference(path).astype(np.float64)
        got = img.astype(np.float64)
        assert got.shape == want.shape == (SIZE, SIZE, 3), path
        if good[path] == "jpeg":
            assert np.abs(got - want).mean() < 4, path  # two JPEG decoders, same file
        else:
            np.testing.assert_allclose(got, want, atol=1.0, err_msg=path)
    huge = [i for i, p in enumerate(cat.paths) if good[p] == "large"]
    big = next(eval_batches(cat, np.array(huge), data, batch_size=1))[0]
    np.testing.assert_allclose(big, np.broadcast_to([200, 30, 30], big.shape), atol=1.0)
