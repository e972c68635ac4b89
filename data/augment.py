"""Training-time augmentation in TensorFlow ops: graph-safe inside `tf.data` map, deterministic given a seed.

Geometry (the CycleGAN jitter, rotation, zoom) is composed into one 3x3
output->input matrix and resampled once, bilinearly, with zeros outside the
image, so the slice is blurred by a single interpolation and air is never
mirrored into the border. The jitter is the CycleGAN one, resize 256 -> 286 and
a random integer crop back to 256, expressed as that matrix: it is exactly
`tf.image.resize(..., "bilinear")` (half-pixel centres) plus the crop, except
that samples past the edge blend with 0 instead of repeating the edge pixel.
Bilinear rather than bicubic (the PyTorch original) because it never overshoots,
so no negative ringing at the skull/air edge; rather than nearest (the TF
tutorial) because nearest duplicates about one row and column in nine.

Intensity ops (bias field, gamma) are multiplicative or power laws, so air
(exactly 0) stays exactly 0.

Every random draw has its own sub-seed split from the caller's seed at a fixed
index, so switching one option on or off does not change the others' draws.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from rundir.config import option

IMAGE_SIZE = 256
JITTER_SIZE = 286
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
BIAS_DEGREE = 3  # highest total degree of the bias polynomial: smooth, a few bumps across the head

# Fixed sub-seed index per random draw.
_STREAMS = 7
_JITTER, _ANGLE, _ZOOM, _FLIP, _BIAS_SHAPE, _BIAS_AMPLITUDE, _GAMMA = range(_STREAMS)

# Bias terms P_i(y) P_j(x) with 0 < i + j <= BIAS_DEGREE: a constant term would be removed by the mean anyway.
_DEGREES = np.add.outer(np.arange(BIAS_DEGREE + 1), np.arange(BIAS_DEGREE + 1))
_COEFFICIENT_MASK = ((_DEGREES > 0) & (_DEGREES <= BIAS_DEGREE)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations run and how strongly; 0 (or False) disables one."""

    jitter: bool = option(True, "Augmentation: the CycleGAN jitter (resize to 286 bilinearly, random integer crop "
                          "to 256).", flag="augment_jitter")
    flip: bool = option(True, "Augmentation: random left-right mirror (p = 0.5).", flag="augment_flip")
    rotate_degrees: float = option(0.0, "Augmentation: random rotation about the centre within +-this many degrees "
                                   "(0: off).", lower=0.0, flag="augment_rotate")
    scale: float = option(0.0, "Augmentation: random zoom about the centre within 1 +- this fraction (0: off).",
                          lower=0.0, upper=0.99, flag="augment_scale")
    gamma: float = option(0.0, "Augmentation: random gamma, image ** exp(U(-g, g)) (0: off).", lower=0.0,
                          flag="augment_gamma")
    bias_field: float = option(0.0, "Augmentation: smooth multiplicative bias field 1 + a * p, max |p| = 1, "
                               "a ~ U(0, this) (0: off).", lower=0.0, upper=0.99, flag="augment_bias_field")

    def __post_init__(self):
        for name, value, upper in (
            ("rotate_degrees", self.rotate_degrees, math.inf),
            ("scale", self.scale, 1.0),
            ("gamma", self.gamma, math.inf),
            ("bias_field", self.bias_field, 1.0),
        ):
            # scale and bias_field must stay below 1 so zoom and field remain positive.
            if not (0.0 <= value < upper):
                raise ValueError(f"{name} must be in [0, {upper}), got {value}")

    @property
    def enabled(self) -> bool:
        return bool(
            self.jitter or self.flip or self.rotate_degrees or self.scale or self.gamma or self.bias_field
        )


def augment(image: tf.Tensor, options: AugmentOptions, seed: tf.Tensor) -> tf.Tensor:
    """Randomly augment one [256, 256, 1] slice in [0, 1]; same seed (shape [2], int32/int64), same output.

    Disabled options add no ops: `options` is static Python, read at trace time.
    """
    image = tf.ensure_shape(tf.convert_to_tensor(image, tf.float32), IMAGE_SHAPE)
    keys = tf.random.experimental.stateless_split(tf.ensure_shape(seed, [2]), num=_STREAMS)

    geometry = _random_geometry(options, keys)
    if geometry is not None:
        image = warp(image, geometry)
    if options.flip:
        image = tf.image.stateless_random_flip_left_right(image, keys[_FLIP])
    if options.bias_field:
        amplitude = tf.random.stateless_uniform([], keys[_BIAS_AMPLITUDE], 0.0, options.bias_field)
        image = tf.clip_by_value(image * bias_field(keys[_BIAS_SHAPE], amplitude), 0.0, 1.0)
    if options.gamma:
        log_exponent = tf.random.stateless_uniform([], keys[_GAMMA], -options.gamma, options.gamma)
        image = gamma_correct(image, tf.exp(log_exponent))
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), IMAGE_SHAPE)


