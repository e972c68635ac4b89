"""Writing, checking and describing a run's exports (export.py's library).

Everything is written into a staging folder inside the output folder and moved into place
only when every artifact passed its check against the checkpoint's generator: a failed or
interrupted export leaves nothing that looks like a valid model.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from data import datasets, masks, preprocess, readers
from models import serving
from models.directions import DIRECTIONS
from models.inference import card_path, translate_canvases

CHECK_SLICES = 4
# Largest absolute difference to the checkpoint's generator allowed per artifact, on [-1, 1] outputs
# (translate_raw: on its [0, 1] output). float16 rounds every weight to 11 significant bits; the bound
# comes from measurements, see docs/export.md.
TOLERANCES = {"saved_model": 1e-4, "translate_raw": 1e-4, "tflite_float32": 1e-4, "tflite_float16": 1e-2}
# The translate_raw check feeds each check slice at an arbitrary intensity scale, zero-padded so it is
# larger than the canvas: the in-graph percentile, shrink and restore all run.
RAW_CHECK_PEAK = 1000.0
RAW_CHECK_PADDING = ((0, 40), (0, 16))
STAGING_PREFIX = ".export-staging-"


@dataclasses.dataclass
class DirectionExport:
    """One direction's artifacts (paths inside the output folder), what writing them took, and their checks."""

    direction: str
    artifacts: dict[str, str]  # name -> path relative to the output folder, as the card lists them
    sizes: dict[str, int]
    seconds: dict[str, float]
    diffs: dict[str, float]
    slices: int
    origin: str

    @property
    def failed(self) -> list[str]:
        return [name for name, diff in self.diffs.items() if not diff <= TOLERANCES[name]]


# ---------------------------------------------------------------- writing


def artifact_paths(output_dir: str, direction: str, with_tflite: bool) -> dict[str, str]:
    paths = {"saved_model": os.path.join(output_dir, direction)}
    if with_tflite:
        paths["tflite_float32"] = os.path.join(output_dir, f"{direction}.tflite")
        paths["tflite_float16"] = os.path.join(output_dir, f"{direction}_float16.tflite")
    return paths


def write_artifacts(generator: tf.keras.Model, paths: dict[str, str], air_mask: bool = True) -> dict[str, float]:
    """Writes the SavedModel (translate_raw zeroing the air when `air_mask`), then the TFLite models converted
    from it; seconds per artifact."""
    seconds = {}
    start = time.perf_counter()
    serving.save_saved_model(generator, paths["saved_model"], air_mask)
    seconds["saved_model"] = time.perf_counter() - start
    for name, float16 in (("tflite_float32", False), ("tflite_float16", True)):
        if name in paths:
            start = time.perf_counter()
            model = serving.convert_tflite(paths["saved_model"], float16)
            with open(paths[name], "wb") as f:
                f.write(model)
            seconds[name] = time.perf_counter() - start
    return seconds


