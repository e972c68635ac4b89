"""translate.py's library: volumes translated by a generator and written back in their own format and grid.

NIfTI and DICOM are written in the input's intensity scale, images as their [0, 1] values in
16-bit PNG; a folder --output mirrors the inputs' relative paths. See docs/translate.md.
"""

import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from data import datasets, masks, preprocess, readers, writers
from models import inference
from models.directions import DIRECTIONS
from rundir import flagfile

# Where translate() spends its time, logged in this order after the last volume.
TIMED_PARTS = ("reading", "model loading", "preprocessing", "network", "writing")
# An output names a file (not a folder) when it ends in one of these; the input must then be one such volume.
FILE_OUTPUT_SUFFIXES = {"nifti": readers.NIFTI_SUFFIXES, "image": (".png",)}
# --output_format: "input" writes each volume in its own format; "dicom" writes NIfTI volumes as DICOM series too.
OUTPUT_FORMATS = ("input", "dicom")


def translate_volume(generator: inference.Generator, volume: readers.Volume, min_foreground: float,
                     batch_size: int, air_mask: bool = True, seconds: dict[str, float] | None = None,
                     training_data: datasets.DataSpec = datasets.DataSpec()) -> tuple[np.ndarray, int]:
    """The volume's slices translated, in [0, 1] on their original grid, and how many were translated.

    Slices with less than `min_foreground` foreground stay 0, and with `air_mask` so does every pixel
    where the source slice is air (data/masks.py): air stays air, where the network would invent texture.
    `seconds` (when given) accumulates the time spent in "preprocessing" and in the "network".
    `training_data`: the run's data flags, whose --intensity and --spacing the model was trained with.
    """
    seconds = {} if seconds is None else seconds
    clock = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[part] = seconds.get(part, 0.0) + now - clock
        clock = now

    slices = datasets.volume_slices(volume, min_foreground, keep_original=air_mask,
                                    intensity=training_data.intensity, spacing=training_data.spacing)
    unit = np.zeros(volume.data.shape, np.float32)
    progress = tf.keras.utils.Progbar(len(slices), unit_name="slice") if len(volume.data) > 1 else None
    lap("preprocessing")
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        canvases = datasets.stack(batch)
        lap("preprocessing")
        translated = inference.translate_canvases(generator, canvases, batch_size)
        lap("network")
        for item, canvas in zip(batch, translated):
            unit[item.index] = preprocess.from_canvas(canvas, item.geometry)
            if air_mask:
                unit[item.index][masks.air_mask(item.original)] = 0.0
        if progress:
            progress.add(len(batch))
        lap("preprocessing")
    return unit, len(slices)


def output_paths(volumes: list[readers.Volume], input_spec: str, output: str, overwrite: bool = False,
                 output_format: str = "input") -> list[str]:
    """Where each volume's translation goes (a folder for a DICOM series); refuses collisions, an output folder
    that is a file or lies inside the input folder, overwriting an input unless `overwrite`, and volumes that
    cannot be written as DICOM when they would be (`writers.dicom_refusal`).

    A folder `output` mirrors the inputs' paths relative to `input_spec` (or, for a file or glob,
    to the folder the inputs share); a NIfTI written as DICOM becomes the folder named after its stem.
    """
    for volume in volumes:
        refusal = writers.dicom_refusal(volume) if _writes_dicom(volume, output_format) else None
        if refusal:
            raise ValueError(refusal)
    kinds = {kind for kind, suffixes in FILE_OUTPUT_SUFFIXES.items() if output.lower().endswith(suffixes)}
    if kinds and output_format == "dicom":
        raise ValueError(f"--output={output} names a file, but --output_format=dicom writes series; give a folder")
    if kinds:
        if len(volumes) != 1 or volumes[0].kind not in kinds:
            found = ", ".join(sorted({v.kind for v in volumes}))
            raise ValueError(f"--output={output} names one {kinds.pop()} file, but --input={input_spec} gives "
                             f"{len(volumes)} volume(s) ({found}); give a folder")
        targets = [output]
    else:
        check_output_folder(input_spec, output)
        root = os.path.expanduser(input_spec)
        if not os.path.isdir(root):
            root = os.path.commonpath([_source_location(v) if v.kind == "dicom" else os.path.dirname(v.path)
                                       for v in volumes])
        targets = [os.path.normpath(os.path.join(output, _mirrored_name(v, root, output_format))) for v in volumes]
    written_from = {}
    for volume, target in zip(volumes, targets):
        if os.path.realpath(target) == os.path.realpath(_source_location(volume)) and not overwrite:
            raise ValueError(f"{volume.path}: the output would overwrite this input; choose another --output, or "
                             "pass --overwrite to replace it")
        if target in written_from and volume.kind != "dicom":  # series sharing a folder keep their file names
            raise ValueError(f"{written_from[target]} and {volume.path} would both be written to {target}")
        written_from[target] = volume.path
    return targets


