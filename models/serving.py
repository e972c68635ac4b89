"""What export.py ships: one generator as a tf.Module with two signatures, the preprocessing in its graph.

serving_default is the network alone; translate_raw runs data/preprocess.py in the graph so that
a client needs no project code. The graph ops here reproduce data/preprocess.py bit for bit
where NumPy and Pillow allow it (percentile, BOX resize, canvas placement).
"""

import functools

import tensorflow as tf

from data import masks, preprocess

CANVAS = preprocess.CANVAS
# The card's description of what the signatures expect and do (export.py writes it into every card).
PREPROCESSING = {
    "percentile": preprocess.PERCENTILE,
    "canvas": CANVAS,
    "network_range": [-1.0, 1.0],
    "rule": "clip negatives to 0; divide by the 99.5th percentile (NumPy 'linear') of the positive voxels, "
            "per volume (per 2D image); clip to [0, 1]; map to [-1, 1] as 2x-1; zero-pad each slice to the "
            "centre of a 256x256 canvas, scaling it down (aspect kept) only when larger. Outputs: (y+1)/2 "
            "clipped to [0, 1], the canvas cropped and resized back, times the divisor for the input's scale.",
    "resize": "PIL Image.resize(..., Image.BOX) in float32 (data/preprocess.py); translate_raw builds the same "
              "weights as matrices",
    "translate_raw": "the same rule in the graph, with NaN/Inf set to 0 and the divisor taken per 2D slice "
                     "(training and translate.py take one per volume); every slice is translated (translate.py "
                     "leaves slices below --min_foreground at 0)",
}


# ---------------------------------------------------------------- preprocessing in the graph


def percentile(values: tf.Tensor, q: float = preprocess.PERCENTILE) -> tf.Tensor:
    """np.percentile(values, q) for a non-empty float32 vector, NumPy's default 'linear' method.

    Same virtual index (n - 1) * q / 100 in float64, and the same float32 interpolation (from the
    upper neighbour when the fraction is >= 0.5) as NumPy 2, so the divisor is bit-identical to
    data/preprocess.py's.
    """
    return sorted_percentile(tf.sort(values), tf.size(values), q)


def masked_percentile(values: tf.Tensor, inside: tf.Tensor, q: float) -> tf.Tensor:
    """np.percentile(values[inside], q) for a non-empty selection, with static shapes (XLA compiles it):
    the values outside sort to the end as +inf."""
    ordered = tf.sort(tf.reshape(tf.where(inside, values, float("inf")), [-1]))
    return sorted_percentile(ordered, tf.reduce_sum(tf.cast(inside, tf.int32)), q)


def sorted_percentile(ordered: tf.Tensor, count: tf.Tensor, q: float) -> tf.Tensor:
    """percentile's interpolation over the first `count` values of an ascending vector."""
    last = tf.cast(count - 1, tf.float64)
    virtual = last * (q / 100.0)
    below = tf.floor(virtual)
    fraction = virtual - below
    lower = tf.gather(ordered, tf.cast(below, tf.int32))
    upper = tf.gather(ordered, tf.cast(tf.minimum(below + 1.0, last), tf.int32))
    step = upper - lower
    return tf.where(fraction >= 0.5, upper - step * tf.cast(1.0 - fraction, tf.float32),
                    lower + step * tf.cast(fraction, tf.float32))


def intensity_scale(image: tf.Tensor) -> tf.Tensor:
    """preprocess.intensity_scale: the percentile of the positive values, 0 when there is none."""
    positive = tf.boolean_mask(image, image > 0)
    return tf.cond(tf.size(positive) > 0, lambda: percentile(positive), lambda: tf.constant(0.0))


