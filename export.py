r"""Exports a run's generators for serving: SavedModel, TFLite (float32, float16) and a JSON card each.

  python export.py --logdir=runs/ --output_dir=exported/
  python export.py --logdir=runs/ --output_dir=exported/ --direction=t1_to_t2 --notflite

Per direction (t1_to_t2 is generator G, t2_to_t1 is F) it writes <output_dir>/<direction>/ (a SavedModel
with the signatures serving_default and translate_raw), <direction>.tflite, <direction>_float16.tflite and
<direction>.json, then checks every artifact against the checkpoint's generator on real slices and exits
non-zero if one is off. See docs/export.md. Synthetic images are for research and education, never diagnosis.
"""

import functools
import json
import os
import sys
import time
import warnings

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import datasets, preprocess, readers
from models.directions import DIRECTIONS
from models.inference import card_path, checkpoint_networks, translate_canvases
from rundir import flagfile as run_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("logdir", "runs/", "Run directory: its newest checkpoint and saved flags are exported.")
flags.DEFINE_string("output_dir", "exported/", "Where the SavedModels, .tflite files and JSON cards go (created).")
flags.DEFINE_enum("direction", "both", ["both", *DIRECTIONS], "Direction(s) to export.")
flags.DEFINE_bool("tflite", True, "Also write the float32 and float16 TFLite models.")

CANVAS = preprocess.CANVAS
CHECK_SLICES = 4
# Largest absolute difference to the checkpoint's generator allowed per artifact, on [-1, 1] outputs
# (translate_raw: on its [0, 1] output). float16 rounds every weight to 11 significant bits; the bound
# comes from measurements, see docs/export.md.
TOLERANCES = {"saved_model": 1e-4, "translate_raw": 1e-4, "tflite_float32": 1e-4, "tflite_float16": 1e-2}
# The translate_raw check feeds each check slice at an arbitrary intensity scale, zero-padded so it is
# larger than the canvas: the in-graph percentile, shrink and restore all run.
RAW_CHECK_PEAK = 1000.0
RAW_CHECK_PADDING = ((0, 40), (0, 16))
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
    ordered = tf.sort(values)
    last = tf.cast(tf.size(values) - 1, tf.float64)
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


class ExportedGenerator(tf.Module):
    """One generator with its two serving signatures, inference mode (dropout off) in both.

    Tracks the tf.Variables under the generator's Keras variables, not the Keras model (as Keras's
    own ExportArchive does): with Keras objects in the object graph the TFLite converter does not
    see the weights as variables, cannot freeze them and writes a model without them.
    """

    def __init__(self, generator: tf.keras.Model):
        super().__init__()
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
        return {"translated": translated_unit * scale, "translated_unit": translated_unit, "scale": scale}


# ---------------------------------------------------------------- writing


def save_saved_model(generator: tf.keras.Model, path: str) -> None:
    module = ExportedGenerator(generator)
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


def artifact_paths(output_dir: str, direction: str, with_tflite: bool) -> dict[str, str]:
    paths = {"saved_model": os.path.join(output_dir, direction)}
    if with_tflite:
        paths["tflite_float32"] = os.path.join(output_dir, f"{direction}.tflite")
        paths["tflite_float16"] = os.path.join(output_dir, f"{direction}_float16.tflite")
    return paths


def write_artifacts(generator: tf.keras.Model, paths: dict[str, str]) -> dict[str, float]:
    """Writes the SavedModel, then the TFLite models converted from it; seconds per artifact."""
    seconds = {}
    start = time.perf_counter()
    save_saved_model(generator, paths["saved_model"])
    seconds["saved_model"] = time.perf_counter() - start
    for name, float16 in (("tflite_float32", False), ("tflite_float16", True)):
        if name in paths:
            start = time.perf_counter()
            model = convert_tflite(paths["saved_model"], float16)
            with open(paths[name], "wb") as f:
                f.write(model)
            seconds[name] = time.perf_counter() - start
    return seconds


def size_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------- checks


