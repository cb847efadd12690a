"""Hardening of `python -m navee_jax.recognize`: errors name --references / --calibration (not data.root),
predict's error rows leave `unknown` empty, and enrolling photos already in the gallery skips them. An
untrained Conv-4 (width 4, 8-d, 16x16) stands in for a trained workdir: no training, tiny data, fast."""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from configs import common
from conftest import write_image
from navee_jax.models import build_model
from navee_jax.recognize import Gallery, Recognizer
from navee_jax.recognize.__main__ import _folder_images
from navee_jax.recognize.__main__ import main as cli_main


@pytest.fixture(scope="module")
def rec():
    cfg = common.get_config("digits")
    cfg.data.image_size, cfg.eval.batch_size = 16, 8
    cfg.model.backbone, cfg.model.width, cfg.model.embed_dim = "conv4", 4, 8
    return Recognizer(cfg, build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size), "tiny/checkpoints/1")


@pytest.fixture
def cli(rec, monkeypatch, capsys):
    """cli(*argv) -> (exit status, stdout, stderr), every workdir loading the tiny model (an empty gallery)."""
    def load(cls, *args, **kwargs):
        rec.gallery = Gallery(rec.dim, rec.fingerprint)
        return rec

    monkeypatch.setattr(Recognizer, "load", classmethod(load))

    def run(*argv):
        try:
            status = cli_main(list(argv))
        except SystemExit as e:  # cli.fail: one line on stderr, status 2
            status = e.code
        out = capsys.readouterr()
        return status, out.out, out.err
    return run


def _enroll(cli, refs, gallery, *extra):
    return cli("enroll", "--workdir=unused", f"--references={refs}", f"--gallery={gallery}", *extra)


def test_enroll_errors_name_the_flag_not_data_root(cli, tmp_path, image_folder):
    a_file = tmp_path / "refs.zip"
    a_file.write_bytes(b"PK")
    (tmp_path / "empty" / "article").mkdir(parents=True)
    gallery = tmp_path / "g"
    for refs, want in [(a_file, f"--references: {str(a_file)!r} is a file, not a folder; point --references at"),
                       (tmp_path / "nowhere", f"--references: folder {str(tmp_path / 'nowhere')!r} does not exist; "
                                              f"point --references at"),
                       (tmp_path / "empty", f"--references: no readable images (jpg/jpeg/png/webp/bmp/gif) in "
                                            f"{str(tmp_path / 'empty')!r}")]:
        status, _, err = _enroll(cli, refs, gallery)
        assert status == 2 and err.startswith(f"error: {want}") and "data.root" not in err, err
        assert err.count("\n") == 1
    status, _, err = _enroll(cli, image_folder, gallery, f"--calibration={a_file}")
    assert status == 2 and err.startswith(f"error: --calibration: {str(a_file)!r} is a file"), err


def test_predict_error_rows_leave_unknown_empty(cli, rec, tmp_path, image_folder):
    gallery = tmp_path / "g"
    assert _enroll(cli, image_folder, gallery)[0] == 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    good = str(image_folder / "class0" / "0.jpg")
    status, out, err = cli("predict", f"--gallery={gallery}", str(broken), good, "--format=json")
    rows = json.loads(out)
    assert status == 1 and "broken.png" in err
    assert rows[0]["error"].startswith("unreadable image") and rows[0]["unknown"] is None
    assert rows[0]["article"] is None and rows[0]["distance"] is None
    assert rows[1]["error"] is None and isinstance(rows[1]["unknown"], bool)
    status, out, _ = cli("predict", f"--gallery={gallery}", str(broken), good)
    table = list(csv.DictReader(io.StringIO(out)))
    assert table[0]["unknown"] == "" and table[0]["article"] == "" and table[0]["error"]
    assert table[1]["unknown"] in ("True", "False") and table[1]["error"] == ""
    rec.load_gallery(str(gallery))
    api = rec.predict([str(broken), good])
    assert api[0].unknown is None and api[0].error and api[1].unknown is not None