def box_weights(in_size: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
    """PIL's BOX resampling along one axis as an [out, in] float64 matrix (Pillow's precompute_coeffs).

    Output pixel o averages the input pixels whose centres fall in its box of width in/out (at
    least 1) around (o + 0.5) * in/out; upscaling thereby becomes nearest-neighbour, as in PIL.
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    inverse_support = 1.0 / tf.maximum(scale, 1.0)
    centres = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    offsets = (tf.range(in_size, dtype=tf.float64)[tf.newaxis, :] - centres[:, tf.newaxis] + 0.5) * inverse_support
    inside = tf.cast((offsets > -0.5) & (offsets <= 0.5), tf.float64)
    return tf.math.divide_no_nan(inside, tf.reduce_sum(inside, axis=1, keepdims=True))


def resize_box(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """preprocess._resize: PIL BOX, horizontal pass then vertical, float32 in between as in PIL's 'F' mode.

    Same size gives identity matrices, so an unscaled slice passes through exactly.
    """
    rows = box_weights(tf.shape(image)[0], height)
    columns = box_weights(tf.shape(image)[1], width)
    across = tf.cast(tf.matmul(tf.cast(image, tf.float64), columns, transpose_b=True), tf.float32)
    return tf.cast(tf.matmul(rows, tf.cast(across, tf.float64)), tf.float32)


def canvas_placement(height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """preprocess.to_canvas's geometry: resized height and width (aspect kept, only shrunk), top, left.

    tf.round rounds half to even like Python's round().
    """
    height64, width64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    factor = tf.minimum(tf.minimum(CANVAS / height64, CANVAS / width64), 1.0)
    resized_height = tf.maximum(1, tf.cast(tf.round(height64 * factor), tf.int32))
    resized_width = tf.maximum(1, tf.cast(tf.round(width64 * factor), tf.int32))
    return resized_height, resized_width, (CANVAS - resized_height) // 2, (CANVAS - resized_width) // 2


def four_neighbours(region: tf.Tensor) -> tf.Tensor:
    """The pixels with a 4-neighbour in `region` (a 2-D boolean image)."""
    padded = tf.pad(region, [[1, 1], [1, 1]])
    return padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def border_connected(candidate: tf.Tensor) -> tf.Tensor:
    """masks.border_connected: grown from the candidate border pixels until stable."""
    height, width = tf.shape(candidate)[0], tf.shape(candidate)[1]
    rows, columns = tf.range(height)[:, tf.newaxis], tf.range(width)[tf.newaxis, :]
    on_border = (rows == 0) | (rows == height - 1) | (columns == 0) | (columns == width - 1)
    start = candidate & on_border
    _, region = tf.while_loop(lambda previous, region: tf.reduce_any(previous != region),
                              lambda previous, region: (region, (region | four_neighbours(region)) & candidate),
                              (tf.zeros_like(start), start))
    return region


def air_mask(unit: tf.Tensor) -> tf.Tensor:
    """data/masks.air_mask in the graph, bit for bit: the border's median + 6 MADs, between the minimum and maximum
    level, or exactly 0 when the border is zero fill that meets tissue (a bright ring just inside the fill); the
    pixels at or below the level that are 4-connected to the border are air."""
    border = tf.concat([unit[0], unit[-1], unit[1:-1, 0], unit[1:-1, -1]], axis=0)
    median = percentile(border, 50.0)
    level = tf.minimum(median + masks.AIR_MAD_FACTOR * percentile(tf.abs(border - median), 50.0), masks.AIR_MAX_LEVEL)
    fill = border_connected(unit <= level)  # the zero fill when the level is 0
    ring = four_neighbours(fill) & ~fill
    raw = tf.cond(tf.equal(level, 0.0) & tf.reduce_any(ring),
                  lambda: masked_percentile(unit, ring, 50.0) <= masks.AIR_RING_MAX_MEDIAN,
                  lambda: tf.not_equal(level, 0.0))
    level = tf.where(raw, tf.maximum(level, masks.AIR_MIN_LEVEL), level)
    air = tf.cond(tf.reduce_any(ring & (unit <= level)), lambda: border_connected(unit <= level), lambda: fill)
    return air & (median <= masks.AIR_MAX_MEDIAN)


# ---------------------------------------------------------------- the exported module


class ExportedGenerator(tf.Module):
    """One generator with its two serving signatures, inference mode (dropout off) in both.

    Tracks the tf.Variables under the generator's Keras variables, not the Keras model (as Keras's
    own ExportArchive does): with Keras objects in the object graph the TFLite converter does not
    see the weights as variables, cannot freeze them and writes a model without them.
    """

    def __init__(self, generator: tf.keras.Model, air_mask: bool = True):
        super().__init__()
        self.air_mask = air_mask  # translate_raw zeroes the output where the input is air
        self.generator_weights = [weight.value for weight in generator.weights]  # Keras 3: the tf.Variable
        self._generate = functools.partial(generator, training=False)  # a partial is not tracked

    @tf.function(input_signature=[tf.TensorSpec([None, CANVAS, CANVAS, 1], tf.float32, name="images")])
    def serve(self, images):
        """[N, 256, 256, 1] in [-1, 1] -> the translations, same shape and range."""
        return {"translated": self._generate(images)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="image")])
    def translate_raw(self, image):
        """One raw 2D slice of any size -> its translation on the same grid, in its own intensity scale.

        The whole of data/preprocess.py in the graph, normalised per slice: clients need no project code.
        """
        image = tf.where(tf.math.is_finite(image), image, 0.0)
        scale = intensity_scale(image)
        unit = tf.clip_by_value(tf.math.divide_no_nan(tf.maximum(image, 0.0), scale), 0.0, 1.0)
        height, width = tf.shape(unit)[0], tf.shape(unit)[1]
        resized_height, resized_width, top, left = canvas_placement(height, width)
        placed = resize_box(unit, resized_height, resized_width)
        canvas = tf.pad(placed, [[top, CANVAS - top - resized_height], [left, CANVAS - left - resized_width]])
        signed = self._generate(canvas[tf.newaxis, :, :, tf.newaxis] * 2.0 - 1.0)[0, :, :, 0]
        translated_canvas = tf.clip_by_value((signed + 1.0) / 2.0, 0.0, 1.0)
        cropped = translated_canvas[top : top + resized_height, left : left + resized_width]
        translated_unit = resize_box(cropped, height, width)
        if self.air_mask:
            translated_unit = tf.where(air_mask(unit), 0.0, translated_unit)
        return {"translated": translated_unit * scale, "translated_unit": translated_unit, "scale": scale}


def save_saved_model(generator: tf.keras.Model, path: str, air_mask: bool = True) -> None:
    module = ExportedGenerator(generator, air_mask)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                   "translate_raw": module.translate_raw})


def convert_tflite(saved_model: str, float16: bool) -> bytes:
    """The serving signature only: translate_raw's float64 resize (PIL-exact) has no TFLite builtin kernel.

    On-device clients preprocess as docs/export.md describes.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()