def check_slices(spec: datasets.DataSpec, direction: str, count: int) -> tuple[list, str]:
    """Source-side slices spread over the run's paired test split (else its training slices, else phantoms).

    Real slices, not noise: they put the network in the regime it will serve. Falling back keeps a run
    whose data is not on this machine exportable; the JSON card names what was used.
    """
    index = DIRECTIONS[direction].source_index
    candidates = (
        ("the run's paired test split", lambda: [pair[index] for pair in datasets.test_pairs(spec)]),
        ("the run's training slices", lambda: datasets.training_slices(spec)[index]),
    )
    for origin, read in candidates:
        try:
            slices = read()
            break
        except (ValueError, OSError, readers.BadFileError) as error:
            logging.warning("checks: cannot use %s (%s)", origin, error)
    else:
        origin = "built-in synthetic phantoms"
        slices = [pair[index] for pair in datasets.test_pairs(datasets.DataSpec(synthetic_test_subjects=count))]
    picks = sorted(set(np.linspace(0, len(slices) - 1, min(count, len(slices))).round().astype(int)))
    return [slices[i] for i in picks], origin


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def tflite_outputs(path: str, images: np.ndarray) -> np.ndarray:
    """The .tflite's serving signature, one slice per call as an embedded client would run it."""
    runner = tf.lite.Interpreter(model_path=path).get_signature_runner("serving_default")
    return np.concatenate([runner(images=image[np.newaxis])["translated"] for image in images])


def project_translation(generator, raw: np.ndarray) -> np.ndarray:
    """The project's own path for one raw slice, in [0, 1]: normalize, to_canvas, generator, from_canvas."""
    canvas, geometry = preprocess.to_canvas(preprocess.normalize(raw))
    return preprocess.from_canvas(translate_canvases(generator, canvas[np.newaxis])[0], geometry)


def run_checks(generator: tf.keras.Model, paths: dict[str, str], slices: list) -> dict[str, float]:
    """Largest absolute difference of each artifact to the checkpoint's generator on `slices`."""

    def checkpoint_generator(batch: np.ndarray) -> np.ndarray:
        return generator(tf.constant(batch), training=False).numpy()

    images = preprocess.to_network(datasets.stack(slices))[..., np.newaxis]
    expected = checkpoint_generator(images)
    loaded = tf.saved_model.load(paths["saved_model"])
    diffs = {"saved_model": max_abs_diff(loaded.signatures["serving_default"](images=images)["translated"], expected)}
    raw_diffs = []
    for item in slices:
        raw = np.pad(item.image * np.float32(RAW_CHECK_PEAK), RAW_CHECK_PADDING)
        translated = loaded.signatures["translate_raw"](image=raw)["translated_unit"]
        raw_diffs.append(max_abs_diff(translated, project_translation(checkpoint_generator, raw)))
    diffs["translate_raw"] = max(raw_diffs)
    for name in ("tflite_float32", "tflite_float16"):
        if name in paths:
            diffs[name] = max_abs_diff(tflite_outputs(paths[name], images), expected)
    return diffs


def check_report(diffs: dict[str, float], origin: str, count: int) -> dict:
    """The card's record of the checks: what was compared, on what, and each artifact's result."""
    return {
        "slices": count,
        "from": origin,
        "reference": "the checkpoint's generator, training=False",
        "translate_raw_input": f"each slice times {RAW_CHECK_PEAK:g}, zero-padded by {RAW_CHECK_PADDING[0][1]} rows "
                               f"and {RAW_CHECK_PADDING[1][1]} columns to exceed the canvas; compared on [0, 1] with "
                               "data/preprocess.py around the checkpoint's generator",
        **{name: {"max_abs_diff": diff, "tolerance": TOLERANCES[name], "passed": diff <= TOLERANCES[name]}
           for name, diff in diffs.items()},
    }


# ---------------------------------------------------------------- the card