def check_output_folder(input_spec: str, output: str) -> None:
    """Refuses a folder --output that is a file, or that lies inside a folder --input (searched recursively, it
    would read the translations as inputs next time)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output={output} is a file, not a folder")
    source = os.path.expanduser(input_spec)
    if os.path.isdir(source):
        inside, folder = os.path.realpath(output), os.path.realpath(source)
        if inside != folder and os.path.commonpath([inside, folder]) == folder:
            raise ValueError(f"--output={output} is inside --input={input_spec}, which is searched recursively; "
                             "choose a folder outside it")


def check_writable(output: str, targets: list[str]) -> None:
    """Refuses an output whose folder (or the nearest existing parent it would be created in) cannot be written,
    by trying: permission bits do not tell for root, read-only mounts or immutable folders."""
    for target in sorted({os.path.dirname(os.path.abspath(t)) for t in targets}):
        folder = target
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"--output={output}: {folder} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise ValueError(f"--output={output}: cannot write in {folder} ({error.strerror or error})") from error


def _source_location(volume: readers.Volume) -> str:
    """What a volume's output mirrors: its file, or for DICOM the folder of its files."""
    return writers.dicom_series_folder(volume) if volume.kind == "dicom" else volume.path


def _writes_dicom(volume: readers.Volume, output_format: str) -> bool:
    """Whether `volume` is to be written as DICOM (an image never is: output_paths refuses it first)."""
    return volume.kind == "dicom" or output_format == "dicom"


def _mirrored_name(volume: readers.Volume, root: str, output_format: str = "input") -> str:
    """NIfTI and DICOM keep their relative path (a series: its folder's); an image becomes <stem>.png, and a
    NIfTI written as DICOM the folder <stem>."""
    relative = os.path.relpath(_source_location(volume), root)
    if volume.kind == "image":
        return os.path.join(os.path.dirname(relative), readers.file_stem(relative) + ".png")
    if volume.kind == "nifti" and output_format == "dicom":
        return os.path.join(os.path.dirname(relative), readers.file_stem(relative))
    return relative


def write_translation(volume: readers.Volume, unit: np.ndarray, target: str, direction: str,
                      output_format: str = "input", intensity: str = "percentile") -> None:
    """NIfTI and DICOM get values in the input's intensity scale (undoing `intensity`, the run's --intensity);
    images their [0, 1] values as 16-bit PNG."""
    source, result = DIRECTIONS[direction].source, DIRECTIONS[direction].result
    in_input_scale = unit * np.float32(preprocess.intensity_scale(volume.data, intensity))
    if _writes_dicom(volume, output_format):
        writers.write_dicom_series(volume, in_input_scale, target,
                                   f"SYNTHETIC {result} from {source} (mri-cyclegan, research use)")
    elif volume.kind == "nifti":
        writers.write_nifti(volume, in_input_scale, target, f"synthetic {result} from {source} by mri-cyclegan, "
                                                            "research use only")
    elif len(unit) == 1:
        writers.write_png16(unit[0], target)
    else:  # a multi-page TIFF: one PNG per page
        for page, image in enumerate(unit):
            writers.write_png16(image, f"{os.path.splitext(target)[0]}_page{page:03d}.png")


