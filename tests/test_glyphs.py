"""The glyphs source (navee_jax.data.glyphs), the offline default: letters of three scripts in 16 fonts, no
class a copy of another, and the README's main command learning a metric that transfers to unseen letters."""

import json

import numpy as np

from conftest import run_launch
from navee_jax.data.glyphs import FONTS, SAME_GLYPH, SCRIPTS, glyph_difference, glyphs_catalogue, render


def test_glyph_difference_is_zero_for_the_same_drawing_and_one_for_disjoint_strokes():
    white = np.full((1, 4, 4), 255, np.uint8)
    left, right = white.copy(), white.copy()
    left[0, :, 0], right[0, :, 3] = 0, 0
    assert glyph_difference(left, left) == 0.0
    assert glyph_difference(left, right) == 1.0
    half = white.copy()
    half[0, :2, 0] = 0  # half of `left`'s ink: |difference| is 2 columns of 255 over 6 of ink
    assert abs(glyph_difference(left, half) - 2 / 6) < 1e-6


def test_every_class_is_a_distinct_letter_of_its_script_in_every_font():
    cat = glyphs_catalogue()
    per_class = np.bincount(cat.labels)
    assert (per_class == len(FONTS)).all() and len(FONTS) == 16
    images = cat.pixels[..., 0].reshape(len(cat.class_names), len(FONTS), *cat.pixels.shape[1:3])
    for name, group, drawn in zip(cat.class_names, cat.groups[::len(FONTS)], images):
        script, letter = name.split("/")
        assert script == group and letter in SCRIPTS[script]
        np.testing.assert_array_equal(drawn[3], render(letter, FONTS[3]))  # font order is FONTS'
        assert (drawn[:, 0, 0] == 255).all() and (drawn.min(axis=(1, 2)) < 128).all()  # black ink on white
    # Brute force over all pairs: no two classes are one glyph.
    closest = min(glyph_difference(images[i], images[j]) for i in range(len(images)) for j in range(i))
    assert closest >= SAME_GLYPH
    names = set(cat.class_names)
    assert "Greek/Α" not in names and "Cyrillic/О" not in names  # the Latin A and O already are classes
    assert {"Greek/Θ", "Cyrillic/Щ", "Cyrillic/Ш", "Latin/O"} <= names  # look alike, but are other letters


def test_the_main_command_on_glyphs_learns_a_metric_for_unseen_letters(tmp_path):
    """The README's main command, shortened: it must beat the untrained network on the 30 held-out letters."""
    r = run_launch(["--config=configs/triplet.py", f"--workdir={tmp_path}", "--config.train.num_epochs=3",
                    "--config.model.width=16", "--config.eval.episodes=20"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held out 30 classes" in r.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["final"]["map"] > m["initial"]["map"] + 0.1, (m["initial"]["map"], m["final"]["map"])