def _gallery_rows(path):
    g = Gallery.load(str(path))
    return g.refs, [g.articles[a] for a in g.image_article], g.embeddings


def test_enrolling_the_same_photos_again_skips_them(cli, tmp_path, image_folder):
    gallery = tmp_path / "g"
    status, out, _ = _enroll(cli, image_folder, gallery)
    assert status == 0 and len(Gallery.load(str(gallery))) == 12
    first = _gallery_rows(gallery)
    status, out, _ = _enroll(cli, image_folder, gallery)  # the same folder again
    assert status == 0 and "(12 already enrolled)" in out and "enrolled 0 new reference image(s)" in out, out
    again = _gallery_rows(gallery)
    assert again[:2] == first[:2] and np.array_equal(again[2], first[2])

    # New paths: the bytes of an enrolled photo, in its own article and in another; and one new photo.
    extra = tmp_path / "extra"
    (extra / "class2").mkdir(parents=True)
    (extra / "class3").mkdir()
    shutil.copy(image_folder / "class2" / "1.png", extra / "class2" / "z_copy.png")
    shutil.copy(image_folder / "class1" / "1.png", extra / "class3" / "copy_of_class1.png")
    write_image(str(extra / "class3" / "new.png"), seed=99)
    status, out, _ = _enroll(cli, extra, gallery)
    assert status == 0 and "enrolled 1 new reference image(s)" in out and "(1 already enrolled, 1 duplicate)" in out
    assert f"{extra / 'class2' / 'z_copy.png'}: already enrolled: same bytes as {image_folder / 'class2' / '1.png'}" \
        in out
    assert (f"{extra / 'class3' / 'copy_of_class1.png'}: duplicate: same bytes as {image_folder / 'class1' / '1.png'} "
            f"(enrolled as article 'class1')") in out
    refs, articles, embeddings = _gallery_rows(gallery)
    assert refs == first[0] + [str(extra / "class3" / "new.png")] and articles[-1] == "class3"

    # Enrolling in parts equals enrolling the final folder at once (the same photos, in the same order).
    final = tmp_path / "final"
    shutil.copytree(image_folder, final)
    shutil.copytree(extra, final, dirs_exist_ok=True)
    status, out, _ = _enroll(cli, final, tmp_path / "at_once")
    assert status == 0 and "(2 duplicate)" in out, out
    o_refs, o_articles, o_embeddings = _gallery_rows(tmp_path / "at_once")
    assert [os.path.relpath(r, final) for r in o_refs] == \
        [os.path.relpath(r, image_folder) for r in refs[:-1]] + [os.path.relpath(refs[-1], extra)]
    assert o_articles == articles
    np.testing.assert_allclose(o_embeddings, embeddings, atol=1e-5)


def test_a_gallery_saved_without_digests_skips_the_same_paths(cli, tmp_path, image_folder):
    gallery = tmp_path / "g"
    assert _enroll(cli, image_folder, gallery)[0] == 0
    arrays = dict(np.load(gallery / "gallery.npz"))
    del arrays["digests"]  # as written before digests were stored
    np.savez(gallery / "gallery.npz", **arrays)
    assert len(Gallery.load(str(gallery))) == 12
    status, out, _ = _enroll(cli, image_folder, gallery)
    assert status == 0 and "(12 already enrolled)" in out and len(Gallery.load(str(gallery))) == 12, out


def test_predict_images_folder_follows_symlinked_folders(tmp_path, image_folder, capsys):
    root = tmp_path / "queries"
    root.mkdir()
    os.symlink(image_folder / "class0", root / "linked")
    os.symlink(root, root / "linked_loop")
    found = _folder_images(str(root))
    assert found == [str(root / "linked" / n) for n in sorted(os.listdir(image_folder / "class0"))]
    assert f"skipped {root / 'linked_loop'}: symlink loop" in capsys.readouterr().err