def _random_geometry(options: AugmentOptions, keys: tf.Tensor) -> tf.Tensor | None:
    """The output->input matrix of the enabled geometric ops (jitter applied first), or None if none is on."""
    matrix = None
    if options.jitter:
        max_offset = JITTER_SIZE - IMAGE_SIZE
        offset = tf.random.stateless_uniform([2], keys[_JITTER], 0, max_offset + 1, dtype=tf.int32)
        matrix = jitter_matrix(offset)
    if options.rotate_degrees or options.scale:
        angle = _symmetric_uniform(keys[_ANGLE], options.rotate_degrees)
        zoom = 1.0 + _symmetric_uniform(keys[_ZOOM], options.scale)
        rotation = rotation_zoom_matrix(angle, zoom)
        # Output pixels are rotated first, then looked up in the jittered canvas.
        matrix = rotation if matrix is None else matrix @ rotation
    return matrix


def _symmetric_uniform(key: tf.Tensor, half_width: float) -> tf.Tensor:
    if not half_width:
        return tf.constant(0.0)
    return tf.random.stateless_uniform([], key, -half_width, half_width)


def jitter_matrix(offset_yx: tf.Tensor, size: int = IMAGE_SIZE, jitter_size: int = JITTER_SIZE) -> tf.Tensor:
    """Output->input (x, y, 1) matrix of: resize size -> jitter_size (half-pixel centres), crop at offset (row, col)."""
    step = size / jitter_size
    offset = tf.cast(offset_yx, tf.float32)
    return _affine(step, 0.0, step * (offset[1] + 0.5) - 0.5, 0.0, step, step * (offset[0] + 0.5) - 0.5)


def rotation_zoom_matrix(angle_degrees, zoom, size: int = IMAGE_SIZE) -> tf.Tensor:
    """Output->input (x, y, 1) matrix that rotates content counter-clockwise (as displayed) and zooms, about the centre.

    x is the column and y the row (pointing down), as ImageProjectiveTransformV3 expects.
    """
    angle = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
    inverse_zoom = 1.0 / tf.cast(zoom, tf.float32)
    cos, sin = tf.cos(angle) * inverse_zoom, tf.sin(angle) * inverse_zoom
    centre = (size - 1) / 2.0
    return _affine(cos, -sin, centre - cos * centre + sin * centre, sin, cos, centre - sin * centre - cos * centre)


def _affine(xx, xy, x0, yx, yy, y0) -> tf.Tensor:
    """The 3x3 matrix mapping (x, y, 1) to (xx x + xy y + x0, yx x + yy y + y0, 1)."""
    entries = [xx, xy, x0, yx, yy, y0, 0.0, 0.0, 1.0]
    return tf.reshape(tf.stack([tf.cast(entry, tf.float32) for entry in entries]), [3, 3])


def warp(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Resample [H, W, C] at matrix @ (x, y, 1) per output pixel; bilinear, 0 outside (air, not mirrored anatomy)."""
    transform = tf.reshape(matrix, [9])[:8]  # affine: the last row is (0, 0, 1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return warped[0]


def gamma_correct(image: tf.Tensor, exponent) -> tf.Tensor:
    """image ** exponent for an image in [0, 1]; 0 ** (exponent > 0) is 0, so air stays air."""
    return tf.pow(image, tf.cast(exponent, tf.float32))


def bias_field(seed: tf.Tensor, amplitude, size: int = IMAGE_SIZE) -> tf.Tensor:
    """A smooth [size, size, 1] gain 1 + amplitude * p: p a random polynomial with mean 0 and max |p| = 1.

    So the field has mean 1 over the image (tissue brightness is redistributed,
    not rescaled) and stays within [1 - amplitude, 1 + amplitude]. Legendre
    polynomials keep terms of every degree at a comparable size over [-1, 1].
    """
    basis = tf.constant(_legendre_basis(size))  # [size, degree + 1]
    coefficients = tf.random.stateless_uniform([BIAS_DEGREE + 1] * 2, seed, -1.0, 1.0) * _COEFFICIENT_MASK
    polynomial = basis @ coefficients @ tf.transpose(basis)  # rows: y, columns: x
    polynomial -= tf.reduce_mean(polynomial)
    polynomial = tf.math.divide_no_nan(polynomial, tf.reduce_max(tf.abs(polynomial)))
    return (1.0 + tf.cast(amplitude, tf.float32) * polynomial)[..., tf.newaxis]


def _legendre_basis(size: int) -> np.ndarray:
    """Legendre polynomials P_0..P_BIAS_DEGREE at the pixel centres mapped to [-1, 1]; float32 [size, degree + 1]."""
    positions = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.polynomial.legendre.legvander(positions, BIAS_DEGREE).astype(np.float32)