def size_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def write_json(data: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- checks


def check_slices(spec: datasets.DataSpec, direction: str, count: int) -> tuple[list[datasets.Slice], str]:
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


def project_translation(generator, raw: np.ndarray, air_mask: bool = True) -> np.ndarray:
    """The project's own path for one raw slice, in [0, 1]: normalize, to_canvas, generator, from_canvas, and
    with `air_mask` 0 where the slice is air (data/masks.py)."""
    unit = preprocess.normalize(raw)
    canvas, geometry = preprocess.to_canvas(unit)
    translated = preprocess.from_canvas(translate_canvases(generator, canvas[np.newaxis])[0], geometry)
    return np.where(masks.air_mask(unit), np.float32(0), translated) if air_mask else translated


def raw_check_input(item: datasets.Slice) -> np.ndarray:
    """A check slice at an arbitrary intensity scale, larger than the canvas (see RAW_CHECK_PEAK)."""
    return np.pad(item.image * np.float32(RAW_CHECK_PEAK), RAW_CHECK_PADDING)


def run_checks(generator: tf.keras.Model, paths: dict[str, str], slices: list, air_mask: bool = True
               ) -> dict[str, float]:
    """Largest absolute difference of each artifact to the checkpoint's generator on `slices`."""

    def checkpoint_generator(batch: np.ndarray) -> np.ndarray:
        return generator(tf.constant(batch), training=False).numpy()

    images = preprocess.to_network(datasets.stack(slices))[..., np.newaxis]
    expected = checkpoint_generator(images)
    loaded = tf.saved_model.load(paths["saved_model"])
    diffs = {"saved_model": max_abs_diff(loaded.signatures["serving_default"](images=images)["translated"], expected)}
    raw_diffs = []
    for item in slices:
        raw = raw_check_input(item)
        translated = loaded.signatures["translate_raw"](image=raw)["translated_unit"]
        raw_diffs.append(max_abs_diff(translated, project_translation(checkpoint_generator, raw, air_mask)))
    diffs["translate_raw"] = max(raw_diffs)
    for name in ("tflite_float32", "tflite_float16"):
        if name in paths:
            diffs[name] = max_abs_diff(tflite_outputs(paths[name], images), expected)
    return diffs


def check_report(diffs: dict[str, float], origin: str, slices: list[datasets.Slice]) -> dict:
    """The card's record of the checks: what was compared, on what, and each artifact's result."""
    return {
        "slices": len(slices),
        "from": origin,
        "slice_sources": [f"{item.source} slice {item.index}" for item in slices],
        "reference": "the checkpoint's generator, training=False",
        "translate_raw_input": f"each slice times {RAW_CHECK_PEAK:g}, zero-padded by {RAW_CHECK_PADDING[0][1]} rows "
                               f"and {RAW_CHECK_PADDING[1][1]} columns to exceed the canvas; compared on [0, 1] with "
                               "data/preprocess.py around the checkpoint's generator",
        **{name: {"max_abs_diff": diff, "tolerance": TOLERANCES[name], "passed": diff <= TOLERANCES[name]}
           for name, diff in diffs.items()},
    }


# ---------------------------------------------------------------- the card


def card(direction: str, generator: tf.keras.Model, step: int, checkpoint: str, training_flags: dict,
         artifacts: dict[str, str], checks: dict, air_mask: bool = True) -> dict:
    """What a consumer needs to use the exports correctly, and the evidence that they match the checkpoint."""
    return {
        "direction": direction,
        "source_contrast": DIRECTIONS[direction].source,
        "target_contrast": DIRECTIONS[direction].result,
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
        "preprocessing": serving.PREPROCESSING,
        "air_mask": {"translate_raw": air_mask, "serving_default": False,
                     "rule": "translated_unit (and translated) set to 0 where the input slice is air: pixels at or "
                             "below the background level (median of the border pixels + 6 median absolute "
                             "deviations, between 0.03 and 0.1; no air when the border median is above 0.05; "
                             "exactly 0 when the border is zero fill and the ring of pixels just inside it has a "
                             "median above 0.025, i.e. is tissue: skull-stripped data) and 4-connected to the "
                             "border" if air_mask else "off: the raw network output everywhere (export.py "
                             "--air_mask=false)"},
        "training_flags": training_flags,
        "tensorflow_version": tf.__version__,
        "checks": checks,
    }


# ---------------------------------------------------------------- one export


def _export_direction(direction: str, generator: tf.keras.Model, staging: str, with_tflite: bool, step: int,
                      checkpoint: str, training_flags: dict, spec: datasets.DataSpec, air_mask: bool
                      ) -> DirectionExport:
    """Writes, checks and describes one direction's artifacts in `staging`."""
    paths = artifact_paths(staging, direction, with_tflite)
    logging.info("%s: writing %s", direction, ", ".join(os.path.basename(path) for path in paths.values()))
    seconds = write_artifacts(generator, paths, air_mask)
    slices, origin = check_slices(spec, direction, CHECK_SLICES)
    diffs = run_checks(generator, paths, slices, air_mask)
    artifacts = {name: os.path.relpath(path, staging) for name, path in paths.items()}
    write_json(card(direction, generator, step, checkpoint, training_flags, artifacts,
                    check_report(diffs, origin, slices), air_mask), card_path(paths["saved_model"]))
    return DirectionExport(direction, artifacts, {name: size_bytes(path) for name, path in paths.items()}, seconds,
                           diffs, len(slices), origin)


def _move_into_place(staged: str, target: str) -> None:
    """Replaces `target` (a file or a SavedModel folder of an earlier export) by `staged`."""
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    os.replace(staged, target)


# Data flags the exported translate_raw graph does not compute (it takes a raw slice with no scanner geometry).
NOT_IN_GRAPH = ("intensity", "spacing")


def preprocessing_refusal(training_flags: dict, logdir: str) -> str | None:
    """Why a run cannot be exported: trained with preprocessing translate_raw would not apply; None when it can."""
    spec, default = datasets.DataSpec.from_mapping(training_flags), datasets.DataSpec()
    changed = [f"--{name}={getattr(spec, name)}" for name in NOT_IN_GRAPH if getattr(spec, name) != getattr(default, name)]
    if not changed:
        return None
    return (f"{logdir} was trained with {' '.join(changed)}, which the exported translate_raw (one raw slice, no "
            f"scanner geometry) does not compute; translate it with translate.py --logdir={logdir}")


def export(generators: dict[str, tf.keras.Model], directions: tuple[str, ...], output_dir: str, with_tflite: bool,
           step: int, checkpoint: str, training_flags: dict, air_mask: bool = True) -> list[DirectionExport]:
    """Exports `directions` of a checkpoint's generators into the existing folder `output_dir`.

    The checks read the run's data as its saved `training_flags` describe it. All directions are
    staged and checked first; only when every check passed are the artifacts, then each card, moved
    into place. `air_mask`: translate_raw zeroes the air (the card says so). Otherwise output_dir is left as it was (an earlier export in it stays untouched);
    `failed` of the returned exports says which checks did not pass.
    """
    spec = datasets.DataSpec.from_mapping(training_flags)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir)
    try:
        exports = [_export_direction(d, generators[d], staging, with_tflite, step, checkpoint, training_flags, spec,
                                     air_mask) for d in directions]
        if any(e.failed for e in exports):
            return exports
        for e in exports:
            card_name = card_path(e.artifacts["saved_model"])
            for name in (*e.artifacts.values(), card_name):  # the card last: it vouches for the artifacts
                _move_into_place(os.path.join(staging, name), os.path.join(output_dir, name))
        return exports
    finally:
        shutil.rmtree(staging, ignore_errors=True)
