"""Image transforms inside tf.data, on float32 RGB images in [0, 1] (resize and flip also take uint8);
random ones are stateless (seeded per image), so an epoch's augmentations depend only on
(seed, epoch, position)."""

from __future__ import annotations

import math

import ml_collections

from navee_jax.data.tf_import import tf_module


RESIZE_MODES = ("squash", "pad", "crop")
INTERPOLATIONS = ("bilinear", "bicubic")


def resize(img, size: int, mode: str, fill: float, crop_fraction: float = 1.0, method: str = "bilinear"):
    """(size, size), antialiased: 'squash' stretches; 'pad' keeps the aspect ratio and pads with `fill` (white for
    product photos and Omniglot, whose backgrounds are white); 'crop' resizes the shorter side to
    size / crop_fraction and keeps the centre square, as the image processors of CLIP and DINOv2 do (their
    rounding: the longer side truncated, the crop's offset floored). Keeps the dtype (uint8 is rounded)."""
    tf = tf_module()

    def resized():
        x = tf.image.convert_image_dtype(img, tf.float32)
        if mode == "squash":
            x = tf.image.resize(x, (size, size), method=method, antialias=True)
        elif mode == "pad":  # resize_with_pad pads with 0: pad the image's distance from `fill`, then undo the shift.
            x = fill - tf.image.resize_with_pad(fill - x, size, size, method=method, antialias=True)
        else:
            h, w = tf.shape(x)[0], tf.shape(x)[1]
            shorter = tf.constant(int(round(size / crop_fraction)), tf.int32)
            scale = tf.cast(shorter, tf.float64) / tf.cast(tf.minimum(h, w), tf.float64)
            new_h = tf.where(h <= w, shorter, tf.cast(tf.cast(h, tf.float64) * scale, tf.int32))
            new_w = tf.where(h <= w, tf.cast(tf.cast(w, tf.float64) * scale, tf.int32), shorter)
            x = tf.image.resize(x, tf.stack([new_h, new_w]), method=method, antialias=True)
            x = tf.image.crop_to_bounding_box(x, (new_h - size) // 2, (new_w - size) // 2, size, size)
        return to_uint8(x) if img.dtype == tf.uint8 else x

    # An image already at the target size is left alone: the antialiased resize is the most expensive
    # step of the whole pipeline, 4x the JPEG decode, even when it changes nothing.
    shape = tf.shape(img)
    already = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    if mode == "crop" and crop_fraction < 1:  # a square of the target size is still enlarged and cropped
        already = tf.constant(False)
    return tf.ensure_shape(tf.cond(already, lambda: img, resized), (size, size, img.shape[-1]))


def to_uint8(img):
    """[0, 1] float -> uint8, rounded to nearest (convert_image_dtype would truncate)."""
    tf = tf_module()
    return tf.cast(tf.round(tf.clip_by_value(img, 0.0, 1.0) * 255.0), tf.uint8)


def needs_float(data: ml_collections.ConfigDict, train: bool) -> bool:
    """Whether the transforms `data` asks for must run in float; without them an image stays uint8 from
    decode to batch (only a resize, if its size differs, goes through float)."""
    random_float = data.crop_scale_min < 1 or data.rotation_deg or data.color_jitter or data.affine or data.translate_px
    return bool((train and random_float) or data.grayscale or data.binarize)


def rotate(img, angle, fill: float):
    """Rotation by `angle` radians (counter-clockwise) about the image centre; uncovered pixels get `fill`."""
    tf = tf_module()
    h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse rotation.
    cx, cy = (w - 1) / 2, (h - 1) / 2
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=transform[None], output_shape=tf.shape(img)[:2],
        fill_value=tf.constant(fill, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


# Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image Recognition": each
# component of T = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y) is drawn from these ranges with probability
# 0.5, else left at the identity. Translations are in pixels at Koch's 105x105.
KOCH_ROTATION_DEG = 10.0
KOCH_SHEAR = 0.3
KOCH_SCALE = (0.8, 1.2)
KOCH_TRANSLATION_PX = 2.0
KOCH_SIZE = 105
AFFINE_IDENTITY = (0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)  # (theta, rho_x, rho_y, s_x, s_y, t_x, t_y)


def affine(img, params, fill: float):
    """`img` (H, W, C) float under the affine map of `params` = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y),
    applied once, bilinear; output pixels that sample outside the image get `fill` (blended at the edge).

    In pixel coordinates (x right, y down, pixel centres at integers, centre c = ((W-1)/2, (H-1)/2)) an
    input point p goes to  c + R(theta) Sh(rho_x, rho_y) Sc(s_x, s_y) (p - c) + t:  first the scale
    Sc = diag(s_x, s_y), then the shear Sh = [[1, rho_x], [rho_y, 1]], then the rotation R by `theta`
    radians counter-clockwise on screen (as `rotate`), then the translation t = (t_x, t_y), in pixels of
    `img` itself (y down). The op samples the inverse map (output -> input coordinates)."""
    tf = tf_module()
    p = tf.unstack(tf.cast(params, tf.float32))
    theta, rho_x, rho_y, s_x, s_y, t_x, t_y = p
    h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Forward linear part M = R Sh Sc, with R = [[cos, sin], [-sin, cos]] (y down: counter-clockwise).
    m00, m01 = (cos + sin * rho_y) * s_x, (cos * rho_x + sin) * s_y
    m10, m11 = (-sin + cos * rho_y) * s_x, (-sin * rho_x + cos) * s_y
    det = m00 * m11 - m01 * m10  # = s_x s_y (1 - rho_x rho_y) > 0 in Koch's ranges
    a0, a1, b0, b1 = m11 / det, -m01 / det, -m10 / det, m00 / det  # M^-1
    # Input = M^-1 (output - c - t) + c.
    ox, oy = cx + t_x, cy + t_y
    transform = tf.stack([a0, a1, cx - a0 * ox - a1 * oy, b0, b1, cy - b0 * ox - b1 * oy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=transform[None], output_shape=tf.shape(img)[:2],
        fill_value=tf.constant(fill, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def random_affine_params(seed, size):
    """Koch's random T for an image `size` pixels wide, from the stateless `seed`: float32 (7,) in the
    order of `affine`. Each component (the rotation, each shear, each scale, each translation) is drawn
    with probability 0.5, uniformly: theta in [-10, 10] degrees (radians here), rho in [-0.3, 0.3], s in
    [0.8, 1.2], t in [-2, 2] * size / 105 pixels (Koch's 2 pixels at 105x105 scaled to the image being
    transformed); otherwise it is the identity value (0 or 1). The seeds are folded off `seed`, so the
    other transforms' draws do not change when this one is on."""
    tf = tf_module()
    seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 17), 2)
    active = tf.random.stateless_uniform([7], seeds[0]) < 0.5
    u = tf.random.stateless_uniform([7], seeds[1])  # [0, 1)
    t = KOCH_TRANSLATION_PX * tf.cast(size, tf.float32) / KOCH_SIZE
    lo = tf.stack([-math.radians(KOCH_ROTATION_DEG), -KOCH_SHEAR, -KOCH_SHEAR, KOCH_SCALE[0], KOCH_SCALE[0], -t, -t])
    hi = tf.stack([math.radians(KOCH_ROTATION_DEG), KOCH_SHEAR, KOCH_SHEAR, KOCH_SCALE[1], KOCH_SCALE[1], t, t])
    return tf.where(active, lo + u * (hi - lo), tf.constant(AFFINE_IDENTITY, tf.float32))


def random_shift(seed, limit: float):
    """(t_x, t_y) pixels, each uniform in [-limit, limit], from the stateless `seed`, folded off it so that
    the other transforms' draws do not change when this one is on."""
    tf = tf_module()
    return tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(seed, 23), -limit, limit)


def random_geometry(img, seed, koch: bool, shift_px: float, fill: float):
    """Koch's random affine distortion of the (square) float image `img` (`random_affine_params`, if `koch`)
    followed by a random shift of up to `shift_px` pixels each way (`random_shift`), resampled once: the shift
    is added to the distortion's translation."""
    tf = tf_module()
    params = (random_affine_params(seed, tf.shape(img)[1]) if koch
              else tf.constant(AFFINE_IDENTITY, tf.float32))
    if shift_px:
        params += tf.concat([tf.zeros([5]), random_shift(seed, shift_px)], 0)
    return affine(img, params, fill)


def random_resized_crop(img, seed, size: int, scale_min: float):
    """A crop of [scale_min, 1] of the area and aspect ratio in [3/4, 4/3], resized to (size, size)."""
    tf = tf_module()
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(scale_min, 1.0),
        use_image_if_no_bounding_boxes=True)
    return tf.image.resize(tf.slice(img, begin, crop_size), (size, size), method="bilinear", antialias=True)


def to_grayscale(img, binarize: bool):
    """Luminance (ITU-R 601) repeated on 3 channels; `binarize` thresholds it at 0.5 (Omniglot is 1-bit)."""
    tf = tf_module()
    gray = tf.image.rgb_to_grayscale(img)
    if binarize:
        gray = tf.cast(gray >= 0.5, tf.float32)
    return tf.tile(gray, [1, 1, 3])


def geometry_and_colour(img, seed, data: ml_collections.ConfigDict):
    """The training-time random transforms after resizing: flip, rotation, Koch's affine distortion,
    translation, colour jitter."""
    tf = tf_module()
    seeds = tf.random.experimental.stateless_split(seed, 5)  # seeds[0] is free: the flip uses `seed` itself
    if data.flip:
        img = tf.image.stateless_random_flip_left_right(img, seed)
    if data.rotation_deg:
        limit = math.radians(data.rotation_deg)
        img = rotate(img, tf.random.stateless_uniform([], seeds[1], -limit, limit), data.fill)
    if data.affine or data.translate_px:
        img = random_geometry(img, seed, data.affine, data.translate_px, data.fill)
    if data.color_jitter:
        s = data.color_jitter
        img = tf.image.stateless_random_brightness(img, s, seeds[2])
        img = tf.image.stateless_random_contrast(img, 1 - s, 1 + s, seeds[3])
        img = tf.image.stateless_random_saturation(img, 1 - s, 1 + s, seeds[4])
        img = tf.clip_by_value(img, 0.0, 1.0)
    return img
