"""Glyphs: the letters of the Latin, Greek and Cyrillic alphabets in the 16 fonts matplotlib installs, the
offline default data set (as notMNIST did with fonts: each letter is a class, each font a "drawer").

Real, varied and shipped with a dependency: DejaVu Sans, Serif and Sans Mono and STIX General, each upright,
bold, slanted and bold slanted. A letter that looks like a letter of an earlier script (Greek A, Cyrillic O,
...) is not a class of its own: two letters are one glyph when their renderings differ by less than
`SAME_GLYPH` of their ink (`glyph_difference`), so no class is a copy of another (Greek Π and Cyrillic П
are one class; O and Θ, Ш and Щ are two).
Each glyph is drawn black on white on a `size` x `size` canvas: every letter of a font at the same size on
the same baseline (case and x-height tell 'o' from 'O'), centred horizontally, then downsampled 2x.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from navee_jax.data.catalogue import Catalogue

FONTS = tuple(f"{family}{style}.ttf" for family, styles in (
    ("DejaVuSans", ("", "-Bold", "-Oblique", "-BoldOblique")),
    ("DejaVuSerif", ("", "-Bold", "-Italic", "-BoldItalic")),
    ("DejaVuSansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
    ("STIXGeneral", ("", "Bol", "Italic", "BolIta"))) for style in styles)

SCRIPTS = {  # script -> its letters (capital and small)
    "Latin": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "Greek": "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρστυφχψω",
    "Cyrillic": "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя",
}
SAME_GLYPH = 0.06  # glyph_difference below which two letters are one glyph (A and Α: 0.005; A and Λ: 0.08)
SIZE = 32  # pixels of a glyph image


def font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def render(letter: str, font_file: str, size: int = SIZE) -> np.ndarray:
    """(size, size) uint8, black glyph on white: drawn at 2x and downsampled (anti-aliased)."""
    big = 2 * size
    font = ImageFont.truetype(os.path.join(font_dir(), font_file), size=int(big * 0.6))
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    left, _, right, _ = draw.textbbox((0, 0), letter, font=font, anchor="ls")
    baseline = int(big * 0.72)  # the same for every letter: descenders and x-heights stay where they are
    draw.text(((big - (right - left)) / 2 - left, baseline), letter, fill=0, font=font, anchor="ls")
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def glyph_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over fonts of sum |a - b| / (ink of a + ink of b) for (fonts, H, W) renderings of two letters:
    0 for the same drawing, 1 for strokes that never overlap."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    ink = (255 - a).sum(axis=(1, 2)) + (255 - b).sum(axis=(1, 2))
    return float(np.mean(np.abs(a - b).sum(axis=(1, 2)) / np.maximum(ink, 1.0)))


@functools.cache
def glyphs_catalogue(size: int = SIZE) -> Catalogue:
    """Every distinct letter (class `<script>/<letter>`, group its script) in every font: (N, size, size, 1)."""
    drawn: list[tuple[str, str, np.ndarray]] = []  # (script, letter, (fonts, size, size))
    for script, letters in SCRIPTS.items():
        for letter in letters:
            images = np.stack([render(letter, f, size) for f in FONTS])
            if all(glyph_difference(images, other) >= SAME_GLYPH for _, _, other in drawn):
                drawn.append((script, letter, images))
    names = tuple(f"{script}/{letter}" for script, letter, _ in drawn)
    pixels = np.concatenate([images for _, _, images in drawn])[..., None]
    labels = np.repeat(np.arange(len(drawn)), len(FONTS))
    groups = tuple(script for script, _, _ in drawn for _ in FONTS)
    return Catalogue(name="glyphs", labels=labels, class_names=names, pixels=pixels, groups=groups)