def check_model_direction(model: str, direction: str) -> None:
    """Refuses a SavedModel whose export card names the other direction; warns when there is no card."""
    exported = inference.exported_direction(model)
    if exported is None:
        logging.warning("no model card %s: cannot check that %s translates %s", inference.card_path(model), model,
                        direction)
    elif exported != direction:
        raise ValueError(f"--model={model} translates {exported} (its card {inference.card_path(model)}), "
                         f"not --direction={direction}")


def training_data_spec(model: str | None, logdir: str, checkpoint: str | None = None) -> datasets.DataSpec:
    """The data flags the generator was trained with: from an exported model's card, or the flags saved in the
    run directory of `checkpoint` (runs/x/checkpoints/ckpt-N: runs/x), else of `logdir`; the defaults without either."""
    if model:
        card = inference.card_path(model)
        saved = {}
        if os.path.isfile(card):
            try:
                with open(card) as f:
                    saved = json.load(f).get("training_flags") or {}
            except (OSError, ValueError, AttributeError) as error:
                raise ValueError(f"{card}: unreadable model card ({type(error).__name__}: {error})") from error
    else:
        saved = flagfile.load_run(logdir, checkpoint)
    return datasets.DataSpec.from_mapping(saved)


def load_generator(direction: str, model: str | None, logdir: str,
                   checkpoint: str | None = None) -> inference.Generator:
    """The exported generator at `model`, else the `direction` generator of `checkpoint` or `logdir`'s newest."""
    source = model or logdir
    try:
        if model:
            generator = inference.from_saved_model(model)
        else:
            generators, step = inference.from_checkpoint(logdir, checkpoint)
            generator = generators[direction]
    except (tf.errors.OpError, IndexError) as error:  # TensorFlow's errors for a truncated or corrupt SavedModel
        raise ValueError(f"{source}: unreadable model ({type(error).__name__}: {error})") from error
    logging.info("generator %s from %s", direction, f"SavedModel {source}" if model
                 else f"checkpoint of step {step} in {source}")
    return generator


def translate(direction: str, input_spec: str, output: str, model: str | None, logdir: str, on_bad_file: str,
              min_foreground: float, batch_size: int, air_mask: bool = True, checkpoint: str | None = None,
              overwrite: bool = False, output_format: str = "input") -> int:
    """Translates every volume `input_spec` names into `output`; returns how many were written.

    Cheap refusals (a card naming the other direction, unreadable inputs, output collisions)
    come before the model is loaded. Raises readers.BadFileError, OSError or ValueError, each
    with a one-line message naming the file.
    """
    if model:
        check_model_direction(model, direction)  # before reading any volume
    start = time.perf_counter()
    volumes = readers.read_path(input_spec, on_bad_file)
    seconds = {"reading": time.perf_counter() - start}
    targets = output_paths(volumes, input_spec, output, overwrite, output_format)
    check_writable(output, targets)
    start = time.perf_counter()
    generator = load_generator(direction, model, logdir, checkpoint)
    training_data = training_data_spec(model, logdir, checkpoint)
    seconds["model loading"] = time.perf_counter() - start
    for volume, target in zip(volumes, targets):
        unit, translated_count = translate_volume(generator, volume, min_foreground, batch_size, air_mask, seconds,
                                                  training_data)
        start = time.perf_counter()
        write_translation(volume, unit, target, direction, output_format, training_data.intensity)
        seconds["writing"] = seconds.get("writing", 0.0) + time.perf_counter() - start
        skipped = len(unit) - translated_count
        logging.info("wrote %s from %s%s", target, volume.path,
                     f" ({skipped} of {len(unit)} slices below --min_foreground written as 0)" if skipped else "")
    logging.info("time: %s", ", ".join(f"{part} {seconds.get(part, 0.0):.2f} s" for part in TIMED_PARTS))
    return len(volumes)