def card(direction: str, generator: tf.keras.Model, step: int, checkpoint: str, training_flags: dict,
         artifacts: dict[str, str], checks: dict) -> dict:
    """What a consumer needs to use the exports correctly, and the evidence that they match the checkpoint."""
    source, target = DIRECTIONS[direction].source, DIRECTIONS[direction].result
    return {
        "direction": direction,
        "source_contrast": source,
        "target_contrast": target,
        "generator": DIRECTIONS[direction].generator,
        "parameters": generator.count_params(),
        "checkpoint": {"path": checkpoint, "step": step},
        "artifacts": artifacts,
        "signatures": {
            "serving_default": {"inputs": {"images": "float32 [N, 256, 256, 1] in [-1, 1]"},
                                "outputs": {"translated": "float32 [N, 256, 256, 1] in [-1, 1]"}},
            "translate_raw": {"inputs": {"image": "float32 [H, W], raw intensities of one 2D slice"},
                              "outputs": {"translated": "float32 [H, W] in the input's intensity scale",
                                          "translated_unit": "float32 [H, W] in [0, 1]",
                                          "scale": "float32 scalar, the slice's 99.5th percentile"}},
        },
        "preprocessing": PREPROCESSING,
        "training_flags": training_flags,
        "tensorflow_version": tf.__version__,
        "checks": checks,
    }


def write_json(data: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- main


def export_direction(direction: str, generator: tf.keras.Model, step: int, checkpoint: str, training_flags: dict,
                     spec: datasets.DataSpec) -> list[str]:
    """Writes, checks and describes one direction's artifacts; returns the failed checks."""
    paths = artifact_paths(FLAGS.output_dir, direction, FLAGS.tflite)
    logging.info("%s: writing %s", direction, ", ".join(paths.values()))
    seconds = write_artifacts(generator, paths)
    slices, origin = check_slices(spec, direction, CHECK_SLICES)
    diffs = run_checks(generator, paths, slices)
    artifacts = {name: os.path.relpath(path, FLAGS.output_dir) for name, path in paths.items()}
    write_json(card(direction, generator, step, checkpoint, training_flags, artifacts,
                    check_report(diffs, origin, len(slices))), card_path(paths["saved_model"]))
    failed = []
    for name, path in paths.items():
        print(f"{direction} {name}: {path} ({size_bytes(path) / 1e6:.1f} MB, written in {seconds[name]:.1f} s)")
    for name, diff in diffs.items():
        passed = diff <= TOLERANCES[name]
        print(f"{direction} check {name}: max |diff| {diff:.2e} (tolerance {TOLERANCES[name]:.0e}) "
              f"{'ok' if passed else 'FAILED'}")
        if not passed:
            failed.append(f"{direction} {name}")
    print(f"{direction} checked on {len(slices)} slices of {origin}")
    return failed


def main(argv):
    del argv
    # tf.lite.Interpreter works in TF 2.21 but warns that LiteRT (ai_edge_litert, not a dependency) replaces it.
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
    start = time.perf_counter()
    if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):  # checked before the slow load
        sys.exit(f"error: --output_dir={FLAGS.output_dir} is a file, not a folder")
    try:
        generators, checkpoint, step = checkpoint_networks(FLAGS.logdir)
    except (FileNotFoundError, ValueError) as error:  # no checkpoint; a truncated or corrupt one
        sys.exit(f"error: {error}")
    training_flags = run_flags.load(FLAGS.logdir)
    if not training_flags:
        logging.warning("no %s in %s: the checks use the default data flags", run_flags.FLAGFILE, FLAGS.logdir)
    spec = datasets.DataSpec.from_mapping(training_flags)
    try:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    except OSError as error:
        sys.exit(f"error: --output_dir={FLAGS.output_dir}: cannot create the folder ({error.strerror or error})")
    directions = tuple(DIRECTIONS) if FLAGS.direction == "both" else (FLAGS.direction,)
    failed = [name for d in directions
              for name in export_direction(d, generators[d], step, checkpoint, training_flags, spec)]
    print(f"exported step {step} of {checkpoint} to {FLAGS.output_dir} in {time.perf_counter() - start:.0f} s")
    if failed:
        sys.exit(f"error: check failed for {', '.join(failed)}: outputs differ from the checkpoint beyond the "
                 f"tolerance (see the lines above and the JSON cards); do not use these exports")


if __name__ == "__main__":
    app.run(main)
